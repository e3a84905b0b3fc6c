"""Resident memory of `sre serve` as conversations accumulate: nothing per conversation stays in memory.

Starts a real `sre serve --no-auth` subprocess (scripted model answering "ok", SQLite in a temporary
directory), reads its RSS (VmRSS from /proc/PID/status) right after start, then drives N
conversations of 3 turns each over HTTP (create the conversation, then three `POST /v1/responses`
with `conversation` and `truncation="auto"`), from a few concurrent workers, sampling RSS along the
way. Prints a markdown table.

    bench/.venv/bin/python bench/memory.py                        # 10,000 conversations
    bench/.venv/bin/python bench/memory.py --conversations 1000   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Server, machine, revision, sentence, today

TURNS = 3


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and friends in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(value.split()[0])
    return out


def mib(kib: int) -> float:
    return kib / 1024


async def drive(
    base_url: str, conversations: int, workers: int, inputs: list[str], on_progress: object
) -> tuple[int, float]:
    """Run `conversations` conversations of TURNS turns; return (requests made, seconds)."""
    counter = iter(range(conversations))
    done = 0
    requests = 0
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)

    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal done, requests
            for index in counter:
                conv = await client.post("/conversations", json={"metadata": {"n": str(index)}})
                conv.raise_for_status()
                conv_id = conv.json()["id"]
                requests += 1
                for turn in range(TURNS):
                    body = {
                        "model": "s",
                        "input": inputs[(index + turn) % len(inputs)],
                        "conversation": conv_id,
                        "truncation": "auto",
                    }
                    resp = await client.post("/responses", json=body)
                    resp.raise_for_status()
                    data = resp.json()
                    if data["status"] != "completed":
                        raise RuntimeError(f"turn did not complete: {data}")
                    requests += 1
                done += 1
                on_progress(done)  # type: ignore[operator]

        await asyncio.gather(*(worker() for _ in range(workers)))
    return requests, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=10_000, help="conversations of 3 turns each")
    parser.add_argument("--workers", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--samples", type=int, default=10, help="RSS samples along the run")
    parser.add_argument("--work-dir", default=None, help="where to put the temporary data directory")
    args = parser.parse_args()

    code = revision()  # at start: the code that runs, even if a commit lands meanwhile
    rng = random.Random(5)
    inputs = [sentence(rng) for _ in range(64)]
    root = Path(tempfile.mkdtemp(prefix="sre-bench-memory-", dir=args.work_dir))
    server = Server(root / "data")
    rows: list[tuple[str, dict[str, int]]] = []
    try:
        server.start()
        time.sleep(1.0)  # let start-up settle
        rows.append(("right after start (0 conversations)", proc_status(server.pid)))

        every = max(1, args.conversations // max(1, args.samples))
        last_print = [0.0]

        def progress(done: int) -> None:
            if done % every == 0 and done != args.conversations:
                rows.append((f"after {done:,} conversations", proc_status(server.pid)))
            now = time.perf_counter()
            if now - last_print[0] > 10:
                last_print[0] = now
                print(f"  {done:,}/{args.conversations:,} conversations", file=sys.stderr, flush=True)

        print(f"Driving {args.conversations:,} conversations x {TURNS} turns…", file=sys.stderr, flush=True)
        requests, seconds = asyncio.run(
            drive(server.base_url, args.conversations, args.workers, inputs, progress)
        )
        time.sleep(1.0)
        rows.append((f"after {args.conversations:,} conversations x {TURNS} turns", proc_status(server.pid)))
        db = root / "data" / "sre.db"
        db_mb = sum(p.stat().st_size for p in db.parent.glob("sre.db*")) / 1e6
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    start_rss, end_rss = rows[0][1]["VmRSS"], rows[-1][1]["VmRSS"]
    lines = [
        f"Resident memory of one `sre serve` process (scripted model, SQLite, `--no-auth`), "
        f"{args.conversations:,} conversations x {TURNS} turns over HTTP from {args.workers} concurrent clients.",
        f"Machine: {machine()}. Date: {today()}. SRE code at commit {code}.",
        f"{requests:,} requests in {seconds:.0f} s ({requests / seconds:,.0f} requests/s); database {db_mb:,.0f} MB.",
        "",
        "| Point | RSS (MiB) | Peak RSS so far (MiB) | Anonymous RSS (MiB) | Threads |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, s in rows:
        lines.append(
            f"| {label} | {mib(s['VmRSS']):.1f} | {mib(s['VmHWM']):.1f} | {mib(s.get('RssAnon', 0)):.1f} "
            f"| {s.get('Threads', 0)} |"
        )
    lines += [
        "",
        f"Difference, end - start: {mib(end_rss - start_rss):+.1f} MiB "
        f"({(end_rss - start_rss) / start_rss * 100:+.1f} %); "
        f"per conversation: {(end_rss - start_rss) * 1024 / args.conversations:+,.0f} bytes.",
    ]
    if len(rows) > 2:
        first_sample = rows[1][1]["VmRSS"]
        lines.append(
            f"Difference, end - first sample ({rows[1][0]}): {mib(end_rss - first_sample):+.1f} MiB "
            "(growth after warm-up)."
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
