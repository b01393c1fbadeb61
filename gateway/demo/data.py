"""Deterministic demo data: Italian B2B customers in a Salesforce CRM and an Odoo ERP.

``generate`` builds both sides of the same customer base so the gateway can
join them: each Salesforce ``Account`` stores the Odoo ``res.partner`` id in
``ERP_Customer_Number__c``, and both records carry the same name and VAT
number. All randomness comes from one ``random.Random`` and one seeded Faker
instance, and dates are relative to ``REFERENCE_DATE``, so a given
``(customers, seed)`` pair always yields the same data.

The identifiers are valid by their real rules: Salesforce ids carry the
case-safe suffix, every Partita IVA has its check digit, and every IBAN has
a correct CIN and ISO 7064 mod-97 check digits.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, NamedTuple

from faker import Faker

from gateway.demo.identifiers import (
    SALESFORCE_ID_SPACE,
    italian_iban,
    partita_iva_check_digit,
    salesforce_id,
)

REFERENCE_DATE = date(2026, 11, 30)
"""The demo's "today". The generator never reads the clock."""
_REFERENCE_END = datetime.combine(REFERENCE_DATE, time(18, 0))

Record = dict[str, Any]



class _Province(NamedTuple):
    code: str
    city: str
    postal_code: str
    area_code: str
    region: str  # ISTAT macro-region (NUTS 1)
    weight: int  # relative share of the demo's customers


_PROVINCES = tuple(_Province(*row) for row in (
    ("MI", "Milano", "20121", "02", "Nord-Ovest", 14),
    ("TO", "Torino", "10121", "011", "Nord-Ovest", 6),
    ("GE", "Genova", "16121", "010", "Nord-Ovest", 3),
    ("BG", "Bergamo", "24121", "035", "Nord-Ovest", 4),
    ("BS", "Brescia", "25121", "030", "Nord-Ovest", 4),
    ("VA", "Varese", "21100", "0332", "Nord-Ovest", 2),
    ("MB", "Monza", "20900", "039", "Nord-Ovest", 3),
    ("CN", "Cuneo", "12100", "0171", "Nord-Ovest", 2),
    ("VE", "Venezia", "30121", "041", "Nord-Est", 3),
    ("VR", "Verona", "37121", "045", "Nord-Est", 3),
    ("PD", "Padova", "35121", "049", "Nord-Est", 3),
    ("VI", "Vicenza", "36100", "0444", "Nord-Est", 3),
    ("TV", "Treviso", "31100", "0422", "Nord-Est", 3),
    ("BO", "Bologna", "40121", "051", "Nord-Est", 4),
    ("MO", "Modena", "41121", "059", "Nord-Est", 3),
    ("TN", "Trento", "38121", "0461", "Nord-Est", 1),
    ("UD", "Udine", "33100", "0432", "Nord-Est", 1),
    ("RM", "Roma", "00118", "06", "Centro", 9),
    ("FI", "Firenze", "50121", "055", "Centro", 4),
    ("PI", "Pisa", "56121", "050", "Centro", 1),
    ("AN", "Ancona", "60121", "071", "Centro", 2),
    ("PG", "Perugia", "06121", "075", "Centro", 1),
    ("NA", "Napoli", "80121", "081", "Sud", 5),
    ("BA", "Bari", "70121", "080", "Sud", 3),
    ("SA", "Salerno", "84121", "089", "Sud", 2),
    ("PE", "Pescara", "65121", "085", "Sud", 1),
    ("LE", "Lecce", "73100", "0832", "Sud", 1),
    ("CS", "Cosenza", "87100", "0984", "Sud", 1),
    ("PA", "Palermo", "90121", "091", "Isole", 3),
    ("CT", "Catania", "95121", "095", "Isole", 2),
    ("CA", "Cagliari", "09121", "070", "Isole", 2),
    ("SS", "Sassari", "07100", "079", "Isole", 1),
))
_PROVINCE_WEIGHTS = [province.weight for province in _PROVINCES]

_INDUSTRIES = ("Manufacturing", "Machinery", "Retail", "Food & Beverage", "Construction",
               "Transportation", "Technology", "Chemicals", "Apparel", "Consulting",
               "Healthcare", "Energy", "Electronics", "Agriculture")
_TITLES = ("Amministratore Delegato", "Direttore Amministrativo", "Responsabile Acquisti",
           "Responsabile Logistica", "Ufficio Contabilità", "Direttore Commerciale",
           "Responsabile Qualità", "Buyer")
# Standard Salesforce opportunity stages with their default probabilities (percent).
_STAGES = (("Prospecting", 10), ("Qualification", 10), ("Needs Analysis", 20),
           ("Proposal/Price Quote", 75), ("Negotiation/Review", 90), ("Closed Won", 100),
           ("Closed Lost", 0))
_OPPORTUNITY_TOPICS = ("Fornitura annuale", "Rinnovo contratto quadro", "Nuova linea prodotto",
                       "Servizio di manutenzione", "Progetto pilota", "Ampliamento magazzino")
# (name, ABI code) of Italian banks.
_BANKS = (("Intesa Sanpaolo", "03069"), ("UniCredit", "02008"), ("Banco BPM", "05034"),
          ("BPER Banca", "05387"), ("Banca Monte dei Paschi di Siena", "01030"),
          ("Credem", "03032"), ("Banca Sella", "03268"), ("Crédit Agricole Italia", "06230"))
_CARRIERS = ("BRT", "GLS", "SDA", "DHL Express", "Poste Delivery Business")
_TRACKING_DIGITS = (12, 11, 13, 10, 13)  # length of a tracking number, per carrier above
_CREDIT_LIMITS = (5_000.0, 10_000.0, 15_000.0, 25_000.0, 50_000.0, 75_000.0, 100_000.0)
_SALES_USERS = 12

# First ids per model. They differ from list positions so that a lookup that
# confuses an index with an id finds nothing.
PARTNER_FIRST_ID = 1001
_BANK_ACCOUNT_FIRST_ID = 201
_ORDER_FIRST_ID = 3001
_MOVE_FIRST_ID = 5001
_PICKING_FIRST_ID = 7001
EUR_CURRENCY_ID = 1


@dataclass(frozen=True)
class DemoData:
    """Records of the demo CRM and ERP.

    ``crm`` maps a Salesforce sObject name to records keyed by field API name.
    ``erp`` maps an Odoo model name to records keyed by field name, where a
    many2one field contains the target's integer id. Empty values are None.
    """

    crm: dict[str, list[Record]]
    erp: dict[str, list[Record]]

    def personal_values(self) -> list[str]:
        """List every distinct personal string of 6 or more characters, for leak scans.

        The list covers company names, VAT numbers, e-mails, phones, streets,
        IBANs and contact names. Cities and provinces are not personal on their own.
        """
        values: set[str] = set()
        for account in self.crm.get("Account", []):
            values.update(_strings(account, "Name", "VAT_Number__c", "PEC_Email__c", "Phone",
                                   "BillingStreet"))
        for contact in self.crm.get("Contact", []):
            values.update(_strings(contact, "Email", "Phone"))
            if contact.get("FirstName") and contact.get("LastName"):
                values.add(f"{contact['FirstName']} {contact['LastName']}")
        for partner in self.erp.get("res.partner", []):
            values.update(_strings(partner, "name", "vat", "email", "phone", "street"))
        for bank_account in self.erp.get("res.partner.bank", []):
            values.update(_strings(bank_account, "acc_number"))
        return sorted(value for value in values if len(value) >= 6)


def _strings(record: Record, *fields: str) -> list[str]:
    return [record[name] for name in fields if isinstance(record.get(name), str)]


# --- text helpers ------------------------------------------------------------------------


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(char for char in ascii_text.lower() if char.isalnum())


def _format_datetime(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _cents_to_float(cents: int) -> float:
    return round(cents / 100, 2)


# --- generation --------------------------------------------------------------------------


@dataclass
class _Customer:
    """One customer as both systems know it, before it is split into records."""

    partner_id: int
    name: str
    vat: str
    domain: str
    province: _Province
    street: str
    phone: str


class _Generator:
    def __init__(self, customers: int, seed: int) -> None:
        self.customer_count = customers
        self.rng = random.Random(seed)
        self.faker = Faker("it_IT")
        self.faker.seed_instance(seed)
        self.id_offsets: dict[str, int] = {}
        self.id_serials: dict[str, int] = {}
        self.crm: dict[str, list[Record]] = {"Account": [], "Contact": [], "Opportunity": []}
        self.receivable_cents: dict[int, int] = {}

    def next_salesforce_id(self, key_prefix: str) -> str:
        if key_prefix not in self.id_offsets:
            self.id_offsets[key_prefix] = self.rng.randrange(SALESFORCE_ID_SPACE)
            self.id_serials[key_prefix] = 0
        self.id_serials[key_prefix] += 1
        return salesforce_id(key_prefix, self.id_serials[key_prefix], self.id_offsets[key_prefix])

    def landline(self, area_code: str) -> str:
        digits = "".join(self.rng.choice("0123456789") for _ in range(10 - len(area_code)))
        return f"+39 {area_code} {self.rng.choice('23456789')}{digits[1:]}"

    def mobile(self) -> str:
        digits = "".join(self.rng.choice("0123456789") for _ in range(7))
        return f"+39 3{self.rng.choice('234679')}{self.rng.randrange(10)} {digits}"

    def run(self) -> DemoData:
        owners = [self.next_salesforce_id("005") for _ in range(_SALES_USERS)]
        customers = self.make_customers()
        for customer in customers:
            self.add_crm_records(customer, owners)
        erp = self.build_erp(customers)
        return DemoData(crm=self.crm, erp=erp)

    def make_customers(self) -> list[_Customer]:
        names: set[str] = set()
        vats: set[str] = set()
        domains: set[str] = set()
        customers: list[_Customer] = []
        for index in range(self.customer_count):
            name = self.unique(self.faker.company, names)
            vat = self.unique(self.partita_iva, vats)
            domain = _slug(name)
            while domain in domains:
                domain += str(self.rng.randrange(10))
            domains.add(domain)
            province = self.rng.choices(_PROVINCES, weights=_PROVINCE_WEIGHTS)[0]
            street = f"{self.faker.street_name()}, {self.rng.randint(1, 250)}"
            customers.append(_Customer(PARTNER_FIRST_ID + index, name, vat, domain, province,
                                       street, self.landline(province.area_code)))
        return customers

    def unique(self, make: Callable[[], str], seen: set[str]) -> str:
        # Faker repeats company names (one of its formats is a surname plus a legal form),
        # so retry a bounded number of times and then append a number.
        for _ in range(50):
            value = make()
            if value not in seen:
                seen.add(value)
                return value
        value = f"{make()} {len(seen)}"
        seen.add(value)
        return value

    def partita_iva(self) -> str:
        company_number = f"{self.rng.randrange(10**7):07d}"
        office = f"{self.rng.randint(1, 100):03d}"
        first_ten = company_number + office
        return f"IT{first_ten}{partita_iva_check_digit(first_ten)}"

    def add_crm_records(self, customer: _Customer, owners: list[str]) -> None:
        province = customer.province
        account_id = self.next_salesforce_id("001")
        self.crm["Account"].append({
            "Id": account_id,
            "Name": customer.name,
            "VAT_Number__c": customer.vat,
            "PEC_Email__c": f"{self.rng.choice(('amministrazione', 'direzione', 'pec'))}"
                            f"@pec.{customer.domain}.it",
            "Phone": customer.phone,
            "BillingStreet": customer.street,
            "BillingCity": province.city,
            "BillingPostalCode": province.postal_code,
            "BillingState": province.code,
            "BillingCountry": "Italia",
            "Region__c": province.region,
            "OwnerId": self.rng.choice(owners),
            "Industry": self.rng.choice(_INDUSTRIES),
            "ERP_Customer_Number__c": str(customer.partner_id),
        })
        for _ in range(self.rng.randint(1, 4)):
            self.crm["Contact"].append(self.make_contact(account_id, customer.domain))
        for _ in range(self.rng.randint(0, 5)):
            self.crm["Opportunity"].append(self.make_opportunity(account_id))

    def make_contact(self, account_id: str, domain: str) -> Record:
        first_name = self.faker.first_name()
        last_name = self.faker.last_name()
        return {
            "Id": self.next_salesforce_id("003"),
            "AccountId": account_id,
            "FirstName": first_name,
            "LastName": last_name,
            "Email": f"{_slug(first_name)}.{_slug(last_name)}@{domain}.it",
            "Phone": self.mobile(),
            "Title": self.rng.choice(_TITLES),
        }

    def make_opportunity(self, account_id: str) -> Record:
        stage, probability = self.rng.choice(_STAGES)
        if stage.startswith("Closed"):
            close_date = REFERENCE_DATE - timedelta(days=self.rng.randint(1, 540))
        else:
            close_date = REFERENCE_DATE + timedelta(days=self.rng.randint(1, 270))
        amount_cents = self.rng.randint(20, 5_000) * 1_000 + self.rng.randrange(100)
        return {
            "Id": self.next_salesforce_id("006"),
            "AccountId": account_id,
            "Name": f"{self.rng.choice(_OPPORTUNITY_TOPICS)} {close_date.year}",
            "StageName": stage,
            "Amount": _cents_to_float(amount_cents),
            "CloseDate": close_date.isoformat(),
            "Probability": probability,
        }

    def moment_between(self, start: date, end: date) -> datetime:
        """Pick a business-hours datetime on a day in [start, end]."""
        day = start + timedelta(days=self.rng.randint(0, max(0, (end - start).days)))
        return datetime.combine(day, time(self.rng.randint(8, 18), self.rng.randrange(60),
                                          self.rng.randrange(60)))

    # --- ERP -----------------------------------------------------------------------------

    def build_erp(self, customers: list[_Customer]) -> dict[str, list[Record]]:
        partners = [self.make_partner(customer) for customer in customers]
        bank_accounts = [
            self.make_bank_account(_BANK_ACCOUNT_FIRST_ID + index, customer.partner_id)
            for index, customer in enumerate(customers)
        ]
        orders = self.make_orders(customers)
        moves = self.make_moves(orders)
        pickings = self.make_pickings(orders)
        for partner in partners:
            partner["credit"] = _cents_to_float(self.receivable_cents.get(partner["id"], 0))
        return {
            "res.partner": partners,
            "res.partner.bank": bank_accounts,
            "res.bank": [{"id": index, "name": name}
                         for index, (name, _abi) in enumerate(_BANKS, start=1)],
            "res.currency": [{"id": EUR_CURRENCY_ID, "name": "EUR"}],
            "delivery.carrier": [{"id": index, "name": name}
                                 for index, name in enumerate(_CARRIERS, start=1)],
            "sale.order": orders,
            "account.move": moves,
            "stock.picking": pickings,
        }

    def make_partner(self, customer: _Customer) -> Record:
        mailbox = self.rng.choice(("amministrazione", "contabilita", "fatture"))
        return {
            "id": customer.partner_id,
            "name": customer.name,
            "vat": customer.vat,
            "email": f"{mailbox}@{customer.domain}.it",
            "phone": customer.phone,
            "street": customer.street,
            "city": customer.province.city,
            "zip": customer.province.postal_code,
            "ref": f"C{100001 + customer.partner_id - PARTNER_FIRST_ID:06d}",
            "is_company": True,
            "customer_rank": 1,
            "credit_limit": self.rng.choice(_CREDIT_LIMITS),
            "credit": 0.0,
        }

    def make_bank_account(self, record_id: int, partner_id: int) -> Record:
        bank_index = self.rng.randrange(len(_BANKS))
        cab = f"{self.rng.randrange(10**5):05d}"
        account = f"{self.rng.randrange(10**12):012d}"
        return {
            "id": record_id,
            "partner_id": partner_id,
            "acc_number": italian_iban(_BANKS[bank_index][1], cab, account),
            "bank_id": bank_index + 1,
        }

    def make_orders(self, customers: list[_Customer]) -> list[Record]:
        # Odoo numbers orders in creation order, so ids and names follow date_order.
        first_day = REFERENCE_DATE - timedelta(days=540)
        last_day = REFERENCE_DATE - timedelta(days=1)
        placed: list[tuple[datetime, int]] = []
        for customer in customers:
            count = sum(self.rng.random() < 8 / 15 for _ in range(15))
            placed.extend((self.moment_between(first_day, last_day), customer.partner_id)
                          for _ in range(count))
        placed.sort()
        return [
            self.make_order(_ORDER_FIRST_ID + index, f"S{index + 1:05d}", ordered_at, partner_id)
            for index, (ordered_at, partner_id) in enumerate(placed)
        ]

    def make_order(self, order_id: int, name: str, ordered_at: datetime,
                   partner_id: int) -> Record:
        if (REFERENCE_DATE - ordered_at.date()).days > 45:
            state = self.rng.choices(("sale", "cancel", "sent"), weights=(85, 10, 5))[0]
        else:
            state = self.rng.choices(("draft", "sent", "sale"), weights=(25, 25, 50))[0]
        commitment_date = None
        if state != "cancel" and self.rng.random() < 0.8:
            promised = ordered_at + timedelta(days=self.rng.randint(5, 30))
            commitment_date = _format_datetime(promised)
        untaxed = min(max(int(self.rng.lognormvariate(7.8, 1.0) * 100), 10_000), 25_000_000)
        tax = (untaxed * 22 + 50) // 100  # 22% VAT, rounded half up to the cent
        return {
            "id": order_id,
            "name": name,
            "partner_id": partner_id,
            "date_order": _format_datetime(ordered_at),
            "commitment_date": commitment_date,
            "state": state,
            "amount_untaxed": _cents_to_float(untaxed),
            "amount_total": _cents_to_float(untaxed + tax),
            "currency_id": EUR_CURRENCY_ID,
        }

    def make_moves(self, orders: list[Record]) -> list[Record]:
        # (invoice date, order id, move type, order, amount in cents)
        planned: list[tuple[date, int, str, Record, int]] = []
        for order in orders:
            if order["state"] != "sale":
                continue
            ordered_on = date.fromisoformat(order["date_order"][:10])
            if (REFERENCE_DATE - ordered_on).days < 3 and self.rng.random() < 0.5:
                continue  # confirmed in the last days and not invoiced yet
            invoice_date = min(REFERENCE_DATE, ordered_on + timedelta(days=self.rng.randint(0, 7)))
            total = round(order["amount_total"] * 100)
            planned.append((invoice_date, order["id"], "out_invoice", order, total))
            if self.rng.random() < 0.03:
                refund_date = min(REFERENCE_DATE,
                                  invoice_date + timedelta(days=self.rng.randint(5, 40)))
                refund = max(1, total * self.rng.randint(10, 100) // 100)
                planned.append((refund_date, order["id"], "out_refund", order, refund))
        planned.sort(key=lambda move: move[:3])

        sequences: dict[tuple[str, int], int] = {}
        moves: list[Record] = []
        for index, (invoice_date, _order_id, move_type, order, total) in enumerate(planned):
            prefix = "INV" if move_type == "out_invoice" else "RINV"
            sequence = sequences.get((prefix, invoice_date.year), 0) + 1
            sequences[(prefix, invoice_date.year)] = sequence
            name = f"{prefix}/{invoice_date.year}/{sequence:05d}"
            moves.append(self.make_move(_MOVE_FIRST_ID + index, name, move_type, invoice_date,
                                        order, total))
        return moves

    def make_move(self, move_id: int, name: str, move_type: str, invoice_date: date,
                  order: Record, total: int) -> Record:
        due_date = invoice_date + timedelta(days=self.rng.choice((30, 60, 90)))
        if move_type == "out_refund":
            payment_state, residual = "paid", 0  # reconciled against the invoice
        else:
            payment_state, residual = self.payment_status(due_date, total)
            partner_id = order["partner_id"]
            self.receivable_cents[partner_id] = self.receivable_cents.get(partner_id, 0) + residual
        return {
            "id": move_id,
            "name": name,
            "move_type": move_type,
            "state": "posted",
            "partner_id": order["partner_id"],
            "invoice_origin": order["name"],
            "invoice_date": invoice_date.isoformat(),
            "invoice_date_due": due_date.isoformat(),
            "amount_total": _cents_to_float(total),
            "amount_residual": _cents_to_float(residual),
            "payment_state": payment_state,
            "currency_id": EUR_CURRENCY_ID,
        }

    def payment_status(self, due_date: date, total: int) -> tuple[str, int]:
        """Pick a payment state and the residual in cents that matches it."""
        days_overdue = (REFERENCE_DATE - due_date).days
        if days_overdue > 30:
            weights = (85, 0, 5, 10)
        elif days_overdue >= 0:
            weights = (60, 10, 10, 20)
        else:
            weights = (20, 10, 10, 60)
        state = self.rng.choices(("paid", "in_payment", "partial", "not_paid"), weights)[0]
        if state in ("paid", "in_payment"):
            return state, 0
        if state == "partial" and total >= 2:
            return state, min(total - 1, max(1, total * self.rng.randint(10, 90) // 100))
        return "not_paid", total

    def make_pickings(self, orders: list[Record]) -> list[Record]:
        planned: list[tuple[datetime, int, Record]] = []
        for order in orders:
            if order["state"] != "sale":
                continue
            first = datetime.fromisoformat(order["date_order"]) + timedelta(
                days=self.rng.randint(1, 3))
            planned.append((first, order["id"], order))
            if self.rng.random() < 0.15:  # a backorder for what the first delivery missed
                planned.append((first + timedelta(days=self.rng.randint(5, 20)), order["id"],
                                order))
        planned.sort(key=lambda picking: picking[:2])
        return [
            self.make_picking(_PICKING_FIRST_ID + index, f"WH/OUT/{index + 1:05d}", scheduled,
                              order)
            for index, (scheduled, _order_id, order) in enumerate(planned)
        ]

    def make_picking(self, picking_id: int, name: str, scheduled: datetime,
                     order: Record) -> Record:
        state = self.picking_state(scheduled)
        carrier_index = self.rng.randrange(len(_CARRIERS))
        date_done = None
        tracking_ref = None
        if state == "done":
            shipped = scheduled + timedelta(days=self.rng.randint(0, 3),
                                            hours=self.rng.randint(0, 6))
            date_done = _format_datetime(min(shipped, _REFERENCE_END))
            digits = _TRACKING_DIGITS[carrier_index]
            tracking_ref = "".join(self.rng.choice("0123456789") for _ in range(digits))
        return {
            "id": picking_id,
            "name": name,
            "partner_id": order["partner_id"],
            "origin": order["name"],
            "sale_id": order["id"],
            "picking_type_code": "outgoing",
            "state": state,
            "scheduled_date": _format_datetime(scheduled),
            "date_deadline": order["commitment_date"],
            "date_done": date_done,
            "carrier_id": carrier_index + 1,
            "carrier_tracking_ref": tracking_ref,
        }

    def picking_state(self, scheduled: datetime) -> str:
        if scheduled > _REFERENCE_END:
            return self.rng.choice(("assigned", "confirmed"))
        if (_REFERENCE_END - scheduled).days > 7:
            return self.rng.choices(("done", "cancel", "assigned"), weights=(93, 4, 3))[0]
        return self.rng.choices(("done", "assigned", "confirmed"), weights=(50, 30, 20))[0]


def generate(customers: int = 2000, seed: int = 20261204) -> DemoData:
    """Generate the demo CRM and ERP records for ``customers`` companies.

    The result depends only on ``customers`` and ``seed``.
    """
    if customers < 0:
        raise ValueError(f"customers must be >= 0, got {customers}")
    return _Generator(customers, seed).run()
