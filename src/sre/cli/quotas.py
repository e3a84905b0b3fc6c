"""`sre admin quotas`: set, show and clear the limits of a tenant, a principal or an API key, as thin
commands over `Runtime` (acting as the tenant's `cli` service principal, an admin).

The server-wide defaults live in the configuration (`[quotas.tenant]`, `[quotas.principal]`,
`[quotas.key]`); these commands change a subject's own limits in the store, which every server
process follows within a second.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from sre.cli.commands import CLIError, ConfigPath, DatabaseUrl, DataDir, Tenant, _caller, _open, _say

quotas_app = typer.Typer(
    help="Set, show and clear the limits of a tenant, principal or key: requests per minute, tokens per "
    "day, concurrent runs.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

Principal = Annotated[str | None, typer.Option("--principal", help="A principal of the tenant (name or id).")]
Key = Annotated[str | None, typer.Option("--key", help="An API key of the tenant (its id: `sre keys list`).")]
_VALUE = "a whole number, 'unlimited', or 'default' (back to the configuration's)"
RequestsPerMinute = Annotated[
    str | None, typer.Option("--requests-per-minute", help=f"Requests per minute: {_VALUE}.")
]
TokensPerDay = Annotated[
    str | None, typer.Option("--tokens-per-day", help=f"Model tokens per UTC day: {_VALUE}.")
]
ConcurrentRuns = Annotated[
    str | None, typer.Option("--concurrent-runs", help=f"Runs queued, running or paused at once: {_VALUE}.")
]


def _subject(principal: str | None, key: str | None) -> tuple[str, str | None]:
    if principal is not None and key is not None:
        raise CLIError("name a --principal or a --key, not both")
    if principal is not None:
        return "principal", principal
    if key is not None:
        return "key", key
    return "tenant", None


def _value(text: str, option: str) -> int | str | None:
    if text == "default":
        return None
    if text == "unlimited":
        return text
    if not text.isdigit():
        raise CLIError(f"{option} takes {_VALUE}, not {text!r}")
    return int(text)


def _lines(quota: dict[str, Any]) -> list[str]:
    lines = [f"{quota['subject']} {quota['name']} ({quota['id']})"]
    for limit in ("requests_per_minute", "tokens_per_day", "concurrent_runs"):
        entry = quota[limit]
        value = "unlimited" if entry["limit"] is None else str(entry["limit"])
        source = f" ({entry['source']})" if entry["source"] else ""
        lines.append(f"  {limit:<20} {value + source:<24} used {entry['used']}")
    return lines


@quotas_app.command("set")
def quotas_set(
    principal: Principal = None,
    key: Key = None,
    requests_per_minute: RequestsPerMinute = None,
    tokens_per_day: TokensPerDay = None,
    concurrent_runs: ConcurrentRuns = None,
    tenant: Tenant = None,
    config: ConfigPath = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set a subject's own limits (the tenant's, or a principal's or key's); those not named stay as
    they are. Audited."""
    kind, ref = _subject(principal, key)
    body: dict[str, Any] = {"subject": kind, "id": ref}
    for option, limit, text in (
        ("--requests-per-minute", "requests_per_minute", requests_per_minute),
        ("--tokens-per-day", "tokens_per_day", tokens_per_day),
        ("--concurrent-runs", "concurrent_runs", concurrent_runs),
    ):
        if text is not None:
            body[limit] = _value(text, option)
    if len(body) == 2:
        raise CLIError("name a limit to set: --requests-per-minute, --tokens-per-day or --concurrent-runs")
    runtime = _open(data_dir, database_url, config)
    try:
        quota = asyncio.run(runtime.set_quota(_caller(runtime, tenant), body))
    finally:
        runtime.close()
    print("\n".join(_lines(quota)))


@quotas_app.command("show")
def quotas_show(
    principal: Principal = None,
    key: Key = None,
    tenant: Tenant = None,
    config: ConfigPath = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show a subject's limits (each with its source: override or default) and what it has used; with
    no --principal or --key, the tenant's and those of every subject with limits of its own."""
    kind, ref = _subject(principal, key)
    runtime = _open(data_dir, database_url, config)
    try:
        caller = _caller(runtime, tenant)
        quotas = asyncio.run(runtime.get_quotas(caller, subject=kind, id=ref))["data"]
        if kind == "tenant":
            overrides = asyncio.run(runtime.list_quota_overrides(caller))["data"]
            quotas += [q for q in overrides if q["subject"] != "tenant"]
    finally:
        runtime.close()
    for quota in quotas:
        print("\n".join(_lines(quota)))


@quotas_app.command("clear")
def quotas_clear(
    principal: Principal = None,
    key: Key = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Clear a subject's own limits: it has the configuration's defaults again. Audited."""
    kind, ref = _subject(principal, key)
    runtime = _open(data_dir, database_url, None)
    try:
        cleared = asyncio.run(runtime.delete_quota(_caller(runtime, tenant), subject=kind, id=ref))
    finally:
        runtime.close()
    _say(f"Cleared the limits of {cleared['subject']} {cleared['id']}: it has the defaults again.")
