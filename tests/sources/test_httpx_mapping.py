"""Every httpx exception is mapped to a gateway error at the boundary."""

from __future__ import annotations

import httpx
import pytest

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.sources.http import send


def exception_classes(root: type[Exception]) -> list[type[Exception]]:
    found: list[type[Exception]] = []
    pending = [root]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: c.__name__)


def construct(cls: type[Exception], request: httpx.Request) -> Exception:
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("status", request=request, response=httpx.Response(500, request=request))
    if issubclass(cls, httpx.RequestError):
        return cls("failure", request=request)
    return cls("failure")


CLASSES = [*exception_classes(httpx.HTTPError), httpx.InvalidURL]


@pytest.mark.parametrize("error_class", CLASSES, ids=lambda c: c.__name__)
async def test_httpx_error_mapped(error_class: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise construct(error_class, request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    with pytest.raises(UpstreamError, match="system 'crm'") as info:
        await send(client, "crm", "Account query", "GET", "http://crm.test/")
    expected_timeout = issubclass(error_class, httpx.TimeoutException)
    assert isinstance(info.value, UpstreamTimeout) is expected_timeout


def test_enumeration_finds_subclasses() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"ConnectError", "ReadTimeout", "RemoteProtocolError", "HTTPStatusError"} <= names
