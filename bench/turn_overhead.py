"""The time SRE adds to one turn, over a zero-latency model, as the stored conversation grows.

For each size N (items already stored in the conversation, seeded in bulk through the store as
~200-character messages alternating user/assistant), it times one turn (`truncation="auto"`,
a ~200-character user message, the scripted model answering "ok" at once, context window 8,192):

  * SRE in-process: `await Runtime.create_response(...)`, a plain turn (`model: "s"`) and an agent
    turn without tools (`model: "agent:bench"`, a durable run: queued, leased, committed), taken
    in turn on two conversations of the same size;
  * SRE over HTTP: the official `openai` client's `responses.create(...)` against a real
    `sre serve` subprocess (scripted model, SQLite, `--no-auth`), plain and agent turns alike;
  * LangGraph: `graph.invoke(...)` of a minimal `StateGraph` (messages state with the
    `add_messages` reducer, one node appending a fixed "ok" `AIMessage`) checkpointed by
    `SqliteSaver` on a file, holding the same N messages (seeded by one invoke carrying them all).

Both sides run SQLite in WAL mode at the same `synchronous` setting: NORMAL (SRE's default: a
commit survives a crash of the process) and FULL (SQLite's own default, and `SqliteSaver`'s: it also
survives a power cut), each a run of its own. For SRE's in-process turns it also reports the time
the context assembly takes (the `ContextAssembler` alone) and the bytes of each model call's stored
manifest. Every timed turn is end to end as the caller sees it (`time.perf_counter`); the model costs
nothing, so all of it is the framework's own time. Prints markdown tables (median and p95 in ms).

    bench/.venv/bin/python bench/turn_overhead.py                      # the full run
    bench/.venv/bin/python bench/turn_overhead.py --sizes 10,1000 --turns 50 --synchronous normal
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    SCRIPTED_CONFIG,
    Server,
    machine,
    percentile,
    revision,
    seed_messages,
    sentence,
    summary_ms,
    today,
)
from sre.runtime import Runtime
from sre.testing import ScriptedModel
from sre.types.items import parse_input_items

MODEL = "s"
CONTEXT_WINDOW = 8192
SEED_CHUNK = 5_000


@dataclass
class Series:
    turns: int = 0
    median_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")  # in the JSON only: with 200 samples it is the 2nd-worst turn
    max_ms: float = float("nan")
    note: str = ""

    @classmethod
    def of(cls, samples: list[float], note: str = "") -> Series:
        median, p95 = summary_ms(samples)
        ordered = sorted(s * 1000 for s in samples)
        return cls(
            turns=len(samples),
            median_ms=median,
            p95_ms=p95,
            p99_ms=percentile(ordered, 99),
            max_ms=ordered[-1] if ordered else float("nan"),
            note=note,
        )


@dataclass
class SizeResult:
    size: int
    synchronous: str = "normal"
    inproc: Series = field(default_factory=Series)
    inproc_agent: Series = field(default_factory=Series)
    http: Series = field(default_factory=Series)
    http_agent: Series = field(default_factory=Series)
    langgraph: Series = field(default_factory=Series)
    assembly: Series = field(default_factory=Series)  # the context assembly of each in-process turn
    manifest_bytes_median: float = float("nan")
    manifest_bytes_max: float = float("nan")
    sre_seed_s: float = float("nan")
    sre_window_items: int = 0
    sre_db_mb: float = float("nan")
    lg_seed_s: float = float("nan")
    lg_db_mb: float = float("nan")
    lg_db_mb_per_turn: float = float("nan")


def user_inputs(count: int = 64) -> list[str]:
    import random

    rng = random.Random(99)
    return [sentence(rng) for _ in range(count)]


def db_size_mb(path: Path) -> float:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        f = Path(str(path) + suffix)
        if f.exists():
            total += f.stat().st_size
    return total / 1e6


# -- SRE ----------------------------------------------------------------------------------------


def seed_sre(runtime: Runtime, tenant_id: str, conversation_id: str, size: int) -> None:
    messages = seed_messages(size)
    for start in range(0, size, SEED_CHUNK):
        batch = [{"role": role, "content": text} for role, text in messages[start : start + SEED_CHUNK]]
        runtime.store.conversations.append(tenant_id, conversation_id, parse_input_items(batch))


async def sre_in_process(
    data_dir: Path, size: int, turns: int, warmup: int, inputs: list[str], result: SizeResult
) -> tuple[str, str]:
    """Seed four conversations of `size` items (a plain and an agent one for here, and for HTTP);
    time plain and agent turns, taken in turn, on the first two."""
    model = ScriptedModel(["ok"], name=MODEL, context_window=CONTEXT_WINDOW, record=False)
    env = {"SRE_SQLITE_SYNCHRONOUS": result.synchronous}
    runtime = Runtime.open(data_dir=data_dir, models=[model], env=env)
    assembly: list[float] = []
    assemble = runtime.context.assemble

    async def timed_assemble(*args: Any, **kwargs: Any) -> Any:  # the benchmark's own instrument
        t0 = time.perf_counter()
        try:
            return await assemble(*args, **kwargs)
        finally:
            assembly.append(time.perf_counter() - t0)

    runtime.context.assemble = timed_assemble  # type: ignore[method-assign]
    try:
        caller = runtime.local_caller()
        await runtime.create_agent(caller, {"name": "bench", "model": MODEL})
        plain, agent, remote, remote_agent = [
            (await runtime.create_conversation(caller))["id"] for _ in range(4)
        ]
        started = time.perf_counter()
        seed_sre(runtime, caller.tenant_id, plain, size)
        result.sre_seed_s = time.perf_counter() - started
        for conv in (agent, remote, remote_agent):
            seed_sre(runtime, caller.tenant_id, conv, size)

        samples: dict[str, list[float]] = {"plain": [], "agent": []}
        last: dict[str, Any] = {}
        gc.collect()
        for i in range(warmup + turns):
            for kind, conv, name in (("plain", plain, MODEL), ("agent", agent, "agent:bench")):
                request = {
                    "model": name,
                    "input": inputs[i % len(inputs)],
                    "conversation": conv,
                    "truncation": "auto",
                }
                assembly_before = len(assembly)
                t0 = time.perf_counter()
                response = await runtime.create_response(caller, request)
                elapsed = time.perf_counter() - t0
                if response["status"] != "completed":
                    raise RuntimeError(f"turn did not complete: {response}")
                if i < warmup:
                    del assembly[assembly_before:]
                else:
                    samples[kind].append(elapsed)
                if kind == "plain":
                    last = response
        calls = runtime.store.responses.model_calls(caller.tenant_id, last["id"])
        manifest = calls[-1].manifest if calls else {}
        result.sre_window_items = next(
            (s["included"] for s in manifest.get("sections", []) if s["section"] == "history"), 0
        )
        with runtime.store.db.read() as conn:
            sizes = sorted(
                len(row[0])
                for row in conn.exec_driver_sql(
                    "SELECT manifest FROM model_calls WHERE manifest LIKE '{\"version\"%'"
                )
            )
        result.manifest_bytes_median = percentile([float(v) for v in sizes], 50)
        result.manifest_bytes_max = float(sizes[-1]) if sizes else float("nan")
        result.inproc = Series.of(samples["plain"])
        result.inproc_agent = Series.of(samples["agent"])
        result.assembly = Series.of(assembly)
        return remote, remote_agent
    finally:
        await runtime.aclose()


def sre_over_http(
    data_dir: Path,
    conversations: tuple[str, str],
    turns: int,
    warmup: int,
    inputs: list[str],
    synchronous: str,
) -> tuple[Series, Series]:
    """Plain and agent turns, taken in turn, through the official client against `sre serve`."""
    from openai import OpenAI

    config = SCRIPTED_CONFIG + f'\n[server]\nsqlite_synchronous = "{synchronous}"\n'
    server = Server(data_dir, config).start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
        samples: dict[str, list[float]] = {MODEL: [], "agent:bench": []}
        gc.collect()
        for i in range(warmup + turns):
            for conv, name in zip(conversations, (MODEL, "agent:bench"), strict=True):
                t0 = time.perf_counter()
                response = client.responses.create(
                    model=name, input=inputs[i % len(inputs)], conversation=conv, truncation="auto"
                )
                elapsed = time.perf_counter() - t0
                if response.status != "completed" or response.output_text != "ok":
                    raise RuntimeError(f"turn did not complete: {response}")
                if i >= warmup:
                    samples[name].append(elapsed)
        client.close()
        return Series.of(samples[MODEL]), Series.of(samples["agent:bench"])
    finally:
        server.stop()


# -- LangGraph ----------------------------------------------------------------------------------


def langgraph_state() -> type:
    """The graph's state: a message list with the `add_messages` reducer (LangGraph's idiom)."""
    from langchain_core.messages import AnyMessage
    from langgraph.graph.message import add_messages

    # Built with real objects, not string annotations, so LangGraph can resolve them.
    return TypedDict("State", {"messages": Annotated[list[AnyMessage], add_messages]})  # type: ignore[operator]


def langgraph_turns(
    db_path: Path, size: int, turns: int, warmup: int, inputs: list[str], budget_s: float, result: SizeResult
) -> None:
    """As SRE's, at the same `synchronous` setting (SqliteSaver puts the file in WAL mode itself)."""
    """Time `graph.invoke` per turn over SqliteSaver; stop early (after a few turns) past `budget_s`."""
    from langchain_core.messages import AIMessage, HumanMessage
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph

    State = langgraph_state()

    def reply(state: Any) -> dict[str, list[Any]]:
        return {"messages": [AIMessage(content="ok")]}

    builder = StateGraph(State)
    builder.add_node("model", reply)
    builder.add_edge(START, "model")
    builder.add_edge("model", END)

    conn = sqlite3.connect(str(db_path), check_same_thread=False)
    conn.execute(f"PRAGMA synchronous={result.synchronous.upper()}")
    try:
        saver = SqliteSaver(conn)
        graph = builder.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": f"bench-{size}"}}
        seed = [
            HumanMessage(content=text) if role == "user" else AIMessage(content=text)
            for role, text in seed_messages(size)
        ]
        started = time.perf_counter()
        graph.invoke({"messages": seed}, config=config)  # type: ignore[arg-type]
        result.lg_seed_s = time.perf_counter() - started
        del seed
        after_seed = db_size_mb(db_path)

        samples: list[float] = []
        gc.collect()
        deadline = time.perf_counter() + budget_s
        min_turns = 5
        warm = min(warmup, 3) if size >= 10_000 else warmup
        for i in range(warm + turns):
            t0 = time.perf_counter()
            out = graph.invoke({"messages": [HumanMessage(content=inputs[i % len(inputs)])]}, config=config)  # type: ignore[arg-type]
            elapsed = time.perf_counter() - t0
            if out["messages"][-1].content != "ok":
                raise RuntimeError("LangGraph turn did not answer 'ok'")
            if i >= warm:
                samples.append(elapsed)
            if len(samples) >= min_turns and time.perf_counter() > deadline:
                break
        note = (
            "" if len(samples) == turns else f"stopped after {len(samples)} turns ({budget_s:.0f} s budget)"
        )
        result.langgraph = Series.of(samples, note)
        result.lg_db_mb = db_size_mb(db_path)
        result.lg_db_mb_per_turn = (result.lg_db_mb - after_seed) / (warm + len(samples))
    finally:
        conn.close()


# -- report -------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def ratio(sre: float, lg: float) -> str:
    if sre != sre or lg != lg or lg == 0:
        return "n/a"
    value = sre / lg
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g} (1/{lg / sre:,.0f})"


def report(results: list[SizeResult], args: argparse.Namespace) -> str:
    lines = [
        f"Turn overhead over a zero-latency scripted model (context window {CONTEXT_WINDOW:,}); "
        f"{args.turns} timed turns after {args.warmup} warm-up turns per cell; ms per turn.",
        f"Machine: {machine()}. Date: {today()}. SRE code at commit {args.revision}. "
        f"1-minute load average at start / end: {args.load_start:.2f} / {os.getloadavg()[0]:.2f}.",
    ]
    for synchronous in dict.fromkeys(r.synchronous for r in results):
        rows = [r for r in results if r.synchronous == synchronous]
        lines += [
            "",
            f"**SQLite `synchronous={synchronous.upper()}` on both sides** (median / p95, ms):",
            "",
            "| Stored items | SRE plain, in-process | SRE agent, in-process | SRE plain, HTTP | SRE agent, HTTP "
            "| LangGraph | LangGraph turns timed |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r.size:,} | {fmt(r.inproc.median_ms)} / {fmt(r.inproc.p95_ms)} "
                f"| {fmt(r.inproc_agent.median_ms)} / {fmt(r.inproc_agent.p95_ms)} "
                f"| {fmt(r.http.median_ms)} / {fmt(r.http.p95_ms)} "
                f"| {fmt(r.http_agent.median_ms)} / {fmt(r.http_agent.p95_ms)} "
                f"| {fmt(r.langgraph.median_ms)} / {fmt(r.langgraph.p95_ms)} | {r.langgraph.turns or 'n/a'} |"
            )
        lines += [
            "",
            "| Stored items | agent ÷ plain, in-process (median / p95) | agent ÷ plain, HTTP "
            "| SRE plain in-process ÷ LangGraph | SRE plain HTTP ÷ LangGraph | SRE agent in-process ÷ LangGraph |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r.size:,} | {ratio(r.inproc_agent.median_ms, r.inproc.median_ms)} / "
                f"{ratio(r.inproc_agent.p95_ms, r.inproc.p95_ms)} "
                f"| {ratio(r.http_agent.median_ms, r.http.median_ms)} / {ratio(r.http_agent.p95_ms, r.http.p95_ms)} "
                f"| {ratio(r.inproc.median_ms, r.langgraph.median_ms)} / {ratio(r.inproc.p95_ms, r.langgraph.p95_ms)} "
                f"| {ratio(r.http.median_ms, r.langgraph.median_ms)} / {ratio(r.http.p95_ms, r.langgraph.p95_ms)} "
                f"| {ratio(r.inproc_agent.median_ms, r.langgraph.median_ms)} / "
                f"{ratio(r.inproc_agent.p95_ms, r.langgraph.p95_ms)} |"
            )
        lines += [
            "",
            "| Stored items | context assembly per turn (median / p95, ms) | manifest per model call "
            "(median / max, bytes) | SRE window items (last turn) | SRE seed (s) | SRE DB (MB, 4 convs) "
            "| LangGraph seed (s) | LangGraph DB (MB) | LangGraph growth per turn (MB) | Note |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r.size:,} | {fmt(r.assembly.median_ms, 3)} / {fmt(r.assembly.p95_ms, 3)} "
                f"| {fmt(r.manifest_bytes_median, 0)} / {fmt(r.manifest_bytes_max, 0)} | {r.sre_window_items} "
                f"| {fmt(r.sre_seed_s)} | {fmt(r.sre_db_mb, 1)} | {fmt(r.lg_seed_s)} | {fmt(r.lg_db_mb, 1)} "
                f"| {fmt(r.lg_db_mb_per_turn, 2)} | {r.langgraph.note} |"
            )
    return "\n".join(lines)


def one_size(size: int, synchronous: str, args: argparse.Namespace, inputs: list[str]) -> SizeResult:
    root = Path(tempfile.mkdtemp(prefix=f"sre-bench-{size}-", dir=args.work_dir))
    tag = f"[{size:,} items, synchronous={synchronous}]"
    try:
        result = SizeResult(size=size, synchronous=synchronous)
        print(f"{tag} SRE in-process…", file=sys.stderr, flush=True)
        remote = asyncio.run(sre_in_process(root / "sre", size, args.turns, args.warmup, inputs, result))
        print(
            f"  plain {result.inproc.median_ms:.2f} / {result.inproc.p95_ms:.2f} ms, agent "
            f"{result.inproc_agent.median_ms:.2f} / {result.inproc_agent.p95_ms:.2f} ms",
            file=sys.stderr,
        )
        if not args.no_http:
            print(f"{tag} SRE over HTTP…", file=sys.stderr, flush=True)
            result.http, result.http_agent = sre_over_http(
                root / "sre", remote, args.turns, args.warmup, inputs, synchronous
            )
            print(
                f"  plain {result.http.median_ms:.2f} / {result.http.p95_ms:.2f} ms, agent "
                f"{result.http_agent.median_ms:.2f} / {result.http_agent.p95_ms:.2f} ms",
                file=sys.stderr,
            )
        result.sre_db_mb = db_size_mb(root / "sre" / "sre.db")
        if not args.no_langgraph:
            print(f"{tag} LangGraph SqliteSaver…", file=sys.stderr, flush=True)
            langgraph_turns(
                root / "langgraph.db", size, args.turns, args.warmup, inputs, args.langgraph_budget, result
            )
            print(
                f"  seed {result.lg_seed_s:.1f} s; median {result.langgraph.median_ms:.2f} ms, "
                f"p95 {result.langgraph.p95_ms:.2f} ms over {result.langgraph.turns} turns",
                file=sys.stderr,
            )
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="10,1000,100000", help="stored items per conversation (comma-separated)"
    )
    parser.add_argument("--turns", type=int, default=200, help="timed turns per cell")
    parser.add_argument("--warmup", type=int, default=20, help="untimed turns before the timed ones")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP measurement")
    parser.add_argument("--no-langgraph", action="store_true", help="skip the LangGraph measurement")
    parser.add_argument(
        "--langgraph-budget",
        type=float,
        default=120.0,
        help="seconds of timed LangGraph turns per size (at least 5 turns)",
    )
    parser.add_argument(
        "--work-dir", default=None, help="where to put the temporary databases (default: system temp)"
    )
    parser.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    parser.add_argument(
        "--synchronous",
        choices=["normal", "full", "both"],
        default="both",
        help="SQLite's synchronous setting, the same on both sides (default: a run at each)",
    )
    args = parser.parse_args()
    args.load_start = os.getloadavg()[0]
    args.revision = revision()  # at start: the code that runs, even if a commit lands meanwhile
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    inputs = user_inputs()

    results: list[SizeResult] = []
    settings = ["normal", "full"] if args.synchronous == "both" else [args.synchronous]
    for synchronous in settings:
        for size in sizes:
            results.append(one_size(size, synchronous, args, inputs))

    table = report(results, args)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
