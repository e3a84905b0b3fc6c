"""Durable agent runs across real processes: `SIGKILL` of `sre serve` at each point of a run.

An agent with the server-side `transfer` tool (a side effect that must happen once; see
`tests/support/tools.py`) runs on a named conversation; `sre serve` is killed with SIGKILL while the
model streams, while `transfer` runs, after `transfer` finished but before the next model call, and
while the run waits for an approval. A new `sre serve` on the same store finishes the run (its worker
takes over runs of dead processes on this machine at once). Each test then checks that the run
completed, how many times each tool ran (the tool log survives the kill), and the conversation's
exact items through the official `openai` client: nothing lost, nothing twice.

The model is the fake Chat Completions upstream in this process, with queued replies; a `hold`
keeps a reply's stream open after its first word so the kill lands mid-call. The last test, in
process, guards what the clients here do after a restart: poll `retrieve` while a run ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sre import Runtime
from sre.testing import FunctionModel
from tests.conftest import upstream_config
from tests.support.server import ServerProcess
from tests.support.upstream import ChatUpstream, Reply

ROOT = Path(__file__).resolve().parents[1]
MODEL = "crash-model"  # a name of this file's own: another test's leftover runs cannot use it
AGENT = "bank"
EXPECTED_ITEMS = [
    ("message", "user"),
    ("function_call", None),
    ("function_call_output", None),
    ("message", "assistant"),
]


class Bank:
    """One store, one fake model, one tenant and key; servers started and killed on them."""

    def __init__(self, tmp_path: Path, env: dict[str, str], upstream: ChatUpstream) -> None:
        self.data_dir = tmp_path / "data"
        self.tool_log = tmp_path / "tools.jsonl"
        self.hold_file = tmp_path / "hold"  # while it exists, a tool call waits mid-way
        self.config = upstream_config(tmp_path / "sre.toml", upstream, name=MODEL, retries=0)
        with self.config.open("a") as out:
            out.write('\n[tools]\nmodules = ["tests.support.tools"]\n')
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env = {
            **env,
            "SRE_LEASE_SECONDS": "1",
            "SRE_TEST_TOOL_LOG": str(self.tool_log),
            "SRE_TEST_TOOL_HOLD": str(self.hold_file),
            "PYTHONPATH": pythonpath,
        }
        self.upstream = upstream
        self.servers: list[ServerProcess] = []
        done = subprocess.run(
            [sys.executable, "-m", "sre", "keys", "create", "--tenant", f"runs-{uuid.uuid4().hex[:8]}",
             "--principal", "alice", "--role", "developer", "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        self.key = done.stdout.strip()

    def serve(self) -> ServerProcess:
        server = ServerProcess(
            data_dir=self.data_dir, env=self.env, args=["--config", str(self.config)]
        ).start()
        self.servers.append(server)
        return server

    def client(self, server: ServerProcess) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.base_url, api_key=self.key, max_retries=0, timeout=30)

    def call(self, server: ServerProcess, method: str, path: str, body: object = None, **params: Any) -> Any:
        response = httpx.request(
            method,
            server.base_url + path,
            json=body,
            params=params or None,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def agent(self, server: ServerProcess, **extra: Any) -> None:
        tools = [{"type": "server", "name": "transfer"}, {"type": "server", "name": "lookup"}]
        self.call(server, "POST", "/agents", {"name": AGENT, "model": MODEL, "tools": tools, **extra})

    def runs_of(self, tool: str, key: str, value: str) -> tuple[int, int]:
        """How many times `tool` started and finished with argument `key` equal to `value`."""
        lines = []
        if self.tool_log.exists():
            lines = [json.loads(line) for line in self.tool_log.read_text().splitlines() if line.strip()]
        mine = [line for line in lines if line["tool"] == tool and line.get(key) == value]
        return sum(e["event"] == "start" for e in mine), sum(e["event"] == "done" for e in mine)

    def pending(self, server: ServerProcess, response_id: str) -> list[dict[str, Any]]:
        found = self.call(server, "GET", "/approvals", status="pending", response_id=response_id)
        return list(found["data"])

    def close(self) -> None:
        self.hold_file.unlink(missing_ok=True)
        for server in self.servers:
            server.stop()


@pytest.fixture
def bank(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, upstream: ChatUpstream
) -> Iterator[Bank]:
    env = {"SRE_DATABASE_URL": request.getfixturevalue("pg_url")} if backend == "postgresql" else {}
    made = Bank(tmp_path, env, upstream)
    yield made
    made.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_status(client: openai.OpenAI, response_id: str, timeout: float = 20) -> Any:
    """The response once it is neither queued nor in progress."""

    def settled() -> Any:
        found = client.responses.retrieve(response_id)
        return found if found.status not in ("queued", "in_progress") else None

    return wait_for(f"response {response_id} to settle", settled, timeout)


def item_types(client: openai.OpenAI, conversation_id: str) -> list[tuple[str, str | None]]:
    items = client.conversations.items.list(conversation_id, order="asc").data
    return [(i.type, getattr(i, "role", None)) for i in items]


def transfer_call(account: str, call_id: str = "call_transfer") -> Reply:
    arguments = json.dumps({"account": account, "amount": 5})
    return Reply(tool_calls=[{"name": "transfer", "arguments": arguments, "id": call_id}])


def in_thread(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_kill_during_the_model_stream_of_a_foreground_run(bank: Bank) -> None:
    """A foreground (not background) run, its client cut by the kill, is finished by the restarted
    server: the model call that was streaming is made again, the tool runs once."""
    account = f"acct-{uuid.uuid4().hex[:8]}"
    hold = threading.Event()
    bank.upstream.queue(
        Reply(text="let me think about it", hold=hold), transfer_call(account), Reply(text="sent it")
    )
    server = bank.serve()
    client = bank.client(server)
    bank.agent(server)
    conv = client.conversations.create()
    events: list[Any] = []

    def consume() -> None:
        try:
            for event in client.responses.create(
                model=f"agent:{AGENT}", input=f"pay {account}", conversation=conv.id, stream=True
            ):
                events.append(event)
        except (openai.APIError, httpx.HTTPError) as exc:  # the server dies under it
            events.append(exc)

    thread = in_thread(consume)
    wait_for(
        "the first streamed word",
        lambda: any(getattr(e, "type", "") == "response.output_text.delta" for e in events),
    )
    response_id = events[0].response.id
    server.kill()
    hold.set()
    thread.join(10)
    assert not any(getattr(e, "type", "") == "response.completed" for e in events)

    server = bank.serve()
    client = bank.client(server)
    done = wait_status(client, response_id)
    assert done.status == "completed", done
    assert done.output_text == "sent it"
    assert bank.runs_of("transfer", "account", account) == (1, 1)
    assert len(bank.upstream.requests) == 3  # the cut call, made again, then after the tool
    assert item_types(client, conv.id) == EXPECTED_ITEMS
    items = client.conversations.items.list(conv.id, order="asc").data
    assert items[-1].model_dump()["content"][0]["text"] == "sent it"
    assert "let me think" not in json.dumps([i.model_dump() for i in items])  # nothing of the cut call
    assert bank.pending(server, response_id) == []


@pytest.mark.parametrize("decision", ["deny", "approve"])
def test_kill_during_a_side_effect_pauses_for_a_decision(bank: Bank, decision: str) -> None:
    """`transfer` was running when the server died: whether it took effect is unknown, so the run is
    not retried by itself; it pauses with an `unknown_outcome` approval. Deny: the model is told the
    call did not run again (one start, no second execution). Approve: the operator decided to run it
    again, so it runs once more (two starts, one done) — that is the operator's call to make."""
    account = f"acct-{uuid.uuid4().hex[:8]}"
    bank.upstream.queue(transfer_call(account), Reply(text="all settled"))
    bank.hold_file.touch()
    server = bank.serve()
    client = bank.client(server)
    bank.agent(server)
    conv = client.conversations.create()
    queued = client.responses.create(
        model=f"agent:{AGENT}", input=f"pay {account}", conversation=conv.id, background=True
    )
    wait_for("transfer to start", lambda: bank.runs_of("transfer", "account", account)[0] == 1)
    server.kill()
    bank.hold_file.unlink()

    server = bank.serve()
    client = bank.client(server)
    paused = wait_status(client, queued.id)
    assert paused.status == "requires_action", paused
    [approval] = bank.pending(server, queued.id)
    assert approval["kind"] == "unknown_outcome" and approval["tool"] == "transfer"
    assert json.loads(approval["arguments"]) == {"account": account, "amount": 5}
    asked = [o for o in paused.output if o.type == "mcp_approval_request"]
    assert [o.id for o in asked] == [approval["id"]]
    assert bank.runs_of("transfer", "account", account) == (1, 0)  # not run again by itself
    assert len(bank.upstream.requests) == 1

    if decision == "deny":
        bank.call(server, "POST", f"/approvals/{approval['id']}/deny", {"reason": "checked the ledger"})
        done = wait_status(client, queued.id)
    else:  # approving as an answer to the paused response continues the same response
        answer = {"type": "mcp_approval_response", "approval_request_id": approval["id"], "approve": True}
        resumed = client.responses.create(
            model=f"agent:{AGENT}",
            previous_response_id=queued.id,
            input=[answer],  # type: ignore[list-item]
        )
        assert resumed.id == queued.id
        done = wait_status(client, queued.id)
    assert done.status == "completed", done
    assert done.output_text == "all settled"
    assert bank.runs_of("transfer", "account", account) == ((1, 0) if decision == "deny" else (2, 1))
    assert bank.pending(server, queued.id) == []
    decided = bank.call(server, "GET", f"/approvals/{approval['id']}")
    assert decided["status"] == ("denied" if decision == "deny" else "approved")

    told = bank.upstream.requests[-1]["messages"][-1]
    assert told["role"] == "tool"
    if decision == "deny":
        assert "not run again" in told["content"] and "checked the ledger" in told["content"]
    else:
        assert told["content"] == f"sent 5 to {account}"
    assert len(bank.upstream.requests) == 2
    assert item_types(client, conv.id) == EXPECTED_ITEMS
    output = client.conversations.items.list(conv.id, order="asc").data[2]
    assert output.output == told["content"]  # type: ignore[union-attr]


def test_kill_during_an_idempotent_tool_runs_it_again_without_asking(bank: Bank) -> None:
    """`lookup` is idempotent: after the kill it simply runs again, no approval."""
    city = f"city-{uuid.uuid4().hex[:8]}"
    lookup = {"name": "lookup", "arguments": json.dumps({"city": city}), "id": "call_lookup"}
    bank.upstream.queue(Reply(tool_calls=[lookup]), Reply(text="it is sunny"))
    bank.hold_file.touch()
    server = bank.serve()
    client = bank.client(server)
    bank.agent(server)
    conv = client.conversations.create()
    queued = client.responses.create(
        model=f"agent:{AGENT}", input=f"weather in {city}", conversation=conv.id, background=True
    )
    wait_for("lookup to start", lambda: bank.runs_of("lookup", "city", city)[0] == 1)
    server.kill()
    bank.hold_file.unlink()

    server = bank.serve()
    client = bank.client(server)
    done = wait_status(client, queued.id)
    assert done.status == "completed", done
    assert done.output_text == "it is sunny"
    assert bank.runs_of("lookup", "city", city) == (2, 1)  # the cut call, then the one that finished
    assert bank.call(server, "GET", "/approvals", response_id=queued.id)["data"] == []
    assert len(bank.upstream.requests) == 2
    assert item_types(client, conv.id) == EXPECTED_ITEMS


def test_a_compaction_journaled_with_its_step_is_reused_after_a_kill(bank: Bank) -> None:
    """The run compacts the conversation's history at its first model step (a summary by the model,
    then a `lookup` call, committed together), and is killed while `lookup` runs. The resumed run
    reuses the journaled summary: no second summary is asked for, the conversation gets one
    compaction item (leading the response's output), and the next model call reads the summary."""
    city = f"city-{uuid.uuid4().hex[:8]}"
    lookup = {"name": "lookup", "arguments": json.dumps({"city": city}), "id": "call_lookup"}
    summary = f"The user asked about the weather in many places; last about {city}."
    bank.upstream.queue(Reply(text=summary), Reply(tool_calls=[lookup]), Reply(text="it is sunny"))
    bank.hold_file.touch()
    server = bank.serve()
    client = bank.client(server)
    bank.agent(server, context={"compaction": True, "compact_threshold": 200})
    history = [
        {"type": "message", "role": "user", "content": f"old question {i}: " + "word " * 60} for i in range(8)
    ]
    conv = client.conversations.create(items=history)  # type: ignore[arg-type]
    queued = client.responses.create(
        model=f"agent:{AGENT}", input=f"weather in {city}", conversation=conv.id, background=True
    )
    wait_for("lookup to start", lambda: bank.runs_of("lookup", "city", city)[0] == 1)
    server.kill()
    bank.hold_file.unlink()

    server = bank.serve()
    client = bank.client(server)
    done = wait_status(client, queued.id)
    assert done.status == "completed", done
    assert [o.type for o in done.output] == ["compaction", "function_call", "function_call_output", "message"]
    summaries = [r for r in bank.upstream.requests if r["messages"][0]["content"].startswith("You condense")]
    assert len(summaries) == 1 and len(bank.upstream.requests) == 3  # summary, call, answer: none twice
    last = json.dumps(bank.upstream.requests[-1]["messages"])
    assert summary in last and "old question 0" not in last
    items = client.conversations.items.list(conv.id, order="asc", limit=100).data
    assert [i.type for i in items].count("compaction") == 1
    assert sum(1 for i in items if i.type == "message" and i.role == "user") == 9  # nothing lost


def test_kill_after_the_tool_finished_before_the_next_model_call(bank: Bank) -> None:
    """A foreground run killed while its second model call streams: `transfer`'s result was
    committed, so the restarted server replays it and only calls the model again."""
    account = f"acct-{uuid.uuid4().hex[:8]}"
    hold = threading.Event()
    bank.upstream.queue(
        transfer_call(account), Reply(text="never finished", hold=hold), Reply(text="transfer done")
    )
    server = bank.serve()
    client = bank.client(server)
    bank.agent(server)
    conv = client.conversations.create()
    cut: list[BaseException] = []

    def foreground() -> None:
        try:
            client.responses.create(model=f"agent:{AGENT}", input=f"pay {account}", conversation=conv.id)
        except (openai.APIError, httpx.HTTPError) as exc:
            cut.append(exc)

    thread = in_thread(foreground)
    wait_for("transfer to finish", lambda: bank.runs_of("transfer", "account", account) == (1, 1))
    wait_for("the second model call", lambda: len(bank.upstream.requests) == 2)
    server.kill()
    hold.set()
    thread.join(10)
    assert len(cut) == 1  # the client saw its connection die

    server = bank.serve()
    client = bank.client(server)
    wait_for("the run to finish", lambda: len(item_types(client, conv.id)) >= 4)
    assert item_types(client, conv.id) == EXPECTED_ITEMS
    items = client.conversations.items.list(conv.id, order="asc").data
    assert items[-1].model_dump()["content"][0]["text"] == "transfer done"
    assert bank.runs_of("transfer", "account", account) == (1, 1)
    assert bank.call(server, "GET", "/approvals")["data"] == []  # no pause: the outcome was known
    assert len(bank.upstream.requests) == 3
    assert bank.upstream.requests[-1]["messages"][-1]["content"] == f"sent 5 to {account}"

    # The conversation is free again: the next turn runs on it.
    after = client.responses.create(model=f"agent:{AGENT}", input="thanks", conversation=conv.id)
    assert after.status == "completed" and after.output_text == "echo: thanks"
    assert len(item_types(client, conv.id)) == 6


def test_kill_while_waiting_for_approval_then_approve_on_the_new_server(bank: Bank) -> None:
    """The policy asks before `transfer`; the paused run survives the kill and the approval, given
    to the restarted server, runs the transfer once."""
    account = f"acct-{uuid.uuid4().hex[:8]}"
    bank.upstream.queue(transfer_call(account), Reply(text="approved and sent"))
    server = bank.serve()
    client = bank.client(server)
    bank.agent(server, approval={"tools_requiring_approval": ["transfer"]})
    conv = client.conversations.create()
    paused = client.responses.create(model=f"agent:{AGENT}", input=f"pay {account}", conversation=conv.id)
    assert str(paused.status) == "requires_action", paused  # SRE's status, unknown to the SDK's types
    [approval] = bank.pending(server, paused.id)
    assert approval["kind"] == "approval" and approval["tool"] == "transfer"
    assert bank.runs_of("transfer", "account", account) == (0, 0)
    server.kill()

    server = bank.serve()
    client = bank.client(server)
    assert bank.call(server, "GET", f"/responses/{paused.id}")["status"] == "requires_action"
    assert bank.pending(server, paused.id) == [approval]
    bank.call(server, "POST", f"/approvals/{approval['id']}/approve")
    done = wait_status(client, paused.id)
    assert done.status == "completed", done
    assert done.output_text == "approved and sent"
    assert bank.runs_of("transfer", "account", account) == (1, 1)
    assert len(bank.upstream.requests) == 2
    assert item_types(client, conv.id) == EXPECTED_ITEMS


async def test_a_foreground_run_polled_as_it_ends_reads_its_output(store_url: str) -> None:
    """The restarted server's clients above poll `retrieve` while a foreground run ends. Its events
    go in the commit that writes its response, so a read that missed the response and then found
    the run ended must read the response, not report `completed` with no output (it did, for about
    one run in 25). In process, many runs, each polled until it settles."""

    async def reply(request: Any) -> str:
        await asyncio.sleep(0.001)
        return "hello there"

    runtime = Runtime.open(database_url=store_url, models=[FunctionModel(reply, name="m")], env={})
    try:
        _, secret = runtime.create_key(f"poll-{uuid.uuid4().hex[:8]}", "alice", role="developer")
        caller = await runtime.authenticate(secret)
        await runtime.create_agent(caller, {"name": "a", "model": "m"})
        for _ in range(200):
            events = await runtime.stream_response(caller, {"model": "agent:a", "input": "hi"})
            response_id = (await anext(events))["response"]["id"]
            drain = asyncio.create_task(asyncio.wait_for(_drain(events), 20))
            while (found := await runtime.get_response(caller, response_id))["status"] == "in_progress":
                pass
            assert found["status"] == "completed"
            assert [o["type"] for o in found["output"]] == ["message"], found
            await drain
    finally:
        await runtime.aclose()


async def _drain(events: AsyncIterator[Any]) -> None:
    async for _ in events:
        pass
