"""What every HTTP provider shares: turning an upstream's failure into SRE's errors.

`HTTPModel` holds the connection settings every HTTP provider takes (base URL, key, extra headers
and query parameters, connect and read timeouts) and one pooled client. A 429 becomes `RateLimited`, a 400 `InvalidRequest`, other statuses `ModelError`; 408, 409, 429
and 5xx are marked retryable, with `Retry-After` (seconds or an HTTP date) carried along for the
retry wrapper. Errors an upstream reports inside a stream go through `stream_error`, and the
server-sent event framing every streaming wire format shares is read here too. Providers call
these; they never decide about retrying themselves.
"""

from __future__ import annotations

import email.utils
import json
import time
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import httpx

from sre.models.base import ChatModel, ModelEvent, ModelInfo, ModelRequest
from sre.models.guard import check_allowed
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


_RATE_LIMIT_KINDS = frozenset({"rate_limit_error", "rate_limit_exceeded", "rate_limited"})
_RETRYABLE_KINDS = frozenset(
    {
        "server_error",
        "api_error",
        "overloaded_error",
        "internal_server_error",
        "timeout",
        "service_unavailable",
    }
)


def stream_error(model: str, message: str, kind: str | int | None = None) -> SREError:
    """An error the upstream reported inside a stream, after it had already answered 200.

    `kind` is the upstream's error type or code (`overloaded_error`, `rate_limit_exceeded`, 503, ...);
    it decides, like a status would, whether trying again may help.
    """
    detail = f"{kind}: {message}" if kind not in (None, "") else message
    if isinstance(kind, int) or (isinstance(kind, str) and kind.isdigit()):
        status = int(kind)
        if status == 429:
            kind = "rate_limit_error"
        retryable = status in RETRYABLE_STATUSES
    else:
        retryable = kind in _RETRYABLE_KINDS
    if kind in _RATE_LIMIT_KINDS:
        return RateLimited(
            f"model '{model}' is rate limited upstream: {detail[:500]}",
            code="upstream_rate_limited",
            retryable=True,
        )
    return ModelError(f"model '{model}' failed: {detail[:500]}", code="upstream_error", retryable=retryable)


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str]]:
    """The (event name, data) pairs of a server-sent event stream, data lines joined by newlines."""
    name: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = None, []
        elif line.startswith(":"):
            continue  # a comment, sent as a keep-alive
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        yield name, "\n".join(data)


def json_object(model: str, payload: str) -> dict[str, Any]:
    """One event's data as a JSON object, or `malformed`."""
    try:
        value = json.loads(payload)
    except ValueError:
        raise malformed(model) from None
    if not isinstance(value, dict):
        raise malformed(model)
    return value


class HTTPModel(ChatModel):
    """A provider that talks HTTP: its settings from configuration, one client made on first use, and
    the streamed POST every such provider makes. Subclasses say where (`endpoint`), what
    (`build_body`), with which extra headers (`wire_headers`), and how to read the answer (`events`)."""

    default_base_url = "https://api.openai.com/v1"
    endpoint = "/chat/completions"

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        opts = info.options
        self.base_url = str(opts.get("base_url") or self.default_base_url).rstrip("/")
        self.api_key: str | None = opts.get("api_key")
        self.headers = {str(k): str(v) for k, v in dict(opts.get("headers") or {}).items()}
        self.query = {str(k): str(v) for k, v in dict(opts.get("query") or {}).items()}
        self.timeout = httpx.Timeout(
            float(opts.get("read_timeout", 300.0)), connect=float(opts.get("connect_timeout", 10.0))
        )
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    def wire_headers(self) -> dict[str, str]:
        """Headers of the wire format, the key's included; configured `headers` override them."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @abstractmethod
    def build_body(self, request: ModelRequest) -> dict[str, Any]:
        """The request body in the wire format."""

    @abstractmethod
    def events(self, response: httpx.Response, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """The answer's stream (to `request`) as `ModelEvent`s."""

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        url = f"{self.base_url}{self.endpoint}"
        check_allowed(url)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        headers.update(self.wire_headers())
        headers.update(self.headers)
        try:
            async with self._http().stream(
                "POST", url, params=self.query or None, json=self.build_body(request), headers=headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise status_error(self.name, response)
                async for event in self.events(response, request):
                    yield event
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
