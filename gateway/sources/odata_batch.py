"""OData ``$batch`` bodies: several GETs in one ``multipart/mixed`` POST.

Both OData 4.0 and 2.0 use the same format: one ``application/http`` part
per request with the raw request line and headers, and a response of the
same shape with the parts in request order. GETs go directly in the batch,
because change sets may only hold writes.
"""

from __future__ import annotations

import re
import secrets

import httpx

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_STATUS_LINE = re.compile(r"HTTP/1\.[01] (\d{3})")


def new_boundary() -> str:
    """Return a fresh batch boundary."""
    return f"batch_{secrets.token_hex(12)}"


def encode_batch(boundary: str, targets: list[str], headers: dict[str, str]) -> bytes:
    """Return a batch body with one GET per target, each a URL relative to the service root."""
    lines: list[str] = []
    for target in targets:
        lines += [f"--{boundary}", "Content-Type: application/http",
                  "Content-Transfer-Encoding: binary", "", f"GET {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["", ""]
    lines.append(f"--{boundary}--")
    return ("\r\n".join(lines) + "\r\n").encode()


def batch_boundary(content_type: str) -> str | None:
    """Return the boundary parameter of a ``multipart/mixed`` content type, if any."""
    if not content_type.lower().startswith("multipart/mixed"):
        return None
    found = _BOUNDARY.search(content_type)
    return found.group(1) if found else None


def decode_batch(body: bytes, boundary: str) -> list[httpx.Response] | None:
    """Return the responses in a batch response body, or None if it is malformed."""
    text = body.decode("utf-8", errors="replace").replace("\r\n", "\n")
    delimiter = f"--{boundary}"
    if f"{delimiter}--" not in text:
        return None
    sections = text.split(f"{delimiter}--")[0].split(delimiter)[1:]
    responses = []
    for section in sections:
        response = _decode_part(section)
        if response is None:
            return None
        responses.append(response)
    return responses


def _decode_part(section: str) -> httpx.Response | None:
    # A part is: MIME headers, blank line, status line, HTTP headers, blank line, body.
    _mime, separator, http = section.lstrip("\n").partition("\n\n")
    if not separator:
        return None
    head, _separator, content = http.partition("\n\n")
    head_lines = head.split("\n")
    status = _STATUS_LINE.match(head_lines[0])
    if status is None:
        return None
    headers = []
    for line in head_lines[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() != "content-length":
            headers.append((name.strip(), value.strip()))
    return httpx.Response(int(status.group(1)), headers=headers,
                          content=content.rstrip("\n").encode())
