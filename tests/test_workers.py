"""Several `sre worker` processes on one PostgreSQL, one of them killed midway.

One API process (`sre serve --workers 0`) queues 200 background agent runs; two `sre worker`
processes execute them. Each run is a tool loop of the configured scripted model: it calls the
side-effecting `transfer` tool with an account of its own, then answers. After about 50 runs, the
busier worker gets SIGKILL; the other finishes what remains, taking the dead worker's leases at once
(same machine). The tool log (one line per `start` and `done`, with the process id) shows that
every transfer ran once and that both workers worked.

A kill that lands inside a `transfer` call (after its `started` row was committed, before its result
was) leaves that one run paused with an `unknown_outcome` approval: the test denies it and checks
that its transfer did not run twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUNS = 200
KILL_AFTER = 50  # transfers done before the kill
TIMEOUT = 120.0  # for all runs to settle; generous for a 2-core machine
CONFIG = """
default_model = "payments-loop"
[models.payments-loop]
provider = "scripted"
call_tool = "transfer"
tool_arguments = {account = "{input}", amount = 1}
replies = ["done"]
[tools]
modules = ["tests.support.tools"]
"""


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_two_workers_run_200_runs_exactly_once_and_one_dies_midway(tmp_path: Path, pg_url: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tool_log = tmp_path / "tools.jsonl"
    config = tmp_path / "sre.toml"
    config.write_text(CONFIG)
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {
        "SRE_DATABASE_URL": pg_url,
        "SRE_LEASE_SECONDS": "1",
        "SRE_TEST_TOOL_LOG": str(tool_log),
        "PYTHONPATH": pythonpath,
    }
    made = subprocess.run(
        [sys.executable, "-m", "sre", "keys", "create", "--tenant", f"workers-{uuid.uuid4().hex[:8]}",
         "--principal", "ops", "--role", "developer", "--data-dir", str(data_dir)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}

    server = ServerProcess(data_dir=data_dir, env=env, args=["--config", str(config), "--workers", "0"])
    workers: list[subprocess.Popen[str]] = []
    logs: list[Path] = []
    try:
        server.start()
        api = httpx.Client(base_url=server.base_url, headers=headers, timeout=30)
        agent = {"name": "payer", "tools": [{"type": "server", "name": "transfer"}]}
        assert api.post("/agents", json=agent).status_code == 200
        for index in range(2):
            logs.append(data_dir / f"worker-{index}.log")
            proc = subprocess.Popen(
                [sys.executable, "-m", "sre", "worker", "--config", str(config), "--data-dir", str(data_dir)],
                env={**os.environ, "SRE_BLOCK_MODEL_REQUESTS": "1", **env},
                stdout=logs[-1].open("w"), stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            workers.append(proc)
        wait_for("both workers", lambda: all("SRE worker:" in log.read_text() for log in logs), 30)

        prefix = uuid.uuid4().hex[:8]
        accounts = [f"{prefix}-{i:03d}" for i in range(RUNS)]
        response_ids: dict[str, str] = {}  # account -> response id
        failures: list[str] = []

        def create_all() -> None:
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
                for account in accounts:
                    body = {"model": "agent:payer", "input": account, "background": True}
                    created = client.post("/responses", json=body)
                    if created.status_code != 200:
                        failures.append(created.text)
                        return
                    response_ids[account] = created.json()["id"]

        creating = threading.Thread(target=create_all, daemon=True)
        creating.start()

        def done_by() -> Counter[int]:
            return Counter(e["pid"] for e in read_log(tool_log) if e["event"] == "done")

        wait_for(f"{KILL_AFTER} transfers", lambda: sum(done_by().values()) >= KILL_AFTER, 60)
        before = done_by()
        victim = max(workers, key=lambda w: before[w.pid])  # the one that did some work, surely
        survivor = next(w for w in workers if w is not victim)
        victim.kill()
        victim.wait()
        killed_at = len(read_log(tool_log))
        creating.join(60)
        assert not creating.is_alive() and failures == [], failures
        assert len(response_ids) == RUNS

        # Every run leaves the queue: completed, or paused by the kill inside its transfer.
        unsettled = set(accounts)
        settled: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + TIMEOUT
        while unsettled and time.monotonic() < deadline:
            for account in sorted(unsettled):
                found = api.get(f"/responses/{response_ids[account]}").json()
                if found["status"] not in ("queued", "in_progress"):
                    settled[account] = found
                    unsettled.discard(account)
            time.sleep(0.2)
        assert not unsettled, f"{len(unsettled)} runs did not settle in {TIMEOUT:g} s"

        # One worker task runs one transfer at a time: at most one run can have been cut inside it.
        paused = {a for a, r in settled.items() if r["status"] == "requires_action"}
        assert len(paused) <= 1, paused
        assert {r["status"] for a, r in settled.items() if a not in paused} == {"completed"}
        for account in paused:
            pending = api.get("/approvals", params={"response_id": response_ids[account]}).json()["data"]
            assert [(p["kind"], p["tool"], p["status"]) for p in pending] == [
                ("unknown_outcome", "transfer", "pending")
            ]
            assert json.loads(pending[0]["arguments"])["account"] == account
            denied = api.post(f"/approvals/{pending[0]['id']}/deny", json={"reason": "ledger checked"})
            assert denied.status_code == 200, denied.text

        def finished(account: str) -> dict[str, Any] | None:
            found: dict[str, Any] = api.get(f"/responses/{response_ids[account]}").json()
            return found if found["status"] == "completed" else None

        for account in paused:
            settled[account] = wait_for(
                f"{account} to finish after the denial", lambda a=account: finished(a), 30
            )

        # Each run: one tool call, its output, one answer, all once.
        for account, response in settled.items():
            output = response["output"]
            assert [o["type"] for o in output] == ["function_call", "function_call_output", "message"]
            assert json.loads(output[0]["arguments"]) == {"account": account, "amount": 1}
            assert output[1]["call_id"] == output[0]["call_id"]
            assert output[2]["content"][0]["text"] == "done"
            if account in paused:
                assert "not run again" in output[1]["output"]
            else:
                assert output[1]["output"] == f"sent 1 to {account}"

        # Each transfer ran once. For the run cut inside its transfer, `start` may be 0 (killed after
        # the `started` row, before the tool began) or 1, never 2: the denial kept it from running
        # again; `done` may be 1 if the kill came after the tool finished but before its commit.
        lines = read_log(tool_log)
        starts = Counter(e["account"] for e in lines if e["event"] == "start")
        dones = Counter(e["account"] for e in lines if e["event"] == "done")
        assert set(starts) <= set(accounts) and set(dones) <= set(accounts)
        for account in accounts:
            if account in paused:
                assert starts[account] <= 1 and dones[account] <= starts[account], account
            else:
                assert (starts[account], dones[account]) == (1, 1), account

        # Both workers worked; the killed one did nothing after its kill, the survivor the rest.
        by_pid = Counter(e["pid"] for e in lines if e["event"] == "done")
        assert set(by_pid) == {victim.pid, survivor.pid}, by_pid
        assert by_pid[victim.pid] >= 1 and by_pid[survivor.pid] >= 1
        assert all(e["pid"] == survivor.pid for e in lines[killed_at:])
        assert by_pid[survivor.pid] >= RUNS - by_pid[victim.pid] - len(paused)
        assert survivor.poll() is None  # alive and well
        print(f"\nworkers: killed pid {victim.pid} did {by_pid[victim.pid]}, "
              f"survivor pid {survivor.pid} did {by_pid[survivor.pid]}; cut inside transfer: {len(paused)}")  # fmt: skip
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        server.stop()
