"""The httptools client's own connection handling, against raw servers on loopback.

Keep-alive and its failures, response framings (chunked, until close, 1xx),
the pool's limit and expiry, cancellation, header checks and TLS. The
behaviour it shares with the other clients is in ``test_direct_clients``
and ``test_http_client``.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import logging
import socket
import ssl
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_http_client import OK_BODY, Handler, answer, raw_server, read_head

from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.sources import httptools_client
from gateway.sources.http import send
from gateway.sources.httptools_client import HttptoolsClient

pytestmark = pytest.mark.loopback


class Connections:
    """A handler that counts connections and runs ``script`` on each, in order."""

    def __init__(self, *scripts: object) -> None:
        self.scripts = list(scripts)
        self.accepted = 0
        self.heads: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.scripts[min(self.accepted, len(self.scripts) - 1)]
        self.accepted += 1
        try:
            for step in script:  # type: ignore[attr-defined]
                if step == "read":
                    self.heads.append(await read_head(reader))
                elif step == "close":
                    break
                elif step == "reset":
                    # SO_LINGER 0 makes the close send a TCP reset instead of a FIN.
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                elif step == "pause":
                    await asyncio.sleep(0.05)
                else:
                    writer.write(step)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


OK = answer(OK_BODY)


def answer_after(release: asyncio.Event) -> Handler:
    """Return a handler that reads one request and responds ``OK`` once ``release`` is set."""
    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await release.wait()
        writer.write(OK)
        await writer.drain()
        writer.close()

    return held


async def test_connection_kept_alive() -> None:
    server = Connections(["read", OK, "read", OK, "read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        for _ in range(3):
            response = await send(client, "erp", "read", "GET", url + "/")
            assert response.content == OK_BODY
        open_connections = client.open_connections

    assert server.accepted == 1
    assert len(server.heads) == 3
    assert open_connections == 1


async def test_reused_connection_closed_unanswered_sent_again() -> None:
    # The first connection responds once, reads the second request and closes,
    # as a server does whose keep-alive timeout ends just then.
    server = Connections(["read", OK, "read", "close"], ["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        first = await send(client, "erp", "read", "POST", url + "/a", json={"n": 1})
        second = await send(client, "erp", "read", "POST", url + "/b", json={"n": 2})
        open_connections = client.open_connections

    assert (first.status_code, second.status_code) == (200, 200)
    assert server.accepted == 2
    assert [head.split(b"\r\n")[0] for head in server.heads] == [
        b"POST /a HTTP/1.1", b"POST /b HTTP/1.1", b"POST /b HTTP/1.1"]
    assert open_connections == 1


async def test_new_connection_closed_unanswered_not_sent_again() -> None:
    server = Connections(["read", "close"])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, "erp", "read", "GET", url + "/")
        open_connections = client.open_connections

    assert str(caught.value) == "system 'erp' could not be reached for read: RemoteProtocolError"
    assert server.accepted == 1
    assert open_connections == 0


async def test_connection_close_header_not_reused() -> None:
    closing = (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 12\r\n\r\n" + OK_BODY)
    server = Connections(["read", closing, "read", OK], ["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        await send(client, "erp", "read", "GET", url + "/")
        await send(client, "erp", "read", "GET", url + "/")

    assert server.accepted == 2


async def test_chunked_gzip_body_decoded() -> None:
    packed = gzip.compress(b'{"rows": [1, 2, 3]}')
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n"
                      for part in (packed[:7], packed[7:]))
    response_bytes = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Encoding: gzip\r\n\r\n" + chunks + b"0\r\n\r\n")
    server = Connections(["read", response_bytes, "read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        chunked = await send(client, "erp", "read", "GET", url + "/")
        after = await send(client, "erp", "read", "GET", url + "/")

    assert chunked.json() == {"rows": [1, 2, 3]}
    assert after.content == OK_BODY
    assert server.accepted == 1


async def test_body_until_close_read_whole() -> None:
    server = Connections(["read", b"HTTP/1.1 200 OK\r\n\r\n", b'{"part": ', b'"two"}', "close"],
                         ["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        until_close = await send(client, "erp", "read", "GET", url + "/")
        after = await send(client, "erp", "read", "GET", url + "/")

    assert until_close.content == b'{"part": "two"}'
    assert after.content == OK_BODY
    assert server.accepted == 2


async def test_informational_response_skipped() -> None:
    server = Connections(["read", b"HTTP/1.1 100 Continue\r\n\r\n", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        response = await send(client, "erp", "read", "POST", url + "/", content=b"x")

    assert response.status_code == 200
    assert response.content == OK_BODY


async def test_head_response_has_no_body() -> None:
    server = Connections(["read", b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        response = await send(client, "erp", "probe", "HEAD", url + "/")
        open_connections = client.open_connections

    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-length"] == "12"
    assert open_connections == 0


async def test_unrequested_bytes_drop_connection() -> None:
    server = Connections(["read", OK + OK, "read", OK], ["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        await send(client, "erp", "read", "GET", url + "/")
        await asyncio.sleep(0.05)  # lets the second, unrequested response arrive
        response = await send(client, "erp", "read", "GET", url + "/")

    assert response.content == OK_BODY
    assert server.accepted == 2


async def test_pool_limit_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httptools_client, "MAX_CONNECTIONS", 2)
    in_flight = 0
    max_in_flight = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, max_in_flight
        try:
            while True:
                await read_head(reader)
                in_flight += 1
                max_in_flight = max(max_in_flight, in_flight)
                await asyncio.sleep(0.02)
                in_flight -= 1
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async with raw_server(slow) as url, HttptoolsClient(5.0) as client:
        responses = await asyncio.gather(*(send(client, "erp", "read", "GET", url + "/")
                                           for _ in range(8)))
        open_connections = client.open_connections

    assert [r.status_code for r in responses] == [200] * 8
    assert max_in_flight == 2
    assert open_connections == 2


async def test_pool_wait_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httptools_client, "MAX_CONNECTIONS", 1)
    release = asyncio.Event()

    async with raw_server(answer_after(release)) as url, HttptoolsClient(0.2) as client:
        first = asyncio.create_task(send(client, "erp", "read", "GET", url + "/"))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeout) as caught:
            await send(client, "erp", "second read", "GET", url + "/")
        release.set()
        with pytest.raises(UpstreamTimeout):
            await first  # the held request passed its own read timeout meanwhile

    assert str(caught.value) == "system 'erp' timed out on second read"


async def test_idle_connections_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Connections(["read", OK, "read", OK], ["read", OK, "read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        await send(client, "erp", "read", "GET", url + "/")
        monkeypatch.setattr(httptools_client, "KEEPALIVE_EXPIRY_SECONDS", 0.0)
        await send(client, "erp", "read", "GET", url + "/")  # the idle one is too old
        client._sweep()
        open_connections = client.open_connections

    assert server.accepted == 2
    assert open_connections == 0


async def test_cancelled_request_frees_its_connection() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await release.wait()
        writer.close()

    async with raw_server(held) as url, HttptoolsClient(5.0) as client:
        task = asyncio.create_task(send(client, "erp", "read", "GET", url + "/"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        open_connections = client.open_connections
        release.set()

    assert open_connections == 0


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\x00b"])
async def test_header_with_line_break_rejected(value: str) -> None:
    server = Connections(["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, "erp", "read", "GET", url + "/", headers={"X-Tenant": value})

    assert str(caught.value) == "system 'erp' could not be reached for read: LocalProtocolError"
    assert server.accepted == 0


async def test_dialect_header_replaces_client_default() -> None:
    server = Connections(["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        await send(client, "erp", "read", "POST", url + "/", json={"a": 1},
                   headers={"Accept": "application/json", "User-Agent": "fonte-test"})

    lines = server.heads[0].split(b"\r\n")
    assert lines[0] == b"POST / HTTP/1.1"
    assert lines[1] == b"Host: " + url.removeprefix("http://").encode()
    assert b"Accept: application/json" in lines
    assert b"Accept: */*" not in lines
    assert b"User-Agent: fonte-test" in lines
    assert b"Content-Type: application/json" in lines
    assert b"Content-Length: 7" in lines


def self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a certificate for 127.0.0.1 and its key; return both paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_with_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_path, key_path = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    server = Connections(["read", OK, "read", OK])
    listening = await asyncio.start_server(server, "127.0.0.1", 0, ssl=context)
    port = listening.sockets[0].getsockname()[1]
    try:
        async with HttptoolsClient(5.0) as untrusting:
            with pytest.raises(UpstreamUnavailable) as caught:
                await send(untrusting, "erp", "read", "GET", f"https://127.0.0.1:{port}/")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
        async with HttptoolsClient(5.0) as client:
            first = await send(client, "erp", "read", "GET", f"https://127.0.0.1:{port}/x")
            second = await send(client, "erp", "read", "GET", f"https://127.0.0.1:{port}/y")
    finally:
        listening.close()
        await listening.wait_closed()

    assert str(caught.value) == "system 'erp' could not be reached for read: ConnectError"
    assert (first.content, second.content) == (OK_BODY, OK_BODY)
    assert [head.split(b"\r\n")[0] for head in server.heads] == [b"GET /x HTTP/1.1",
                                                                 b"GET /y HTTP/1.1"]
    assert server.accepted == 1  # the refused handshake never reached the handler


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "http:///x"])
async def test_unsupported_url_unavailable(url: str) -> None:
    async with HttptoolsClient(5.0) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, "erp", "read", "GET", url)

    assert str(caught.value) == ("system 'erp' could not be reached for read: "
                                 "UnsupportedProtocol")


async def test_reset_body_until_close_unavailable() -> None:
    server = Connections(["read", b"HTTP/1.1 200 OK\r\n\r\n", b'{"partial": ', "pause",
                          "reset"])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, "erp", "read", "GET", url + "/")

    assert str(caught.value) == "system 'erp' could not be reached for read: ReadError"


async def test_second_response_leaves_first_alone() -> None:
    intruder = b"HTTP/1.1 429 Too Many\r\nRetry-After: 86400\r\nContent-Length: 0\r\n\r\n"
    server = Connections(["read", OK + intruder, "read", OK], ["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        first = await send(client, "erp", "read", "GET", url + "/")
        second = await send(client, "erp", "read", "GET", url + "/")

    assert first.status_code == 200
    assert "retry-after" not in first.headers
    assert dict(first.headers) == {"content-type": "application/json", "content-length": "12"}
    assert second.content == OK_BODY
    assert server.accepted == 2


async def test_chunked_trailers_ignored() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\nContent-Encoding: gzip\r\nX-Trailer: t\r\n\r\n")
    server = Connections(["read", chunked])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        response = await send(client, "erp", "read", "GET", url + "/")

    assert response.content == b"abc"
    assert "x-trailer" not in response.headers
    assert "content-encoding" not in response.headers


async def test_switching_protocols_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    server = Connections(["read", upgrade, "pause"])

    with caplog.at_level(logging.ERROR):
        async with raw_server(server) as url, HttptoolsClient(5.0) as client:
            with pytest.raises(UpstreamUnavailable) as caught:
                await send(client, "erp", "read", "GET", url + "/")

    assert str(caught.value) == ("system 'erp' could not be reached for read: "
                                 "RemoteProtocolError")
    assert [r.message for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_woken_waiter_cancelled_passes_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httptools_client, "MAX_CONNECTIONS", 1)
    release = asyncio.Event()

    async def first_held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if b"/held" in head:
            await release.wait()
        writer.write(OK)
        await writer.drain()
        writer.close()  # no keep-alive: each request needs its own slot

    async with raw_server(first_held) as url, HttptoolsClient(3.0) as client:
        holder = asyncio.create_task(send(client, "erp", "read", "GET", url + "/held"))
        await asyncio.sleep(0.05)
        woken = asyncio.create_task(send(client, "erp", "read", "GET", url + "/a"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(send(client, "erp", "read", "GET", url + "/b"))
        await asyncio.sleep(0.05)
        release.set()
        await holder  # its release wakes `woken` first ...
        woken.cancel()  # ... which leaves before it runs
        with pytest.raises(asyncio.CancelledError):
            await woken
        response = await waiting

    assert response.status_code == 200


async def test_closing_client_stops_waiters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httptools_client, "MAX_CONNECTIONS", 1)
    release = asyncio.Event()

    async with raw_server(answer_after(release)) as url:
        client = HttptoolsClient(3.0)
        holder = asyncio.create_task(send(client, "erp", "read", "GET", url + "/"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(client.request("GET", url + "/"))
        await asyncio.sleep(0.05)
        await client.aclose()
        with pytest.raises(RuntimeError, match="client has been closed"):
            await waiting
        release.set()
        assert (await holder).status_code == 200


async def test_url_credentials_sent_as_basic() -> None:
    server = Connections(["read", OK, "read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        with_credentials = url.replace("http://", "http://user:p%40ss@")
        await send(client, "erp", "read", "GET", with_credentials + "/a")
        await send(client, "erp", "read", "GET", with_credentials + "/b",
                   headers={"Authorization": "Bearer t"})

    assert b"Authorization: Basic dXNlcjpwQHNz" in server.heads[0].split(b"\r\n")
    assert b"Authorization: Bearer t" in server.heads[1].split(b"\r\n")
    assert b"Authorization: Basic dXNlcjpwQHNz" not in server.heads[1].split(b"\r\n")


@pytest.mark.parametrize(("method", "headers"), [
    ("GET /x HTTP/1.1\r\nX:", {}),
    ("GET", {"X-A: 1\tX-B": "1"}),
    ("GET", {"X A": "1"}),
])
async def test_invalid_method_or_header_name_rejected(method: str,
                                                      headers: dict[str, str]) -> None:
    server = Connections(["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await send(client, "erp", "read", method, url + "/", headers=headers)

    assert str(caught.value) == "system 'erp' could not be reached for read: LocalProtocolError"
    assert server.accepted == 0


async def test_lowercase_method_sent_uppercase() -> None:
    server = Connections(["read", OK])

    async with raw_server(server) as url, HttptoolsClient(5.0) as client:
        await send(client, "erp", "read", "get", url + "/x")

    assert server.heads[0].split(b"\r\n")[0] == b"GET /x HTTP/1.1"
