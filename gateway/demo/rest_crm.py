"""A plain REST/JSON CRM over the demo accounts, contacts and opportunities.

It serves the records of the demo Salesforce CRM with the API of the demo
REST ERP (``gateway.demo.rest``). Paths under ``/api/v1``, parameters,
envelope, errors, API key and fault injection are the same. Its own OpenAPI
description is at ``/openapi.json``. Field names are snake case,
and ids are the Salesforce record ids, so the gateway returns the same
customer ids whichever CRM it reads. The peer benchmark reads it through the
generic ``rest`` dialect and through GraphQL Mesh.
"""

from __future__ import annotations

from starlette.applications import Starlette

from gateway.demo.data import DemoData, Record
from gateway.demo.mappings import rest_fake_settings
from gateway.demo.odata_fake import EntitySetSpec
from gateway.demo.rest import openapi_limits, rest_app
from gateway.demo.rest_openapi import openapi_document
from gateway.sources.rest import RestSettings

# Each resource maps its field names to the Salesforce fields of one sObject.
REST_CRM_RESOURCES = [
    EntitySetSpec("accounts", "Account", {
        "id": "Id", "name": "Name", "vat_number": "VAT_Number__c", "pec_email": "PEC_Email__c",
        "phone": "Phone", "street": "BillingStreet", "city": "BillingCity",
        "postal_code": "BillingPostalCode", "province": "BillingState",
        "country": "BillingCountry", "region": "Region__c", "industry": "Industry",
        "owner_id": "OwnerId", "erp_customer_number": "ERP_Customer_Number__c"}),
    EntitySetSpec("contacts", "Contact", {
        "id": "Id", "account_id": "AccountId", "first_name": "FirstName",
        "last_name": "LastName", "email": "Email", "phone": "Phone", "title": "Title"}),
    EntitySetSpec("opportunities", "Opportunity", {
        "id": "Id", "account_id": "AccountId", "name": "Name", "stage": "StageName",
        "amount": "Amount", "close_date": "CloseDate", "probability": "Probability"}),
]
# Integer fields of the CRM resources. The ids are 18-character strings.
INTEGER_FIELDS = frozenset({"probability"})
# Attributes, in the REST CRM's names, that the schema's reads match other than the id.
REST_CRM_FILTERS = ("account_id", "erp_customer_number")


def crm_resources(data: DemoData) -> dict[str, list[Record]]:
    """Return the records of each CRM resource, renamed from the Salesforce fields."""
    return {spec.name: [{prop: record.get(field) for prop, field in spec.properties.items()}
                        for record in data.crm.get(spec.model, [])]
            for spec in REST_CRM_RESOURCES}


def create_rest_crm_app(data: DemoData, *, api_key: str | None) -> Starlette:
    """Build the fake REST CRM; its ``RestFake`` is ``app.state.fake``."""
    document = openapi_document(
        {spec.name: list(spec.properties) for spec in REST_CRM_RESOURCES}, **openapi_limits(),
        title="Fonte demo CRM", integer_fields=INTEGER_FIELDS,
        summary="A plain REST/JSON CRM over the Fonte demo data: accounts, contacts and "
                "opportunities, read in batches by id or by account.")
    return rest_app(crm_resources(data), document, api_key=api_key)


def demo_rest_crm_settings(base_url: str, api_key: str) -> RestSettings:
    """Return the settings with which the ``rest`` dialect reads the demo REST CRM."""
    return rest_fake_settings(REST_CRM_RESOURCES, REST_CRM_FILTERS, base_url, api_key)
