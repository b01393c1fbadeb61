"""Row rules (``p2`` rows): the records a role may read, and the upstream query that limits them.

The shipped policy limits ``sales-rep`` to the customers of the region in its
``region`` claim or owned by its subject (``OwnerId`` equal to the token's
``sub``). The two rules are alternatives, so the gateway sends them as one
``(A OR B)`` in the SOQL ``WHERE`` clause, and as ``|`` terms in an Odoo
domain for a rule on an ERP type. The tests read the condition twice: as the
demo servers logged it on arrival (``RequestLogEntry.filter``), and from the
SOQL and JSON-RPC bodies that leave the gateway, caught by wrapping its
upstream transports.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from conftest import Harness, field_errors, start_harness, write_policy_dir

from gateway.catalog import load_catalog
from gateway.demo.data import DemoData
from gateway.policy import PolicyEngine, default_policy_dir
from gateway.sources import FetchRequest, Row, Source

ID_LIST = "{ customers(first: 500) { edges { node { id } } } }"


class CapturingTransport(httpx.AsyncBaseTransport):
    """Forwards every request to the demo system and keeps a copy of it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    def soql(self, entity: str) -> list[str]:
        """Return the SOQL text of every query on ``entity``, in the order sent."""
        texts = [request.url.params.get("q", "") for request in self.requests
                 if request.url.path.endswith("/query")]
        return [text for text in texts if f" FROM {entity}" in text]

    def domains(self, model: str) -> list[list[Any]]:
        """Return the domain of every JSON-RPC ``search_read`` on ``model``."""
        found = []
        for request in self.requests:
            body = json.loads(request.content or b"{}")
            args = body.get("params", {}).get("args", [])
            if len(args) >= 6 and args[3] == model and args[4] == "search_read":
                found.append(args[5][0])
        return found


@dataclass
class Capture:
    harness: Harness
    crm: CapturingTransport
    erp: CapturingTransport


@asynccontextmanager
async def capturing(data: DemoData, tmp_path: Path,
                    policy_dir: Path | None = None) -> AsyncIterator[Capture]:
    """Run a gateway as ``start_harness`` does, keeping every request it sends upstream."""
    transports: dict[str, CapturingTransport] = {}

    def wrap(name: str) -> Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]:
        def make(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
            transports[name] = CapturingTransport(inner)
            return transports[name]
        return make

    async with start_harness(data, tmp_path / "data", wrap_crm=wrap("crm"),
                             wrap_erp=wrap("erp"), policy_dir=policy_dir) as harness:
        yield Capture(harness, transports["crm"], transports["erp"])


@dataclass(frozen=True)
class Territory:
    """A region and an owner whose accounts partly lie outside that region."""

    region: str
    owner: str
    in_region: list[str]
    owned: list[str]

    @property
    def visible(self) -> list[str]:
        return sorted(set(self.in_region) | set(self.owned))


def territory(data: DemoData) -> Territory:
    accounts = sorted(data.crm["Account"], key=lambda account: str(account["Id"]))
    region = str(accounts[0]["Region__c"])
    outside = Counter(str(a["OwnerId"]) for a in accounts if a["Region__c"] != region)
    owner = outside.most_common(1)[0][0]
    in_region = [str(a["Id"]) for a in accounts if a["Region__c"] == region]
    owned = [str(a["Id"]) for a in accounts if a["OwnerId"] == owner]
    return Territory(region, owner, in_region, owned)


def _shipped_rules() -> str:
    return (default_policy_dir() / "policy.csv").read_text(encoding="utf-8")


def rep_token(harness: Harness, user: str, **claims: Any) -> str:
    return harness.token_with("sales-rep", user=user, purpose="sales", **claims)


def ids_of(response: httpx.Response) -> list[str]:
    body = response.json()
    assert field_errors(body) == []
    return [edge["node"]["id"] for edge in body["data"]["customers"]["edges"]]


def test_territory_needs_both_rules(demo_data: DemoData) -> None:
    # Each rule adds accounts the other does not, so a lost alternative shows.
    area = territory(demo_data)
    assert set(area.owned) - set(area.in_region)
    assert set(area.in_region) - set(area.owned)
    assert len(area.visible) < len(demo_data.crm["Account"])


def test_engine_row_rules(tmp_path: Path) -> None:
    policy_dir = write_policy_dir(tmp_path, _shipped_rules() + "\ng, junior-rep, sales-rep\n")
    engine = PolicyEngine.from_directory(load_catalog(), policy_dir)
    rep = engine.view(["sales-rep"], "sales").rows_of("Customer")
    junior = engine.view(["junior-rep"], "sales").rows_of("Customer")
    assert rep is not None
    assert [(rule.field, rule.claim) for rule in rep] == [("region", "region"),
                                                           ("ownerId", "user")]
    assert junior == rep
    assert engine.view(["sales-rep"], "sales").rows_of("Order") is None
    assert engine.view(["sales", "sales-rep"], "sales").rows_of("Customer") is None
    assert engine.view(["sales"], "sales").rows_of("Customer") is None


# --- Salesforce: the SOQL WHERE clause -----------------------------------------------------

async def test_region_or_owned(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    async with capturing(demo_data, tmp_path) as run:
        token = rep_token(run.harness, area.owner, region=area.region)
        response = await run.harness.query(ID_LIST, token=token)
        log = run.harness.crm_requests()

    assert ids_of(response) == area.visible
    assert [(entry.entity, entry.keys) for entry in log] == [("Account", 0)]
    assert log[0].filter == f"(Region__c = '{area.region}' OR OwnerId = '{area.owner}')"
    [soql] = run.crm.soql("Account")
    assert f"WHERE (Region__c = '{area.region}' OR OwnerId = '{area.owner}')" in soql


async def test_owned_without_region(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    async with capturing(demo_data, tmp_path) as run:
        response = await run.harness.query(ID_LIST, token=rep_token(run.harness, area.owner))

    assert ids_of(response) == sorted(area.owned)
    [soql] = run.crm.soql("Account")
    assert f"WHERE (OwnerId = '{area.owner}')" in soql
    assert "Region__c =" not in soql


# A well-formed Salesforce user id that owns no demo account.
NO_OWNER = "005000000000000AAA"


async def test_owner_of_nothing(demo_data: DemoData, tmp_path: Path) -> None:
    # The subject claim is always present, so its rule is still sent and matches nothing.
    assert NO_OWNER not in {a["OwnerId"] for a in demo_data.crm["Account"]}
    async with capturing(demo_data, tmp_path) as run:
        response = await run.harness.query(ID_LIST, token=rep_token(run.harness, NO_OWNER))

    assert ids_of(response) == []
    [soql] = run.crm.soql("Account")
    assert f"WHERE (OwnerId = '{NO_OWNER}')" in soql


async def test_subject_not_an_id(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    async with capturing(demo_data, tmp_path) as run:
        token = rep_token(run.harness, "u-not-a-crm-user", region=area.region)
        response = await run.harness.query(ID_LIST, token=token)

    assert ids_of(response) == sorted(area.in_region)


# Row rules on claims that a token may lack entirely.
CLAIM_ONLY_RULES = """\
g, district-rep, sales
p2, district-rep, Customer, region, region
p2, district-rep, Customer, industry, team
"""
CLAIM_ONLY_PURPOSES = """\
[purposes]
sales = ["sales", "support"]
district-rep = ["sales"]
"""


async def test_no_claim_sends_nothing(demo_data: DemoData, tmp_path: Path) -> None:
    policy_dir = write_policy_dir(tmp_path / "policy", _shipped_rules() + CLAIM_ONLY_RULES,
                                  CLAIM_ONLY_PURPOSES)
    async with capturing(demo_data, tmp_path, policy_dir) as run:
        token = run.harness.token_with("district-rep", purpose="sales")
        response = await run.harness.query(
            "{ customers(first: 500) { edges { node { id name orders { number } } } } }",
            token=token)
        log = run.harness.crm_requests() + run.harness.erp_requests()

    assert response.json() == {"data": {"customers": {"edges": []}}}
    assert log == []
    assert run.crm.soql("Account") == []


async def test_claim_rules_are_alternatives(demo_data: DemoData, tmp_path: Path) -> None:
    policy_dir = write_policy_dir(tmp_path / "policy", _shipped_rules() + CLAIM_ONLY_RULES,
                                  CLAIM_ONLY_PURPOSES)
    accounts = demo_data.crm["Account"]
    region, industry = str(accounts[0]["Region__c"]), str(accounts[1]["Industry"])
    expected = sorted(str(a["Id"]) for a in accounts
                      if a["Region__c"] == region or a["Industry"] == industry)
    async with capturing(demo_data, tmp_path, policy_dir) as run:
        token = run.harness.token_with("district-rep", purpose="sales", region=region,
                                       team=industry)
        response = await run.harness.query(ID_LIST, token=token)

    assert ids_of(response) == expected
    [soql] = run.crm.soql("Account")
    assert f"(Region__c = '{region}' OR Industry = '{industry}')" in soql


async def test_lookup_outside_rules(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    outside = sorted(str(a["Id"]) for a in demo_data.crm["Account"]
                     if str(a["Id"]) not in area.visible)[0]
    query = "query($id: ID!) { customer(id: $id) { id name } }"
    async with capturing(demo_data, tmp_path) as run:
        token = rep_token(run.harness, area.owner, region=area.region)
        inside_body = (await run.harness.query(query, variables={"id": area.visible[0]},
                                               token=token)).json()
        outside_body = (await run.harness.query(query, variables={"id": outside},
                                                token=token)).json()

    assert inside_body["data"]["customer"]["id"] == area.visible[0]
    assert outside_body == {"data": {"customer": None}}
    for soql in run.crm.soql("Account"):
        assert f"(Region__c = '{area.region}' OR OwnerId = '{area.owner}')" in soql


async def test_nested_customer_filtered(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    query = """{ customers(first: 500) { edges { node {
                 id orders(first: 2) { number customer { id region ownerId } } } } } }"""
    async with capturing(demo_data, tmp_path) as run:
        token = rep_token(run.harness, area.owner, region=area.region)
        body = (await run.harness.query(query, token=token)).json()

    nested = [order["customer"] for edge in body["data"]["customers"]["edges"]
              for order in edge["node"]["orders"]]
    assert field_errors(body) == []
    assert nested
    assert {customer["id"] for customer in nested} <= set(area.visible)
    assert all(c["region"] == area.region or c["ownerId"] == area.owner for c in nested)
    soql = run.crm.soql("Account")
    assert len(soql) == 2
    assert "Id IN (" not in soql[0]
    assert "ERP_Customer_Number__c IN (" in soql[1]
    for text in soql:
        assert f"(Region__c = '{area.region}' OR OwnerId = '{area.owner}')" in text


async def test_pages_follow_rules(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    query = """query($after: String) { customers(first: 7, after: $after) {
                 edges { node { id } } pageInfo { hasNextPage endCursor } } }"""
    seen: list[str] = []
    async with capturing(demo_data, tmp_path) as run:
        token = rep_token(run.harness, area.owner, region=area.region)
        after = None
        for _ in range(100):
            body = (await run.harness.query(query, variables={"after": after},
                                            token=token)).json()
            page = body["data"]["customers"]
            seen.extend(edge["node"]["id"] for edge in page["edges"])
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
    assert seen == area.visible


async def test_unrestricted_role_lifts_rules(demo_data: DemoData, tmp_path: Path) -> None:
    # sales reads every customer; a user holding sales and sales-rep gets the wider view.
    area = territory(demo_data)
    async with capturing(demo_data, tmp_path) as run:
        token = run.harness.token_with("sales", "sales-rep", user=area.owner, purpose="sales",
                                       region=area.region)
        response = await run.harness.query(ID_LIST, token=token)

    assert ids_of(response) == sorted(str(a["Id"]) for a in demo_data.crm["Account"])
    [soql] = run.crm.soql("Account")
    assert " OR " not in soql


# Under purpose "sales", "viewer" reads ids of every customer and nothing personal.
VIEWER_RULES = "\np, viewer, non_personal, *, allow, -\n"


async def test_other_role_keeps_rows_personal(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    policy_dir = write_policy_dir(tmp_path / "policy", _shipped_rules() + VIEWER_RULES)
    async with capturing(demo_data, tmp_path, policy_dir) as run:
        token = run.harness.token_with("sales-rep", "viewer", user=area.owner,
                                       purpose="sales", region=area.region)
        body = (await run.harness.query(
            "{ customers(first: 500) { edges { node { id name } } } }", token=token)).json()

    nodes = [edge["node"] for edge in body["data"]["customers"]["edges"]]
    named_outside = [node["id"] for node in nodes
                     if node["id"] not in area.visible and node["name"] is not None]
    assert named_outside == []


# --- dialects without row filters: rows dropped after reading -------------------------------

class NoRowFilters:
    """A source that reports it cannot express row rules, around the real one."""

    supports_row_filters = False

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.name = inner.name
        self.requests: list[FetchRequest] = []

    async def fetch(self, request: FetchRequest) -> list[Row]:
        self.requests.append(request)
        return await self.inner.fetch(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _without_row_filters(harness: Harness) -> NoRowFilters:
    # The fetcher reads from the gateway's own source mapping, so a swap there applies.
    sources: dict[str, Source] = harness.gateway_app.state.gateway.sources
    wrapper = NoRowFilters(sources["crm"])
    sources["crm"] = wrapper
    return wrapper


async def test_filter_after_fetch(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    async with capturing(demo_data, tmp_path) as run:
        token = rep_token(run.harness, area.owner, region=area.region)
        pushed = ids_of(await run.harness.query(ID_LIST, token=token))
        wrapper = _without_row_filters(run.harness)
        filtered = ids_of(await run.harness.query(ID_LIST, token=token))

    assert pushed == area.visible
    assert filtered == pushed
    assert [request.any_of for request in wrapper.requests] == [()]
    last_soql = run.crm.soql("Account")[-1]
    assert " OR " not in last_soql
    assert "Region__c" in last_soql
    assert "OwnerId" in last_soql


async def test_filter_after_fetch_pages(demo_data: DemoData, tmp_path: Path) -> None:
    area = territory(demo_data)
    query = "{ customers(first: 10) { edges { node { id } } pageInfo { hasNextPage } } }"
    async with capturing(demo_data, tmp_path) as run:
        token = rep_token(run.harness, area.owner, region=area.region)
        _without_row_filters(run.harness)
        body = (await run.harness.query(query, token=token)).json()

    page = body["data"]["customers"]
    assert [edge["node"]["id"] for edge in page["edges"]] == area.visible[:10]
    assert page["pageInfo"]["hasNextPage"] is True


# --- Odoo: the domain of an ERP type --------------------------------------------------------

ORDER_RULES = """
g, order-clerk, finance
p2, order-clerk, Order, status, order_state
p2, order-clerk, Order, number, order_number
"""
ORDER_PURPOSES = """\
[purposes]
finance = ["billing", "credit-control"]
order-clerk = ["billing"]
"""
ORDER_LIST = "{ customers(first: 500) { edges { node { id orders { number status } } } } }"


def _orders_seen(response: httpx.Response) -> list[tuple[str, str]]:
    body = response.json()
    assert field_errors(body) == []
    return sorted((order["number"], order["status"]) for edge in body["data"]["customers"]["edges"]
                  for order in edge["node"]["orders"])


def _order_sample(data: DemoData) -> tuple[str, str]:
    """Return a common order state and the number of an order in another state."""
    states = Counter(str(order["state"]) for order in data.erp["sale.order"])
    state = states.most_common(1)[0][0]
    other = next(str(o["name"]) for o in data.erp["sale.order"] if o["state"] != state)
    return state, other


async def test_odoo_domain_alternatives(demo_data: DemoData, tmp_path: Path) -> None:
    state, number = _order_sample(demo_data)
    expected = sorted((str(o["name"]), str(o["state"])) for o in demo_data.erp["sale.order"]
                      if o["state"] == state or o["name"] == number)
    policy_dir = write_policy_dir(tmp_path / "policy", _shipped_rules() + ORDER_RULES,
                                  ORDER_PURPOSES)
    async with capturing(demo_data, tmp_path, policy_dir) as run:
        token = run.harness.token_with("order-clerk", purpose="billing", order_state=state,
                                       order_number=number)
        response = await run.harness.query(ORDER_LIST, token=token)
        logged = [e.filter for e in run.harness.erp_requests() if e.entity == "sale.order"]

    assert _orders_seen(response) == expected
    [domain] = run.erp.domains("sale.order")
    assert domain[0][:2] == ["partner_id", "in"]
    assert domain[1:] == ["|", ["state", "=", state], ["name", "=", number]]
    assert len(logged) == 1
    assert json.loads(str(logged[0]))[1:] == ["|", ["state", "=", state], ["name", "=", number]]


async def test_odoo_one_claim(demo_data: DemoData, tmp_path: Path) -> None:
    state, _ = _order_sample(demo_data)
    expected = sorted((str(o["name"]), str(o["state"])) for o in demo_data.erp["sale.order"]
                      if o["state"] == state)
    policy_dir = write_policy_dir(tmp_path / "policy", _shipped_rules() + ORDER_RULES,
                                  ORDER_PURPOSES)
    async with capturing(demo_data, tmp_path, policy_dir) as run:
        token = run.harness.token_with("order-clerk", purpose="billing", order_state=state)
        response = await run.harness.query(ORDER_LIST, token=token)

    assert _orders_seen(response) == expected
    [domain] = run.erp.domains("sale.order")
    assert domain[1:] == [["state", "=", state]]
    assert "|" not in domain
