using {fonte.erp as erp} from '../db/schema';

// The SAP service as OData 2.0 (through @cap-js-community/odata-v2-adapter)
// at the path of an SAP Gateway service, and as OData 4.0 under /odata/v4/,
// to which the adapter forwards its requests. @cds.query.limit sets the rows
// per page: CAP pages on the server, ignores "Prefer: odata.maxpagesize" and
// cuts a $top above the max to the max.
@protocol: [
  {kind: 'odata', path: '/odata/v4/api-fonte-demo'},
  {kind: 'odata-v2', path: '/sap/opu/odata/sap/API_FONTE_DEMO'}
]
@requires: 'authenticated-user'
@cds.query.limit: {default: 100, max: 1000}
service API_FONTE_DEMO {
  @readonly entity A_Customer            as projection on erp.A_Customer;
  @readonly entity A_CustomerBankAccount as projection on erp.A_CustomerBankAccount;
  @readonly entity A_SalesOrder          as projection on erp.A_SalesOrder;
  @readonly entity A_BillingDocument     as projection on erp.A_BillingDocument;
  @readonly entity A_OutbDeliveryHeader  as projection on erp.A_OutbDeliveryHeader;
}

// The same records under the names of the demo Dataverse environment
// (gateway/demo/dataverse.py, DATAVERSE_SETS), as OData 4.0 at the Dataverse
// Web API path. Unlike Dataverse, each key is the demo's integer id, where
// Dataverse adds a GUID primary key to every row. Its body limit is 1 MB,
// because a $batch of 32 KB GETs passes CAP's default of 100 KB.
@path: '/api/data/v9.2'
@cov2ap.ignore
@requires: 'authenticated-user'
@cds.server.body_parser.limit: '1mb'
@cds.query.limit: {default: 100, max: 1000}
service DataverseDemo {
  @readonly entity accounts as projection on erp.A_Customer {
    key Customer as fonte_partnerid,
        CustomerName as name,
        VATRegistration as fonte_vatnumber,
        EmailAddress as emailaddress1,
        PhoneNumber as telephone1,
        StreetName as address1_line1,
        CityName as address1_city,
        PostalCode as address1_postalcode,
        BPCustomerNumber as accountnumber,
        CreditLimitAmount as creditlimit,
        CreditExposureAmount as fonte_totalreceivable
  };

  @readonly entity fonte_bankaccounts as projection on erp.A_CustomerBankAccount {
    key BankIdentification as fonte_bankaccountid,
        Customer as fonte_partnerid,
        IBAN as fonte_iban,
        BankName as fonte_bankname
  };

  @readonly entity salesorders as projection on erp.A_SalesOrder {
    key SalesOrder as fonte_orderid,
        ExternalDocumentID as ordernumber,
        SoldToParty as fonte_partnerid,
        CreationDateTime as fonte_orderdate,
        RequestedDeliveryDateTime as requestdeliveryby,
        OverallSDProcessStatus as fonte_state,
        TotalNetAmount as totallineitemamount,
        TotalGrossAmount as totalamount,
        TransactionCurrency as fonte_currencycode
  };

  @readonly entity invoices as projection on erp.A_BillingDocument {
    key BillingDocument as fonte_invoiceid,
        BillingDocumentNumber as invoicenumber,
        BillingDocumentType as fonte_movetype,
        OverallBillingStatus as fonte_state,
        PayerParty as fonte_partnerid,
        SalesDocument as fonte_ordernumber,
        BillingDocumentDate as fonte_invoicedate,
        NetDueDate as duedate,
        TotalGrossAmount as totalamount,
        OpenAmount as fonte_amountdue,
        PaymentStatus as fonte_paymentstate,
        TransactionCurrency as fonte_currencycode
  };

  @readonly entity fonte_shipments as projection on erp.A_OutbDeliveryHeader {
    key DeliveryDocument as fonte_shipmentid,
        DeliveryDocumentNumber as fonte_name,
        ShipToParty as fonte_partnerid,
        ReferenceSDDocument as fonte_ordernumber,
        SalesOrder as fonte_orderid,
        DeliveryDocumentType as fonte_pickingtype,
        OverallGoodsMovementStatus as fonte_state,
        PlannedGoodsIssueDateTime as fonte_scheduleddate,
        DeliveryDeadlineDateTime as fonte_deadline,
        ActualGoodsMovementDateTime as fonte_donedate,
        ShippingCarrier as fonte_carrier,
        TrackingNumber as fonte_trackingnumber
  };
}
