"""Tests of the demo data generator: determinism, shape, check digits and cross-links."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date
from typing import Any

import pytest

from gateway.demo.data import DemoData, generate
from gateway.demo.identifiers import italian_cin
from gateway.demo.sobjects import FIELD_TYPES

CUSTOMERS = 200
REGIONS = {
    "MI": "Nord-Ovest", "TO": "Nord-Ovest", "GE": "Nord-Ovest", "BG": "Nord-Ovest",
    "BS": "Nord-Ovest", "VA": "Nord-Ovest", "MB": "Nord-Ovest", "CN": "Nord-Ovest",
    "VE": "Nord-Est", "VR": "Nord-Est", "PD": "Nord-Est", "VI": "Nord-Est", "TV": "Nord-Est",
    "BO": "Nord-Est", "MO": "Nord-Est", "TN": "Nord-Est", "UD": "Nord-Est",
    "RM": "Centro", "FI": "Centro", "PI": "Centro", "AN": "Centro", "PG": "Centro",
    "NA": "Sud", "BA": "Sud", "SA": "Sud", "PE": "Sud", "LE": "Sud", "CS": "Sud",
    "PA": "Isole", "CT": "Isole", "CA": "Isole", "SS": "Isole",
}
STAGE_PROBABILITY = {
    "Prospecting": 10, "Qualification": 10, "Needs Analysis": 20, "Proposal/Price Quote": 75,
    "Negotiation/Review": 90, "Closed Won": 100, "Closed Lost": 0,
}
ERP_FIELDS = {
    "res.partner": ["id", "name", "vat", "email", "phone", "street", "city", "zip", "ref",
                    "is_company", "customer_rank", "credit_limit", "credit"],
    "res.partner.bank": ["id", "partner_id", "acc_number", "bank_id"],
    "res.bank": ["id", "name"],
    "res.currency": ["id", "name"],
    "delivery.carrier": ["id", "name"],
    "sale.order": ["id", "name", "partner_id", "date_order", "commitment_date", "state",
                   "amount_untaxed", "amount_total", "currency_id"],
    "account.move": ["id", "name", "move_type", "state", "partner_id", "invoice_origin",
                     "invoice_date", "invoice_date_due", "amount_total", "amount_residual",
                     "payment_state", "currency_id"],
    "stock.picking": ["id", "name", "partner_id", "origin", "sale_id", "picking_type_code",
                      "state", "scheduled_date", "date_deadline", "date_done", "carrier_id",
                      "carrier_tracking_ref"],
}


@pytest.fixture(scope="module")
def data() -> DemoData:
    return generate(customers=CUSTOMERS)


def cents(amount: float) -> int:
    return round(amount * 100)


def expected_case_safe_suffix(id15: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    suffix = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        value = 0
        for position, char in enumerate(chunk):
            if char.isupper() and char.isascii():
                value += 2**position
        suffix += alphabet[value]
    return suffix


def partita_iva_is_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(digits):
        value = int(char)
        if index % 2 == 1:  # 2nd, 4th, ... digit
            value = value * 2 - 9 if value * 2 > 9 else value * 2
        total += value
    return total % 10 == 0  # the check digit is part of the sum


def iban_is_valid(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def by_id(records: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {record["id"]: record for record in records}


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_data(data: DemoData) -> None:
    again = generate(customers=CUSTOMERS)
    assert again.crm == data.crm
    assert again.erp == data.erp


def test_other_seed_gives_other_data(data: DemoData) -> None:
    other = generate(customers=CUSTOMERS, seed=7)
    assert other.crm["Account"][0]["Id"] != data.crm["Account"][0]["Id"]
    assert other.crm["Account"][0]["Name"] != data.crm["Account"][0]["Name"]
    assert other.erp["sale.order"] != data.erp["sale.order"]


def test_zero_customers_gives_empty_tables() -> None:
    empty = generate(customers=0)
    assert empty.crm == {"Account": [], "Contact": [], "Opportunity": []}
    assert empty.erp["res.partner"] == []
    assert empty.erp["account.move"] == []
    assert empty.personal_values() == []


def test_negative_customers_rejected() -> None:
    with pytest.raises(ValueError, match=r"customers must be >= 0, got -1"):
        generate(customers=-1)


# --- shape and counts ----------------------------------------------------------------------


def test_crm_fields_match_schema(data: DemoData) -> None:
    for sobject, records in data.crm.items():
        for record in records:
            assert list(record) == list(FIELD_TYPES[sobject]), sobject


def test_erp_fields_match_contract(data: DemoData) -> None:
    assert sorted(data.erp) == sorted(ERP_FIELDS)
    for model, records in data.erp.items():
        for record in records:
            assert list(record) == ERP_FIELDS[model], model


def test_counts_per_customer(data: DemoData) -> None:
    accounts = data.crm["Account"]
    assert len(accounts) == CUSTOMERS
    assert len(data.erp["res.partner"]) == CUSTOMERS
    assert len(data.erp["res.partner.bank"]) == CUSTOMERS

    contacts = Counter(contact["AccountId"] for contact in data.crm["Contact"])
    opportunities = Counter(item["AccountId"] for item in data.crm["Opportunity"])
    for account in accounts:
        assert 1 <= contacts[account["Id"]] <= 4
        assert 0 <= opportunities[account["Id"]] <= 5
    assert len(contacts) == CUSTOMERS


def test_order_counts_average_about_eight(data: DemoData) -> None:
    orders = Counter(order["partner_id"] for order in data.erp["sale.order"])
    assert max(orders.values()) <= 15
    mean = len(data.erp["sale.order"]) / CUSTOMERS
    assert 7.0 <= mean <= 9.0


def test_invoices_about_one_per_confirmed_order(data: DemoData) -> None:
    confirmed = {order["name"] for order in data.erp["sale.order"] if order["state"] == "sale"}
    invoices = [move for move in data.erp["account.move"] if move["move_type"] == "out_invoice"]
    refunds = [move for move in data.erp["account.move"] if move["move_type"] == "out_refund"]
    origins = Counter(move["invoice_origin"] for move in invoices)
    assert set(origins) <= confirmed
    assert max(origins.values()) == 1
    assert 0.95 <= len(invoices) / len(confirmed) <= 1.0
    assert 0 < len(refunds) < 0.08 * len(invoices)
    assert {move["state"] for move in data.erp["account.move"]} == {"posted"}


def test_pickings_one_or_two_per_confirmed_order(data: DemoData) -> None:
    orders = by_id(data.erp["sale.order"])
    per_order = Counter(picking["sale_id"] for picking in data.erp["stock.picking"])
    confirmed = [order["id"] for order in data.erp["sale.order"] if order["state"] == "sale"]
    assert sorted(per_order) == sorted(confirmed)
    assert set(per_order.values()) == {1, 2}
    for picking in data.erp["stock.picking"]:
        order = orders[picking["sale_id"]]
        assert picking["origin"] == order["name"]
        assert picking["partner_id"] == order["partner_id"]
        assert picking["date_deadline"] == order["commitment_date"]
        assert (picking["date_done"] is None) == (picking["state"] != "done")
        assert (picking["carrier_tracking_ref"] is None) == (picking["state"] != "done")


def test_names_are_unique(data: DemoData) -> None:
    for model in ("sale.order", "account.move", "stock.picking", "res.partner"):
        names = [record["name"] for record in data.erp[model]]
        assert len(names) == len(set(names)), model
    account_names = [account["Name"] for account in data.crm["Account"]]
    assert len(account_names) == len(set(account_names))


def test_name_formats(data: DemoData) -> None:
    for order in data.erp["sale.order"]:
        assert re.fullmatch(r"S\d{5}", order["name"])
    for move in data.erp["account.move"]:
        assert re.fullmatch(r"R?INV/20\d\d/\d{5}", move["name"])
    for picking in data.erp["stock.picking"]:
        assert re.fullmatch(r"WH/OUT/\d{5}", picking["name"])
    for partner in data.erp["res.partner"]:
        assert re.fullmatch(r"C\d{6}", partner["ref"])


def test_ids_differ_from_list_positions(data: DemoData) -> None:
    assert data.erp["res.partner"][0]["id"] == 1001
    for model in ("res.partner", "res.partner.bank", "sale.order", "account.move",
                  "stock.picking"):
        for index, record in enumerate(data.erp[model]):
            assert record["id"] not in (index, index + 1), model


def test_dates_never_after_reference_day(data: DemoData) -> None:
    last = date(2026, 11, 30).isoformat()
    for order in data.erp["sale.order"]:
        assert order["date_order"][:10] < last
    for move in data.erp["account.move"]:
        assert move["invoice_date"] <= last
    for picking in data.erp["stock.picking"]:
        assert picking["date_done"] is None or picking["date_done"][:10] <= last


# --- check digits and formats --------------------------------------------------------------


def test_salesforce_ids_have_valid_suffix(data: DemoData) -> None:
    prefixes = {"Account": "001", "Contact": "003", "Opportunity": "006"}
    all_ids: list[str] = []
    for sobject, prefix in prefixes.items():
        for record in data.crm[sobject]:
            record_id = record["Id"]
            assert re.fullmatch(prefix + r"[0-9A-Za-z]{12}[A-Z0-5]{3}", record_id)
            assert record_id[15:] == expected_case_safe_suffix(record_id[:15])
            all_ids.append(record_id)
    assert len({record_id.lower() for record_id in all_ids}) == len(all_ids)


def test_owner_ids_from_twelve_users(data: DemoData) -> None:
    owners = {account["OwnerId"] for account in data.crm["Account"]}
    assert len(owners) == 12
    for owner in owners:
        assert owner.startswith("005")
        assert owner[15:] == expected_case_safe_suffix(owner[:15])


def test_vat_numbers_have_valid_check_digit(data: DemoData) -> None:
    for account in data.crm["Account"]:
        vat = account["VAT_Number__c"]
        assert re.fullmatch(r"IT\d{11}", vat)
        assert partita_iva_is_valid(vat[2:]), "invalid Partita IVA check digit"


def test_partita_iva_reference_number() -> None:
    # 12345678903 satisfies the Partita IVA rule because its weighted digit sum is 50.
    assert partita_iva_is_valid("12345678903")
    assert not partita_iva_is_valid("12345678901")


def test_ibans_pass_mod97(data: DemoData) -> None:
    for bank_account in data.erp["res.partner.bank"]:
        iban = bank_account["acc_number"]
        assert re.fullmatch(r"IT\d{2}[A-Z]\d{10}\d{12}", iban)
        assert iban_is_valid(iban), "invalid IBAN check digits"
        assert iban[4] == italian_cin(iban[5:10], iban[10:15], iban[15:])


def test_cin_matches_published_example() -> None:
    # IT60 X054 2811 1010 0000 0123 456 is the Italian example of the ECBS IBAN country table.
    assert italian_cin("05428", "11101", "000000123456") == "X"
    assert iban_is_valid("IT60X0542811101000000123456")


def test_account_contact_formats(data: DemoData) -> None:
    for account in data.crm["Account"]:
        assert re.fullmatch(r"[a-z]+@pec\.[a-z0-9]+\.it", account["PEC_Email__c"])
        assert re.fullmatch(r"\+39 0\d{1,3} \d{6,8}", account["Phone"])
        assert REGIONS[account["BillingState"]] == account["Region__c"]
        assert account["BillingCountry"] == "Italia"
    for contact in data.crm["Contact"]:
        assert re.fullmatch(r"[a-z]+\.[a-z]+@[a-z0-9]+\.it", contact["Email"])
        assert re.fullmatch(r"\+39 3\d{2} \d{7}", contact["Phone"])


def test_opportunity_probability_matches_stage(data: DemoData) -> None:
    for opportunity in data.crm["Opportunity"]:
        assert opportunity["Probability"] == STAGE_PROBABILITY[opportunity["StageName"]]
        closed = opportunity["StageName"].startswith("Closed")
        assert (opportunity["CloseDate"] < "2026-11-30") == closed


# --- cross-links and money -----------------------------------------------------------------


def test_account_links_to_one_partner(data: DemoData) -> None:
    partners = by_id(data.erp["res.partner"])
    linked = Counter(account["ERP_Customer_Number__c"] for account in data.crm["Account"])
    assert max(linked.values()) == 1
    for account in data.crm["Account"]:
        partner = partners[int(account["ERP_Customer_Number__c"])]
        assert partner["name"] == account["Name"]
        assert partner["vat"] == account["VAT_Number__c"]
        assert partner["email"] != account["PEC_Email__c"]


def test_each_partner_has_one_bank_account(data: DemoData) -> None:
    banks = by_id(data.erp["res.bank"])
    holders = Counter(account["partner_id"] for account in data.erp["res.partner.bank"])
    assert sorted(holders) == sorted(by_id(data.erp["res.partner"]))
    assert set(holders.values()) == {1}
    for bank_account in data.erp["res.partner.bank"]:
        assert bank_account["bank_id"] in banks


def test_many2one_targets_exist(data: DemoData) -> None:
    partners = by_id(data.erp["res.partner"])
    carriers = by_id(data.erp["delivery.carrier"])
    for model in ("sale.order", "account.move", "stock.picking"):
        for record in data.erp[model]:
            assert record["partner_id"] in partners, model
    for picking in data.erp["stock.picking"]:
        assert picking["carrier_id"] in carriers
    assert data.erp["res.currency"] == [{"id": 1, "name": "EUR"}]


def test_order_totals_include_vat(data: DemoData) -> None:
    for order in data.erp["sale.order"]:
        untaxed = cents(order["amount_untaxed"])
        assert cents(order["amount_total"]) == untaxed + (untaxed * 22 + 50) // 100


def test_residuals_match_payment_state(data: DemoData) -> None:
    for move in data.erp["account.move"]:
        total = cents(move["amount_total"])
        residual = cents(move["amount_residual"])
        state = move["payment_state"]
        if state in ("paid", "in_payment"):
            assert residual == 0
        elif state == "partial":
            assert 0 < residual < total
        else:
            assert state == "not_paid"
            assert residual == total


def test_partner_credit_is_sum_of_residuals(data: DemoData) -> None:
    receivable: Counter[int] = Counter()
    for move in data.erp["account.move"]:
        if move["move_type"] == "out_invoice":
            receivable[move["partner_id"]] += cents(move["amount_residual"])
    for partner in data.erp["res.partner"]:
        assert cents(partner["credit"]) == receivable[partner["id"]]
    assert any(partner["credit"] > 0 for partner in data.erp["res.partner"])


# --- personal values -----------------------------------------------------------------------


def test_personal_values_cover_personal_fields(data: DemoData) -> None:
    values = set(data.personal_values())
    account = data.crm["Account"][0]
    contact = data.crm["Contact"][0]
    expected = [
        account["Name"], account["VAT_Number__c"], account["PEC_Email__c"], account["Phone"],
        account["BillingStreet"], f"{contact['FirstName']} {contact['LastName']}",
        contact["Email"], contact["Phone"], data.erp["res.partner"][0]["email"],
        data.erp["res.partner.bank"][0]["acc_number"],
    ]
    for value in expected:
        assert value in values


def test_personal_values_skip_short_and_non_personal(data: DemoData) -> None:
    values = data.personal_values()
    assert values == sorted(set(values))
    assert min(len(value) for value in values) >= 6
    assert "Milano" not in values
    assert "Italia" not in values
