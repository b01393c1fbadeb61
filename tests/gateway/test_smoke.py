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


async def test_paging_visits_every_customer_once(harness: Harness) -> None:
    query = ("query($after: String) { customers(first: 70, after: $after) { "
             "edges { node { id } } pageInfo { hasNextPage endCursor } } }")
    seen: list[str] = []
    after = None
    for _ in range(10):
        response = await harness.query(query, variables={"after": after})
        page = response.json()["data"]["customers"]
        seen.extend(edge["node"]["id"] for edge in page["edges"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]

    assert seen == sorted(a["Id"] for a in harness.data.crm["Account"])
