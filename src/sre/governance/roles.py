"""Roles: what a principal of a tenant may do beyond its own resources.

A principal has one role: `admin`, `developer`, `member` or `auditor`. Today the roles differ in one
right only, reading the tenant's audit trail (`admin` and `auditor`); the per-route table of the
governance issue grows here. Principals made before roles existed are admins (they could do
everything); a principal made now is a `member` unless its creator says otherwise.
"""

from __future__ import annotations

from sre.types.errors import PermissionDenied
from sre.types.records import OVERSIGHT_ROLES, Principal

RIGHTS: dict[str, str] = {  # one line per role of `sre.types.records.ROLES`
    "admin": "everything within the tenant, the audit trail included",
    "developer": "agents, conversations and responses (not the audit trail)",
    "member": "agents, conversations and responses (not the audit trail)",
    "auditor": "the audit trail, besides a member's rights",
}
AUDIT_READERS = OVERSIGHT_ROLES  # and they read every member's conversations and responses (audited)


def check_audit_reader(principal: Principal) -> None:
    if principal.role not in AUDIT_READERS:
        raise PermissionDenied(
            f"Principal '{principal.name}' ({principal.role}) may not read the audit trail: it takes "
            "the admin or auditor role.",
            code="role_required",
        )
