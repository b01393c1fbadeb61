"""The gateway's exception tree.

Every error raised by gateway code derives from ``GatewayError``. Errors of
third-party libraries (httpx, casbin, SQLAlchemy, cryptography, PyJWT) are
translated into one of these at the module boundary that calls the library,
with ``raise ... from exc`` so the cause stays in tracebacks but never in a
client-facing message::

    GatewayError
    ├── ConfigError            a setting or declaration is invalid; raised at start
    ├── SchemaError            a declaration in schema/ is inconsistent
    ├── PolicyError            the policy files cannot be loaded or evaluated
    ├── AuthenticationError    a request carries no valid bearer token (HTTP 401)
    ├── IdentityUnavailable    the token keys cannot be fetched (HTTP 503)
    ├── NoRoleError            a valid token maps to no gateway role (HTTP 403)
    ├── PurposeError           the requested purpose is not one the token allows (HTTP 403)
    ├── UpstreamError          a source system failed; carries the system name
    │   ├── UpstreamUnavailable    connection failed, 5xx, or an error envelope
    │   ├── UpstreamTimeout        no answer within the system's timeout
    │   ├── RequestTimeout         no answer within the request's time budget
    │   ├── UpstreamRateLimited    the system asked the gateway to slow down
    │   ├── UpstreamAuthFailed     the system rejected the gateway's credentials
    │   └── UpstreamRejected       the system refused the request (4xx): a gateway bug
    └── AuditError             the audit store cannot be written or read
        └── AuditIntegrityError    the stored chain does not verify
"""

from __future__ import annotations

# Client input that an error or a log line quotes is cut to this many characters, so
# that a 100 KB operation name or header cannot inflate responses and logs.
QUOTE_LIMIT = 80


def quoted(value: str, limit: int = QUOTE_LIMIT) -> str:
    """Return ``repr(value)``, or the repr of its first ``limit`` characters and its length."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class GatewayError(Exception):
    """Base class of every error the gateway raises."""


class ConfigError(GatewayError):
    """A configuration setting is missing or invalid."""


class SchemaError(GatewayError):
    """A schema declaration is missing, unknown or inconsistent."""


class PolicyError(GatewayError):
    """The policy model or rules cannot be loaded or evaluated."""


class AuthenticationError(GatewayError):
    """The request has no valid bearer token."""


class IdentityUnavailable(GatewayError):
    """The JWKS endpoint failed or timed out, so the token's key is unknown."""


class NoRoleError(GatewayError):
    """A valid token carries no claim value that maps to a gateway role."""


class PurposeError(GatewayError):
    """The request names a purpose of processing that its token does not allow."""


class UpstreamError(GatewayError):
    """A source system failed to return the rows of a read.

    ``system`` is the configured system name (for example ``crm``); the
    message never contains the upstream's own error text, which may quote
    personal values.
    """

    code = "UPSTREAM_UNAVAILABLE"

    def __init__(self, system: str, message: str) -> None:
        super().__init__(message)
        self.system = system


class UpstreamUnavailable(UpstreamError):
    """The system could not be reached or responded with a server error."""


class UpstreamTimeout(UpstreamError):
    """The system did not respond within its configured timeout."""

    code = "UPSTREAM_TIMEOUT"


class RequestTimeout(UpstreamError):
    """The system had not responded when the request's time budget ran out."""

    code = "REQUEST_TIMEOUT"


class UpstreamRateLimited(UpstreamError):
    """The system refused the request for now (HTTP 429, Salesforce REQUEST_LIMIT_EXCEEDED).

    ``retry_after`` is the delay in seconds the system asked for, if it named one.
    """

    code = "UPSTREAM_RATE_LIMITED"

    def __init__(self, system: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(system, message)
        self.retry_after = retry_after


class UpstreamAuthFailed(UpstreamError):
    """The system rejected the gateway's own credentials; retrying cannot help."""


class UpstreamRejected(UpstreamError):
    """The system rejected the request as invalid, which points to a gateway bug."""


class AuditError(GatewayError):
    """The audit store cannot be written or read."""


class AuditIntegrityError(AuditError):
    """The audit chain does not verify."""
