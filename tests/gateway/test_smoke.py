"""A first end-to-end check of the harness itself."""

from __future__ import annotations

from conftest import Harness


async def test_customer_lookup_returns_name(harness: Harness) -> None:
    account = harness.data.crm["Account"][0]
    response = await harness.query("query($id: ID!) { customer(id: $id) { id name } }",
                                   variables={"id": account["Id"]})
    assert response.status_code == 200
    assert response.json() == {"data": {"customer": {"id": account["Id"],
                                                     "name": account["Name"]}}}
