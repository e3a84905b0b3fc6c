"""Quotas' vocabulary: the three limits, the three subjects they bind, a limit on one subject, an
override as stored, the body that sets one, and the refusal each limit gives.

Values are whole numbers: `None` in an override inherits the server's default, `UNLIMITED` (-1)
lifts it, 0 refuses everything the limit counts. Imports nothing from SRE but errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from sre.types.errors import QuotaExceeded

REQUESTS_PER_MINUTE = "requests_per_minute"
TOKENS_PER_DAY = "tokens_per_day"
CONCURRENT_RUNS = "concurrent_runs"
LIMITS = (REQUESTS_PER_MINUTE, TOKENS_PER_DAY, CONCURRENT_RUNS)
SUBJECTS = ("tenant", "principal", "key")  # the order in which subjects are checked and locked
UNLIMITED = -1
MAXIMUM = {REQUESTS_PER_MINUTE: 10**7, TOKENS_PER_DAY: 10**13, CONCURRENT_RUNS: 10**6}
MINUTE = 60
DAY = 86400

_UNITS = {
    REQUESTS_PER_MINUTE: "requests per minute",
    TOKENS_PER_DAY: "tokens per day (UTC)",
    CONCURRENT_RUNS: "concurrent runs",
}


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom a limit binds: a tenant, a principal or an API key (by id)."""

    kind: str  # one of SUBJECTS
    id: str


@dataclass(frozen=True, slots=True)
class Bound:
    """One limit on one subject: what a request is counted and checked against."""

    subject: Subject
    limit: str  # one of LIMITS
    value: int  # >= 0


@dataclass(frozen=True, slots=True)
class QuotaOverride:
    """A subject's own limits, as stored: each None (the default), UNLIMITED or a value >= 0."""

    tenant_id: str
    subject: Subject
    requests_per_minute: int | None
    tokens_per_day: int | None
    concurrent_runs: int | None
    updated_at: int

    def value(self, limit: str) -> int | None:
        found: int | None = getattr(self, limit)
        return found


Value = int | Literal["unlimited"] | None


class SetQuota(BaseModel):
    """`POST /v1/quotas`: the limits given are set (null: back to the default; "unlimited": none),
    those not given are left as they are."""

    model_config = ConfigDict(extra="forbid", strict=True)
    subject: Literal["tenant", "principal", "key"]
    id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    requests_per_minute: (
        Annotated[int, Field(ge=0, le=MAXIMUM[REQUESTS_PER_MINUTE])] | Literal["unlimited"] | None
    ) = None
    tokens_per_day: Annotated[int, Field(ge=0, le=MAXIMUM[TOKENS_PER_DAY])] | Literal["unlimited"] | None = (
        None
    )
    concurrent_runs: (
        Annotated[int, Field(ge=0, le=MAXIMUM[CONCURRENT_RUNS])] | Literal["unlimited"] | None
    ) = None

    def changes(self) -> dict[str, int | None]:
        """The limits the body names, as stored (None, UNLIMITED or a value)."""
        return {
            limit: UNLIMITED if getattr(self, limit) == "unlimited" else getattr(self, limit)
            for limit in LIMITS
            if limit in self.model_fields_set
        }


def exceeded(bound: Bound, name: str, retry_after: float) -> QuotaExceeded:
    """The refusal of a request that `bound` does not let through, naming the subject as `name`."""
    wait = max(1, int(-(-retry_after // 1)))
    who = f"{bound.subject.kind} '{name}'"
    if bound.value == 0:
        unit = _UNITS[bound.limit]
        message = f"{unit[0].upper()}{unit[1:]} are blocked for {who} (its {bound.limit} is 0)."
    elif bound.limit == CONCURRENT_RUNS:
        message = (
            f"Concurrency limit reached for {who}: {bound.value} {_UNITS[bound.limit]} (queued, running "
            f"or waiting for input). Retry when one has ended (in {wait} s, say)."
        )
    else:
        kind = "Rate limit" if bound.limit == REQUESTS_PER_MINUTE else "Token quota"
        message = f"{kind} reached for {who}: {bound.value} {_UNITS[bound.limit]}. Retry in {wait} s."
    return QuotaExceeded(
        message, limit=bound.limit, subject=bound.subject.kind, subject_id=bound.subject.id, retry_after=wait
    )
