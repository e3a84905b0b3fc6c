"""Roles and rights: the written list of what each role of a tenant may do.

A right is a named capability; every API route requires exactly one (`sre.api.app` declares which,
`docs/governance.md` prints the table both make). A principal has one role, and a role is a set of
rights. An API key may carry scopes: it then holds only those of its principal's rights that its
scopes name. `act_as` is never part of a role: it comes only as a key's scope, given by an admin to a
service. Principals made before roles existed are admins (they could do everything); a principal
made now is a `member` unless its creator says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

from sre.types.errors import InvalidRequest, PermissionDenied
from sre.types.records import OVERSIGHT_ROLES, ROLES, Caller, Principal

RIGHTS: dict[str, str] = {
    "responses": "create responses and conversations; read, continue, fork and delete one's own "
    "(and the tenant's shared ones); admins and auditors read everyone's, audited",
    "models": "list models, count input tokens, create embeddings",
    "agents.read": "read the tenant's agents and run them",
    "agents.write": "create, change and delete the tenant's agents",
    "approvals": "list the approvals one may see and decide those one is an approver of",
    "usage": "read one's own usage (admins and auditors: the tenant's, by principal)",
    "keys": "list, create, rotate and revoke one's own API keys",
    "directory": "read the tenant's principals, groups and keys",
    "admin": "create and change principals, groups, others' keys and quotas",
    "secrets": "store, replace, list and delete the tenant's secrets (their values are never shown)",
    "audit": "read and export the tenant's audit trail",
    "act_as": "act for a user of the tenant (a key scope an admin gives a service; never a role's)",
}

_BASE = ("responses", "models", "agents.read", "approvals", "usage", "keys")
ROLE_RIGHTS: dict[str, frozenset[str]] = {
    "admin": frozenset(RIGHTS) - {"act_as"},
    "developer": frozenset((*_BASE, "agents.write")),
    "member": frozenset(_BASE),
    "auditor": frozenset((*_BASE, "directory", "audit")),
}
assert set(ROLE_RIGHTS) == set(ROLES)

AUDIT_READERS = OVERSIGHT_ROLES  # and they read every member's conversations and responses (audited)


def rights(caller: Caller) -> frozenset[str]:
    """What the caller may do: its role's rights, narrowed to its key's scopes when it has some
    (`act_as` only from a scope)."""
    of_role = ROLE_RIGHTS.get(caller.role, frozenset())
    if caller.scopes is None:
        return of_role
    scopes = frozenset(caller.scopes)
    return (of_role & scopes) | (scopes & {"act_as"})


def require(caller: Caller, right: str) -> None:
    """`PermissionDenied` unless the caller holds `right`."""
    if right not in rights(caller):
        scoped = right == "act_as" or (
            caller.scopes is not None and right in ROLE_RIGHTS.get(caller.role, frozenset())
        )
        why = "its key's scopes do not include it" if scoped else f"the {caller.role} role does not have it"
        raise PermissionDenied(
            f"This request needs the '{right}' right ({RIGHTS.get(right, right)}); {why}.",
            code="scope_missing" if scoped else "role_required",
        )


def check_scopes(scopes: Iterable[str], holder: Caller | None = None) -> tuple[str, ...]:
    """Validated scopes for a new key: known rights, no repeats; with `holder`, none it lacks itself
    (a key never carries more than its creator may do)."""
    out = tuple(dict.fromkeys(scopes))
    unknown = [s for s in out if s not in RIGHTS]
    if unknown:
        raise InvalidRequest(f"unknown scope {unknown[0]!r}; scopes are: {', '.join(RIGHTS)}", param="scopes")
    if holder is not None:
        beyond = [
            s for s in out if s not in rights(holder) and not (s == "act_as" and holder.role == "admin")
        ]
        if beyond:
            raise PermissionDenied(
                f"A key may not carry the '{beyond[0]}' scope: its creator does not hold it.",
                code="scope_not_held",
            )
    return out


def check_audit_reader(principal: Principal) -> None:
    if principal.role not in AUDIT_READERS:
        raise PermissionDenied(
            f"Principal '{principal.name}' ({principal.role}) may not read the audit trail: it takes "
            "the admin or auditor role.",
            code="role_required",
        )
