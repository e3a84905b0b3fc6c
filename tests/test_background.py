"""Background runs in-process (httpx over ASGI) on both stores: queue, workers, resumed streams, cancel.

The slow model below is a test double of a provider (a `ChatModel` that streams one word per tick
and can be held); everything of SRE's own is real, workers included.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sre import Runtime
from sre.api import create_app
from sre.models.base import ChatModel, Finish, ModelEvent, ModelInfo, ModelRequest, TextDelta, Usage
from sre.store import LeaseLost, Store
from sre.types.steps import RunPayload

ANSWER = "one two three four five six"


class SlowModel(ChatModel):
    """Streams `ANSWER` word by word, waiting `tick` seconds before each word and, after the first
    word, until `gate` is set."""

    def __init__(self, tick: float = 0.01) -> None:
        super().__init__(ModelInfo(name="slow", provider="test", upstream_model="slow", context_window=8000))
        self.tick = tick
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls = 0
        self.closed = 0  # streams that ended early (the runtime hung up)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.calls += 1
        finished = False
        try:
            for i, word in enumerate(ANSWER.split(" ")):
                await asyncio.sleep(self.tick)
                if i == 1:
                    await self.gate.wait()
                yield TextDelta(word if i == 0 else " " + word)
            yield Usage(input_tokens=5, output_tokens=6, exact=True)
            yield Finish("stop")
            finished = True
        finally:
            if not finished:
                self.closed += 1


class Api:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, model: SlowModel) -> None:
        self.runtime, self.client, self.model = runtime, client, model

    async def ok(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        response = await self.client.request(method, path, json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def wait_status(self, response_id: str, statuses: set[str], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = await self.ok("GET", f"/v1/responses/{response_id}")
            if found["status"] in statuses or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    async def events(self, path: str, body: object = None) -> list[dict[str, Any]]:
        method = "GET" if body is None else "POST"
        response = await self.client.request(method, path, json=body)
        assert response.status_code == 200, response.text
        return parse_sse(response.text)


def parse_sse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def make_api(store_url: str, *, workers: int) -> tuple[Api, str]:
    model = SlowModel()
    runtime = Runtime.open(database_url=store_url, models=[model], env={})
    _, secret = runtime.create_key(f"bg-{uuid.uuid4().hex}", "alice")
    runtime.start_workers(workers)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(runtime)),
        base_url="http://sre",
        headers={"Authorization": f"Bearer {secret}"},
    )
    return Api(runtime, client, model), secret


@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    made, _ = await make_api(store_url, workers=1)
    yield made
    await made.client.aclose()
    await made.runtime.aclose()


@pytest.fixture
async def idle_api(store_url: str) -> AsyncIterator[Api]:
    """No workers: runs stay queued."""
    made, _ = await make_api(store_url, workers=0)
    yield made
    await made.client.aclose()
    await made.runtime.aclose()


def text_of(response: dict[str, Any]) -> str:
    return "".join(
        p.get("text", "")
        for item in response["output"]
        for p in item.get("content", [])
        if item["type"] == "message"
    )


async def test_background_returns_queued_then_completes(api: Api) -> None:
    conv = await api.ok("POST", "/v1/conversations")
    started = time.monotonic()
    queued = await api.ok(
        "POST", "/v1/responses", {"input": "hi", "background": True, "conversation": conv["id"]}
    )
    assert time.monotonic() - started < 1.0
    assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []
    done = await api.wait_status(queued["id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert done["background"] is True and text_of(done) == ANSWER
    assert done["usage"]["output_tokens"] == 6
    items = await api.ok("GET", f"/v1/conversations/{conv['id']}/items?order=asc")
    assert [i["role"] for i in items["data"]] == ["user", "assistant"]
    # A background response continues like any other.
    follow = await api.ok("POST", "/v1/responses", {"input": "more", "previous_response_id": done["id"]})
    assert follow["status"] == "completed"
    assert api.model.calls == 2


async def test_background_stream_and_resume_after_any_event(api: Api) -> None:
    events = await api.events("/v1/responses", {"input": "hi", "background": True, "stream": True})
    types = [e["type"] for e in events]
    assert types[0] == "response.queued" and types[-1] == "response.completed"
    assert "response.created" in types and types.count("response.output_text.delta") == 6
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert text_of(final) == ANSWER
    response_id = final["id"]
    for n in (-1, 0, 3, len(events) - 2, len(events) - 1):
        resumed = await api.events(f"/v1/responses/{response_id}?stream=true&starting_after={n}")
        assert resumed == events[n + 1 :]
    stored = await api.ok("GET", f"/v1/responses/{response_id}")
    assert stored["status"] == "completed" and text_of(stored) == ANSWER


async def test_bad_background_requests_write_nothing(api: Api) -> None:
    bad = await api.client.post("/v1/responses", json={"input": "hi", "background": True, "store": False})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "store"
    bad = await api.client.post("/v1/responses", json={"input": "hi", "background": True, "model": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
    plain = await api.ok("POST", "/v1/responses", {"input": "hi"})
    again = await api.client.get(f"/v1/responses/{plain['id']}?stream=true")
    assert again.status_code == 400 and again.json()["error"]["param"] == "stream"
    finished = await api.client.post(f"/v1/responses/{plain['id']}/cancel")
    assert finished.status_code == 409
    missing = await api.client.get("/v1/responses/resp_missing?stream=true")
    assert missing.status_code == 404
    assert (await api.client.post("/v1/responses/resp_missing/cancel")).status_code == 404


async def test_cancel_queued_run(idle_api: Api, store_url: str) -> None:
    api = idle_api
    conv = await api.ok("POST", "/v1/conversations")
    queued = await api.ok(
        "POST", "/v1/responses", {"input": "hi", "background": True, "conversation": conv["id"]}
    )
    other, _ = await make_api(store_url, workers=0)
    try:
        assert (await other.client.post(f"/v1/responses/{queued['id']}/cancel")).status_code == 404
        assert (await other.client.get(f"/v1/responses/{queued['id']}")).status_code == 404
    finally:
        await other.client.aclose()
        await other.runtime.aclose()
    cancelled = await api.ok("POST", f"/v1/responses/{queued['id']}/cancel")
    assert cancelled["status"] == "cancelled"
    assert (await api.ok("GET", f"/v1/responses/{queued['id']}"))["status"] == "cancelled"
    again = await api.client.post(f"/v1/responses/{queued['id']}/cancel")
    assert again.status_code == 409, again.text
    events = await api.events(f"/v1/responses/{queued['id']}?stream=true")
    assert [e["type"] for e in events] == ["response.queued", "response.incomplete"]
    assert events[-1]["response"]["status"] == "cancelled"
    # A worker started later does not run it.
    api.runtime.start_workers(1)
    await asyncio.sleep(0.5)
    assert api.model.calls == 0
    assert (await api.ok("GET", f"/v1/conversations/{conv['id']}/items"))["data"] == []


async def test_cancel_in_progress_run_interrupts_the_model(api: Api) -> None:
    conv = await api.ok("POST", "/v1/conversations")
    api.model.gate.clear()  # the model stops after its first word until released
    queued = await api.ok(
        "POST", "/v1/responses", {"input": "hi", "background": True, "conversation": conv["id"]}
    )
    running = await api.wait_status(queued["id"], {"in_progress"})
    assert running["status"] == "in_progress"
    tenant_id = _tenant(api)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the first word is in the event log
        events = api.runtime.store.runs.events_after(tenant_id, queued["id"], -1)
        if any(e["type"] == "response.output_text.delta" for e in events):
            break
        await asyncio.sleep(0.05)
    cancel = asyncio.create_task(api.ok("POST", f"/v1/responses/{queued['id']}/cancel"))
    await asyncio.sleep(0.3)
    api.model.gate.set()  # the next chunk boundary comes; the worker stops there
    cancelled = await cancel
    assert cancelled["status"] == "cancelled", cancelled
    assert cancelled["output"] == []
    assert api.model.closed == 1
    events = await api.events(f"/v1/responses/{queued['id']}?stream=true")
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["status"] == "cancelled"
    assert sum(e["type"] == "response.output_text.delta" for e in events) < 6
    assert (await api.ok("GET", f"/v1/conversations/{conv['id']}/items"))["data"] == []
    assert (await api.client.post(f"/v1/responses/{queued['id']}/cancel")).status_code == 409
    # The conversation goes on from where it was.
    after = await api.ok("POST", "/v1/responses", {"input": "again", "conversation": conv["id"]})
    assert after["status"] == "completed"
    items = await api.ok("GET", f"/v1/conversations/{conv['id']}/items?order=asc")
    assert [i["role"] for i in items["data"]] == ["user", "assistant"]


def _tenant(api: Api) -> str:
    key = api.client.headers["Authorization"].split(" ", 1)[1]
    caller = api.runtime.store.keys.authenticate(key)
    assert caller is not None
    return caller.tenant_id


async def test_deleting_a_background_response_deletes_its_run(idle_api: Api) -> None:
    queued = await idle_api.ok("POST", "/v1/responses", {"input": "hi", "background": True})
    assert (await idle_api.ok("DELETE", f"/v1/responses/{queued['id']}"))["deleted"] is True
    assert (await idle_api.client.get(f"/v1/responses/{queued['id']}")).status_code == 404
    assert (await idle_api.client.get(f"/v1/responses/{queued['id']}?stream=true")).status_code == 404
    idle_api.runtime.start_workers(1)
    done = await idle_api.ok("POST", "/v1/responses", {"input": "hi", "background": True})
    finished = await idle_api.wait_status(done["id"], {"completed"})
    assert finished["status"] == "completed"
    assert idle_api.model.calls == 1  # the deleted run never ran
    await idle_api.ok("DELETE", f"/v1/responses/{done['id']}")
    assert (await idle_api.client.get(f"/v1/responses/{done['id']}")).status_code == 404


def test_an_expired_lease_moves_the_run_to_another_worker(store: Store) -> None:
    tenant, response_id = f"t-{uuid.uuid4().hex}", f"resp_{uuid.uuid4().hex}"
    queued = {"type": "response.queued", "sequence_number": 0, "response": {"id": response_id}}
    payload = RunPayload(request={}, response={"id": response_id})
    store.runs.enqueue(tenant, response_id, "p", payload, queued)
    claims = []
    while True:  # other tests' runs may be queued in a shared PostgreSQL: take ours
        claimed = store.runs.claim_runnable_run("w1", 0.3)
        assert claimed is not None
        if claimed[0].response_id == response_id:
            break
        claims.append(claimed)
    run, first = claimed
    assert run.status == "queued" and first.attempt == 1 and first.next_sequence == 1
    store.runs.append_events(first, [{"type": "response.created", "sequence_number": 1}], 0.3)
    assert store.runs.get(tenant, response_id).status == "in_progress"  # type: ignore[union-attr]
    found = store.runs.claim_runnable_run("w2", 5)
    assert found is None or found[0].response_id != response_id  # the lease holds
    time.sleep(0.4)
    while True:
        again = store.runs.claim_runnable_run("w2", 5)
        assert again is not None
        if again[0].response_id == response_id:
            break
    second = again[1]
    assert second.attempt == 2 and second.next_sequence == 2
    # The first worker can no longer write: not events, not a heartbeat, not the final commit.
    with pytest.raises(LeaseLost):
        store.runs.append_events(first, [{"type": "x", "sequence_number": 2}], 5)
    with pytest.raises(LeaseLost):
        store.runs.heartbeat(first, 5)
    with pytest.raises(LeaseLost):
        store.runs.finish(first, "completed", [])
    # The dead attempt's events are gone; the queued event stays.
    assert [e["type"] for e in store.runs.events_after(tenant, response_id, -1)] == ["response.queued"]
    store.runs.finish(second, "failed", [{"type": "response.failed", "sequence_number": 2}])
    assert store.runs.get(tenant, response_id).status == "failed"  # type: ignore[union-attr]
