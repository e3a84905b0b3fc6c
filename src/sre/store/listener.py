"""Wake-ups for idle workers: PostgreSQL `LISTEN` on the channel enqueues `NOTIFY`, SQLite a plain wait."""

from __future__ import annotations

import time
from typing import Any

from sre.store.database import Database
from sre.store.runs import NOTIFY_CHANNEL


class RunListener:
    """Wake-ups for one worker: PostgreSQL `LISTEN` on a connection of its own, SQLite a plain wait.

    The listening connection stays open, so a `NOTIFY` sent between two waits is not lost.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Any = None

    def wait(self, timeout: float) -> None:
        """Block until a run may have been enqueued or `timeout` passes (the polling fallback)."""
        if self.db.dialect != "postgresql":
            time.sleep(timeout)
            return
        import psycopg

        if self._conn is None:
            url = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(url, autocommit=True)
            self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                break
        except Exception:  # a lost connection, or closed at shutdown
            self._conn = None  # reconnect on the next wait
            time.sleep(timeout)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
