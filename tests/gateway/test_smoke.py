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


async def test_cursors_signed_with_and_without_edge_cursors(harness: Harness) -> None:
    """endCursor is the last edge's cursor, whether or not the edges select theirs."""
    with_cursors = await harness.query(
        "{ customers(first: 3) { edges { cursor node { id } } "
        "pageInfo { endCursor hasNextPage } } }")
    without = await harness.query(
        "{ customers(first: 3) { edges { node { id } } pageInfo { endCursor } } }")
    page = with_cursors.json()["data"]["customers"]
    cursors = [edge["cursor"] for edge in page["edges"]]

    assert len(set(cursors)) == 3
    assert page["pageInfo"] == {"endCursor": cursors[-1], "hasNextPage": True}
    assert without.json()["data"]["customers"]["pageInfo"] == {"endCursor": cursors[-1]}
    after = await harness.query(
        "query($after: String) { customers(first: 1, after: $after) { edges { node { id } } } }",
        variables={"after": cursors[0]})
    assert after.json()["data"]["customers"]["edges"] == [{"node": page["edges"][1]["node"]}]


async def test_aliased_fragment_edge_cursors(harness: Harness) -> None:
    """An aliased, repeated or fragment-selected edge cursor is signed like a plain one."""
    plain = (await harness.query(
        "{ customers(first: 3) { edges { cursor } pageInfo { endCursor } } }")).json()
    cursors = [edge["cursor"] for edge in plain["data"]["customers"]["edges"]]
    aliased = (await harness.query(
        "fragment E on CustomerEdge { c: cursor } "
        "{ customers(first: 3) { a: edges { node { id } } b: edges { ...E } "
        "p: pageInfo { e: endCursor } } }")).json()

    assert aliased["data"]["customers"]["b"] == [{"c": cursor} for cursor in cursors]
    assert aliased["data"]["customers"]["p"] == {"e": cursors[-1]}
    first_id = min(account["Id"] for account in harness.data.crm["Account"])
    assert aliased["data"]["customers"]["a"][0] == {"node": {"id": first_id}}
