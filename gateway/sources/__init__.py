"""Upstream systems behind one read primitive.

A source turns "these keys, these attributes" into as few requests as its
dialect allows and returns plain rows: a dict of attribute to value, with
``None`` for every empty value whatever the wire format uses, and
``Many2one`` for a reference that carries both an id and a display name.
Each dialect maps its own errors to ``gateway.errors.UpstreamError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gateway.catalog import Condition


class Many2one(NamedTuple):
    """A reference to another record: its id and its display name."""

    id: int
    name: str

    def __str__(self) -> str:
        return str(self.id)


Row = dict[str, Any]


@dataclass(frozen=True)
class FetchRequest:
    """One batched read of an entity.

    ``match`` and ``keys`` select the rows whose ``match`` attribute is one of
    ``keys``; ``attributes`` is the exact projection, never empty. ``after``
    and ``search`` serve cursor paging and name search on the root list.
    ``any_of`` holds a policy's row rules: when not empty, a row is read only
    if at least one of these conditions holds for it. ``visible`` is False
    when the row rules admit no record at all; nothing is then sent.
    """

    entity: str
    attributes: tuple[str, ...]
    match: str | None = None
    keys: tuple[str | int, ...] = ()
    where: tuple[Condition, ...] = ()
    order: str | None = None
    limit: int | None = None
    after: tuple[str, str] | None = None
    search: tuple[str, str] | None = None
    any_of: tuple[Condition, ...] = ()
    visible: bool = True


class Source(Protocol):
    """One configured upstream system.

    ``supports_row_filters`` is False for a dialect that cannot express
    ``FetchRequest.any_of``; the fetcher then filters its rows after reading.
    """

    name: str

    @property
    def supports_row_filters(self) -> bool:
        """Whether the dialect can express ``FetchRequest.any_of`` in its queries."""
        ...

    async def fetch(self, request: FetchRequest) -> list[Row]:
        """Return the rows matching ``request``, in the requested order."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def order_terms(order: str | None) -> list[tuple[str, bool]]:
    """Parse ``"date_order desc, id"`` into ``[("date_order", True), ("id", False)]``."""
    if not order:
        return []
    terms = []
    for part in order.split(","):
        words = part.split()
        descending = len(words) > 1 and words[1].lower() == "desc"
        terms.append((words[0], descending))
    return terms


def matches(row: Row, condition: Condition) -> bool:
    """Return whether ``row`` meets ``condition``, comparing values as text."""
    value = row.get(condition.attribute)
    text = None if value is None else str(value)
    if condition.operator == "in":
        assert isinstance(condition.value, tuple)
        return text in {str(v) for v in condition.value}
    equal = text == str(condition.value)
    return equal if condition.operator == "=" else not equal


def chunk_by_size(keys: tuple[str | int, ...], base: int, cost: Callable[[str | int], int],
                  max_bytes: int, max_keys: int | None = None) -> list[tuple[str | int, ...]]:
    """Split ``keys`` so that ``base`` plus the cost of each chunk's keys stays under ``max_bytes``.

    A chunk also ends at ``max_keys`` keys when that is set. Each chunk takes
    keys until the next one would pass either limit.
    A single key that alone passes the limit still gets a chunk of its own:
    the upstream then rejects that request, not the whole read.
    """
    chunks: list[tuple[str | int, ...]] = []
    current: list[str | int] = []
    size = base
    for key in keys:
        key_cost = cost(key)
        at_max_keys = max_keys is not None and len(current) >= max_keys
        if current and (at_max_keys or size + key_cost > max_bytes):
            chunks.append(tuple(current))
            current, size = [], base
        current.append(key)
        size += key_cost
    if current:
        chunks.append(tuple(current))
    return chunks
