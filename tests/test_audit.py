"""The audit trail, on both stores: what is recorded (and what never is), who may read it, and that
`sre audit verify` finds every kind of tampering done directly in the database, and where.

Events come from real turns and deletions through the HTTP API (httpx over ASGI), an agent run calling
a real server-side tool, and refused keys; tampering is plain SQL on the tables, as someone with the
database's password would do it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import tests.support.tools  # noqa: F401  (registers the `lookup` tool)
from sre import Runtime
from sre.api import create_app
from sre.cli.commands import run as cli
from sre.store import Store
from sre.testing import FunctionModel, ScriptedToolCall
from sre.types.audit import GENESIS, AuditEvent, chain_hash
from sre.types.items import FunctionCallOutput


def _reply(request: Any) -> Any:
    if request.items and isinstance(request.items[-1], FunctionCallOutput):
        return "It is sunny."
    text = request.items[-1].text() if request.items else ""
    if "weather" in text:
        return ScriptedToolCall("lookup", {"city": "Paris"})
    if "forbidden" in text:  # the model asks for a tool its agent was not given
        return ScriptedToolCall("transfer", {"to": "mallory", "amount": 1000})
    return "noted"


class Tenant:
    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime, self.name = runtime, name
        self.app = create_app(runtime)

    def key(self, principal: str, role: str | None = None) -> str:
        return self.runtime.create_key(self.name, principal, "k", role)[1]

    def client(self, secret: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://sre",
            headers={"Authorization": f"Bearer {secret}"},
        )

    @property
    def tenant_id(self) -> str:
        found = self.runtime.store.keys.find_tenant(self.name)
        assert found is not None
        return found


@pytest.fixture
async def tenant(store_url: str) -> AsyncIterator[Tenant]:
    model = FunctionModel(_reply, name="m")
    runtime = Runtime.open(database_url=store_url, models=[model], env={})
    yield Tenant(runtime, f"audit-{uuid.uuid4().hex[:12]}")
    await runtime.aclose()


async def _events(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        page = await client.get(
            "/v1/audit", params={**params, "limit": 5, **({"after": after} if after else {})}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        out.extend(body["data"])
        if not body["has_more"]:
            return out
        after = body["last_id"]


async def test_what_happens_is_recorded_and_deleted_content_is_not(tenant: Tenant) -> None:
    admin = tenant.key("root", "admin")
    async with tenant.client(admin) as c:
        agent = {"name": "weather", "model": "m", "tools": [{"type": "server", "name": "lookup"}]}
        assert (await c.post("/v1/agents", json=agent)).status_code == 200
        conv = (await c.post("/v1/conversations", json={})).json()["id"]
        secret_text = f"my card number is {uuid.uuid4().hex}"
        r1 = (
            await c.post("/v1/responses", json={"model": "m", "input": secret_text, "conversation": conv})
        ).json()
        r2 = await c.post(
            "/v1/responses",
            json={"model": "agent:weather", "input": "the weather in Paris?", "conversation": conv},
        )
        assert r2.json()["status"] == "completed", r2.text
        r3 = await c.post(
            "/v1/responses",
            json={"model": "agent:weather", "input": "do the forbidden transfer", "conversation": conv},
        )
        assert r3.json()["status"] == "completed", r3.text  # the denial is an output; the run goes on
        items = (await c.get(f"/v1/conversations/{conv}/items", params={"order": "asc"})).json()["data"]
        first = items[0]["id"]
        assert (await c.delete(f"/v1/conversations/{conv}/items/{first}")).status_code == 200
        assert (await c.delete(f"/v1/responses/{r1['id']}")).status_code == 200
        deleted = await c.delete(f"/v1/conversations/{conv}")
        assert deleted.status_code == 200
        request_id = deleted.headers["x-request-id"]
        assert request_id.startswith("req_")
        assert (await c.delete("/v1/agents/weather")).status_code == 200

        events = await _events(c, order="asc")
        actions = [e["action"] for e in events]
        assert actions.count("model.call") == 5  # one plain turn, two agent turns of two calls each
        assert actions.count("tool.call") == 2
        for action in ("agent.create", "agent.delete", "conversation.item.delete", "response.delete",
                       "conversation.delete"):  # fmt: skip
            assert action in actions, action
        tools = {e["details"]["tool"]: e for e in events if e["action"] == "tool.call"}
        assert tools["lookup"]["outcome"] == "success"
        assert tools["transfer"]["outcome"] == "denied"
        assert tools["transfer"]["details"]["reason"] == "not_granted"
        assert tools["transfer"]["agent"] == {"name": "weather", "version": 1}
        me = (await c.get("/v1/audit", params={"action": "conversation.delete"})).json()["data"][0]
        assert me["resource"] == {"type": "conversation", "id": conv}
        assert me["actor"] == (await tenant.runtime.authenticate(admin)).principal_id
        assert me["request_id"] == request_id  # the request that did it, as its response said
        by_request = (await c.get("/v1/audit", params={"request_id": r2.headers["x-request-id"]})).json()
        assert [e["action"] for e in by_request["data"]] == [
            "model.call",
            "tool.call",
            "model.call",
        ]  # newest first
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        # Filters, and the newest-first default.
        denied = await _events(c, outcome="denied")
        assert [e["action"] for e in denied] == ["tool.call"]
        newest = (await c.get("/v1/audit", params={"limit": 1})).json()["data"][0]
        assert newest["sequence"] == len(events)

    export = json.dumps(list(tenant.runtime.export_audit(tenant.name)))
    assert secret_text not in export  # what was deleted is not kept in the audit
    assert "sunny" not in export  # nor any content at all
    [report] = tenant.runtime.verify_audit(tenant.name)
    assert report.ok and report.events == len(events)


async def test_refused_keys_are_audited(tenant: Tenant, store_url: str) -> None:
    tenant.key("root", "admin")
    key, secret = tenant.runtime.create_key(tenant.name, "bob", "old")
    tenant.runtime.revoke_key(key.id)
    async with tenant.client(secret) as c:
        assert (await c.get("/v1/models")).status_code == 401
    async with tenant.client("sre-not-a-key-" + uuid.uuid4().hex) as c:
        assert (await c.get("/v1/models")).status_code == 401
    short, brief = tenant.runtime.create_key(tenant.name, "bob", "brief", expires_in=1)
    async with tenant.client(brief) as c:
        assert (await c.get("/v1/models")).status_code == 200
        with tenant.runtime.store.db.write() as conn:  # its second passes
            conn.exec_driver_sql(f"UPDATE api_keys SET expires_at = expires_at - 5 WHERE id = '{short.id}'")
        assert (await c.get("/v1/models")).status_code == 401
    page = tenant.runtime.store.audit.list(tenant.tenant_id, filters={"action": "auth.failure"}, order="asc")
    revoked_failure, expired_failure = page.data
    assert revoked_failure.resource_id == key.id and json.loads(revoked_failure.details) == {
        "reason": "revoked"
    }
    assert expired_failure.resource_id == short.id and json.loads(expired_failure.details) == {
        "reason": "expired"
    }
    revoked = tenant.runtime.store.audit.list(tenant.tenant_id, filters={"action": "key.revoke"})
    assert [r.resource_id for r in revoked.data] == [key.id]
    unknown = tenant.runtime.store.audit.list("_system", filters={"action": "auth.failure"}, limit=1)
    assert json.loads(unknown.data[0].details) == {"reason": "unknown_key"}


async def test_only_admins_and_auditors_read_it_and_only_their_tenants(tenant: Tenant) -> None:
    admin, auditor, member = tenant.key("root", "admin"), tenant.key("eve", "auditor"), tenant.key("bob")
    async with tenant.client(admin) as c:
        assert (await c.post("/v1/conversations", json={})).status_code == 200
        conv = (await c.post("/v1/conversations", json={})).json()["id"]
        assert (await c.delete(f"/v1/conversations/{conv}")).status_code == 200
    async with tenant.client(member) as c:
        refused = await c.get("/v1/audit")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "role_required"
    async with tenant.client(auditor) as c:
        assert len(await _events(c)) >= 1
    other = Tenant(tenant.runtime, f"audit-other-{uuid.uuid4().hex[:8]}")
    async with other.client(other.key("root", "admin")) as c:
        assert await _events(c, resource_id=conv) == []
        assert [e["action"] for e in await _events(c)] == ["key.create", "principal.create"]  # its own
        for params in ({"limit": 0}, {"action": "nope"}, {"outcome": "maybe"}, {"since": -1},
                       {"order": "up"}, {"after": "aud_unknown"}):  # fmt: skip
            bad = await c.get("/v1/audit", params=params)
            assert 400 <= bad.status_code < 500, (params, bad.text)
            assert set(bad.json()["error"]) == {"message", "type", "param", "code"}


# -- tampering --------------------------------------------------------------------------------------


def _seed(store: Store, tenant_id: str, count: int = 10) -> None:
    for i in range(count):
        event = AuditEvent("agent.update", "agent", f"a{i}", actor="prn_x", details={"i": i})
        store.audit.append(tenant_id, [event])


def _forged(row: Any, seq: int, prev: str, tenant_id: str) -> dict[str, Any]:
    """A row an attacker computes properly (the chain is not keyed)."""
    fields = dict(row._mapping)
    fields.update(seq=seq, id=f"aud_forged{seq}", details='{"i":999}', prev_hash=prev)
    fields["hash"] = chain_hash(
        prev, tenant_id, seq, fields["id"], fields["created_ms"], fields["action"], fields["resource_type"],
        fields["resource_id"], fields["actor"], fields["on_behalf_of"], fields["agent"],
        fields["agent_version"], fields["outcome"], fields["request_id"], fields["details"],
    )  # fmt: skip
    return fields


def _tamper(conn: sa.Connection, how: str, t: str) -> None:
    events = sa.table("audit_events", *(sa.column(c) for c in ("tenant_id", "seq", "details", "hash", "id")))
    mine = events.c.tenant_id == t
    if how == "edit":
        conn.execute(events.update().where(mine, events.c.seq == 4).values(details='{"i":40}'))
    elif how == "delete":
        conn.execute(events.delete().where(mine, events.c.seq == 4))
    elif how == "delete-renumber":
        conn.execute(events.delete().where(mine, events.c.seq == 4))
        conn.execute(events.update().where(mine, events.c.seq > 4).values(seq=events.c.seq + 1000))
        conn.execute(events.update().where(mine, events.c.seq > 1000).values(seq=events.c.seq - 1001))
    elif how == "delete-last":
        conn.execute(events.delete().where(mine, events.c.seq == 10))
    elif how in ("insert", "insert-end"):
        full = sa.Table("audit_events", sa.MetaData(), autoload_with=conn)
        at = 5 if how == "insert" else 11
        before = conn.execute(sa.select(full).where(full.c.tenant_id == t, full.c.seq == at - 1)).one()
        if how == "insert":
            conn.execute(events.update().where(mine, events.c.seq >= 5).values(seq=events.c.seq + 1000))
            conn.execute(events.update().where(mine, events.c.seq > 1000).values(seq=events.c.seq - 999))
        conn.execute(full.insert().values(**_forged(before, at, before.hash, t)))
    elif how == "reorder":
        conn.execute(events.update().where(mine, events.c.seq == 4).values(seq=1004))
        conn.execute(events.update().where(mine, events.c.seq == 6).values(seq=4))
        conn.execute(events.update().where(mine, events.c.seq == 1004).values(seq=6))


TAMPERING = {  # how -> (first bad position, the kind reported there)
    "edit": (4, "changed"),
    "delete": (4, "missing"),
    "delete-renumber": (4, "missing"),
    "delete-last": (10, "truncated"),
    "insert": (5, "inserted"),
    "insert-end": (11, "inserted"),
    "reorder": (4, "reordered"),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_verify_finds_tampering_and_where(
    how: str, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(store_url)
    name = f"tamper-{uuid.uuid4().hex[:10]}"
    tenant_id = store.keys.ensure_tenant(name)
    _seed(store, tenant_id)
    args = ["audit", "verify", "--tenant", name]
    if store_url.startswith("sqlite"):
        args += ["--data-dir", str(Path(store_url.removeprefix("sqlite:///")).parent)]
    else:
        args += ["--database-url", store_url]
    assert cli(args) == 0
    assert f"{tenant_id}: ok, 10 events, head 10" in capsys.readouterr().out
    with store.db.write() as conn:
        _tamper(conn, how, tenant_id)
    report = store.audit.verify(tenant_id)
    position, kind = TAMPERING[how]
    assert report.first_bad == position, report.problems
    assert report.problems[0].kind == kind, report.problems
    assert cli(args) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and f"first bad position: {position}" in out, out
    assert f"{kind} at {position}" in out, out
    store.close()


def test_an_untouched_chain_from_concurrent_writers_verifies(store_url: str) -> None:
    """Writers in several threads extend one tenant's chain; it stays one unbroken chain."""
    from concurrent.futures import ThreadPoolExecutor

    store = Store(store_url)
    tenant_id = store.keys.ensure_tenant(f"conc-{uuid.uuid4().hex[:10]}")

    def write(n: int) -> None:
        for i in range(10):
            store.audit.append(tenant_id, [AuditEvent("agent.update", "agent", f"{n}-{i}", actor=None)] * 2)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    report = store.audit.verify(tenant_id)
    assert report.ok and report.events == 80 and report.head_seq == 80, report.problems
    first = store.audit.list(tenant_id, order="asc", limit=1).data[0]
    assert first.seq == 1 and first.prev_hash == GENESIS
    store.close()
