"""A finished request leaves no reference cycle that holds its records.

Reference counting frees acyclic objects as soon as the request ends. Objects in a
cycle wait for a full collection of the garbage collector, so a busy gateway would
keep the records of many finished requests and walk them again in every collection.
"""

from __future__ import annotations

import gc
from collections import Counter

from conftest import Harness

from gateway.build import Builder
from gateway.fetch import Node

# Relations on two levels: each one gets a step that calls back into the builder.
NESTED_QUERY = """query($n: Int!) { customers(first: $n) { edges { node {
  name
  orders(first: 3) { number shipments { status } }
  invoices { number }
} } } }"""


def leftovers_of(kinds: tuple[type, ...]) -> Counter[str]:
    """Collect the garbage and count the objects of ``kinds`` that only a cycle held."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(type(item).__name__ for item in gc.garbage if isinstance(item, kinds))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_nested_query_leaves_no_cycle(harness: Harness) -> None:
    # The first request fills the gateway's caches, which live on.
    await harness.query(NESTED_QUERY, variables={"n": 5})
    gc.collect()

    response = await harness.query(NESTED_QUERY, variables={"n": 10})

    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body
    assert len(body["data"]["customers"]["edges"]) == 10
    assert leftovers_of((Builder, Node)) == Counter()
