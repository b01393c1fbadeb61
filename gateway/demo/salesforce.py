"""Demo Salesforce server: the REST query API over the generated CRM records.

It implements the parts of the Salesforce REST API that the gateway's
connector uses. These are the OAuth 2.0 token endpoint with the
client-credentials and JWT bearer grants and the list of API versions. Data
is read through ``query`` with the SOQL subset of ``gateway.demo.soql``,
``queryMore`` through ``nextRecordsUrl`` and sObject Collections retrieve
(``gateway.demo.salesforce_composite``). Errors use Salesforce's JSON array
body ``[{"message", "errorCode", "fields"}]`` and never quote a value from the
data. Every vendor API call is recorded in ``app.state.control``, and
``app.state.expire_tokens()`` invalidates all issued tokens so a test can
exercise the connector's session refresh. ``app.state.set_api_usage(n)``
sets the daily API usage that ``Sforce-Limit-Info`` reports.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.demo.control import DemoControl, RequestLogEntry, body_fault, control_routes
from gateway.demo.data import DemoData
from gateway.demo.salesforce_composite import CollectionError, parse_retrieve, retrieve
from gateway.demo.sobjects import QueryResult, SObjectStore
from gateway.demo.soql import SoqlError, parse

API_USAGE_LIMIT = 15_000
"""Daily API request limit reported in ``Sforce-Limit-Info``. The demo server never enforces it."""
MAX_URI_BYTES = 16_384  # Salesforce returns 414 above this request-URI length
MIN_BATCH_SIZE = 200
MAX_BATCH_SIZE = 2_000
_MAX_LOCATORS = 1_000  # oldest query locators are dropped beyond this many
_OLDEST_VERSION = 58
_ORG_ID = "00D5g000004DemoEAA"
_INTEGRATION_USER_ID = "0055g00000DemoIAAS"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BATCH_SIZE_OPTION = re.compile(r"(?:^|[;,\s])batchSize=(\d+)", re.IGNORECASE)
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_MAX_LIFETIME = 180  # seconds, because Salesforce requires an exp within 3 minutes
_JWT_LEEWAY = 10  # seconds of clock difference allowed on exp
# Audiences Salesforce accepts besides the server's own URL.
_SALESFORCE_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
_FAULT_ERROR_CODES = {401: "INVALID_SESSION_ID", 403: "REQUEST_LIMIT_EXCEEDED", 404: "NOT_FOUND",
                      503: "SERVER_UNAVAILABLE"}


@dataclass
class _Outcome:
    """A handler's response plus what the request log records about it."""

    response: Response
    entity: str | None = None
    keys: int = 0
    fields: list[str] | None = None


@dataclass(frozen=True)
class JwtBearerSettings:
    """The connected app certificate and user that the JWT bearer grant accepts.

    ``public_key_pem`` is the PEM public key of the connected app's
    certificate. The assertion's ``iss`` must be the app's client id and
    ``sub`` must be ``username``. ``audience`` replaces the accepted
    audiences (by default the server's own URL, login.salesforce.com and
    test.salesforce.com).
    """

    public_key_pem: str
    username: str
    audience: str | None = None


@dataclass
class _Locator:
    sobject: str
    fields: list[str] | None
    records: list[dict[str, Any]]  # every remaining page, already projected
    batch_size: int


def salesforce_error(status: int, error_code: str, message: str) -> JSONResponse:
    """Build a response with Salesforce's error body."""
    return JSONResponse([{"message": message, "errorCode": error_code, "fields": []}],
                        status_code=status)


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _sent_fields(body: Any) -> list[str] | None:
    """Return a retrieve body's fields as the client wrote them, for the request log."""
    fields = body.get("fields") if isinstance(body, dict) else None
    return [str(name) for name in fields] if isinstance(fields, list) else None


def _public_key(pem: str) -> RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, RSAPublicKey):
        raise ValueError(f"jwt_bearer.public_key_pem is a {type(key).__name__}; the JWT bearer "
                         "grant verifies RS256 signatures and needs an RSA public key")
    return key


def _release_label(version: int) -> str:
    # v59.0 is Winter '24, and each later version is the next of three releases a year.
    steps = version - 59
    season = ("Winter", "Spring", "Summer")[steps % 3]
    return f"{season} '{24 + steps // 3}"


class _SalesforceServer:
    def __init__(self, data: DemoData, *, client_id: str, client_secret: str, api_version: str,
                 page_size: int, token_ttl: float, jwt_bearer: JwtBearerSettings | None) -> None:
        self.store = SObjectStore(data.crm)
        self.client_id = client_id
        self.client_secret = client_secret
        self.jwt_bearer = jwt_bearer
        self.jwt_key = None if jwt_bearer is None else _public_key(jwt_bearer.public_key_pem)
        major = int(api_version.split(".")[0])
        self.versions = [f"{number}.0" for number in range(min(_OLDEST_VERSION, major), major + 1)]
        self.page_size = page_size
        self.token_ttl = token_ttl
        self.control = DemoControl()
        self.tokens: dict[str, float] = {}  # access token -> time.monotonic() deadline
        self.locators: OrderedDict[str, _Locator] = OrderedDict()
        self.api_usage = 0

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def set_api_usage(self, used: int) -> None:
        """Set the API requests used today, which the next counted call raises by one."""
        self.api_usage = used

    # --- request pipeline ----------------------------------------------------------------

    def vendor_route(self, handler: Callable[[Request], Awaitable[_Outcome]], *,
                     counts_usage: bool) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a vendor API handler with the URI limit, fault injection and request log."""

        async def endpoint(request: Request) -> Response:
            outcome = await self.guard(request)
            if outcome is None:
                outcome = await handler(request)
            if counts_usage:
                self.api_usage += 1
                outcome.response.headers["Sforce-Limit-Info"] = (
                    f"api-usage={self.api_usage}/{API_USAGE_LIMIT}")
            self.control.record(RequestLogEntry(
                method=request.method, path=request.url.path, entity=outcome.entity,
                keys=outcome.keys, fields=outcome.fields,
                status=outcome.response.status_code,
                filter=_where_clause(request.query_params.get("q"))))
            return outcome.response

        return endpoint

    async def guard(self, request: Request) -> _Outcome | None:
        """Reject an over-long URI and apply the injected faults before the handler runs."""
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        query_string: bytes = request.scope.get("query_string", b"")
        uri_bytes = len(raw_path) + (len(query_string) + 1 if query_string else 0)
        if uri_bytes > MAX_URI_BYTES:
            return _Outcome(salesforce_error(
                414, "URI_TOO_LONG",
                f"The request URI has {uri_bytes} bytes, above the maximum of {MAX_URI_BYTES}. "
                "Send fewer values per query or split the IN list."))
        if self.control.fault_delay > 0:
            await asyncio.sleep(self.control.fault_delay)
        status = self.control.fault_status
        if status is None:
            faulty = body_fault(self.control)
            return None if faulty is None else _Outcome(faulty)
        code = _FAULT_ERROR_CODES.get(status, "UNKNOWN_EXCEPTION")
        return _Outcome(salesforce_error(status, code,
                                         f"Injected fault: the demo server returns {status}."))

    def check_session(self, request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        deadline = self.tokens.get(token.strip())
        if scheme.lower() not in ("bearer", "oauth") or deadline is None:
            return salesforce_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if time.monotonic() >= deadline:
            del self.tokens[token.strip()]
            return salesforce_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return None

    def check_version(self, request: Request) -> Response | None:
        version = request.path_params["version"]
        if version.startswith("v") and version[1:] in self.versions:
            return None
        return salesforce_error(404, "NOT_FOUND", "The requested resource does not exist")

    # --- OAuth ---------------------------------------------------------------------------

    async def token(self, request: Request) -> _Outcome:
        body = (await request.body()).decode("utf-8", errors="replace")
        form = {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}
        grant_type = form.get("grant_type")
        instance_url = f"{request.url.scheme}://{request.url.netloc}"
        if grant_type == "client_credentials":
            rejected = self.check_client_credentials(request, form)
        elif grant_type == JWT_BEARER_GRANT and self.jwt_key is not None:
            rejected = self.check_assertion(form.get("assertion", ""), instance_url)
        else:
            return _Outcome(_oauth_error("unsupported_grant_type", "grant type not supported"))
        if rejected is not None:
            return _Outcome(rejected)
        return _Outcome(JSONResponse(self.issue_token(instance_url, grant_type)))

    def check_client_credentials(self, request: Request,
                                 form: dict[str, str]) -> JSONResponse | None:
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            client_id, _, client_secret = decoded.partition(":")
        valid = (hmac.compare_digest(client_id.encode(), self.client_id.encode())
                 and hmac.compare_digest(client_secret.encode(), self.client_secret.encode()))
        return None if valid else _oauth_error("invalid_client", "invalid client credentials")

    def check_assertion(self, assertion: str, instance_url: str) -> JSONResponse | None:
        """Verify a JWT bearer assertion (RFC 7523) as Salesforce does.

        NOTE: "expired authorization code" and "audience is invalid" are
        descriptions Salesforce is reported to return. The others are this
        server's wording, chosen to contain the word the dialect looks for.
        """
        assert self.jwt_bearer is not None and self.jwt_key is not None
        audiences = ([self.jwt_bearer.audience] if self.jwt_bearer.audience
                     else [instance_url, *_SALESFORCE_AUDIENCES])
        try:
            claims = jwt.decode(assertion, self.jwt_key, algorithms=["RS256"],
                                audience=audiences, leeway=_JWT_LEEWAY,
                                options={"require": ["iss", "sub", "aud", "exp"]})
        except jwt.ExpiredSignatureError:
            return _oauth_error("invalid_grant", "expired authorization code")
        except jwt.InvalidAudienceError:
            return _oauth_error("invalid_grant", "audience is invalid")
        except jwt.InvalidTokenError:
            return _oauth_error("invalid_grant", "invalid assertion")
        if claims["exp"] > time.time() + JWT_MAX_LIFETIME + _JWT_LEEWAY:
            return _oauth_error("invalid_grant",
                                "invalid assertion: exp is more than 3 minutes ahead")
        if not hmac.compare_digest(str(claims["iss"]).encode(), self.client_id.encode()):
            return _oauth_error("invalid_grant", "client identifier invalid")
        if not hmac.compare_digest(str(claims["sub"]).encode(),
                                   self.jwt_bearer.username.encode()):
            return _oauth_error("invalid_grant", "user hasn't approved this consumer")
        return None

    def issue_token(self, instance_url: str, grant_type: str | None) -> dict[str, str]:
        now = time.monotonic()
        self.tokens = {token: deadline for token, deadline in self.tokens.items()
                       if deadline > now}
        access_token = f"{_ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        self.tokens[access_token] = now + self.token_ttl
        identity_url = f"{instance_url}/id/{_ORG_ID}/{_INTEGRATION_USER_ID}"
        body = {"access_token": access_token, "instance_url": instance_url,
                "id": identity_url, "token_type": "Bearer"}
        if grant_type == JWT_BEARER_GRANT:
            # Salesforce returns a scope and no signature for the JWT bearer grant.
            return {**body, "scope": "api"}
        issued_at = str(int(time.time() * 1000))
        digest = hmac.new(self.client_secret.encode(), (identity_url + issued_at).encode(),
                          hashlib.sha256).digest()
        return {**body, "issued_at": issued_at,
                "signature": base64.b64encode(digest).decode()}

    # --- REST data API -------------------------------------------------------------------

    async def list_versions(self, request: Request) -> _Outcome:
        return _Outcome(JSONResponse([
            {"label": _release_label(int(float(version))), "url": f"/services/data/v{version}",
             "version": version}
            for version in self.versions
        ]))

    async def query(self, request: Request) -> _Outcome:
        rejected = self.check_session(request) or self.check_version(request)
        if rejected is not None:
            return _Outcome(rejected)
        statement = request.query_params.get("q", "")
        if not statement.strip():
            return _Outcome(salesforce_error(400, "MALFORMED_QUERY",
                                             "A query string has to be specified"))
        try:
            query = parse(statement)
        except SoqlError as error:
            return _Outcome(salesforce_error(400, error.error_code, error.message))

        written_fields = None if query.count_only else [field.name for field in query.fields]
        keys = query.first_in_list_size()
        try:
            result = self.store.execute(query)
        except SoqlError as error:
            return _Outcome(salesforce_error(400, error.error_code, error.message),
                            entity=query.sobject.name, keys=keys, fields=written_fields)

        version = request.path_params["version"]
        records = [self.project(result, record, version) for record in result.records]
        locator = _Locator(result.sobject, written_fields, records, self.batch_size(request))
        response = self.page(locator, 0, version, result.total_size)
        return _Outcome(response, entity=result.sobject, keys=keys, fields=written_fields)

    async def retrieve_collection(self, request: Request) -> _Outcome:
        rejected = self.check_session(request) or self.check_version(request)
        if rejected is not None:
            return _Outcome(rejected)
        type_name = request.path_params["sobject"]
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        try:
            parsed = parse_retrieve(self.store, type_name, body)
        except CollectionError as error:
            ids = body.get("ids") if isinstance(body, dict) else None
            return _Outcome(salesforce_error(error.status, error.error_code, error.message),
                            entity=type_name, keys=len(ids) if isinstance(ids, list) else 0,
                            fields=_sent_fields(body))
        records = retrieve(self.store, parsed, request.path_params["version"])
        return _Outcome(JSONResponse(records), entity=parsed.sobject, keys=len(parsed.ids),
                        fields=_sent_fields(body))

    async def query_more(self, request: Request) -> _Outcome:
        rejected = self.check_session(request) or self.check_version(request)
        if rejected is not None:
            return _Outcome(rejected)
        locator_id, _, offset_text = request.path_params["locator"].rpartition("-")
        locator = self.locators.get(locator_id)
        if locator is None or not offset_text.isdigit() or int(offset_text) > len(
                locator.records):
            return _Outcome(salesforce_error(400, "INVALID_QUERY_LOCATOR",
                                             "invalid query locator"))
        self.locators.move_to_end(locator_id)
        response = self.page(locator, int(offset_text), request.path_params["version"],
                             len(locator.records), locator_id)
        return _Outcome(response, entity=locator.sobject, fields=locator.fields)

    def batch_size(self, request: Request) -> int:
        match = _BATCH_SIZE_OPTION.search(request.headers.get("sforce-query-options", ""))
        if match is None:
            return self.page_size
        return min(max(int(match.group(1)), MIN_BATCH_SIZE), MAX_BATCH_SIZE)

    def page(self, locator: _Locator, offset: int, version: str, total_size: int,
             locator_id: str | None = None) -> JSONResponse:
        end = offset + locator.batch_size
        body: dict[str, Any] = {"totalSize": total_size, "done": end >= len(locator.records),
                                "records": locator.records[offset:end]}
        if not body["done"]:
            if locator_id is None:
                locator_id = self.store_locator(locator)
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator_id}-{end}"
        return JSONResponse(body)

    def store_locator(self, locator: _Locator) -> str:
        locator_id = "01g" + "".join(secrets.choice(_BASE62) for _ in range(15))
        self.locators[locator_id] = locator
        while len(self.locators) > _MAX_LOCATORS:
            self.locators.popitem(last=False)
        return locator_id

    @staticmethod
    def project(result: QueryResult, record: dict[str, Any], version: str) -> dict[str, Any]:
        projected: dict[str, Any] = {"attributes": {
            "type": result.sobject,
            "url": f"/services/data/{version}/sobjects/{result.sobject}/{record.get('Id')}",
        }}
        for field in result.fields:
            projected[field] = record.get(field)
        return projected


def create_salesforce_app(data: DemoData, *, client_id: str, client_secret: str,
                          api_version: str = "62.0", page_size: int = 2000,
                          token_ttl: float = 7200.0,
                          jwt_bearer: JwtBearerSettings | None = None) -> Starlette:
    """Build the demo Salesforce server over ``data.crm``.

    ``page_size`` is the batch size when a query sends no ``Sforce-Query-Options``
    header. Tokens expire ``token_ttl`` seconds after they are issued. The
    JWT bearer grant is accepted only when ``jwt_bearer`` is given.
    """
    if not re.fullmatch(r"\d+\.0", api_version):
        raise ValueError(f"api_version {api_version!r} is invalid. Use a form like '62.0'.")
    if page_size < 1:
        raise ValueError(f"page_size {page_size} is invalid. Use a positive number of records.")
    server = _SalesforceServer(data, client_id=client_id, client_secret=client_secret,
                               api_version=api_version, page_size=page_size, token_ttl=token_ttl,
                               jwt_bearer=jwt_bearer)
    vendor = server.vendor_route
    query = vendor(server.query, counts_usage=True)
    routes = [
        Route("/services/oauth2/token", vendor(server.token, counts_usage=False),
              methods=["POST"]),
        Route("/services/data", vendor(server.list_versions, counts_usage=False)),
        Route("/services/data/", vendor(server.list_versions, counts_usage=False)),
        # simple-salesforce requests "query/" with a trailing slash.
        Route("/services/data/{version}/query", query),
        Route("/services/data/{version}/query/", query),
        Route("/services/data/{version}/query/{locator}",
              vendor(server.query_more, counts_usage=True)),
        Route("/services/data/{version}/composite/sobjects/{sobject}",
              vendor(server.retrieve_collection, counts_usage=True), methods=["POST"]),
        *control_routes(server.control),
    ]
    app = Starlette(routes=routes)
    app.state.control = server.control
    app.state.expire_tokens = server.expire_tokens
    app.state.set_api_usage = server.set_api_usage
    return app


_WHERE = re.compile(r"\sWHERE\s(.*?)(?:\sORDER\s+BY\s|\sLIMIT\s|\sOFFSET\s|$)",
                    re.IGNORECASE | re.DOTALL)
_LONG_IN = re.compile(r"IN\s*\(([^)]{200,})\)", re.IGNORECASE)


def _where_clause(soql: str | None) -> str | None:
    """Return the WHERE clause of ``soql`` for the log, with long IN lists shortened."""
    if not soql:
        return None
    match = _WHERE.search(soql)
    if match is None:
        return None
    return _LONG_IN.sub(lambda m: f"IN (<{m.group(1).count(',') + 1} values>)", match.group(1))
