"""Background runs across real processes: `SIGKILL` of `sre serve` mid-run, and `sre worker` apart.

The official `openai` client talks to `sre serve`; the model is the fake Chat Completions upstream,
whose `hold` keeps a stream open after its first word so the kill lands mid-stream. Leases are short
(`SRE_LEASE_SECONDS`) so a restarted server takes the dead run over quickly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import upstream_config
from tests.support.server import ServerProcess
from tests.support.upstream import ChatUpstream, Reply

FIRST = "the first attempt never finishes"
SECOND = "the second attempt is the answer"


class Setup:
    def __init__(self, tmp_path: Path, env: dict[str, str], upstream: ChatUpstream) -> None:
        self.data_dir = tmp_path / "data"
        self.config = upstream_config(tmp_path / "sre.toml", upstream, retries=0)
        self.env = {**env, "SRE_LEASE_SECONDS": "1"}
        self.upstream = upstream
        self.processes: list[ServerProcess] = []
        self.workers: list[subprocess.Popen[str]] = []
        done = subprocess.run(
            [sys.executable, "-m", "sre", "keys", "create", "--tenant", f"bg-{uuid.uuid4().hex[:8]}",
             "--principal", "alice", "--role", "developer", "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        self.key = done.stdout.strip()

    def serve(self, *args: str) -> ServerProcess:
        server = ServerProcess(
            data_dir=self.data_dir, env=self.env, args=["--config", str(self.config), *args]
        ).start()
        self.processes.append(server)
        return server

    def client(self, server: ServerProcess) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.base_url, api_key=self.key, max_retries=0)

    def worker(self) -> subprocess.Popen[str]:
        log = (self.data_dir / f"worker-{len(self.workers)}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "sre", "worker", "--config", str(self.config), "--data-dir", str(self.data_dir)],
            env={**os.environ, "SRE_BLOCK_MODEL_REQUESTS": "1", **self.env},
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.workers.append(proc)
        return proc

    def close(self) -> None:
        for server in self.processes:
            server.stop()
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def setup(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, upstream: ChatUpstream
) -> Iterator[Setup]:
    env = {"SRE_DATABASE_URL": request.getfixturevalue("pg_url")} if backend == "postgresql" else {}
    made = Setup(tmp_path, env, upstream)
    yield made
    made.close()


def sent(upstream: ChatUpstream, text: str) -> int:
    """Requests the upstream received whose last message is `text` (a shared PostgreSQL may hold
    other tests' runs, which these servers' workers are free to run too)."""
    return sum(r["messages"][-1].get("content") == text for r in upstream.requests)


def wait_done(client: openai.OpenAI, response_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = client.responses.retrieve(response_id)
        if found.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def first_events(server: ServerProcess, key: str, response_id: str, until: str) -> list[dict[str, Any]]:
    """Read the run's stream until an event of type `until`, then hang up."""
    seen: list[dict[str, Any]] = []
    url = f"{server.base_url}/responses/{response_id}?stream=true"
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {key}"}, timeout=20) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["type"] == until:
                    break
    return seen


def test_sigkill_mid_run_then_restart_completes_the_run_exactly_once(setup: Setup) -> None:
    hold = threading.Event()
    setup.upstream.queue(Reply(text=FIRST, hold=hold), Reply(text=SECOND))
    server = setup.serve()
    client = setup.client(server)
    conv = client.conversations.create()
    queued = client.responses.create(model="fake", input="hello", background=True, conversation=conv.id)
    assert queued.status == "queued" and queued.background is True
    seen = first_events(server, setup.key, queued.id, until="response.output_text.delta")
    assert seen[-1]["delta"] == FIRST.split(" ")[0]
    server.kill()  # SIGKILL mid-stream: nothing of the turn was committed
    hold.set()

    server = setup.serve()
    client = setup.client(server)
    done = wait_done(client, queued.id)
    assert done.status == "completed", done
    assert done.output_text == SECOND
    assert sent(setup.upstream, "hello") == 2  # one per attempt

    items = client.conversations.items.list(conv.id, order="asc").data
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "assistant"),
    ]
    assert items[1].content[0].text == SECOND  # type: ignore[union-attr]

    # The whole stream holds one answer; resumed from where the dead one stopped, it is the new
    # attempt whole (it starts over with response.created), never two answers spliced.
    whole = list(client.responses.retrieve(queued.id, stream=True))
    assert [e.type for e in whole].count("response.created") == 1
    assert "".join(e.delta for e in whole if e.type == "response.output_text.delta") == SECOND
    numbers = [e.sequence_number for e in whole]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    last_seen = seen[-1]["sequence_number"]
    resumed = list(client.responses.retrieve(queued.id, stream=True, starting_after=last_seen))
    assert resumed[0].type == "response.created"
    assert all(e.sequence_number > last_seen for e in resumed)
    assert "".join(e.delta for e in resumed if e.type == "response.output_text.delta") == SECOND
    assert resumed[-1].type == "response.completed"
    assert resumed[-1].response.output_text == SECOND  # type: ignore[union-attr]

    # A turn after it continues the conversation once more.
    after = client.responses.create(model="fake", input="next", conversation=conv.id)
    assert after.status == "completed"
    assert len(client.conversations.items.list(conv.id).data) == 4


@pytest.mark.parametrize("backend", ["postgresql"])
def test_api_process_enqueues_and_sre_worker_executes(setup: Setup) -> None:
    server = setup.serve("--workers", "0")
    client = setup.client(server)
    queued = client.responses.create(model="fake", input="background please", background=True)
    time.sleep(0.5)
    assert client.responses.retrieve(queued.id).status == "queued"  # no worker in the API process
    setup.worker()
    done = wait_done(client, queued.id)
    assert done.status == "completed", done
    assert done.output_text == "echo: background please"  # the fake upstream echoes
    # Streamed from the start by the API process while the worker process runs it.
    events = list(
        client.responses.create(model="fake", input="streamed", background=True, stream=True)  # type: ignore[call-overload]
    )
    assert events[0].type == "response.queued" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "echo: streamed"
    # A client that hangs up on the stream does not stop the run.
    body = {"model": "fake", "input": "hang up", "background": True, "stream": True}
    headers = {"Authorization": f"Bearer {setup.key}"}
    with httpx.stream("POST", f"{server.base_url}/responses", json=body, headers=headers, timeout=20) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    hung_up = json.loads(first[6:])["response"]
    assert hung_up["status"] == "queued"
    assert wait_done(client, hung_up["id"]).output_text == "echo: hang up"
    assert sent(setup.upstream, "background please") == 1 and sent(setup.upstream, "streamed") == 1
