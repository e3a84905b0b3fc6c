"""`sre admin`: a tenant's principals and groups, from the command line.

Thin commands over the runtime's directory methods, acting within the tenant as its `cli` admin
service principal (as the other tenant-scoped commands do), so every change is validated and
audited exactly as through `/v1/principals` and `/v1/groups`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from sre.cli.commands import CLIError, DatabaseUrl, DataDir, Tenant, _caller, _open, _say, app
from sre.cli.quotas import quotas_app

admin_app = typer.Typer(
    help="Manage a tenant's principals, groups, quotas and secrets.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
principals_app = typer.Typer(
    help="List, create and change principals (users, services, agents).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
groups_app = typer.Typer(
    help="List, create and change groups of principals.", no_args_is_help=True, rich_markup_mode=None
)
admin_app.add_typer(principals_app, name="principals")
admin_app.add_typer(groups_app, name="groups")
admin_app.add_typer(quotas_app, name="quotas")
app.add_typer(admin_app, name="admin")

Role = Annotated[
    str | None, typer.Option("--role", help="admin, developer, member or auditor (see docs/governance.md).")
]


def _call(
    data_dir: Any, database_url: Any, tenant: str | None, method: str, *args: Any, **kwargs: Any
) -> Any:
    runtime = _open(data_dir, database_url, None)
    try:
        return asyncio.run(getattr(runtime, method)(_caller(runtime, tenant), *args, **kwargs))
    finally:
        runtime.close()


def _names(value: str | None, option: str) -> list[str] | None:
    """`a,b` → ["a", "b"]; `*` → None (anything)."""
    if value is None or value.strip() == "*":
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names and value.strip():
        raise CLIError(f"{option} takes names separated by commas, or '*' for any")
    return names


def _when(stamp: object) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(str(stamp))))


def _listing(data_dir: Any, database_url: Any, tenant: str | None, method: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    while True:
        page = _call(data_dir, database_url, tenant, method, after=after, limit=100)
        rows.extend(page["data"])
        if not page["has_more"]:
            return rows
        after = page["last_id"]


@principals_app.command("list")
def principals_list(
    tenant: Tenant = None, data_dir: DataDir = None, database_url: DatabaseUrl = None
) -> None:
    """List the tenant's principals."""
    print(f"{'ID':<37} {'NAME':<24} {'KIND':<8} {'ROLE':<10} {'GRANTS':<24} DISABLED")
    for p in _listing(data_dir, database_url, tenant, "list_principals"):
        grants = p["grants"]
        shown = ", ".join(f"{k}={','.join(v)}" for k, v in grants.items() if v is not None) or "any"
        print(
            f"{p['id']:<37} {p['name']:<24} {p['kind']:<8} {p['role']:<10} {shown:<24} {_when(p['disabled_at'])}"
        )


@principals_app.command("create")
def principals_create(
    name: Annotated[str, typer.Argument(help="The principal's name, unique in the tenant.")],
    kind: Annotated[str, typer.Option("--kind", help="user, service or agent.")] = "user",
    role: Role = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a principal (a member unless --role says otherwise)."""
    made = _call(
        data_dir,
        database_url,
        tenant,
        "create_principal",
        {"name": name, "kind": kind, "role": role or "member"},
    )
    _say(f"Created {made['kind']} {made['name']!r} ({made['role']}), id {made['id']}.")


@principals_app.command("update")
def principals_update(
    name: Annotated[str, typer.Argument(help="The principal's name or id.")],
    role: Role = None,
    tools: Annotated[
        str | None, typer.Option("--tools", help="Tools its runs may use: a,b,c, or '*' for any.")
    ] = None,
    models: Annotated[
        str | None, typer.Option("--models", help="Models its turns may use: a,b, or '*' for any.")
    ] = None,
    disable: Annotated[
        bool, typer.Option("--disable", help="Refuse its keys and tokens from now on.")
    ] = False,
    enable: Annotated[bool, typer.Option("--enable", help="Accept its keys and tokens again.")] = False,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Change a principal's role, grants, or whether it is disabled."""
    if disable and enable:
        raise CLIError("--disable and --enable cannot be used together")
    body: dict[str, Any] = {}
    if role is not None:
        body["role"] = role
    if tools is not None or models is not None:
        current = _call(data_dir, database_url, tenant, "get_principal", name)["grants"]
        body["grants"] = {
            "tools": _names(tools, "--tools") if tools is not None else current["tools"],
            "models": _names(models, "--models") if models is not None else current["models"],
        }
    if disable or enable:
        body["disabled"] = disable
    if not body:
        raise CLIError("nothing to change: give --role, --tools, --models, --disable or --enable")
    changed = _call(data_dir, database_url, tenant, "update_principal", name, body)
    _say(
        f"Updated {changed['name']!r}: {changed['role']}, grants {changed['grants']}, disabled {_when(changed['disabled_at'])}."
    )


@groups_app.command("list")
def groups_list(tenant: Tenant = None, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List the tenant's groups and their members' ids."""
    print(f"{'ID':<37} {'NAME':<24} MEMBERS")
    for g in _listing(data_dir, database_url, tenant, "list_groups"):
        print(f"{g['id']:<37} {g['name']:<24} {' '.join(g['members']) or '-'}")


@groups_app.command("create")
def groups_create(
    name: Annotated[str, typer.Argument(help="The group's name, unique in the tenant.")],
    member: Annotated[
        list[str] | None, typer.Option("--member", help="A principal or group (name or id); repeatable.")
    ] = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a group, with its first members."""
    made = _call(data_dir, database_url, tenant, "create_group", {"name": name, "members": member or []})
    _say(f"Created group {made['name']!r} ({made['id']}) with {len(made['members'])} member(s).")


@groups_app.command("delete")
def groups_delete(
    name: Annotated[str, typer.Argument(help="The group's name or id.")],
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete a group (its members stay)."""
    gone = _call(data_dir, database_url, tenant, "delete_group", name)
    _say(f"Deleted group {gone['id']}.")


@groups_app.command("add")
def groups_add(
    group: Annotated[str, typer.Argument(help="The group's name or id.")],
    member: Annotated[str, typer.Argument(help="A principal or group to add (name or id).")],
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add a principal, or a group (one level of nesting), to a group."""
    changed = _call(data_dir, database_url, tenant, "add_group_member", group, {"member": member})
    _say(f"Group {changed['name']!r} has {len(changed['members'])} member(s).")


@groups_app.command("remove")
def groups_remove(
    group: Annotated[str, typer.Argument(help="The group's name or id.")],
    member_id: Annotated[str, typer.Argument(help="The member's id (see `sre admin groups list`).")],
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Remove a member from a group."""
    changed = _call(data_dir, database_url, tenant, "remove_group_member", group, member_id)
    _say(f"Group {changed['name']!r} has {len(changed['members'])} member(s).")
