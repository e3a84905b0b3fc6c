"""The rules of who may do what, as checks that raise `PermissionDenied`.

Checks take records, never connections: the store runs them inside the transaction that reads the
record they judge (`DecisionCheck`), so a rule and the write it guards cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from sre.store import DecisionCheck
from sre.types.errors import PermissionDenied
from sre.types.records import ApprovalRecord, Principal


def approver_labels(principal: Principal, groups: Sequence[str] = ()) -> tuple[str, ...]:
    """The entries of an approvers list that name `principal`: its id, its name, `role:ROLE` and
    `group:NAME` for each group it is in."""
    return (principal.id, principal.name, f"role:{principal.role}", *(f"group:{g}" for g in groups))


def may_decide(record: ApprovalRecord, principal: Principal, groups: Sequence[str] = ()) -> bool:
    """An approval's named approvers (principals by name or id, `group:NAME`, `role:ROLE`) decide
    it; with none named, the principal the run acts for does."""
    if record.approvers:
        return not set(record.approvers).isdisjoint(approver_labels(principal, groups))
    return principal.id == record.principal_id


def approval_check(principal: Principal, groups: Sequence[str] = ()) -> DecisionCheck:
    def check(record: ApprovalRecord) -> None:
        if not may_decide(record, principal, groups):
            raise PermissionDenied(
                f"Principal '{principal.name}' may not decide approval '{record.id}'.",
                code="not_an_approver",
            )

    return check
