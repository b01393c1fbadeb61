"""A finished request leaves no reference cycle that holds its records.

Reference counting frees acyclic objects as soon as the request ends. Objects in a
cycle wait for a full collection of the garbage collector, so a busy gateway would
keep the records of many finished requests and walk them again in every collection.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import Harness, start_harness

from gateway.build import Builder
from gateway.demo.data import DemoData
from gateway.fetch import Node

# Relations on two levels: each one gets a step that calls back into the builder.
NESTED_QUERY = """query($n: Int!) { customers(first: $n) { edges { node {
  name
  orders(first: 3) { number shipments { status } }
  invoices { number }
} } } }"""

# Fields that the it role may not read. Each executor raises the FORBIDDEN error
# that the builder put in the tree, and the raise gives the error a traceback.
FORBIDDEN_QUERY = """query($n: Int!) { customers(first: $n) { edges { node {
  name iban creditLimit
  orders(first: 3) { number amountTotal }
} } } }"""

CASES = {
    "nested": (NESTED_QUERY, "sales"),
    "forbidden": (FORBIDDEN_QUERY, "it"),
}


@pytest.fixture(params=["compiled", "graphql-core"])
async def harness(request: pytest.FixtureRequest, demo_data: DemoData,
                  tmp_path: Path) -> AsyncIterator[Harness]:
    """Return a gateway that executes with each of the two executors."""
    async with start_harness(demo_data, tmp_path / "data",
                             overrides={"executor": request.param}) as started:
        yield started


def leftovers_of(kinds: tuple[type, ...]) -> Counter[str]:
    """Collect the garbage and count the objects of ``kinds`` that only a cycle held."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(type(item).__name__ for item in gc.garbage if isinstance(item, kinds))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("case", sorted(CASES))
async def test_request_leaves_no_cycle(harness: Harness, case: str) -> None:
    query, role = CASES[case]
    # The first request fills the gateway's caches, which live on.
    await harness.query(query, role=role, variables={"n": 5})
    gc.collect()

    # Without automatic collections, a cycle stays until leftovers_of finds it.
    gc.disable()
    try:
        response = await harness.query(query, role=role, variables={"n": 10})
        leftovers = leftovers_of((Builder, Node))
    finally:
        gc.enable()

    body = response.json()
    codes = {error["extensions"]["code"] for error in body.get("errors", [])}
    assert response.status_code == 200, body
    assert len(body["data"]["customers"]["edges"]) == 10
    assert codes == ({"FORBIDDEN"} if case == "forbidden" else set())
    assert leftovers == Counter()
