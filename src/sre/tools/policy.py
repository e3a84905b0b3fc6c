"""Tool policy: whether a tool call is refused, or must wait for an approver, from an agent's
`approval` settings.

A call is refused when its tool is listed in `tools_denied` or a `deny` rule for it matches its
arguments; it needs approval when its tool is listed in `tools_requiring_approval`, or when an
`approval` rule for its tool matches its arguments. Comparisons that do not apply (a number against a string, say) do not
match. Pure functions: no I/O.
"""

from __future__ import annotations

from typing import Any

from sre.types.agents import AgentApproval, ApprovalRule


def _matches(rule: ApprovalRule, arguments: dict[str, Any]) -> bool:
    if rule.argument is None:
        return True
    if rule.argument not in arguments:
        return False
    actual, expected = arguments[rule.argument], rule.value
    try:
        match rule.op:
            case "exists":
                return True
            case "eq":
                return bool(actual == expected)
            case "ne":
                return bool(actual != expected)
            case "gt":
                return bool(actual > expected)
            case "gte":
                return bool(actual >= expected)
            case "lt":
                return bool(actual < expected)
            case "lte":
                return bool(actual <= expected)
            case "in":
                return isinstance(expected, list) and actual in expected
            case "contains":
                return isinstance(actual, str | list) and expected in actual
    except TypeError:
        return False
    return False


def needs_approval(policy: AgentApproval, tool: str, arguments: dict[str, Any]) -> bool:
    if tool in policy.tools_requiring_approval:
        return True
    return any(
        rule.tool == tool and rule.effect == "approval" and _matches(rule, arguments) for rule in policy.rules
    )


def denied(policy: AgentApproval, tool: str, arguments: dict[str, Any]) -> bool:
    """Whether the agent's policy refuses this call outright (before any approval is asked)."""
    if tool in policy.tools_denied:
        return True
    return any(
        rule.tool == tool and rule.effect == "deny" and _matches(rule, arguments) for rule in policy.rules
    )
