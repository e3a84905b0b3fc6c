"""Quotas and rate limits, in-process (httpx over ASGI) on both stores: each limit on each subject, the
429 with `Retry-After` in OpenAI's shape, windows that roll over (an injected clock), overrides by
admins through the API, and refusals that write nothing. Several processes: test_quotas_processes.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

from sre import Runtime
from sre.api import create_app
from sre.models import ModelRequest
from sre.runtime import Settings
from sre.store.schema import ALL_TABLES, quota_counters, quota_slots
from sre.testing import FunctionModel
from sre.types import ConfigError


class Clock:
    """Ten seconds into a minute, a few hours into a UTC day; moved by hand."""

    def __init__(self) -> None:
        self.now = time.time() // 60 * 60 + 10.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    runtime: Runtime
    clock: Clock
    tenant: str
    keys: dict[str, str] = field(default_factory=dict)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0

    def client(self, who: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.runtime)),
            base_url="http://sre",
            headers={"Authorization": f"Bearer {self.keys[who]}"},
            timeout=30,
        )

    async def call(self, who: str, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
        async with self.client(who) as client:
            return await client.request(method, path, json=body, params=params or None)

    def key_id(self, who: str) -> str:
        caller = self.runtime.store.keys.authenticate(self.keys[who])
        assert caller is not None and caller.key_id is not None
        return caller.key_id


Factory = Callable[[str], Awaitable[World]]


@pytest.fixture
async def make_world(store_url: str, tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[World] = []

    async def make(quotas: str) -> World:
        config = tmp_path / f"sre-{len(made)}.toml"
        config.write_text(quotas)
        world: World

        async def reply(request: ModelRequest) -> str:
            world.started += 1
            await world.gate.wait()
            return "ok"

        model = FunctionModel(reply, name="m")
        runtime = Runtime.open(database_url=store_url, config=config, models=[model], env={})
        tag = uuid.uuid4().hex[:8]
        world = World(runtime, Clock(), f"quota-a-{tag}")
        world.gate.set()
        runtime.quotas.clock = world.clock
        for who, tenant, principal, role in [
            ("a1", "a", "alice", None), ("a2", "a", "alice", None), ("b1", "a", "bob", None),
            ("root", "a", "root", "admin"), ("c", "b", "carol", "admin"),
        ]:  # fmt: skip
            world.keys[who] = runtime.create_key(f"quota-{tenant}-{tag}", principal, who, role)[1]
        made.append(world)
        return world

    yield make
    for world in made:
        world.gate.set()
        await world.runtime.aclose()


def refused(response: httpx.Response, kind: str = "requests") -> str:
    """The refusal's message, once its shape is checked: 429, OpenAI's error, Retry-After in seconds."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind and error["code"] == "rate_limit_exceeded", error
    retry = response.headers["Retry-After"]
    assert retry.isdigit() and int(retry) >= 1
    return str(error["message"])


# Who shares the subject with `a1` (the limit's other requests), and who does not.
SAME = {"key": "a1", "principal": "a2", "tenant": "b1"}
OTHER = {"key": "a2", "principal": "b1", "tenant": "c"}


@pytest.mark.parametrize("kind", ["key", "principal", "tenant"])
async def test_requests_per_minute(make_world: Factory, kind: str) -> None:
    w = await make_world(f"[quotas.{kind}]\nrequests_per_minute = 3\n")
    same, other = SAME[kind], OTHER[kind]
    for who in ("a1", "a1", same):
        assert (await w.call(who, "GET", "/v1/models")).status_code == 200
    response = await w.call(same, "GET", "/v1/conversations/conv_x")  # any authenticated route
    message = refused(response)
    assert f"Rate limit reached for {kind}" in message and "3 requests per minute" in message
    assert response.headers["Retry-After"] == "50"  # the minute's end, by the clock
    assert (await w.call(other, "GET", "/v1/models")).status_code == 200
    assert (await w.call("a1", "GET", "/healthz")).status_code == 200  # health is not counted
    w.clock.now += 50  # the next window
    assert (await w.call(same, "GET", "/v1/models")).status_code == 200


@pytest.mark.parametrize("kind", ["key", "principal", "tenant"])
async def test_tokens_per_day(make_world: Factory, kind: str) -> None:
    w = await make_world(f"[quotas.{kind}]\ntokens_per_day = 1\n")
    same, other = SAME[kind], OTHER[kind]
    first = await w.call("a1", "POST", "/v1/responses", {"model": "m", "input": "hello"})
    assert first.status_code == 200, first.text  # under the limit when it starts; over it once done
    for path, body in [
        ("/v1/responses", {"model": "m", "input": "again"}),
        ("/v1/responses", {"model": "m", "input": "again", "stream": True}),
        ("/v1/responses", {"model": "m", "input": "again", "background": True}),
        ("/v1/responses/compact", {"model": "m", "input": "compact me"}),
    ]:
        message = refused(await w.call(same, "POST", path, body), "tokens")
        assert f"Token quota reached for {kind}" in message and "1 tokens per day" in message
    mine = (await w.call(same, "GET", "/v1/quotas")).json()["data"]
    entry = next(q for q in mine if q["subject"] == kind)
    assert entry["tokens_per_day"]["limit"] == 1 and entry["tokens_per_day"]["used"] > 1
    assert (await w.call(other, "POST", "/v1/responses", {"model": "m", "input": "hi"})).status_code == 200
    w.clock.now += 86400  # the next UTC day
    assert (await w.call(same, "POST", "/v1/responses", {"model": "m", "input": "hi"})).status_code == 200


@pytest.mark.parametrize("kind", ["key", "principal", "tenant"])
async def test_concurrent_runs(make_world: Factory, kind: str) -> None:
    w = await make_world(f"[quotas.{kind}]\nconcurrent_runs = 2\n")  # no workers: runs stay queued
    same, other = SAME[kind], OTHER[kind]
    body = {"model": "m", "input": "later", "background": True}
    queued = [await w.call(who, "POST", "/v1/responses", body) for who in ("a1", same)]
    assert [r.json()["status"] for r in queued] == ["queued", "queued"]
    response = await w.call(same, "POST", "/v1/responses", body)
    assert "2 concurrent runs" in refused(response) and response.headers["Retry-After"] == "2"
    assert (await w.call(other, "POST", "/v1/responses", body)).status_code == 200
    cancelled = await w.call("a1", "POST", f"/v1/responses/{queued[0].json()['id']}/cancel")
    assert cancelled.status_code == 200  # its place is free again
    assert (await w.call(same, "POST", "/v1/responses", body)).status_code == 200


async def test_plain_turns_hold_a_place_while_they_run(make_world: Factory) -> None:
    w = await make_world("[quotas.principal]\nconcurrent_runs = 2\n")
    w.gate.clear()
    turns = [
        asyncio.create_task(w.call(who, "POST", "/v1/responses", {"model": "m", "input": "slow", **extra}))
        for who, extra in (("a1", {}), ("a2", {"stream": True}))
    ]
    deadline = time.monotonic() + 10
    while w.started < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    refused(await w.call("a1", "POST", "/v1/responses", {"model": "m", "input": "third"}))
    later = {"model": "m", "input": "bob", "background": True}  # queued: bob has places of his own
    assert (await w.call("b1", "POST", "/v1/responses", later)).status_code == 200
    w.gate.set()
    assert [t.status_code for t in await asyncio.gather(*turns)] == [200, 200]
    assert (await w.call("a1", "POST", "/v1/responses", {"model": "m", "input": "now"})).status_code == 200
    with w.runtime.store.db.read() as conn:  # every place was given back
        assert conn.execute(sa.select(sa.func.count()).select_from(quota_slots)).scalar() == 0


def snapshot(runtime: Runtime) -> dict[str, list[tuple[Any, ...]]]:
    with runtime.store.db.engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
            for t in ALL_TABLES
            if t is not quota_counters
        }


async def test_refusals_write_nothing_and_are_audited_once_per_window(make_world: Factory) -> None:
    w = await make_world("[quotas.principal]\nrequests_per_minute = 1\n")
    assert (await w.call("a1", "GET", "/v1/models")).status_code == 200
    before = snapshot(w.runtime)
    for _ in range(3):
        refused(await w.call("a2", "POST", "/v1/responses", {"model": "m", "input": "x", "store": True}))
    refused(await w.call("a1", "POST", "/v1/conversations", {"items": [{"role": "user", "content": "x"}]}))
    assert snapshot(w.runtime) == before
    events = (await w.call("root", "GET", "/v1/audit", action="quota.exceeded")).json()["data"]
    assert len(events) == 1 and events[0]["outcome"] == "denied"
    assert events[0]["details"]["limit"] == "requests_per_minute"
    w.clock.now += 60
    assert (await w.call("a1", "GET", "/v1/models")).status_code == 200
    refused(await w.call("a1", "GET", "/v1/models"))
    events = (await w.call("root", "GET", "/v1/audit", action="quota.exceeded")).json()["data"]
    assert len(events) == 2  # one more window, one more event


async def test_overrides_by_admins(make_world: Factory) -> None:
    w = await make_world("[quotas.principal]\nrequests_per_minute = 2\n")
    root = {"subject": "principal", "id": "root", "requests_per_minute": "unlimited"}  # lifts the default
    assert (await w.call("root", "POST", "/v1/quotas", root)).json()["requests_per_minute"]["limit"] is None
    set_bob = {"subject": "principal", "id": "bob", "requests_per_minute": 1, "concurrent_runs": 0}
    made = await w.call("root", "POST", "/v1/quotas", set_bob)
    assert made.status_code == 200, made.text
    quota = made.json()
    assert quota["object"] == "quota" and quota["name"] == "bob"
    assert quota["requests_per_minute"] == {"limit": 1, "source": "override", "used": 0,
                                            "resets_at": quota["requests_per_minute"]["resets_at"]}  # fmt: skip
    assert quota["concurrent_runs"]["limit"] == 0 and quota["tokens_per_day"]["source"] is None
    assert (await w.call("b1", "GET", "/v1/models")).status_code == 200
    refused(await w.call("b1", "GET", "/v1/models"))
    # Alice: the default (2), then lifted, then back to the default (null), then cleared.
    for _ in range(2):
        assert (await w.call("a1", "GET", "/v1/models")).status_code == 200
    refused(await w.call("a1", "GET", "/v1/models"))
    lift = {"subject": "principal", "id": "alice", "requests_per_minute": "unlimited"}
    assert (await w.call("root", "POST", "/v1/quotas", lift)).json()["requests_per_minute"]["limit"] is None
    for _ in range(3):
        assert (await w.call("a1", "GET", "/v1/models")).status_code == 200
    back = (await w.call("root", "POST", "/v1/quotas", {**lift, "requests_per_minute": None})).json()
    assert back["requests_per_minute"]["limit"] == 2 and back["requests_per_minute"]["source"] == "default"
    refused(await w.call("a1", "GET", "/v1/models"))
    cleared = await w.call("root", "DELETE", "/v1/quotas", subject="principal", id="bob")
    assert cleared.json() == {"object": "quota.deleted", "subject": "principal",
                              "id": cleared.json()["id"], "deleted": True}  # fmt: skip
    w.clock.now += 60
    mine = (await w.call("b1", "GET", "/v1/quotas")).json()
    assert [q["subject"] for q in mine["data"]] == ["key", "principal", "tenant"]
    assert mine["data"][1]["requests_per_minute"]["source"] == "default"
    updates = (await w.call("root", "GET", "/v1/audit", action="quota.update")).json()["data"]
    assert len(updates) == 5 and updates[0]["details"]["was"]["requests_per_minute"] == 1


async def test_overrides_of_keys_and_tenants(make_world: Factory) -> None:
    w = await make_world("")
    key = {"subject": "key", "id": w.key_id("a1"), "requests_per_minute": 1}
    assert (await w.call("root", "POST", "/v1/quotas", key)).status_code == 200
    tenant = {"subject": "tenant", "tokens_per_day": 0}
    assert (await w.call("root", "POST", "/v1/quotas", tenant)).status_code == 200
    assert (await w.call("a1", "GET", "/v1/models")).status_code == 200
    refused(await w.call("a1", "GET", "/v1/models"))
    assert (await w.call("a2", "GET", "/v1/models")).status_code == 200
    message = refused(await w.call("b1", "POST", "/v1/responses", {"model": "m", "input": "x"}), "tokens")
    assert "blocked for tenant" in message
    assert (await w.call("c", "POST", "/v1/responses", {"model": "m", "input": "x"})).status_code == 200


BAD: list[tuple[dict[str, Any], str | None]] = [
    ({"subject": "group", "id": "x", "requests_per_minute": 1}, "subject"),
    ({"subject": "principal", "id": "bob", "requests_per_minute": -2}, "requests_per_minute"),
    ({"subject": "principal", "id": "bob", "requests_per_minute": True}, "requests_per_minute"),
    ({"subject": "principal", "id": "bob", "tokens_per_day": "lots"}, "tokens_per_day"),
    ({"subject": "principal", "id": "bob", "concurrent_runs": 10**7}, "concurrent_runs"),
    ({"subject": "principal", "id": "bob", "rpm": 1}, "rpm"),
    ({"subject": "principal", "requests_per_minute": 1}, "id"),
    ({"subject": "principal", "id": "bob"}, None),
    ({"subject": "principal", "id": "", "requests_per_minute": 1}, "id"),
]


async def test_bad_overrides_are_refused_and_write_nothing(make_world: Factory) -> None:
    w = await make_world("")
    before = snapshot(w.runtime)
    for body, param in BAD:
        response = await w.call("root", "POST", "/v1/quotas", body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, (body, error)
    alice = w.runtime.store.keys.ensure_principal(w.runtime.store.keys.find_tenant(w.tenant) or "", "alice")
    for who, body, status in [
        ("root", {"subject": "principal", "id": "nobody", "requests_per_minute": 1}, 404),
        ("root", {"subject": "key", "id": "key_missing", "requests_per_minute": 1}, 404),
        ("root", {"subject": "tenant", "id": "another-tenant", "requests_per_minute": 1}, 404),
        ("c", {"subject": "principal", "id": alice.id, "requests_per_minute": 1}, 404),  # not carol's
        ("c", {"subject": "key", "id": w.key_id("a1"), "requests_per_minute": 1}, 404),
        ("b1", {"subject": "principal", "id": "bob", "requests_per_minute": 1000}, 403),  # not an admin
        ("b1", {"subject": "tenant", "requests_per_minute": 1000}, 403),
    ]:
        response = await w.call(who, "POST", "/v1/quotas", body)
        assert response.status_code == status, (who, body, response.text)
    for who, params, status in [
        ("b1", {"subject": "principal", "id": "alice"}, 403),
        ("c", {"subject": "principal", "id": alice.id}, 404),
        ("root", {"subject": "principal"}, 400),
        ("root", {}, 400),
    ]:
        assert (await w.call(who, "DELETE", "/v1/quotas", **params)).status_code == status, (who, params)
    assert (await w.call("b1", "GET", "/v1/quotas", subject="principal", id="alice")).status_code == 403
    assert (await w.call("c", "GET", "/v1/quotas", subject="principal", id=alice.id)).status_code == 404
    assert snapshot(w.runtime) == before
    assert (await w.call("root", "GET", "/v1/audit", action="quota.update")).json()["data"] == []


async def test_a_change_reaches_another_process_within_a_second(make_world: Factory) -> None:
    first = await make_world("")
    second = await make_world("")  # another runtime over the same store: as another process
    second.keys, second.runtime.quotas.clock = first.keys, first.clock
    assert (await second.call("b1", "GET", "/v1/models")).status_code == 200  # its cache: no overrides
    bob = {"subject": "principal", "id": "bob", "requests_per_minute": 0}
    assert (await first.call("root", "POST", "/v1/quotas", bob)).status_code == 200
    refused(await first.call("b1", "GET", "/v1/models"))  # at once where it was made
    await asyncio.sleep(1.1)
    assert "blocked for principal 'bob'" in refused(await second.call("b1", "GET", "/v1/models"))
    events = (await first.call("root", "GET", "/v1/audit", action="quota.exceeded")).json()["data"]
    assert len(events) == 1  # one window, one event, whichever process refused


async def test_tokens_of_runs_another_process_executes_are_counted(make_world: Factory) -> None:
    api = await make_world("")
    alice = {"subject": "principal", "id": "alice", "tokens_per_day": 10**6}
    assert (await api.call("root", "POST", "/v1/quotas", alice)).status_code == 200
    queued = await api.call(
        "a1", "POST", "/v1/responses", {"model": "m", "input": "later", "background": True}
    )
    assert queued.status_code == 200, queued.text  # its check made alice's counter of the day
    worker = await make_world("")  # another process, executing runs only: it never saw the override
    worker.runtime.start_workers(1)
    deadline = time.monotonic() + 10
    while (await api.call("a1", "GET", f"/v1/responses/{queued.json()['id']}")).json()[
        "status"
    ] != "completed":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    mine = (await api.call("a1", "GET", "/v1/quotas")).json()["data"]
    assert next(q for q in mine if q["subject"] == "principal")["tokens_per_day"]["used"] > 0


async def test_the_openai_client_sees_a_rate_limit_error(make_world: Factory) -> None:
    w = await make_world("[quotas.key]\nrequests_per_minute = 1\n")
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(w.runtime)))
    client = openai.AsyncOpenAI(
        base_url="http://sre/v1", api_key=w.keys["a1"], http_client=http, max_retries=0
    )
    async with http:
        assert (await client.responses.create(model="m", input="hi")).output_text == "ok"
        with pytest.raises(openai.RateLimitError) as err:
            await client.responses.create(model="m", input="hi")
    assert err.value.status_code == 429 and err.value.code == "rate_limit_exceeded"
    assert err.value.response.headers["retry-after"] == "50"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ("quotas = 1", "[quotas] must be a table"),
        ("[quotas.group]\nrequests_per_minute = 1", "[quotas.group]"),
        ("[quotas.key]\nrpm = 1", "unknown limit 'rpm'"),
        ("[quotas.key]\nrequests_per_minute = -1", "whole number"),
        ("[quotas.key]\ntokens_per_day = 1.5", "whole number"),
        ("[quotas.key]\nconcurrent_runs = true", "whole number"),
    ],
)
def test_bad_quota_configuration(tmp_path: Path, table: str, problem: str) -> None:
    config = tmp_path / "sre.toml"
    config.write_text(table + "\n")
    with pytest.raises(ConfigError) as err:
        Settings.load(config_path=config, env={})
    assert problem in err.value.message
