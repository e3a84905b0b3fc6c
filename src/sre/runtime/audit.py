"""The runtime's audit trail: listing a tenant's events (admins and auditors), verifying chains and
exporting them (the operator's CLI)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from typing import Any

from sre.governance import check_audit_reader
from sre.governance.auth import LOCAL_TENANT
from sre.runtime.base import RuntimeParts, _page_args
from sre.store import SYSTEM_TENANT
from sre.types.audit import ACTIONS, OUTCOMES, VerifyReport
from sre.types.errors import InvalidRequest
from sre.types.lists import list_object
from sre.types.records import Caller

FILTERS = (
    "action",
    "actor",
    "on_behalf_of",
    "agent",
    "resource_type",
    "resource_id",
    "outcome",
    "request_id",
)


def _bounded_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidRequest(f"Invalid value for '{name}': expected 1 to 200 characters.", param=name)
    return value


class AuditAPI(RuntimeParts):
    async def list_audit(
        self,
        caller: Caller,
        *,
        filters: dict[str, str] | None = None,
        since: int | None = None,
        until: int | None = None,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
    ) -> dict[str, Any]:
        """A page of the caller's tenant's audit events, newest first by default; admins and auditors
        only. `filters` match exactly; `since`/`until` are Unix seconds (from, up to but not including)."""
        _page_args(limit, order)
        checked: dict[str, str] = {}
        for name, value in (filters or {}).items():
            if name not in FILTERS:
                raise InvalidRequest(f"Unknown filter '{name}'.", param=name)
            checked[name] = _bounded_text(name, value)
        if "action" in checked and checked["action"] not in ACTIONS:
            raise InvalidRequest(
                f"Invalid value for 'action': '{checked['action']}' is not an audited action "
                f"({', '.join(ACTIONS)}).",
                param="action",
            )
        if "outcome" in checked and checked["outcome"] not in OUTCOMES:
            raise InvalidRequest(
                f"Invalid value for 'outcome': must be one of {', '.join(OUTCOMES)}.", param="outcome"
            )
        for bound, seconds in (("since", since), ("until", until)):
            if seconds is not None and (not isinstance(seconds, int) or not 0 <= seconds < 2**41):
                raise InvalidRequest(f"Invalid value for '{bound}': expected Unix seconds.", param=bound)
        if after is not None:
            _bounded_text("after", after)
        principal = await asyncio.to_thread(self.auth.principal, caller)
        check_audit_reader(principal)
        page = await asyncio.to_thread(
            partial(
                self.store.audit.list,
                caller.tenant_id,
                filters=checked,
                since_ms=None if since is None else since * 1000,
                until_ms=None if until is None else until * 1000,
                after=after,
                order=order,
                limit=limit,
            )
        )
        return list_object([r.to_json() for r in page.data], page.has_more)

    def _tenant_ids(self, tenant: str | None, every: bool) -> list[str]:
        if every:
            return self.store.audit.tenants()
        if tenant == SYSTEM_TENANT:
            return [SYSTEM_TENANT]
        tenant_id = self.store.keys.find_tenant(tenant or LOCAL_TENANT)
        if tenant_id is None:
            raise InvalidRequest(f"no tenant named {tenant or LOCAL_TENANT!r}", param="tenant")
        return [tenant_id]

    def verify_audit(self, tenant: str | None = None, *, every: bool = False) -> list[VerifyReport]:
        """Verify the named tenant's chain (None: the local tenant), or with `every` each chain."""
        return [self.store.audit.verify(t) for t in self._tenant_ids(tenant, every)]

    def export_audit(self, tenant: str | None = None, *, every: bool = False) -> Iterator[dict[str, Any]]:
        """Every event of the tenant's (or each) chain in order, as the API shows them."""
        for tenant_id in self._tenant_ids(tenant, every):
            for record in self.store.audit.stream(tenant_id):
                yield {"tenant_id": tenant_id, **record.to_json()}
