"""``$filter`` for the demo OData servers: the subset the gateway's OData dialects send.

Supported: ``eq ne gt ge lt le``, ``and or not``, parentheses, ``tolower``,
``contains`` (OData 4.0) and ``substringof`` (OData 2.0), string, integer,
decimal (``12.5``, and ``12.5M`` in 2.0), boolean and null literals. The
``in`` operator is rejected, as Dataverse rejects OData 4.01 syntax. A
property that the entity set lacks, or a comparison of a text property with
a number, is an error, like on the real servers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Record = Mapping[str, Any]
Predicate = Callable[[Record], bool]
Operand = Callable[[Record], Any]
PropertyType = Literal["int", "decimal", "str", "bool"]


class FilterError(ValueError):
    """The ``$filter`` text is invalid or uses what the server does not support."""


_TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?[mM]?)"
                    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),]))")
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: bool(a == b), "ne": lambda a, b: bool(a != b),
    "gt": lambda a, b: a is not None and b is not None and bool(a > b),
    "ge": lambda a, b: a is not None and b is not None and bool(a >= b),
    "lt": lambda a, b: a is not None and b is not None and bool(a < b),
    "le": lambda a, b: a is not None and b is not None and bool(a <= b),
}
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null", *_COMPARISONS}


@dataclass(frozen=True)
class _Property:
    name: str

    def __call__(self, record: Record) -> Any:
        return record.get(self.name)


@dataclass(frozen=True)
class _Literal:
    value: str | int | float

    def __call__(self, record: Record) -> Any:
        return self.value


@dataclass(frozen=True)
class _Equality:
    """A ``property eq literal`` term. An ``or`` chain of them becomes one set lookup."""

    name: str
    value: str | int | float

    def __call__(self, record: Record) -> bool:
        return bool(record.get(self.name) == self.value)


def _any_of(terms: list[Predicate]) -> Predicate:
    """Return the ``or`` of ``terms``, in constant time per record for a chain of key equalities.

    A key read of 5,000 keys is a chain of 5,000 ``key eq value`` terms, which
    would otherwise cost 5,000 comparisons per record.
    """
    names = {term.name for term in terms if isinstance(term, _Equality)}
    if len(names) == 1 and all(isinstance(term, _Equality) for term in terms):
        name = names.pop()
        values = frozenset(term.value for term in terms if isinstance(term, _Equality))
        return lambda r: r.get(name) in values
    return lambda r: any(t(r) for t in terms)


def tokenize(text: str) -> list[tuple[str, str]]:
    """Split ``text`` into (kind, text) tokens."""
    tokens = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        found = _TOKEN.match(text, position)
        if found is None or found.end() == position:
            raise FilterError(f"invalid $filter syntax at position {position}")
        kind = found.lastgroup
        assert kind is not None
        tokens.append((kind, found.group(kind)))
        position = found.end()
    return tokens


class _Parser:
    def __init__(self, text: str, types: Mapping[str, PropertyType], version: str) -> None:
        self.tokens = tokenize(text)
        self.position = 0
        self.types = types
        self.version = version

    def peek(self) -> str | None:
        if self.position < len(self.tokens):
            return self.tokens[self.position][1]
        return None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise FilterError("unexpected end of $filter")
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise FilterError(f"expected {expected!r} in $filter, found {token[1]!r}")
        self.position += 1
        return token

    def parse(self) -> Predicate:
        predicate = self.disjunction()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()!r} in $filter")
        return predicate

    def disjunction(self) -> Predicate:
        terms = [self.conjunction()]
        while self.peek() == "or":
            self.take()
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else _any_of(terms)

    def conjunction(self) -> Predicate:
        terms = [self.negation()]
        while self.peek() == "and":
            self.take()
            terms.append(self.negation())
        return terms[0] if len(terms) == 1 else (lambda r: all(t(r) for t in terms))

    def negation(self) -> Predicate:
        if self.peek() == "not":
            self.take()
            inner = self.negation()
            return lambda r: not inner(r)
        return self.comparison()

    def comparison(self) -> Predicate:
        left, left_type = self.operand()
        operator = self.peek()
        if operator == "in":
            raise FilterError("the in operator is OData 4.01 syntax, which this service does "
                              "not support")
        if operator not in _COMPARISONS:
            if left_type != "bool":
                raise FilterError("a $filter term must be a comparison or a boolean function")
            return lambda r: bool(left(r))
        self.take()
        right, right_type = self.operand()
        _check_types(left_type, right_type, operator)
        if operator == "eq" and isinstance(left, _Property) and isinstance(right, _Literal):
            return _Equality(left.name, right.value)
        compare = _COMPARISONS[operator]
        return lambda r: compare(left(r), right(r))

    def operand(self) -> tuple[Operand, str | None]:
        kind, text = self.take()
        if text == "(":
            inner = self.disjunction()
            self.take(")")
            return inner, "bool"
        if kind == "string":
            return _Literal(text[1:-1].replace("''", "'")), "str"
        if kind == "number":
            return _number(text, self.version)
        if text in ("true", "false"):
            flag = text == "true"
            return (lambda r: flag), "bool"
        if text == "null":
            return (lambda r: None), None
        if kind == "name" and self.peek() == "(":
            return self.function(text)
        if kind == "name" and text not in _KEYWORDS:
            return self.property(text)
        raise FilterError(f"unexpected {text!r} in $filter")

    def property(self, name: str) -> tuple[Operand, str | None]:
        if name not in self.types:
            raise FilterError(f"could not find a property named {name!r}")
        return _Property(name), self.types[name]

    def function(self, name: str) -> tuple[Operand, str | None]:
        self.take("(")
        arguments = [self.operand()]
        while self.peek() == ",":
            self.take()
            arguments.append(self.operand())
        self.take(")")
        if name == "tolower" and len(arguments) == 1 and arguments[0][1] == "str":
            inner = arguments[0][0]
            return (lambda r: None if inner(r) is None else str(inner(r)).lower()), "str"
        contains = {"4.0": "contains", "2.0": "substringof"}[self.version]
        if name == contains and len(arguments) == 2 and all(a[1] == "str" for a in arguments):
            # contains(haystack, needle) in 4.0; substringof(needle, haystack) in 2.0.
            haystack, needle = arguments if name == "contains" else arguments[::-1]
            return (lambda r: _contains(haystack[0](r), needle[0](r))), "bool"
        raise FilterError(f"function {name!r} with {len(arguments)} arguments is not supported")


def _contains(haystack: Any, needle: Any) -> bool:
    return haystack is not None and needle is not None and str(needle) in str(haystack)


def _number(text: str, version: str) -> tuple[Operand, str]:
    if text[-1] in "mM":
        if version != "2.0":
            raise FilterError(f"invalid number literal {text!r}")
        text = text[:-1]
    value: int | float = float(text) if "." in text else int(text)
    return _Literal(value), "decimal" if isinstance(value, float) else "int"


def _check_types(left: str | None, right: str | None, operator: str) -> None:
    if left is None or right is None:
        return
    numeric = {"int", "decimal"}
    if left == right or (left in numeric and right in numeric):
        return
    raise FilterError(f"operator {operator!r} is not defined between {left} and {right} "
                      "operands")


def parse_filter(text: str, types: Mapping[str, PropertyType], version: str) -> Predicate:
    """Return a predicate for the ``$filter`` ``text`` over records with property ``types``.

    ``version`` is ``"4.0"`` or ``"2.0"``. Raises ``FilterError``.
    """
    return _Parser(text, types, version).parse()


def count_key_equalities(text: str) -> int:
    """Return the number of ``eq`` comparisons of the most compared property, for the log.

    A key read is an ``or`` chain of ``key eq value``, so this is its key count.
    """
    tokens = tokenize(text)
    counts: dict[str, int] = {}
    for index in range(1, len(tokens) - 1):
        before, operator, after = tokens[index - 1], tokens[index], tokens[index + 1]
        if operator[1] == "eq" and before[0] == "name" and after[0] in ("string", "number"):
            counts[before[1]] = counts.get(before[1], 0) + 1
    return max(counts.values(), default=0)
