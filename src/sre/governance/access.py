"""Access: whether a caller may make a request, and acting for a user.

`check` holds a request against the right its route requires (`sre.governance.roles`) and records a
refusal as an `access.denied` event. `act_for` turns a service's caller into one acting for an end
user of its tenant: the service needs the `act_as` scope; the user must be a `user` principal that
is neither disabled nor an admin or auditor (acting for them would lend their oversight). The result
has the user's identity, ownership and grants, the intersection of both rights (the service's
scopes narrow the user's role), and the service as `actor_id`, which the audit records as the actor
with the user as `on_behalf_of`.
"""

from __future__ import annotations

import dataclasses

from sre.governance.roles import ROLE_RIGHTS, require, rights
from sre.store import Store
from sre.types.audit import AuditEvent
from sre.types.errors import NotFound, PermissionDenied
from sre.types.records import OVERSIGHT_ROLES, Caller

ON_BEHALF_OF_HEADER = "x-sre-on-behalf-of"


def denial(caller: Caller, right: str, route: str, reason: str) -> AuditEvent:
    return AuditEvent(
        action="access.denied",
        resource_type="route",
        resource_id=route,
        actor=caller.actor_id or caller.principal_id,
        on_behalf_of=caller.principal_id if caller.actor_id else None,
        outcome="denied",
        details={"right": right, "reason": reason},
    )


class Access:
    def __init__(self, store: Store) -> None:
        self.store = store

    def check(self, caller: Caller, right: str, route: str) -> None:
        """`PermissionDenied` (audited) unless the caller holds `right`."""
        try:
            require(caller, right)
        except PermissionDenied as exc:
            self.store.audit.append(caller.tenant_id, [denial(caller, right, route, exc.code or "denied")])
            raise

    def act_for(self, caller: Caller, user: str, route: str) -> Caller:
        """The caller acting for `user` (a principal's id or name; a new name makes a `user`)."""
        if "act_as" not in rights(caller):
            self.check(caller, "act_as", route)
        user = user.strip()
        try:
            target = self.store.directory.principal(caller.tenant_id, user)
        except NotFound:
            target = self.store.keys.ensure_principal(caller.tenant_id, user, "user", "member")
        refused = None
        if target.kind != "user":
            refused = f"'{target.name}' is a {target.kind}, not a user"
        elif target.role in OVERSIGHT_ROLES:
            refused = f"'{target.name}' is an {target.role}; no one acts for an admin or auditor"
        elif target.disabled_at is not None:
            refused = f"'{target.name}' is disabled"
        if refused is not None:
            self.store.audit.append(caller.tenant_id, [denial(caller, "act_as", route, "target_refused")])
            raise PermissionDenied(f"A service may not act for {refused}.", code="act_as_refused")
        narrowed = (rights(caller) - {"act_as"}) & ROLE_RIGHTS[target.role]
        return dataclasses.replace(
            caller,
            principal_id=target.id,
            role=target.role,
            scopes=tuple(sorted(narrowed)),
            grants=target.grants,
            groups=(),
            actor_id=caller.principal_id,
        )
