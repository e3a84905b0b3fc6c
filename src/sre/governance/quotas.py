"""Quotas and rate limits: which limits bind a caller, and the checks that refuse a request with 429.

Three limits — requests per minute, model tokens per UTC day, concurrent runs — on three subjects:
the API key, the principal and the tenant. A subject's limit is its override in the store, if it has
one, else the server's default for its kind (`[quotas.tenant]`, `[quotas.principal]`,
`[quotas.key]`); a request must pass every limit that binds it. Overrides are read at most once a
second per tenant and process (`CACHE_SECONDS`), so a request that no limit binds costs no database
work, and a change reaches every process within a second (at once in the one that made it). A
refusal is audited (`quota.exceeded`) once per subject, limit and window, not once per request. The
counting is the store's (`sre.store.quotas`); this module knows nothing of HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sre.store import LimitReached, Store
from sre.types.audit import AuditEvent
from sre.types.errors import ConfigError, PermissionDenied, QuotaExceeded
from sre.types.quotas import (
    DAY,
    LIMITS,
    MAXIMUM,
    MINUTE,
    REQUESTS_PER_MINUTE,
    SUBJECTS,
    TOKENS_PER_DAY,
    UNLIMITED,
    Bound,
    QuotaOverride,
    Subject,
    exceeded,
)
from sre.types.records import Caller, Principal

CACHE_SECONDS = 1.0  # how long a process trusts the overrides it read
PLACE_SECONDS = 60.0  # a plain turn's place lasts this long unrenewed (a dead process's frees itself)
RENEW_SECONDS = 20.0  # how often a running plain turn renews its place
RUN_RETRY_AFTER = 2  # a concurrency refusal's Retry-After: when a run will end is not known
QUOTA_ADMINS = ("admin",)


@dataclass(frozen=True)
class QuotaDefaults:
    """The server's limits for every subject of a kind (kind -> limit -> value); none by default."""

    limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def value(self, kind: str, limit: str) -> int | None:
        return self.limits.get(kind, {}).get(limit)

    @classmethod
    def from_config(cls, table: object) -> QuotaDefaults:
        """`[quotas.KIND]` tables of whole numbers, KIND one of tenant, principal, key."""
        if table is None:
            return cls()
        if not isinstance(table, dict):
            raise ConfigError(
                "[quotas] must be a table of tables: [quotas.tenant], [quotas.principal], [quotas.key]"
            )
        limits: dict[str, dict[str, int]] = {}
        for kind, section in table.items():
            if kind not in SUBJECTS or not isinstance(section, dict):
                raise ConfigError(f"[quotas.{kind}]: the subjects are {', '.join(SUBJECTS)}, each a table")
            for limit, value in section.items():
                if limit not in LIMITS:
                    raise ConfigError(
                        f"[quotas.{kind}]: unknown limit {limit!r} (limits: {', '.join(LIMITS)})"
                    )
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAXIMUM[limit]:
                    raise ConfigError(
                        f"[quotas.{kind}] {limit} must be a whole number from 0 to {MAXIMUM[limit]}, got {value!r}"
                    )
            limits[kind] = dict(section)
        return cls(limits)


def check_quota_admin(principal: Principal) -> None:
    if principal.role not in QUOTA_ADMINS:
        raise PermissionDenied(
            f"Principal '{principal.name}' ({principal.role}) may not change quotas: it takes the admin role.",
            code="role_required",
        )


def subjects_of(caller: Caller) -> list[Subject]:
    """Whom a caller's requests count against: its tenant, its principal and (if any) its key."""
    found = [Subject("tenant", caller.tenant_id), Subject("principal", caller.principal_id)]
    if caller.key_id is not None:
        found.append(Subject("key", caller.key_id))
    return found


class Quotas:
    def __init__(self, store: Store, defaults: QuotaDefaults, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.defaults = defaults
        self.clock = clock  # windows and days follow it (tests move it)
        self._overrides: dict[str, tuple[float, dict[Subject, QuotaOverride]]] = {}
        self._names: dict[tuple[str, Subject], str] = {}
        self._refused: dict[tuple[str, Bound], int] = {}

    # -- which limits bind ---------------------------------------------------------------------

    def cached(self, caller: Caller, limit: str) -> list[Bound] | None:
        """The bounds of `limit` on the caller's subjects, from memory; None when the tenant's overrides
        must be read first (`bounds`)."""
        entry = self._overrides.get(caller.tenant_id)
        if entry is None or time.monotonic() - entry[0] > CACHE_SECONDS:
            return None
        return self._bind(caller, limit, entry[1])

    def bounds(self, caller: Caller, limit: str) -> list[Bound]:
        """The bounds of `limit` on the caller's subjects, reading the tenant's overrides if stale."""
        return self._bind(caller, limit, self._read(caller.tenant_id))

    def _read(self, tenant_id: str) -> dict[Subject, QuotaOverride]:
        entry = self._overrides.get(tenant_id)
        if entry is not None and time.monotonic() - entry[0] <= CACHE_SECONDS:
            return entry[1]
        read = {o.subject: o for o in self.store.quotas.overrides(tenant_id)}
        self._overrides[tenant_id] = (time.monotonic(), read)
        return read

    def _bind(self, caller: Caller, limit: str, overrides: Mapping[Subject, QuotaOverride]) -> list[Bound]:
        found = []
        for subject in subjects_of(caller):
            own = overrides.get(subject)
            value = own.value(limit) if own is not None else None
            if value is None:
                value = self.defaults.value(subject.kind, limit)
            if value is not None and value != UNLIMITED:
                found.append(Bound(subject, limit, value))
        return found

    def metered(self, tenant_id: str, principal_id: str, key_id: str | None) -> list[Subject]:
        """The subjects whose token counters a model call adds to. It runs in the transaction that
        records the call: the overrides come from memory, read again (on a connection of their own)
        only when stale — in a process that executes runs but serves no request, once a second."""
        caller = Caller(tenant_id=tenant_id, principal_id=principal_id, key_id=key_id)
        return [b.subject for b in self._bind(caller, TOKENS_PER_DAY, self._read(tenant_id))]

    def forget(self, tenant_id: str) -> None:
        """Read the tenant's overrides again at its next request (this process changed them)."""
        self._overrides.pop(tenant_id, None)

    # -- checks --------------------------------------------------------------------------------

    def count_request(self, caller: Caller, bounds: Sequence[Bound]) -> None:
        """Count one request against `bounds` (requests per minute); `QuotaExceeded` over any."""
        now = self.clock()
        window = int(now // MINUTE) * MINUTE
        try:
            blocked = next((b for b in bounds if b.value == 0), None)
            if blocked is not None:
                raise LimitReached(blocked)
            self.store.quotas.count_request(caller.tenant_id, bounds, window)
        except LimitReached as reached:
            raise self.refusal(caller, reached.bound, window + MINUTE - now, window) from None

    def check_tokens(self, caller: Caller, bounds: Sequence[Bound]) -> None:
        """`QuotaExceeded` when a subject has used its tokens of the day (a turn that starts under its
        limit may end over it: its tokens are known only once it has run)."""
        now = self.clock()
        day = int(now // DAY) * DAY
        used = self.store.quotas.tokens_used(caller.tenant_id, [b.subject for b in bounds], day)
        for bound in bounds:
            if used.get(bound.subject, 0) >= bound.value:
                raise self.refusal(caller, bound, day + DAY - now, day)

    def run_refusal(self, caller: Caller, reached: LimitReached) -> QuotaExceeded:
        """The refusal of a run or plain turn for which a concurrency limit had no place left."""
        window = int(self.clock() // MINUTE) * MINUTE
        return self.refusal(caller, reached.bound, RUN_RETRY_AFTER, window)

    def refusal(self, caller: Caller, bound: Bound, retry_after: float, window: int) -> QuotaExceeded:
        """The error refusing a request over `bound`, audited once per subject, limit and window."""
        error = exceeded(bound, self.name(caller.tenant_id, bound.subject), retry_after)
        if self._refused.get((caller.tenant_id, bound)) != window:
            self._refused[(caller.tenant_id, bound)] = window
            if len(self._refused) > 100_000:
                self._refused.clear()
            event = AuditEvent(
                action="quota.exceeded",
                resource_type="quota",
                resource_id=f"{bound.subject.kind}:{bound.subject.id}",
                actor=caller.principal_id,
                outcome="denied",
                details={"limit": bound.limit, "value": bound.value, "window_start": window},
            )
            self.store.quotas.note_refusal(caller.tenant_id, bound, window, event)
        return error

    def name(self, tenant_id: str, subject: Subject) -> str:
        found = self._names.get((tenant_id, subject))
        if found is None:
            if len(self._names) > 100_000:
                self._names.clear()
            found = self._names[(tenant_id, subject)] = self.store.quotas.subject_name(tenant_id, subject)
        return found

    # -- looking and changing ------------------------------------------------------------------

    def status(self, caller: Caller, subject: Subject) -> dict[str, Any]:
        """A subject's limits (each with where it comes from) and what it has used of each."""
        now = self.clock()
        minute, day = int(now // MINUTE) * MINUTE, int(now // DAY) * DAY
        own = {o.subject: o for o in self.store.quotas.overrides(caller.tenant_id)}.get(subject)
        used = self.store.quotas.usage(caller.tenant_id, subject, minute, day)
        limits: dict[str, Any] = {}
        for limit in LIMITS:
            value = own.value(limit) if own is not None else None
            source = "override" if value is not None else None
            if value is None:
                value = self.defaults.value(subject.kind, limit)
                source = "default" if value is not None else None
            entry: dict[str, Any] = {
                "limit": None if value == UNLIMITED else value,
                "source": source,
                "used": used[limit],
            }
            if limit == REQUESTS_PER_MINUTE:
                entry["resets_at"] = minute + MINUTE
            elif limit == TOKENS_PER_DAY:
                entry["resets_at"] = day + DAY
            limits[limit] = entry
        return {
            "subject": subject.kind,
            "id": subject.id,
            "name": self.name(caller.tenant_id, subject),
            **limits,
        }

    def set(
        self, caller: Caller, principal: Principal, subject: Subject, changes: dict[str, int | None]
    ) -> QuotaOverride | None:
        """Set a subject's own limits (admins of its tenant only), audited; at once in this process."""
        check_quota_admin(principal)
        day = int(self.clock() // DAY) * DAY
        try:
            return self.store.quotas.set_override(
                caller.tenant_id, subject, changes, actor=caller.principal_id, day=day
            )
        finally:
            self.forget(caller.tenant_id)
