// The demo ERP's records under the names of the demo SAP service
// (gateway/demo/sap.py, SAP_SETS). tests/cap/cap_launch.py copies this model
// to a scratch folder and writes the rows of the demo data generator there as
// CSV files in db/data/ before it starts the server.
namespace fonte.erp;

entity A_Customer {
  key Customer             : Integer;
      CustomerName         : String(200);
      VATRegistration      : String(20);
      EmailAddress         : String(200);
      PhoneNumber          : String(40);
      StreetName           : String(200);
      CityName             : String(100);
      PostalCode           : String(10);
      BPCustomerNumber     : String(20);
      CreditLimitAmount    : Decimal(15, 2);
      CreditExposureAmount : Decimal(15, 2);
}

entity A_CustomerBankAccount {
  key BankIdentification : Integer;
      Customer           : Integer;
      IBAN               : String(34);
      BankName           : String(100);
}

entity A_SalesOrder {
  key SalesOrder                : Integer;
      ExternalDocumentID        : String(20);
      SoldToParty               : Integer;
      CreationDateTime          : DateTime;
      RequestedDeliveryDateTime : DateTime;
      OverallSDProcessStatus    : String(20);
      TotalNetAmount            : Decimal(15, 2);
      TotalGrossAmount          : Decimal(15, 2);
      TransactionCurrency       : String(3);
}

entity A_BillingDocument {
  key BillingDocument       : Integer;
      BillingDocumentNumber : String(20);
      BillingDocumentType   : String(20);
      OverallBillingStatus  : String(20);
      PayerParty            : Integer;
      SalesDocument         : String(20);
      BillingDocumentDate   : Date;
      NetDueDate            : Date;
      TotalGrossAmount      : Decimal(15, 2);
      OpenAmount            : Decimal(15, 2);
      PaymentStatus         : String(20);
      TransactionCurrency   : String(3);
}

entity A_OutbDeliveryHeader {
  key DeliveryDocument            : Integer;
      DeliveryDocumentNumber      : String(20);
      ShipToParty                 : Integer;
      ReferenceSDDocument         : String(20);
      SalesOrder                  : Integer;
      DeliveryDocumentType        : String(20);
      OverallGoodsMovementStatus  : String(20);
      PlannedGoodsIssueDateTime   : DateTime;
      DeliveryDeadlineDateTime    : DateTime;
      ActualGoodsMovementDateTime : DateTime;
      ShippingCarrier             : String(100);
      TrackingNumber              : String(40);
}
