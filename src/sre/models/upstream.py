"""What every HTTP provider shares: turning an upstream's failure into SRE's errors.

A 429 becomes `RateLimited`, a 400 `InvalidRequest`, other statuses `ModelError`; 408, 409, 429
and 5xx are marked retryable, with `Retry-After` (seconds or an HTTP date) carried along for the
retry wrapper. Providers call these; they never decide about retrying themselves.
"""

from __future__ import annotations

import email.utils
import json
import time

import httpx

from sre.types.errors import InvalidRequest, ModelError, RateLimited, SREError

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:500]
    return json.dumps(body)[:500]


def status_error(model: str, response: httpx.Response) -> SREError:
    """The error for a non-2xx answer; call after the body has been read."""
    detail = error_detail(response)
    status = response.status_code
    retryable = status in RETRYABLE_STATUSES
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429:
        return RateLimited(
            f"model '{model}' is rate limited upstream: {detail}",
            code="upstream_rate_limited",
            retryable=True,
            retry_after=retry_after,
        )
    if status == 400:
        return InvalidRequest(f"model '{model}' rejected the request: {detail}", code="upstream_bad_request")
    return ModelError(
        f"model '{model}' failed with HTTP {status}: {detail}",
        code="upstream_error",
        retryable=retryable,
        retry_after=retry_after,
    )


def transport_error(model: str, exc: httpx.HTTPError) -> ModelError:
    if isinstance(exc, httpx.TimeoutException):
        return ModelError(
            f"model '{model}' timed out: {type(exc).__name__}", code="model_timeout", retryable=True
        )
    return ModelError(f"could not reach model '{model}': {exc}", code="model_unreachable", retryable=True)


def malformed(model: str) -> ModelError:
    return ModelError(f"model '{model}' sent a malformed chunk", code="upstream_malformed")


def cut_short(model: str) -> ModelError:
    return ModelError(
        f"model '{model}' ended its stream without finishing", code="upstream_incomplete", retryable=True
    )
