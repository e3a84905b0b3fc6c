"""The store: the system's truth, in SQLite (embedded) or PostgreSQL (scale) behind one interface.

`Store` bundles a `Database` with the repositories; each repository method is one transaction and
returns plain records (`sre.types.records`). The store knows nothing of models, HTTP or the engine.
Its methods are synchronous: callers in async code run them in a worker thread.
"""

from __future__ import annotations

from pathlib import Path

from sre.store.agents import AgentRepository
from sre.store.approvals import ApprovalRepository, DecisionCheck
from sre.store.audit import SYSTEM_TENANT, AuditRepository
from sre.store.conversations import ConversationRepository
from sre.store.database import Database, normalise_url
from sre.store.directory import DirectoryRepository
from sre.store.keys import KeyRepository, hash_key
from sre.store.listener import RunListener
from sre.store.places import LimitReached, PlaceRepository
from sre.store.quotas import QuotaRepository
from sre.store.responses import ResponseRepository, TurnCommit
from sre.store.runs import LeaseLost, RunRepository
from sre.store.secrets import SecretRepository
from sre.store.tenancy import subject_to_rls

__all__ = [
    "SYSTEM_TENANT",
    "ApprovalRepository",
    "AuditRepository",
    "Database",
    "DecisionCheck",
    "LeaseLost",
    "LimitReached",
    "PlaceRepository",
    "QuotaRepository",
    "RunListener",
    "Store",
    "TurnCommit",
    "hash_key",
    "normalise_url",
    "sqlite_url",
]


def sqlite_url(data_dir: str | Path) -> str:
    path = Path(data_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'sre.db'}"


class Store:
    def __init__(
        self, url: str, *, migrate: bool = True, pool_size: int = 10, synchronous: str = "normal"
    ) -> None:
        self.db = Database(url, pool_size=pool_size, synchronous=synchronous)
        if migrate:
            self.db.upgrade()
        self.keys = KeyRepository(self.db)
        self.conversations = ConversationRepository(self.db)
        self.quotas = QuotaRepository(self.db)
        self.places = PlaceRepository(self.db)
        self.responses = ResponseRepository(self.db, self.quotas)
        self.agents = AgentRepository(self.db)
        self.runs = RunRepository(self.db, self.quotas)
        self.approvals = ApprovalRepository(self.db)
        self.audit = AuditRepository(self.db)
        self.directory = DirectoryRepository(self.db)
        self.secrets = SecretRepository(self.db)

    def row_security_applies(self) -> bool:
        """Whether PostgreSQL's row-level security binds this store's role (False on SQLite)."""
        if self.db.dialect != "postgresql":
            return False
        with self.db.read() as conn:
            return subject_to_rls(conn)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.dispose()
