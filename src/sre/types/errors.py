"""Error types of the whole system.

Every layer raises these; the HTTP API maps them to status codes once (`sre.api.errors`) and the CLI
to one line. They carry the OpenAI error fields (`message`, `type`, `param`, `code`) so the mapping
is mechanical. This module must not import anything from SRE.
"""

from __future__ import annotations


class SREError(Exception):
    """Base of every error SRE raises on purpose."""

    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        # For failures of an upstream model: may the same call succeed if tried again, and when.
        self.retryable = retryable
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(SREError):
    """The caller sent something malformed or inconsistent (HTTP 400)."""

    status_code = 400
    error_type = "invalid_request_error"


class InvalidField(InvalidRequest, ValueError):
    """An `InvalidRequest` raised inside a pydantic validator: pydantic reports it as a validation
    error (so the HTTP layer still authenticates first), and the error mapping hands it back unchanged."""


class Unauthenticated(SREError):
    """No key, an unknown key or a revoked key (HTTP 401)."""

    status_code = 401
    error_type = "authentication_error"


class PermissionDenied(SREError):
    """The caller is known but may not do this (HTTP 403)."""

    status_code = 403
    error_type = "permission_error"


class NotFound(SREError):
    """No such resource for this tenant; another tenant's ids look exactly like this (HTTP 404)."""

    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "not_found") -> None:
        super().__init__(message, param=param, code=code)


class Conflict(SREError):
    """The request collides with the current state (HTTP 409)."""

    status_code = 409
    error_type = "invalid_request_error"


class PayloadTooLarge(SREError):
    """The body is over the configured limit (HTTP 413)."""

    status_code = 413
    error_type = "invalid_request_error"


class Unprocessable(SREError):
    """Well-formed but semantically impossible (HTTP 422)."""

    status_code = 422
    error_type = "invalid_request_error"


class RateLimited(SREError):
    """Too many requests, here or at the upstream model (HTTP 429)."""

    status_code = 429
    error_type = "rate_limit_error"


class QuotaExceeded(RateLimited):
    """One of SRE's own quotas refused the request (HTTP 429 with `Retry-After`), in OpenAI's shape:
    type "requests" (a request rate or concurrency limit) or "tokens" (a token budget), code
    "rate_limit_exceeded". `limit` names the limit, `subject` and `subject_id` whom it binds."""

    def __init__(self, message: str, *, limit: str, subject: str, subject_id: str, retry_after: int) -> None:
        super().__init__(message, code="rate_limit_exceeded", retry_after=retry_after)
        self.error_type = "tokens" if limit == "tokens_per_day" else "requests"
        self.limit = limit
        self.subject = subject
        self.subject_id = subject_id


class ModelError(SREError):
    """The upstream model failed or answered something unusable (HTTP 500)."""

    status_code = 500
    error_type = "server_error"


class ConfigError(SREError):
    """The configuration file or environment is wrong; raised at start, shown as one line."""

    status_code = 500
    error_type = "server_error"
