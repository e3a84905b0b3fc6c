"""The commands of `sre`. See `sre --help`, and docs/cli.md, which is generated from it."""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sre.cli.chat import ChatError, chat_loop
from sre.types.errors import SREError

if TYPE_CHECKING:
    from sre.runtime import Runtime
    from sre.types.records import Caller

app = typer.Typer(
    help="SRE, the Stateful Runtime Environment: stateful, governed agents over stateless model APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True, rich_markup_mode=None)
db_app = typer.Typer(help="Manage the store's schema.", no_args_is_help=True, rich_markup_mode=None)
conversations_app = typer.Typer(
    help="Work with stored conversations.", no_args_is_help=True, rich_markup_mode=None
)
agents_app = typer.Typer(help="List, show and delete agents.", no_args_is_help=True, rich_markup_mode=None)
approvals_app = typer.Typer(
    help="List and decide the approvals paused runs wait for.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(keys_app, name="keys")
app.add_typer(conversations_app, name="conversations")
app.add_typer(agents_app, name="agents")
app.add_typer(approvals_app, name="approvals")
app.add_typer(db_app, name="db")
responses_app = typer.Typer(help="Look into stored responses.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(responses_app, name="responses")
audit_app = typer.Typer(
    help="Verify and export the tamper-evident audit trail.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(audit_app, name="audit")
AllTenants = Annotated[bool, typer.Option("--all", help="Every tenant's chain (and the system chain).")]

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where the embedded store lives [env SRE_DATA_DIR; default ./.sre]."),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", help="postgresql://… to use PostgreSQL instead of SQLite [env SRE_DATABASE_URL]."
    ),
]
Tenant = Annotated[
    str | None,
    typer.Option(
        "--tenant", help="Tenant name [default: the local user's tenant, as with `serve --no-auth`]."
    ),
]
ConfigPath = Annotated[
    Path | None, typer.Option("--config", help="TOML file with models and server settings [env SRE_CONFIG].")
]


class CLIError(Exception):
    """An error to print as one line."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _open(data_dir: Path | None, database_url: str | None, config: Path | None):  # type: ignore[no-untyped-def]
    from sre.runtime import Runtime

    return Runtime.open(data_dir=data_dir, database_url=database_url, config=config)


def _redact_logs() -> None:
    """Keep the secrets a long-running process handles out of its logs."""
    from sre.governance.secrets import install_log_redaction

    install_log_redaction()


def _caller(runtime: Runtime, tenant: str | None, principal: str | None = None) -> Caller:
    """Act within a tenant as its `cli` service principal (or as the local user, by default)."""
    return runtime.tenant_caller(tenant, principal)


def _duration(text: str, option: str) -> int:
    """Seconds of `90s`, `90m`, `12h` or `30d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise CLIError(f"{option} takes a positive number with s, m, h or d (for example 30d), not {text!r}")
    return int(number) * units[unit]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigPath = None,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="Accept requests without a key, as the local user (loopback only)."),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            max=64,
            help="Worker tasks executing background runs in this process (0: leave them to `sre worker`).",
        ),
    ] = 1,
) -> None:
    """Start the HTTP API (OpenAI-compatible Responses and Conversations)."""
    import uvicorn

    from sre.api import create_app

    if no_auth and not _is_loopback(host):
        raise CLIError(f"--no-auth only binds to loopback (127.0.0.1, ::1, localhost), not {host!r}")
    _say("Opening the store and applying migrations…")
    _redact_logs()
    runtime = _open(data_dir, database_url, config)
    where = (
        runtime.settings.database_url and "PostgreSQL"
    ) or f"SQLite in {runtime.settings.data_dir.resolve()}"
    _say(f"Store ready: {where}")
    if not runtime.settings.embedded and not runtime.store.row_security_applies():
        _say(
            "warning: the database role is a superuser or has BYPASSRLS, so row-level security does "
            "not apply to SRE's queries; connect as an ordinary role (docs/governance.md)"
        )
    if runtime.settings.embedded and not no_auth:
        secret = runtime.bootstrap_local_key()
        if secret is not None:
            _say(f"Created a local API key (shown only once): {secret}")
            _say(f"  export SRE_API_KEY={secret}")
    models = runtime.models.infos()
    _say(
        "Models: "
        + ", ".join(f"{m.name} ({m.provider}, {m.context_window} tokens)" for m in models)
        + f"; default: {runtime.models.default}; embeddings: "
        + ", ".join(f"{e.name} ({e.info.provider})" for e in runtime.embeddings.models.values())
    )
    if all(m.provider == "local" for m in models):
        _say(
            "Using the bundled local model (offline, small). For a stronger one, restart with "
            "SRE_OPENAI_BASE_URL=http://host/v1 SRE_OPENAI_MODEL=name [SRE_OPENAI_API_KEY=…] or --config."
        )
    application = create_app(runtime, auth=not no_auth, close_runtime=True, warm=True, workers=workers)
    _say(f"SRE listening on http://{host}:{port}/v1 (stop with Ctrl-C)")
    uvicorn.run(application, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def worker(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigPath = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Worker tasks in this process.")
    ] = 1,
) -> None:
    """Execute background runs from the store, without serving HTTP (scale out beside `sre serve`).

    Stops on Ctrl-C or SIGTERM; a run it was executing is released to the other workers.
    """
    import signal

    _redact_logs()
    runtime = _open(data_dir, database_url, config)
    where = (
        runtime.settings.database_url and "PostgreSQL"
    ) or f"SQLite in {runtime.settings.data_dir.resolve()}"

    async def work() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runtime.start_workers(workers)
        _say(f"SRE worker: {workers} worker(s) over {where}, lease {runtime.settings.lease_seconds:g}s")
        try:
            await stop.wait()
        finally:
            await runtime.aclose()

    asyncio.run(work())


@app.command()
def chat(
    conversation: Annotated[
        str | None, typer.Option("--conversation", help="Resume this conversation.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model to use (default: the server's).")
    ] = None,
    base_url: Annotated[
        str, typer.Option("--base-url", envvar="SRE_BASE_URL", help="The API's base URL.")
    ] = ("http://127.0.0.1:8000/v1"),
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="SRE_API_KEY", help="API key.")] = None,
    compact: Annotated[
        bool,
        typer.Option(
            "--compact",
            help="Summarise the oldest turns when the model's window is full, instead of dropping them.",
        ),
    ] = False,
) -> None:
    """Chat in the terminal with a running server; resumes a conversation and shows its id."""
    chat_loop(base_url=base_url, api_key=api_key, conversation=conversation, model=model, compact=compact)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name (created if new).")],
    principal: Annotated[str, typer.Option("--principal", help="Principal name (created if new).")],
    name: Annotated[str, typer.Option("--name", help="A label for the key.")] = "default",
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            help="The principal's role: admin, developer, member or auditor (a new principal: member).",
        ),
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option("--expires-in", help="Refuse the key after this long: 90m, 12h, 30d (default: never)."),
    ] = None,
    scopes: Annotated[
        str | None,
        typer.Option(
            "--scopes",
            help="Rights the key holds, comma-separated (default: all of its role's); act_as only for a "
            "service principal.",
        ),
    ] = None,
    kind: Annotated[
        str, typer.Option("--kind", help="A new principal's kind: user, service or agent.")
    ] = "user",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a key for a principal of a tenant and print it once."""
    lifetime = None if expires_in is None else _duration(expires_in, "--expires-in")
    wanted = None if scopes is None else [s.strip() for s in scopes.split(",") if s.strip()]
    runtime = _open(data_dir, database_url, None)
    try:
        key, secret = runtime.create_key(tenant, principal, name, role, lifetime, scopes=wanted, kind=kind)
        caller = runtime.tenant_caller(tenant, principal)
        found = runtime.auth.principal(caller)
    finally:
        runtime.close()
    _say(
        f"Created key {key.id} for principal {principal!r} ({found.role}) of tenant {tenant!r}. "
        "It is shown only once:"
    )
    print(secret)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's keys.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List keys (never their secrets)."""
    runtime = _open(data_dir, database_url, None)
    try:
        rows = runtime.list_keys(tenant)
    finally:
        runtime.close()
    print(f"{'ID':<37} {'TENANT':<16} {'PRINCIPAL':<16} {'NAME':<12} {'PREFIX':<13} {'CREATED':<20} STATUS")
    for key, tenant_name, principal_name in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.created_at))
        status = (
            "revoked"
            if key.revoked_at
            else "expired"
            if key.expires_at is not None and key.expires_at <= time.time()
            else "active"
        )
        print(
            f"{key.id:<37} {tenant_name:<16} {principal_name:<16} {key.name:<12} {key.prefix:<13} "
            f"{created:<20} {status}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `sre keys list`).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a key; requests with it are refused from now on."""
    runtime = _open(data_dir, database_url, None)
    try:
        key = runtime.revoke_key(key_id)
    finally:
        runtime.close()
    _say(f"Revoked key {key.id}.")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `sre keys list`).")],
    grace: Annotated[
        str | None,
        typer.Option("--grace", help="Keep the old key working this long (90s, 10m, 1h; at most 7d)."),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Replace a key by a new one (same principal, name, scopes and expiry) and print it once; the old
    key is revoked at once, or after --grace."""
    seconds = 0 if grace is None else _duration(grace, "--grace")
    runtime = _open(data_dir, database_url, None)
    try:
        key, secret, old = runtime.rotate_key(key_id, seconds)
    finally:
        runtime.close()
    until = (
        "now" if old.revoked_at else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(old.expires_at or 0))
    )
    _say(f"Created key {key.id} in place of {old.id} (refused from {until}). It is shown only once:")
    print(secret)


@conversations_app.command("fork")
def conversations_fork(
    conversation_id: Annotated[str, typer.Argument(help="The conversation to fork (conv_…).")],
    at: Annotated[
        str | None, typer.Option("--at", help="Fork after this item (default: after the newest).")
    ] = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Fork a conversation at an item, without copying it, and print the new conversation's id."""
    runtime = _open(data_dir, database_url, None)
    try:
        fork = asyncio.run(
            runtime.fork_conversation(_caller(runtime, tenant), conversation_id, at_item_id=at)
        )
    finally:
        runtime.close()
    _say(f"Forked {conversation_id}{'' if at is None else f' at {at}'}:")
    print(fork["id"])


@agents_app.command("list")
def agents_list(tenant: Tenant = None, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List the tenant's agents (their newest versions)."""
    runtime = _open(data_dir, database_url, None)
    rows: list[dict[str, object]] = []
    try:
        caller, after = _caller(runtime, tenant), None
        while True:
            page = asyncio.run(runtime.list_agents(caller, after=after, limit=100))
            rows.extend(page["data"])
            if not page["has_more"]:
                break
            after = page["last_id"]
    finally:
        runtime.close()
    print(f"{'NAME':<32} {'VERSION':>7}  {'MODEL':<24} {'CREATED':<20} TOOLS")
    for agent in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(str(agent["created_at"]))))
        tools = agent["tools"] if isinstance(agent["tools"], list) else []
        print(
            f"{agent['name']!s:<32} {agent['version']!s:>7}  {agent['model']!s:<24} {created:<20} {len(tools)}"
        )


@agents_app.command("show")
def agents_show(
    name: Annotated[str, typer.Argument(help="The agent's name.")],
    version: Annotated[
        int | None, typer.Option("--version", help="This version (default: the newest).", min=1)
    ] = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print an agent's definition as JSON."""
    import json

    runtime = _open(data_dir, database_url, None)
    try:
        agent = asyncio.run(runtime.get_agent(_caller(runtime, tenant), name, version=version))
    finally:
        runtime.close()
    print(json.dumps(agent, indent=2, ensure_ascii=False))


@agents_app.command("delete")
def agents_delete(
    name: Annotated[str, typer.Argument(help="The agent's name.")],
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete an agent (every version); the name can be created again."""
    runtime = _open(data_dir, database_url, None)
    try:
        asyncio.run(runtime.delete_agent(_caller(runtime, tenant), name))
    finally:
        runtime.close()
    _say(f"Deleted agent {name}.")


@approvals_app.command("list")
def approvals_list(
    status: Annotated[
        str, typer.Option("--status", help="pending, approved, denied, cancelled, or all.")
    ] = "pending",
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List approvals, oldest first (by default the pending ones)."""
    runtime = _open(data_dir, database_url, None)
    rows: list[dict[str, object]] = []
    try:
        caller, after = _caller(runtime, tenant), None
        while True:
            wanted = None if status == "all" else status
            page = asyncio.run(runtime.list_approvals(caller, status=wanted, after=after, limit=100))
            rows.extend(page["data"])
            if not page["has_more"]:
                break
            after = page["last_id"]
    finally:
        runtime.close()
    print(f"{'ID':<38} {'STATUS':<9} {'KIND':<16} {'TOOL':<24} {'RESPONSE':<38} ARGUMENTS")
    for a in rows:
        print(
            f"{a['id']!s:<38} {a['status']!s:<9} {a['kind']!s:<16} {a['tool']!s:<24} "
            f"{a['response_id']!s:<38} {str(a['arguments'])[:60]}"
        )


def _decide(approval_id: str, approve: bool, reason: str | None, who: str | None, tenant: str | None,
            data_dir: Path | None, database_url: str | None) -> None:  # fmt: skip
    runtime = _open(data_dir, database_url, None)
    try:
        caller = _caller(runtime, tenant, who)
        decided = asyncio.run(
            runtime.decide_approval(caller, approval_id, approve=approve, reason=reason, resume_here=False)
        )
    finally:
        runtime.close()
    _say(
        f"{decided['status'].capitalize()} {approval_id}; a worker resumes response {decided['response_id']}."
    )


Reason = Annotated[str | None, typer.Option("--reason", help="Why; given to the model with a denial.")]
As = Annotated[
    str | None,
    typer.Option("--as", help="Decide as this principal of the tenant [default: the local user, or `cli`]."),
]


@approvals_app.command("approve")
def approvals_approve(
    approval_id: Annotated[str, typer.Argument(help="The approval (apr_…).")],
    reason: Reason = None,
    who: As = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Approve a pending tool call (or, for an unknown outcome, running it again)."""
    _decide(approval_id, True, reason, who, tenant, data_dir, database_url)


@approvals_app.command("deny")
def approvals_deny(
    approval_id: Annotated[str, typer.Argument(help="The approval (apr_…).")],
    reason: Reason = None,
    who: As = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Deny a pending tool call; the model is told it did not run."""
    _decide(approval_id, False, reason, who, tenant, data_dir, database_url)


@responses_app.command("context")
def responses_context(
    response_id: Annotated[str, typer.Argument(help="The response (resp_…).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifests as JSON.")] = False,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show what went into each model call of a response: every candidate, in or out and why."""
    import json

    from sre.cli.tables import manifest_table

    runtime = _open(data_dir, database_url, None)
    try:
        manifests = asyncio.run(runtime.response_context(_caller(runtime, tenant), response_id))
    finally:
        runtime.close()
    if as_json:
        print(json.dumps(manifests, indent=2))
        return
    if not manifests:
        _say(f"Response {response_id} has no context manifest (it was recorded before SRE kept them).")
        return
    for manifest in manifests:
        print(manifest_table(manifest))


@audit_app.command("verify")
def audit_verify(
    tenant: Tenant = None,
    every: AllTenants = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Check a tenant's audit chain: every event against its hash and the one before; exit 1 and say
    where on any change, removal, insertion or reordering."""
    runtime = _open(data_dir, database_url, None)
    try:
        reports = runtime.verify_audit(tenant, every=every)
    finally:
        runtime.close()
    bad = False
    for report in reports:
        if report.ok:
            print(f"{report.tenant_id}: ok, {report.events} events, head {report.head_seq}")
            continue
        bad = True
        print(
            f"{report.tenant_id}: TAMPERED, {report.events} events, head {report.head_seq}; "
            f"first bad position: {report.first_bad}"
        )
        for problem in report.problems:
            print(f"  {problem.kind} at {problem.seq}: {problem.message}")
    if bad:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file [default: stdout].")
    ] = None,
    tenant: Tenant = None,
    every: AllTenants = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Write a tenant's audit events, oldest first, as JSON Lines (one event per line, with its hashes)."""
    import json
    import sys

    runtime = _open(data_dir, database_url, None)
    try:
        with open(output, "w", encoding="utf-8") if output is not None else nullcontext(sys.stdout) as out:
            count = 0
            for event in runtime.export_audit(tenant, every=every):
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
                count += 1
    finally:
        runtime.close()
    if output is not None:
        _say(f"Wrote {count} events to {output}.")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Apply pending schema migrations."""
    from sre.runtime.runtime import upgrade_schema

    current, head, after = upgrade_schema(data_dir=data_dir, database_url=database_url)
    if current == head:
        _say(f"Schema is up to date (revision {head}).")
        return
    _say(f"Upgrading schema from {current or 'empty'} to {head}…")
    _say(f"Done: schema at revision {after}.")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; turn every expected failure into one line on stderr."""
    import sqlalchemy.exc

    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="sre")  # usage errors are click's: usage line + one error line
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except (CLIError, ChatError, SREError) as exc:
        _say(f"error: {getattr(exc, 'message', None) or exc}")
        return 1
    except sqlalchemy.exc.OperationalError as exc:
        _say(f"error: cannot use the database: {str(exc.orig).strip().splitlines()[0]}")
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        _say(f"error: {exc}")
        return 1
    return 0
