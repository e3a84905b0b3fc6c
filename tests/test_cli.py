"""The `sre` command as users run it: a real process, its output, its exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import upstream_config
from tests.support.server import ServerProcess
from tests.support.upstream import ChatUpstream, Reply


def sre(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sre", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), done.stderr
    return lines[-1]


def test_help_lists_the_commands() -> None:
    done = sre("--help")
    assert done.returncode == 0
    for command in (
        "serve",
        "chat",
        "keys",
        "admin",
        "conversations",
        "agents",
        "approvals",
        "responses",
        "db",
    ):
        assert command in done.stdout


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    created = sre(
        "keys", "create", "--tenant", "acme", "--principal", "bob", "--name", "ci", "--data-dir", data
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sre-") and "shown only once" in created.stderr
    listed = sre("keys", "list", "--data-dir", data)
    assert (
        listed.returncode == 0
        and "acme" in listed.stdout
        and "bob" in listed.stdout
        and "active" in listed.stdout
    )
    assert secret not in listed.stdout
    key_id = listed.stdout.splitlines()[1].split()[0]
    assert sre("keys", "revoke", key_id, "--data-dir", data).returncode == 0
    assert "revoked" in sre("keys", "list", "--tenant", "acme", "--data-dir", data).stdout
    assert "no tenant" in one_line_error(sre("keys", "list", "--tenant", "nobody", "--data-dir", data))
    assert "key_nope" in one_line_error(sre("keys", "revoke", "key_nope", "--data-dir", data))
    assert "--tenant" in sre("keys", "create", "--principal", "x", "--data-dir", data).stderr
    # Roles and lifetimes.
    audited = sre(
        "keys", "create", "--tenant", "acme", "--principal", "eve", "--role", "auditor",
        "--expires-in", "30d", "--data-dir", data,
    )  # fmt: skip
    assert audited.returncode == 0 and "(auditor)" in audited.stderr, audited.stderr
    for bad in ("30", "0d", "-1h", "1y", "d"):
        error = one_line_error(
            sre(
                "keys",
                "create",
                "--tenant",
                "acme",
                "--principal",
                "eve",
                "--expires-in",
                bad,
                "--data-dir",
                data,
            )
        )
        assert "--expires-in" in error, (bad, error)
    assert "role must be one of" in one_line_error(
        sre("keys", "create", "--tenant", "acme", "--principal", "zed", "--role", "king", "--data-dir", data)
    )


def test_admin_principals_groups_scopes_and_rotation(tmp_path: Path) -> None:
    data = ["--tenant", "acme", "--data-dir", str(tmp_path / "data")]
    portal = sre(
        "keys", "create", "--principal", "portal", "--kind", "service", "--scopes", "responses,act_as", *data
    )
    assert portal.returncode == 0, portal.stderr
    assert "Only a service" in one_line_error(
        sre("keys", "create", "--principal", "joe", "--scopes", "act_as", *data)
    )
    assert "unknown scope" in one_line_error(
        sre("keys", "create", "--principal", "joe", "--scopes", "fly", *data)
    )
    assert sre("admin", "principals", "create", "dana", "--role", "developer", *data).returncode == 0
    assert "already exists" in one_line_error(sre("admin", "principals", "create", "dana", *data))
    assert sre("admin", "principals", "update", "dana", "--tools", "lookup,pay", *data).returncode == 0
    assert "nothing to change" in one_line_error(sre("admin", "principals", "update", "dana", *data))
    listed = sre("admin", "principals", "list", *data).stdout
    assert "joe" not in listed, "a refused key creates no principal"
    assert "dana" in listed and "tools=lookup,pay" in listed and "portal" in listed
    assert sre("admin", "groups", "create", "eng", "--member", "dana", *data).returncode == 0
    assert "itself" in one_line_error(sre("admin", "groups", "add", "eng", "eng", *data))
    assert "No principal or group" in one_line_error(
        sre("admin", "groups", "create", "ops", "--member", "zz", *data)
    )
    groups = sre("admin", "groups", "list", *data).stdout
    assert "eng" in groups and "ops" not in groups
    key_id = sre("keys", "list", *data).stdout.splitlines()[1].split()[0]
    rotated = sre("keys", "rotate", key_id, "--grace", "1h", *data[2:])
    assert rotated.returncode == 0 and rotated.stdout.strip().startswith("sre-"), rotated.stderr
    assert "7 days" in one_line_error(sre("keys", "rotate", key_id, "--grace", "9d", *data[2:]))
    assert sre("admin", "groups", "delete", "eng", *data).returncode == 0


def test_conversations_fork_and_agents(tmp_path: Path) -> None:
    import asyncio

    from sre import Runtime
    from sre.testing import ScriptedModel

    data = str(tmp_path / "data")

    async def seed() -> tuple[str, str]:
        runtime = Runtime.open(data_dir=data, models=[ScriptedModel(name="small")], env={})
        try:
            caller = runtime.local_caller()
            conv = await runtime.create_conversation(
                caller, {"items": [{"role": "user", "content": w} for w in ("a", "b", "c")]}
            )
            await runtime.create_agent(caller, {"name": "helper", "instructions": "Be brief."})
            first = (await runtime.list_items(caller, conv["id"], order="asc"))["data"][0]["id"]
            return str(conv["id"]), str(first)
        finally:
            await runtime.aclose()

    conv_id, first_item = asyncio.run(seed())
    forked = sre("conversations", "fork", conv_id, "--at", first_item, "--data-dir", data)
    assert forked.returncode == 0, forked.stderr
    fork_id = forked.stdout.strip()
    assert fork_id.startswith("conv_") and fork_id != conv_id

    async def fork_items() -> list[str]:
        runtime = Runtime.open(data_dir=data, models=[ScriptedModel(name="small")], env={})
        try:
            listed = await runtime.list_items(runtime.local_caller(), fork_id, order="asc")
            return [i["content"][0]["text"] for i in listed["data"]]
        finally:
            await runtime.aclose()

    assert asyncio.run(fork_items()) == ["a"]  # the parent's items up to the fork point, not copied
    whole = sre("conversations", "fork", conv_id, "--data-dir", data)
    assert whole.returncode == 0 and whole.stdout.strip().startswith("conv_")
    assert "not found" in one_line_error(sre("conversations", "fork", "conv_nope", "--data-dir", data))
    assert "not found" in one_line_error(
        sre("conversations", "fork", conv_id, "--at", "msg_nope", "--data-dir", data)
    )
    assert "no tenant" in one_line_error(
        sre("conversations", "fork", conv_id, "--tenant", "nobody", "--data-dir", data)
    )
    listed = sre("agents", "list", "--data-dir", data)
    assert listed.returncode == 0 and "helper" in listed.stdout, listed.stderr
    shown = sre("agents", "show", "helper", "--data-dir", data)
    assert shown.returncode == 0 and '"instructions": "Be brief."' in shown.stdout
    assert sre("agents", "delete", "helper", "--data-dir", data).returncode == 0
    assert "not found" in one_line_error(sre("agents", "show", "helper", "--data-dir", data))


def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    from sre.store.database import MIGRATIONS

    head = sorted(p.name[:4] for p in (MIGRATIONS / "versions").glob("0*.py"))[-1]
    first = sre("db", "upgrade", "--data-dir", data)
    assert first.returncode == 0 and "Upgrading schema" in first.stderr and head in first.stderr
    again = sre("db", "upgrade", "--data-dir", data)
    assert again.returncode == 0 and "up to date" in again.stderr


def test_db_upgrade_on_postgresql(pg_url: str) -> None:
    done = sre("db", "upgrade", "--database-url", pg_url)
    assert done.returncode == 0, done.stderr


def test_errors_are_one_line(tmp_path: Path) -> None:
    assert "loopback" in one_line_error(
        sre("serve", "--no-auth", "--host", "0.0.0.0", "--data-dir", str(tmp_path))
    )
    assert "config file not found" in one_line_error(sre("serve", "--config", str(tmp_path / "missing.toml")))
    bad = tmp_path / "bad.toml"
    bad.write_text("[models.x]\nprovider = 'telepathy'\n")
    assert "telepathy" in one_line_error(sre("serve", "--config", str(bad), "--data-dir", str(tmp_path)))
    assert "unsupported database URL" in one_line_error(sre("db", "upgrade", "--database-url", "mysql://x/y"))
    unreachable = "postgresql://nobody@127.0.0.1:1/nothing"
    assert "cannot use the database" in one_line_error(sre("db", "upgrade", "--database-url", unreachable))
    assert "cannot reach" in one_line_error(sre("chat", "--base-url", "http://127.0.0.1:1/v1", stdin=""))


def test_first_start_prints_a_local_key_once(tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data").start()
    server.stop()
    first = server.output()
    assert (
        "Created a local API key" in first
        and "bundled local model" in first
        and "SRE_OPENAI_BASE_URL" in first
    )
    again = ServerProcess(data_dir=tmp_path / "data").start()
    again.stop()
    assert "Created a local API key" not in again.output()


@pytest.mark.parametrize("auth", [True, False])
def test_chat_holds_and_resumes_a_conversation(tmp_path: Path, upstream: ChatUpstream, auth: bool) -> None:
    config = upstream_config(tmp_path / "sre.toml", upstream)
    env: dict[str, str] = {}
    args = ["--config", str(config)]
    if auth:
        key = sre("keys", "create", "--tenant", "t", "--principal", "p", "--data-dir", str(tmp_path / "data"))
        env["SRE_API_KEY"] = key.stdout.strip()
    else:
        args.append("--no-auth")
    server = ServerProcess(data_dir=tmp_path / "data", args=args).start()
    try:
        upstream.queue(Reply(text="Hello Ada!"), Reply(text="You are Ada."))
        chat = sre("chat", "--base-url", server.base_url, stdin="I am Ada\n\nWho am I?\n/exit\n", env=env)
        assert chat.returncode == 0, chat.stderr
        assert "Hello Ada!" in chat.stdout and "You are Ada." in chat.stdout
        conv_id = chat.stdout.split("New conversation ")[1].split()[0]
        resumed = sre(
            "chat", "--conversation", conv_id, "--base-url", server.base_url, stdin="and now?\n", env=env
        )
        assert resumed.returncode == 0, resumed.stderr
        assert f"Resumed conversation {conv_id}" in resumed.stdout and "user> I am Ada" in resumed.stdout
        sent = [m["content"] for m in upstream.requests[-1]["messages"]]
        assert sent == ["I am Ada", "Hello Ada!", "Who am I?", "You are Ada.", "and now?"]
        missing = sre("chat", "--conversation", "conv_nope", "--base-url", server.base_url, stdin="", env=env)
        assert "404" in one_line_error(missing)
    finally:
        server.stop()


def test_approvals_list_approve_deny(tmp_path: Path) -> None:
    import asyncio

    from sre import Runtime, ToolRegistry
    from sre.testing import FunctionModel, ScriptedToolCall

    data = str(tmp_path / "data")
    registry = ToolRegistry()

    @registry.tool
    def note(note: str) -> str:
        return f"noted {note}"

    def model(request: object) -> object:
        return ScriptedToolCall("note", {"note": "x"})

    async def seed() -> list[str]:
        runtime = Runtime.open(
            data_dir=data, models=[FunctionModel(model, name="small")], env={}, tools=registry
        )
        try:
            caller = runtime.local_caller()
            tools = [{"type": "server", "name": "note"}]
            await runtime.create_agent(
                caller, {"name": "noter", "tools": tools, "approval": {"tools_requiring_approval": ["note"]}}
            )
            ids = []
            for _ in range(2):
                paused = await runtime.create_response(caller, {"model": "agent:noter", "input": "go"})
                assert paused["status"] == "requires_action"
                ids.extend(paused["required_action"]["approval_ids"])
            return ids
        finally:
            await runtime.aclose()

    first, second = asyncio.run(seed())
    listed = sre("approvals", "list", "--data-dir", data)
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and second in listed.stdout and "note" in listed.stdout
    approved = sre("approvals", "approve", first, "--reason", "fine", "--data-dir", data)
    assert approved.returncode == 0 and "Approved" in approved.stderr, approved.stderr
    denied = sre("approvals", "deny", second, "--data-dir", data)
    assert denied.returncode == 0 and "Denied" in denied.stderr, denied.stderr
    assert "already approved" in one_line_error(sre("approvals", "deny", first, "--data-dir", data))
    assert "not found" in one_line_error(sre("approvals", "approve", "apr_nope", "--data-dir", data))
    # To eve, another member of the tenant, the local user's approvals do not exist.
    assert "not found" in one_line_error(
        sre("approvals", "approve", first, "--as", "eve", "--data-dir", data)
    )
    rest = sre("approvals", "list", "--status", "all", "--data-dir", data)
    assert "approved" in rest.stdout and "denied" in rest.stdout
    assert "status" in one_line_error(sre("approvals", "list", "--status", "maybe", "--data-dir", data))


def test_admin_quotas_set_show_clear(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    config = tmp_path / "sre.toml"
    config.write_text("[quotas.principal]\nrequests_per_minute = 60\n")
    created = sre("keys", "create", "--tenant", "acme", "--principal", "bob", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    where = ("--tenant", "acme", "--data-dir", data)
    done = sre("admin", "quotas", "set", "--principal", "bob", "--tokens-per-day", "5000",
               "--concurrent-runs", "unlimited", *where)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tokens_per_day       5000 (override)" in done.stdout
    assert "concurrent_runs      unlimited (override)" in done.stdout
    shown = sre("admin", "quotas", "show", "--config", str(config), *where)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("tenant acme") and "principal bob" in shown.stdout
    assert "requests_per_minute  60 (default)" in shown.stdout
    cleared = sre("admin", "quotas", "clear", "--principal", "bob", *where)
    assert cleared.returncode == 0 and "defaults again" in cleared.stderr, cleared.stderr
    assert "principal bob" not in sre("admin", "quotas", "show", *where).stdout
    assert "--requests-per-minute takes" in one_line_error(
        sre("admin", "quotas", "set", "--principal", "bob", "--requests-per-minute", "lots", *where)
    )
    assert "name a limit" in one_line_error(sre("admin", "quotas", "set", "--principal", "bob", *where))
    assert "No principal" in one_line_error(
        sre("admin", "quotas", "set", "--principal", "nobody", "--requests-per-minute", "1", *where)
    )
    assert "not both" in one_line_error(
        sre("admin", "quotas", "clear", "--principal", "a", "--key", "b", *where)
    )
