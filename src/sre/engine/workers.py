"""Workers: tasks that claim runnable runs from the store and execute them, and how a worker is named.

A `WorkerPool` is `count` tasks (inside `sre serve`, or the whole of `sre worker`) that claim runs
with a lease and hand them to `BackgroundRuns.execute`; on PostgreSQL they sleep on `LISTEN` between
claims, on SQLite they poll. A worker's id names its machine (host and process namespace) and
process, so an idle worker can tell that a run's owner was a process on this machine that no longer
exists and free its run at once, instead of waiting for the lease to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sre.engine.background import BackgroundRuns

log = logging.getLogger("sre.workers")


def _machine() -> str:
    """This host and process namespace: worker ids that share it name processes this one can see."""
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()[:40]}/{namespace}"


MACHINE = _machine()
REAP_INTERVAL = 0.5  # seconds between looks for runs held by dead processes on this machine


def worker_id(index: int | str) -> str:
    return f"{MACHINE}:{os.getpid()}:{index}:{uuid.uuid4().hex[:8]}"


def _dead_here(owner: str) -> bool:
    """Whether `owner` was a process on this machine that no longer exists (its lease can go now,
    without waiting for it to expire: a restarted `sre serve` resumes its runs at once)."""
    machine, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if machine != MACHINE or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but is not ours to signal
        return False
    return False


class WorkerPool:
    """`count` workers claiming runs from the store until closed."""

    def __init__(self, runs: BackgroundRuns, count: int, *, poll_interval: float | None = None) -> None:
        self.runs = runs
        self.count = count
        pg = runs.store.dialect == "postgresql"
        # PostgreSQL wakes workers with NOTIFY for new runs; polling finds expired leases.
        self.poll_interval = poll_interval if poll_interval is not None else (0.3 if pg else 0.2)
        self._tasks: list[asyncio.Task[None]] = []
        self.worker_ids = [worker_id(i) for i in range(count)]
        self._reaped = 0.0  # when a worker of this pool last looked for dead processes' runs

    def start(self) -> None:
        for worker_id in self.worker_ids:
            self._tasks.append(asyncio.create_task(self._work(worker_id)))

    async def _reap(self) -> None:
        """Let go of the leases of dead processes on this machine."""
        owners = await asyncio.to_thread(self.runs.store.runs.lease_owners, MACHINE + ":")
        for owner in owners:
            if _dead_here(owner):
                log.info("worker %s is gone; its runs are claimable now", owner)
                await asyncio.to_thread(self.runs.store.runs.expire_owner, owner)

    async def _work(self, worker_id: str) -> None:
        store = self.runs.store
        listener = store.runs.listener()
        try:
            while True:
                if time.monotonic() - self._reaped > REAP_INTERVAL:  # any idle worker of the pool looks
                    self._reaped = time.monotonic()
                    try:
                        await self._reap()
                    except Exception as exc:
                        log.warning("could not look for dead workers: %s", exc)
                try:
                    claimed = await asyncio.to_thread(
                        store.runs.claim_runnable_run, worker_id, self.runs.lease_seconds
                    )
                except Exception as exc:
                    log.warning("worker %s could not claim a run: %s", worker_id, exc)
                    claimed = None
                if claimed is not None:
                    try:
                        await self.runs.execute(*claimed)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("run %s failed in worker %s", claimed[0].response_id, worker_id)
                    continue
                if store.dialect == "postgresql":
                    await asyncio.to_thread(listener.wait, self.poll_interval)
                else:
                    await asyncio.sleep(self.poll_interval)
        finally:
            listener.close()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
