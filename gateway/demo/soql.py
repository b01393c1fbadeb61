"""Tokenizer and recursive-descent parser for the SOQL subset of the demo Salesforce server.

Grammar (keywords are case-insensitive)::

    query      := SELECT (COUNT '(' ')' | field {',' field}) FROM name
                  [WHERE condition] [ORDER BY order {',' order}] [LIMIT int] [OFFSET int]
    condition  := [NOT] operand {(AND | OR) operand}   -- one connective per level
    operand    := '(' condition ')' | field comparator value
                | field [NOT] IN '(' value {',' value} ')' | field LIKE string
    order      := field [ASC | DESC] [NULLS (FIRST | LAST)]
    value      := string | number | date | datetime | TRUE | FALSE | NULL

Like Salesforce, the parser rejects AND and OR at the same level without
parentheses and a NOT after AND or OR ("unexpected token"). Error messages
give the row and column but, unlike Salesforce, never quote the statement or a
literal from it, because literals may be personal values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

TokenKind = Literal["name", "string", "number", "date", "datetime", "operator", "punctuation",
                    "end"]
LiteralKind = Literal["string", "number", "date", "datetime", "boolean", "null"]

_RESERVED = frozenset({
    "AND", "ASC", "BY", "DESC", "EXCLUDES", "FALSE", "FIRST", "FROM", "GROUP", "HAVING", "IN",
    "INCLUDES", "LAST", "LIKE", "LIMIT", "NOT", "NULL", "NULLS", "OFFSET", "OR", "ORDER",
    "SELECT", "TRUE", "USING", "WHERE", "WITH",
})
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\w:])")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?![\w.])")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*")
_OPERATOR = re.compile(r"!=|<>|<=|>=|=|<|>")
_LIKE_WILDCARDS = {"%": ".*", "_": "."}
# Tried in this order, so a date is not read as a number and "<=" not as "<".
_PATTERNS: tuple[tuple[TokenKind, re.Pattern[str]], ...] = (
    ("datetime", _DATETIME), ("date", _DATE), ("number", _NUMBER), ("name", _NAME),
    ("operator", _OPERATOR),
)
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'",
                   "\\": "\\"}


class SoqlError(Exception):
    """A statement the demo server rejects, with the Salesforce ``errorCode`` to return."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def _malformed(row: int, column: int, detail: str) -> SoqlError:
    return SoqlError("MALFORMED_QUERY", f"ERROR at Row:{row}:Column:{column}\n{detail}")


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    text: str
    value: Any
    row: int
    column: int
    like_pattern: str | None = None  # regex source for a string used after LIKE

    def describe(self) -> str:
        """Name the token for an error message without quoting a literal's content."""
        if self.kind == "end":
            return "'<EOF>'"
        if self.kind in ("string", "number", "date", "datetime"):
            return f"<{self.kind} literal>"
        return f"'{self.text}'"


# --- tokenizer ---------------------------------------------------------------------------


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.row = 1
        self.row_start = 0

    @property
    def column(self) -> int:
        return self.position - self.row_start + 1

    def tokens(self) -> list[Token]:
        result: list[Token] = []
        while True:
            self.skip_whitespace()
            if self.position >= len(self.text):
                result.append(Token("end", "", None, self.row, self.column))
                return result
            result.append(self.next_token())

    def skip_whitespace(self) -> None:
        while self.position < len(self.text) and self.text[self.position].isspace():
            if self.text[self.position] == "\n":
                self.row += 1
                self.row_start = self.position + 1
            self.position += 1

    def next_token(self) -> Token:
        char = self.text[self.position]
        row, column = self.row, self.column
        if char == "'":
            return self.string_token()
        if char in ",()":
            self.position += 1
            return Token("punctuation", char, char, row, column)
        for kind, pattern in _PATTERNS:
            match = pattern.match(self.text, self.position)
            if match:
                self.position = match.end()
                return self.make_token(kind, match.group(), row, column)
        raise _malformed(row, column, f"unexpected character: '{char}'")

    def make_token(self, kind: TokenKind, text: str, row: int, column: int) -> Token:
        if kind == "number":
            value: Any = float(text) if "." in text else int(text)
            return Token("number", text, value, row, column)
        if kind in ("date", "datetime"):
            return Token(kind, text, self.parse_temporal(kind, text, row, column), row, column)
        if kind == "operator":
            return Token("operator", text, "!=" if text == "<>" else text, row, column)
        return Token("name", text, text, row, column)

    @staticmethod
    def parse_temporal(kind: str, text: str, row: int, column: int) -> date | datetime:
        try:
            if kind == "date":
                return date.fromisoformat(text)
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _malformed(row, column, f"invalid {kind} literal. Use YYYY-MM-DD"
                                          f"{'' if kind == 'date' else 'Thh:mm:ssZ'}") from None

    def string_token(self) -> Token:
        row, column = self.row, self.column
        start = self.position
        self.position += 1
        text: list[str] = []
        like: list[str] = []
        while True:
            if self.position >= len(self.text) or self.text[self.position] == "\n":
                raise _malformed(row, column, "unterminated string literal")
            char = self.text[self.position]
            self.position += 1
            if char == "'":
                source = self.text[start:self.position]
                return Token("string", source, "".join(text), row, column, "".join(like))
            if char == "\\":
                self.read_escape(text, like, row)
            else:
                text.append(char)
                like.append(_LIKE_WILDCARDS.get(char) or re.escape(char))

    def read_escape(self, text: list[str], like: list[str], row: int) -> None:
        """Decode the escape after a backslash.

        ``\\%`` and ``\\_`` match a literal % or _ in a LIKE pattern.
        """
        column = self.column - 1
        if self.position >= len(self.text):
            raise _malformed(row, column, "unterminated string literal")
        code = self.text[self.position]
        self.position += 1
        if code in ("%", "_"):
            text.append(code)
            like.append(re.escape(code))
            return
        if code.lower() == "u":
            digits = self.text[self.position:self.position + 4]
            if not re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
                raise _malformed(row, column, "invalid unicode escape. Use \\uXXXX")
            self.position += 4
            decoded = chr(int(digits, 16))
        elif code in _SIMPLE_ESCAPES or code.lower() in "nrtbf":
            decoded = _SIMPLE_ESCAPES.get(code) or _SIMPLE_ESCAPES[code.lower()]
        else:
            raise _malformed(row, column, f"invalid escape sequence '\\{code}' in string literal. "
                                          "Escape only \\' \\\" \\\\ \\n \\r \\t \\b \\f \\u")
        text.append(decoded)
        like.append(re.escape(decoded))


def tokenize(text: str) -> list[Token]:
    """Split a SOQL statement into tokens, ending with one ``end`` token."""
    return _Scanner(text).tokens()


# --- syntax tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRef:
    name: str  # as written in the statement
    row: int
    column: int


@dataclass(frozen=True)
class Value:
    kind: LiteralKind
    value: Any  # str, int, float, date, datetime, bool or None


@dataclass(frozen=True)
class Comparison:
    field: FieldRef
    operator: str  # =, !=, <, <=, >, >= or LIKE
    value: Value
    like_pattern: str | None = None


@dataclass(frozen=True)
class Membership:
    field: FieldRef
    values: tuple[Value, ...]
    negated: bool


@dataclass(frozen=True)
class Junction:
    connective: Literal["AND", "OR"]
    operands: tuple[Condition, ...]


@dataclass(frozen=True)
class Negation:
    operand: Condition


Condition = Comparison | Membership | Junction | Negation


@dataclass(frozen=True)
class OrderItem:
    field: FieldRef
    descending: bool
    nulls_last: bool  # Salesforce puts nulls first unless NULLS LAST is given


@dataclass(frozen=True)
class Query:
    fields: tuple[FieldRef, ...]  # empty for SELECT COUNT()
    count_only: bool
    sobject: FieldRef
    where: Condition | None
    order_by: tuple[OrderItem, ...]
    limit: int | None
    offset: int | None

    def first_in_list_size(self) -> int:
        """Count the values of the first non-negated IN list, in statement order (0 if none)."""
        pending: list[Condition] = [self.where] if self.where is not None else []
        while pending:
            condition = pending.pop(0)
            if isinstance(condition, Membership) and not condition.negated:
                return len(condition.values)
            if isinstance(condition, Junction):
                pending[:0] = condition.operands
            elif isinstance(condition, Negation):
                pending.insert(0, condition.operand)
        return 0


# --- parser ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "name" and token.text.upper() in words

    def at_punctuation(self, char: str) -> bool:
        token = self.peek()
        return token.kind == "punctuation" and token.text == char

    def unexpected(self, token: Token | None = None) -> SoqlError:
        token = token or self.peek()
        return _malformed(token.row, token.column, f"unexpected token: {token.describe()}")

    def expect_keyword(self, word: str) -> Token:
        if not self.at_keyword(word):
            raise self.unexpected()
        return self.advance()

    def expect_punctuation(self, char: str) -> Token:
        if not self.at_punctuation(char):
            raise self.unexpected()
        return self.advance()

    def parse_query(self) -> Query:
        self.expect_keyword("SELECT")
        count_only = False
        fields: list[FieldRef] = []
        if self.at_keyword("COUNT") and self.tokens[self.index + 1].text == "(":
            self.advance()
            self.expect_punctuation("(")
            self.expect_punctuation(")")
            count_only = True
        else:
            fields = self.parse_list(self.parse_field)
        self.expect_keyword("FROM")
        sobject = self.parse_field()

        where = None
        if self.at_keyword("WHERE"):
            self.advance()
            where = self.parse_condition()
        order_by: list[OrderItem] = []
        if self.at_keyword("ORDER"):
            self.advance()
            self.expect_keyword("BY")
            order_by = self.parse_list(self.parse_order_item)
        limit = self.parse_count_clause("LIMIT")
        offset = self.parse_count_clause("OFFSET")
        if self.peek().kind != "end":
            raise self.unexpected()
        return Query(tuple(fields), count_only, sobject, where, tuple(order_by), limit, offset)

    def parse_list(self, parse_item: Any) -> list[Any]:
        items = [parse_item()]
        while self.at_punctuation(","):
            self.advance()
            items.append(parse_item())
        return items

    def parse_field(self) -> FieldRef:
        token = self.peek()
        if token.kind != "name" or token.text.upper() in _RESERVED:
            raise self.unexpected()
        self.advance()
        return FieldRef(token.text, token.row, token.column)

    def parse_count_clause(self, keyword: str) -> int | None:
        if not self.at_keyword(keyword):
            return None
        self.advance()
        token = self.peek()
        if token.kind != "number" or not isinstance(token.value, int) or token.value < 0:
            raise self.unexpected()
        self.advance()
        return int(token.value)

    def parse_order_item(self) -> OrderItem:
        field = self.parse_field()
        descending = False
        if self.at_keyword("ASC", "DESC"):
            descending = self.advance().text.upper() == "DESC"
        nulls_last = False
        if self.at_keyword("NULLS"):
            self.advance()
            if not self.at_keyword("FIRST", "LAST"):
                raise self.unexpected()
            nulls_last = self.advance().text.upper() == "LAST"
        return OrderItem(field, descending, nulls_last)

    def parse_condition(self) -> Condition:
        if self.at_keyword("NOT"):
            self.advance()
            first: Condition = Negation(self.parse_operand())
        else:
            first = self.parse_operand()
        connective: Literal["AND", "OR"] | None = None
        operands = [first]
        while self.at_keyword("AND", "OR"):
            token = self.advance()
            word: Literal["AND", "OR"] = "AND" if token.text.upper() == "AND" else "OR"
            if connective is not None and word != connective:
                raise self.unexpected(token)  # AND and OR need parentheses to mix
            connective = word
            operands.append(self.parse_operand())
        if connective is None:
            return first
        return Junction(connective, tuple(operands))

    def parse_operand(self) -> Condition:
        if self.at_punctuation("("):
            self.advance()
            condition = self.parse_condition()
            self.expect_punctuation(")")
            return condition
        field = self.parse_field()
        if self.at_keyword("NOT", "IN"):
            negated = self.advance().text.upper() == "NOT"
            if negated:
                self.expect_keyword("IN")
            self.expect_punctuation("(")
            values = self.parse_list(self.parse_value)
            self.expect_punctuation(")")
            return Membership(field, tuple(values), negated)
        if self.at_keyword("LIKE"):
            self.advance()
            token = self.peek()
            if token.kind != "string":
                raise self.unexpected()
            self.advance()
            return Comparison(field, "LIKE", Value("string", token.value), token.like_pattern)
        token = self.peek()
        if token.kind != "operator":
            raise self.unexpected()
        self.advance()
        return Comparison(field, str(token.value), self.parse_value())

    def parse_value(self) -> Value:
        token = self.peek()
        if token.kind in ("string", "number", "date", "datetime"):
            self.advance()
            return Value(token.kind, token.value)
        word = token.text.upper() if token.kind == "name" else ""
        if word in ("TRUE", "FALSE"):
            self.advance()
            return Value("boolean", word == "TRUE")
        if word == "NULL":
            self.advance()
            return Value("null", None)
        raise self.unexpected()


def parse(text: str) -> Query:
    """Parse a SOQL statement into a Query, or raise SoqlError with errorCode MALFORMED_QUERY."""
    return _Parser(tokenize(text)).parse_query()
