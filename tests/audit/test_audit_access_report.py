"""Tests of the access report's HTML page."""

from __future__ import annotations

from gateway.audit.access_report import Consultation, report_document, report_html

HOSTILE = Consultation(
    time="2026-12-04T10:00:00.000Z",
    purpose='<script>alert("x")</script>',
    roles=["sales&co"],
    categories=["contact.email"],
    systems=["crm"],
    caller="<b>emp-1</b>",
)


def test_html_escapes_every_value() -> None:
    document = report_document("customer", [HOSTILE], include_callers=True)

    page = report_html(document, {"contact.email": "E-mail <addresses>"})

    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "sales&amp;co" in page
    assert "&lt;b&gt;emp-1&lt;/b&gt;" in page
    assert "contact.email (E-mail &lt;addresses&gt;)" in page


def test_html_without_callers_has_no_caller_column() -> None:
    document = report_document("customer", [HOSTILE], include_callers=False)

    page = report_html(document, {})

    assert "Caller" not in page
    assert "emp-1" not in page
    assert "are withheld" in page


def test_html_of_no_consultation_says_so() -> None:
    document = report_document("contact", [], include_callers=False)

    page = report_html(document, {})

    assert '<td colspan="5">None recorded.</td>' in page
    assert "0 consultation(s)" in page
