"""Row-level security on PostgreSQL holds on its own: with SRE connected as a role subject to it, a
transaction bound to a tenant sees and writes that tenant's rows only, whatever its query forgot.

Data of two tenants is made through the API (conversations, responses, a paused agent run with its
approval, keys, principals, groups, audit events); then every tenant table is read through a
tenant-bound session with no tenant filter at all.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from sre import Runtime
from sre.api import create_app
from sre.models import ModelRequest
from sre.store.schema import items, metadata
from sre.store.tenancy import POLICY, bound_to, subject_to_rls
from sre.testing import FunctionModel, ScriptedToolCall
from sre.tools import ToolRegistry
from sre.types.items import FunctionCallOutput
from tests.support.asgi import asgi_client

TENANT_TABLES = [t for t in metadata.sorted_tables if "tenant_id" in t.c]


def _reply(request: ModelRequest) -> object:
    if isinstance(request.items[-1], FunctionCallOutput):
        return "paid"
    return ScriptedToolCall("pay", {"amount": 1}) if request.tools else "ok"


def test_every_tenant_table_is_under_row_level_security(pg_app_url: str) -> None:
    runtime = Runtime.open(database_url=pg_app_url, models=[], env={})
    try:
        with runtime.store.db.read() as conn:
            assert subject_to_rls(conn), "the test connects as a role subject to row-level security"
            rows = conn.exec_driver_sql(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                "EXISTS (SELECT 1 FROM pg_policies p WHERE p.tablename = c.relname AND p.policyname = %(p)s) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'",
                {"p": POLICY},
            ).all()
    finally:
        runtime.close()
    state = {name: (enabled, forced, policy) for name, enabled, forced, policy in rows}
    for table in [*(t.name for t in TENANT_TABLES), "tenants"]:
        assert state[table] == (True, True, True), f"{table}: {state.get(table)}"


async def test_a_tenant_bound_session_sees_only_its_tenant(pg_app_url: str) -> None:
    registry = ToolRegistry()

    @registry.tool()
    def pay(amount: int) -> str:
        """Pay."""
        return "paid"

    runtime = Runtime.open(
        database_url=pg_app_url, models=[FunctionModel(_reply, name="m")], env={}, tools=registry
    )
    app = create_app(runtime)
    tenants: dict[str, str] = {}
    try:
        for side in ("a", "b"):
            name = f"rls-{side}-{uuid.uuid4().hex[:8]}"
            _, secret = runtime.create_key(name, "root", role="admin")
            async with asgi_client(app, secret) as client:
                conv = (await client.post("/v1/conversations", json={})).json()["id"]
                turn = await client.post(
                    "/v1/responses", json={"model": "m", "input": "hi", "conversation": conv}
                )
                assert turn.status_code == 200, turn.text
                agent = {"name": "payer", "model": "m", "tools": [{"type": "server", "name": "pay"}],
                         "approval": {"tools_requiring_approval": ["pay"]}}  # fmt: skip
                assert (await client.post("/v1/agents", json=agent)).status_code == 200
                paused = (
                    await client.post("/v1/responses", json={"model": "agent:payer", "input": "pay"})
                ).json()
                assert paused["status"] == "requires_action", paused
                approval = paused["required_action"]["approval_ids"][0]
                assert (await client.post(f"/v1/approvals/{approval}/approve", json={})).status_code == 200
                assert (
                    await client.post("/v1/groups", json={"name": "g", "members": ["root"]})
                ).status_code == 200
                assert (await client.post("/v1/keys", json={"name": "more"})).status_code == 200
                assert (await client.get("/v1/audit")).json()["data"]
            found = runtime.store.keys.find_tenant(name)
            assert found is not None
            tenants[side] = found

        db = runtime.store.db
        # The API binds every transaction of a request to the caller's tenant.
        bound: list[object] = []

        def seen(conn: object, cursor: object, statement: str, params: object, *args: object) -> None:
            if "set_config" in statement:
                bound.append(params)

        sa.event.listen(db.engine, "before_cursor_execute", seen)
        _, secret = runtime.create_key(runtime.store.keys.tenant_names()[tenants["b"]], "root")
        async with asgi_client(app, secret) as client:
            assert (await client.get("/v1/agents")).status_code == 200
        sa.event.remove(db.engine, "before_cursor_execute", seen)
        assert bound and all(isinstance(p, dict) and p["t"] == tenants["b"] for p in bound), bound
        everywhere: dict[str, set[str]] = {}
        with db.read() as conn:  # unbound: system work sees every tenant
            for table in TENANT_TABLES:
                everywhere[table.name] = set(conn.execute(sa.select(table.c.tenant_id)).scalars())
        with bound_to(tenants["a"]), db.read() as conn:
            for table in TENANT_TABLES:
                seen = set(conn.execute(sa.select(table.c.tenant_id)).scalars())  # no tenant filter
                assert seen <= {tenants["a"]}, f"{table.name} shows {seen - {tenants['a']}}"
                if tenants["a"] in everywhere[table.name]:
                    assert seen == {tenants["a"]}, f"{table.name}: tenant A's own rows are visible"
            names = set(conn.execute(sa.text("SELECT id FROM tenants")).scalars())
            assert names == {tenants["a"]}
        # A connection remembers its binding; one made in a rolled-back transaction is set again.
        conversations = next(t for t in TENANT_TABLES if t.name == "conversations")
        with bound_to(tenants["b"]), db.read() as conn:
            conn.execute(sa.select(1))
        with pytest.raises(RuntimeError), bound_to(tenants["a"]), db.read() as conn:
            conn.execute(sa.select(1))
            raise RuntimeError("rolled back")
        with bound_to(tenants["a"]), db.read() as conn:
            assert set(conn.execute(sa.select(conversations.c.tenant_id)).scalars()) == {tenants["a"]}
        with db.read() as conn:
            assert set(conn.execute(sa.select(conversations.c.tenant_id)).scalars()) >= set(tenants.values())
        populated = [t for t, seen in everywhere.items() if {tenants["a"], tenants["b"]} <= seen]
        assert len(populated) >= 12, populated  # the probe covered nearly every table

        # Writing another tenant's row from a session bound to A is refused by the database.
        refused = pytest.raises(sa.exc.ProgrammingError, match="row-level security")
        with refused, bound_to(tenants["a"]), db.write() as conn:
            conn.execute(
                items.insert().values(
                    tenant_id=tenants["b"],
                    conversation_id="conv_x",
                    seq=1,
                    id="msg_x",
                    type="message",
                    data="{}",
                    response_id=None,
                    created_at=0,
                    tokens=0,
                    origin="input",
                )
            )
    finally:
        await runtime.aclose()
