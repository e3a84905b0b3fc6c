"""The rules of who may do what, as checks that raise `PermissionDenied`.

Checks take records, never connections: the store runs them inside the transaction that reads the
record they judge (`DecisionCheck`), so a rule and the write it guards cannot drift apart.
"""

from __future__ import annotations

from sre.store import DecisionCheck
from sre.types.errors import PermissionDenied
from sre.types.records import ApprovalRecord, Principal


def may_decide(record: ApprovalRecord, principal: Principal) -> bool:
    """An approval's named approvers (by name or id) decide it; with none named, the principal the
    run acts for does."""
    if record.approvers:
        return principal.name in record.approvers or principal.id in record.approvers
    return principal.id == record.principal_id


def approval_check(principal: Principal) -> DecisionCheck:
    def check(record: ApprovalRecord) -> None:
        if not may_decide(record, principal):
            raise PermissionDenied(
                f"Principal '{principal.name}' may not decide approval '{record.id}'.",
                code="not_an_approver",
            )

    return check
