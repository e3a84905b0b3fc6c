"""Secrets: encrypted at rest, write-only over the API, kept out of errors, the audit and logs, and
re-encrypted by a key rotation; on both stores, in process and as `sre serve` and `sre` commands.

* a value goes in through `/v1/secrets` and comes back only from `Secrets.reveal` (Python): no
  answer, listing, error, audit event or log line holds it, and the table holds a ciphertext;
* names are unique per tenant (409), another tenant's secret is not found (404), a member lacks
  the `secrets` right (403), and a refused body writes nothing;
* `SRE_SECRET_KEY` takes Fernet keys, newest first; a malformed one stops the start with a message
  that does not repeat it; the embedded store makes its own key file (0600) when it is unset, and
  PostgreSQL refuses to store secrets (400 `secrets_unavailable`) but serves everything else;
* a rotation with "B,A" re-encrypts everything with B, in batches, idempotently, audited per tenant
  as counts; afterwards "B" alone decrypts everything, and a key that encrypted nothing here gives
  a one-line error naming the key it lacks.
"""

from __future__ import annotations

import json
import logging
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sre import ConfigError, NotFound, Runtime
from sre.api import create_app
from sre.governance import secrets as secrets_module
from sre.governance.secret_keys import fingerprint, generate_key
from sre.governance.secrets import REDACTED, install_log_redaction, redact, remember
from sre.store.schema import audit_events, secrets
from sre.testing import FunctionModel
from sre.types.errors import InvalidRequest, SREError
from tests.support.asgi import asgi_client
from tests.support.server import ServerProcess
from tests.test_cli import one_line_error, sre

KEY_A, KEY_B, KEY_C = generate_key(), generate_key(), generate_key()


def _value() -> str:
    return f"sk-live-{uuid.uuid4().hex}"


def _open(store_url: str, keys: str | None) -> Runtime:
    env = {} if keys is None else {"SRE_SECRET_KEY": keys}
    return Runtime.open(database_url=store_url, models=[FunctionModel(lambda _: "ok", name="m")], env=env)


@dataclass
class World:
    runtime: Runtime
    app: Any
    tenant_id: str
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, who: str) -> httpx.AsyncClient:
        return asgi_client(self.app, self.keys[who])

    def rows(self) -> list[Any]:
        with self.runtime.store.db.read() as conn:
            return list(conn.execute(sa.select(secrets).where(secrets.c.tenant_id == self.tenant_id)))

    def audit_text(self) -> str:
        with self.runtime.store.db.read() as conn:
            rows = conn.execute(sa.select(audit_events).where(audit_events.c.tenant_id == self.tenant_id))
            return "\n".join(repr(tuple(r)) for r in rows)


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[World]:
    runtime = _open(store_url, KEY_A)
    tag = uuid.uuid4().hex[:10]
    w = World(runtime, create_app(runtime), "")
    w.keys["admin"] = runtime.create_key(f"sec-{tag}", "root", role="admin")[1]
    w.keys["member"] = runtime.create_key(f"sec-{tag}", "bob")[1]
    w.keys["other"] = runtime.create_key(f"sec-other-{tag}", "carol", role="admin")[1]
    w.tenant_id = (await runtime.authenticate(w.keys["admin"])).tenant_id
    yield w
    await runtime.aclose()


async def test_a_value_goes_in_and_only_reveal_gives_it_back(world: World) -> None:
    value = _value()
    async with world.client("admin") as admin:
        made = await admin.post("/v1/secrets", json={"name": "openai", "value": value, "description": "prod"})
        assert made.status_code == 200, made.text
        body = made.json()
        assert set(body) == {"id", "object", "name", "description", "created_at", "updated_at", "created_by"}
        assert body["object"] == "secret" and body["id"].startswith("sec_") and body["description"] == "prod"
        assert body["created_by"] == (await world.runtime.authenticate(world.keys["admin"])).principal_id
        shown = [
            await admin.get("/v1/secrets"),
            await admin.get(f"/v1/secrets/{body['id']}"),
            await admin.get("/v1/secrets/openai"),
        ]
        assert all(r.status_code == 200 and value not in r.text for r in shown)
        assert [s["name"] for s in shown[0].json()["data"]] == ["openai"]
        assert shown[1].json() == shown[2].json() == body
    assert world.runtime.secrets.reveal(world.tenant_id, "openai") == value
    assert world.runtime.secrets.reveal(world.tenant_id, body["id"]) == value
    [row] = world.rows()
    assert value not in row.ciphertext and row.key_id == fingerprint(KEY_A.encode())
    assert value not in repr(tuple(row))
    audit = world.audit_text()
    assert "secret.create" in audit and body["id"] in audit and "openai" in audit and value not in audit


async def test_replace_delete_conflict_and_pages(world: World) -> None:
    first, second = _value(), _value()
    async with world.client("admin") as admin:
        made = (await admin.post("/v1/secrets", json={"name": "db", "value": first})).json()
        again = await admin.post("/v1/secrets", json={"name": "db", "value": second})
        assert again.status_code == 409 and "already exists" in again.json()["error"]["message"]
        assert second not in again.text
        assert world.runtime.secrets.reveal(world.tenant_id, "db") == first  # the conflict wrote nothing
        changed = await admin.post("/v1/secrets/db", json={"value": second, "description": "rotated"})
        assert changed.status_code == 200 and second not in changed.text
        assert changed.json()["id"] == made["id"] and changed.json()["description"] == "rotated"
        assert world.runtime.secrets.reveal(world.tenant_id, made["id"]) == second
        kept = await admin.post(f"/v1/secrets/{made['id']}", json={"value": first})
        assert kept.json()["description"] == "rotated"  # a description left out stays
        for n in range(3):
            assert (
                await admin.post("/v1/secrets", json={"name": f"k{n}", "value": _value()})
            ).status_code == 200
        page = (await admin.get("/v1/secrets", params={"limit": 2})).json()
        assert len(page["data"]) == 2 and page["has_more"]
        rest = (await admin.get("/v1/secrets", params={"after": page["last_id"]})).json()
        assert len(rest["data"]) == 2 and not rest["has_more"]
        gone = await admin.delete("/v1/secrets/db")
        assert gone.json() == {"object": "secret.deleted", "id": made["id"], "deleted": True}
        assert (await admin.get(f"/v1/secrets/{made['id']}")).status_code == 404
        assert (await admin.delete("/v1/secrets/db")).status_code == 404
        assert (await admin.post("/v1/secrets/db", json={"value": first})).status_code == 404
    with pytest.raises(NotFound):
        world.runtime.secrets.reveal(world.tenant_id, "db")
    audit = world.audit_text()
    for action in ("secret.create", "secret.update", "secret.delete"):
        assert action in audit
    assert first not in audit and second not in audit


async def test_other_tenants_and_members_reach_nothing(world: World) -> None:
    value = _value()
    async with world.client("admin") as admin:
        made = (await admin.post("/v1/secrets", json={"name": "shared", "value": value})).json()
    async with world.client("other") as carol:
        assert (await carol.get("/v1/secrets")).json()["data"] == []
        for ref in (made["id"], "shared"):
            for method, body in (("GET", None), ("POST", {"value": "mine now"}), ("DELETE", None)):
                answer = await carol.request(method, f"/v1/secrets/{ref}", json=body)
                assert answer.status_code == 404, answer.text
        # Carol's tenant may have its own secret of that name.
        assert (
            await carol.post("/v1/secrets", json={"name": "shared", "value": _value()})
        ).status_code == 200
    async with world.client("member") as bob:
        for method, path, body in (
            ("GET", "/v1/secrets", None),
            ("POST", "/v1/secrets", {"name": "x", "value": value}),
            ("GET", "/v1/secrets/shared", None),
            ("POST", "/v1/secrets/shared", {"value": "bob's"}),
            ("DELETE", "/v1/secrets/shared", None),
        ):
            answer = await bob.request(method, path, json=body)
            assert answer.status_code == 403 and answer.json()["error"]["code"] == "role_required", (
                answer.text
            )
            assert value not in answer.text
    assert world.runtime.secrets.reveal(world.tenant_id, "shared") == value


BAD_BODIES = [
    ({"name": "ok", "value": "{v}", "extra": 1}, "extra"),
    ({"name": "x" * 129, "value": "{v}"}, "name"),
    ({"name": "has space", "value": "{v}"}, "name"),
    ({"name": "", "value": "{v}"}, "name"),
    ({"value": "{v}"}, "name"),
    ({"name": "ok", "value": "{v}", "description": 5}, "description"),
    ({"name": "ok", "value": "{v}" + "é" * 40_000}, "value"),  # over 64 KiB in UTF-8
    ({"name": 7, "value": "{v}"}, "name"),
    ({"name": "ok", "value": ["{v}"]}, "value"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
async def test_a_refused_body_repeats_no_value_and_writes_nothing(
    world: World, body: dict[str, Any], param: str
) -> None:
    value = _value()
    sent = {k: (v.replace("{v}", value) if isinstance(v, str) else v) for k, v in body.items()}
    if isinstance(sent.get("value"), list):
        sent["value"] = [value]
    before = world.audit_text()
    async with world.client("admin") as admin:
        answer = await admin.post("/v1/secrets", json=sent)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param
        assert value not in answer.text
        update = await admin.post("/v1/secrets/ok", json={k: v for k, v in sent.items() if k != "name"})
        assert update.status_code in (400, 404) and value not in update.text
    with pytest.raises(InvalidRequest) as raised:  # the Python API says the same, and no more
        await world.runtime.create_secret(await world.runtime.authenticate(world.keys["admin"]), sent)
    assert value not in str(raised.value)
    assert world.rows() == [] and world.audit_text() == before


def test_keys_are_checked_and_never_repeated(tmp_path: Path) -> None:
    bad = "not-a-key-" + uuid.uuid4().hex
    for text, why in ((bad, "key 1 of 1"), (f"{KEY_A},{bad}", "key 2 of 2"), (" , ", "holds no key")):
        with pytest.raises(ConfigError) as raised:
            Runtime.open(data_dir=tmp_path, models=[], env={"SRE_SECRET_KEY": text})
        assert why in raised.value.message and bad not in raised.value.message
    runtime = Runtime.open(data_dir=tmp_path, models=[], env={"SRE_SECRET_KEY": KEY_A})
    assert KEY_A not in repr(runtime.settings) and KEY_A not in repr(runtime.secrets.keys())
    runtime.close()


async def test_the_embedded_store_makes_its_own_key(tmp_path: Path) -> None:
    runtime = Runtime.open(data_dir=tmp_path, models=[], env={})
    caller = runtime.local_caller()
    key_file = tmp_path / "secret.key"
    assert not key_file.exists()
    assert (await runtime.list_secrets(caller))["data"] == []  # listing needs no key
    with pytest.raises(NotFound):
        runtime.secrets.reveal(caller.tenant_id, "nothing")
    value = _value()
    await runtime.create_secret(caller, {"name": "gh", "value": value})
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    runtime.close()
    again = Runtime.open(data_dir=tmp_path, models=[], env={})  # another process: the same key
    assert again.secrets.reveal(caller.tenant_id, "gh") == value
    again.close()
    # Moving to SRE_SECRET_KEY: the generated key, listed after the new one, still decrypts.
    moved = Runtime.open(
        data_dir=tmp_path, models=[], env={"SRE_SECRET_KEY": f"{KEY_B},{key_file.read_text().strip()}"}
    )
    assert moved.rotate_secret_key().secrets == 1
    moved.close()
    only_b = Runtime.open(data_dir=tmp_path, models=[], env={"SRE_SECRET_KEY": KEY_B})
    assert only_b.secrets.reveal(caller.tenant_id, "gh") == value
    only_b.close()


async def test_postgresql_without_a_key_refuses_secrets_only(pg_url: str) -> None:
    runtime = _open(pg_url, None)
    _, admin = runtime.create_key(f"sec-pg-{uuid.uuid4().hex[:8]}", "root", role="admin")
    app = create_app(runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sre",
        headers={"Authorization": f"Bearer {admin}"},
    ) as client:
        value = _value()
        refused = await client.post("/v1/secrets", json={"name": "x", "value": value})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "secrets_unavailable"
        assert "SRE_SECRET_KEY" in refused.json()["error"]["message"] and value not in refused.text
        assert (await client.get("/v1/secrets")).status_code == 200
        assert (await client.post("/v1/responses", json={"model": "m", "input": "hi"})).status_code == 200
    await runtime.aclose()


def test_rotation_reencrypts_in_batches_and_is_idempotent(store_url: str) -> None:
    runtime = _open(store_url, KEY_A)
    tenants = [runtime.store.keys.ensure_tenant(f"rot-{uuid.uuid4().hex[:10]}") for _ in range(2)]
    values = {(t, f"s{n}"): _value() for t in tenants for n in range(5 if t == tenants[0] else 2)}
    for (tenant, name), value in values.items():
        runtime.secrets.create(tenant, name, value)
    names = {runtime.store.keys.tenant_names()[t] for t in tenants}
    runtime.close()

    def mine(done: Any) -> dict[str, int]:  # on PostgreSQL, other tests' secrets are there too
        return {k: v for k, v in done.by_tenant.items() if k in names}

    both = _open(store_url, f"{KEY_B},{KEY_A}")
    assert all(both.secrets.reveal(t, n) == v for (t, n), v in values.items())  # before: A decrypts
    done = both.rotate_secret_key(batch_size=2)
    assert done.key_id == fingerprint(KEY_B.encode())
    assert sorted(mine(done).values()) == [2, 5]
    assert not [f for f in done.failures if any(f"'{n}'" in f for n in names)]
    assert mine(both.rotate_secret_key(batch_size=2)) == {}  # nothing left to do
    for tenant in tenants:
        events = both.store.audit.list(tenant, filters={"action": "secret.rekey"}, limit=100).data
        details = [json.loads(e.details) for e in events]
        count = sum(1 for t, _ in values if t == tenant)
        assert sorted(d["count"] for d in details) == sorted([2] * (count // 2) + [1] * (count % 2))
        assert all(set(d) == {"count", "key_id"} for d in details)  # a batch's count, nothing else
    both.close()
    only_b = _open(store_url, KEY_B)
    assert all(only_b.secrets.reveal(t, n) == v for (t, n), v in values.items())
    only_b.close()
    only_a = _open(store_url, KEY_A)
    with pytest.raises(ConfigError) as raised:
        only_a.secrets.reveal(tenants[0], "s0")
    assert (
        fingerprint(KEY_B.encode()) in raised.value.message
        and "not in SRE_SECRET_KEY" in raised.value.message
    )
    only_a.close()


def test_a_ciphertext_moved_to_another_secret_does_not_open(store: Any) -> None:
    from sre.governance.secrets import Secrets

    vault = Secrets(store, keys=KEY_A)
    tenant = store.keys.ensure_tenant(f"mv-{uuid.uuid4().hex[:10]}")
    vault.create(tenant, "a", _value())
    vault.create(tenant, "b", _value())
    with store.db.write() as conn:
        stolen = conn.execute(
            sa.select(secrets.c.ciphertext).where(secrets.c.tenant_id == tenant, secrets.c.name == "a")
        ).scalar_one()
        conn.execute(
            secrets.update()
            .where(secrets.c.tenant_id == tenant, secrets.c.name == "b")
            .values(ciphertext=stolen)
        )
    with pytest.raises(SREError, match="belongs to another secret"):
        vault.reveal(tenant, "b")


@pytest.fixture
def redaction(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(secrets_module, "_installed", False)
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)


def test_redact_blanks_known_values_out_of_text_and_logs(
    redaction: None, caplog: pytest.LogCaptureFixture
) -> None:
    value = _value()
    assert redact(f"x {value} y") == f"x {value} y"  # not seen yet
    remember(value)
    assert redact(f"x {value} y {value}") == f"x {REDACTED} y {REDACTED}"
    install_log_redaction()
    log = logging.getLogger("sre.test.secrets")
    with caplog.at_level(logging.INFO, logger="sre.test.secrets"):
        log.info("calling with %s", value)
        try:
            raise RuntimeError(f"upstream refused key {value}")
        except RuntimeError:
            log.exception("failed")
    assert value not in caplog.text and caplog.text.count(REDACTED) >= 2


def _data_file_bytes(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("sre.db"))


def test_a_real_server_keeps_values_out_of_answers_logs_and_the_database_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = sre(
        "keys",
        "create",
        "--tenant",
        "acme",
        "--principal",
        "root",
        "--role",
        "admin",
        "--data-dir",
        str(data),
    )
    assert made.returncode == 0, made.stderr
    admin = made.stdout.strip()
    server = ServerProcess(data_dir=data, env={"SRE_SECRET_KEY": KEY_A}).start()
    value, other = _value(), _value()
    try:
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {admin}"}, timeout=30
        ) as c:
            answers = [
                c.post("/secrets", json={"name": "db", "value": value, "colour": "red"}),
                c.post("/secrets", json={"name": "bad name", "value": value}),
                c.post("/secrets", json={"name": "db", "value": value + "é" * 40_000}),
                c.post("/secrets", json={"name": "db", "value": value}),
                c.post("/secrets", json={"name": "db", "value": other}),  # 409
                c.post("/secrets/db", json={"value": other, "extra": True}),
                c.post("/secrets/db", json={"value": other}),
                c.get("/secrets"),
                c.get("/secrets/db"),
            ]
            assert [a.status_code for a in answers] == [400, 400, 400, 200, 409, 400, 200, 200, 200]
            assert all(value not in a.text and other not in a.text for a in answers)
            audit = c.get("/audit", params={"limit": 100})
            assert audit.status_code == 200 and "secret.update" in audit.text
            assert value not in audit.text and other not in audit.text
    finally:
        server.stop()
    log = server.output()
    assert "SRE listening" in log and value not in log and other not in log and KEY_A not in log
    stored = _data_file_bytes(data)
    assert value.encode() not in stored and other.encode() not in stored


def test_cli_secrets_and_rotation(tmp_path: Path) -> None:
    data = ["--tenant", "acme", "--data-dir", str(tmp_path / "data")]
    a = {"SRE_SECRET_KEY": KEY_A}
    assert sre("keys", "create", "--principal", "root", *data).returncode == 0  # makes the tenant
    value = _value()
    stored = sre(
        "admin", "secrets", "set", "github", "--description", "CI token", *data, stdin=value + "\n", env=a
    )
    assert stored.returncode == 0 and "Stored secret 'github'" in stored.stderr, stored.stderr
    assert value not in stored.stdout + stored.stderr
    path = tmp_path / "value.txt"
    path.write_text(value + "-2\n")
    replaced = sre("admin", "secrets", "set", "github", "--from-file", str(path), *data, env=a)
    assert replaced.returncode == 0 and "Replaced" in replaced.stderr, replaced.stderr
    listed = sre("admin", "secrets", "list", *data, env=a)
    assert "github" in listed.stdout and "CI token" in listed.stdout and value not in listed.stdout
    assert "empty" in one_line_error(sre("admin", "secrets", "set", "x", *data, stdin="\n", env=a))
    assert "name" in one_line_error(sre("admin", "secrets", "set", "bad name", *data, stdin=value, env=a))
    assert "not a Fernet key" in one_line_error(
        sre("admin", "secrets", "list", *data, env={"SRE_SECRET_KEY": "nope"})
    )
    fresh = sre("admin", "rotate-secret-key", "--generate")
    assert fresh.returncode == 0 and len(fresh.stdout.strip()) == 44
    new = fresh.stdout.strip()
    rotated = sre("admin", "rotate-secret-key", *data[2:], env={"SRE_SECRET_KEY": f"{new},{KEY_A}"})
    assert rotated.returncode == 0 and "Re-encrypted 1 secret(s) of 1 tenant(s)" in rotated.stderr, (
        rotated.stderr
    )
    again = sre("admin", "rotate-secret-key", *data[2:], env={"SRE_SECRET_KEY": f"{new},{KEY_A}"})
    assert again.returncode == 0 and "Re-encrypted 0 secret(s)" in again.stderr
    runtime = Runtime.open(data_dir=tmp_path / "data", models=[], env={"SRE_SECRET_KEY": new})
    assert runtime.secrets.reveal(runtime.store.keys.find_tenant("acme") or "", "github") == value + "-2"
    runtime.close()
    # A key list that lacks the one the secrets are encrypted with: a one-line error, nothing changed.
    wrong = sre("admin", "rotate-secret-key", *data[2:], env={"SRE_SECRET_KEY": KEY_C})
    assert "could not be decrypted" in one_line_error(wrong)
    assert fingerprint(new.encode()) in wrong.stderr and "github" in wrong.stderr
    assert sre("admin", "secrets", "delete", "github", *data, env=a).returncode == 0
    assert "No secret" in one_line_error(sre("admin", "secrets", "delete", "github", *data, env=a))
