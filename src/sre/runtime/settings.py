"""Where the runtime keeps its data and how it is configured: flags, then environment, then file.

The embedded default is `./.sre/sre.db`; `SRE_DATABASE_URL` (or `--database-url`) selects
PostgreSQL. The TOML file (`--config` / `SRE_CONFIG`) holds the models, a `[server]` table, the Python modules
that register server-side tools (`[tools] modules`), the MCP servers (`[mcp_servers.LABEL]`), the
context defaults of plain turns (`[context]`), the OIDC issuers whose tokens are accepted besides
API keys (`[auth.oidc.NAME]`) and the default quotas of each kind of subject (`[quotas.tenant]`,
`[quotas.principal]`, `[quotas.key]`). The keys that encrypt secrets come from `SRE_SECRET_KEY`
only, never from the file, and `Settings` never prints them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sre.context import ContextDefaults
from sre.governance.auth import LOCAL_PRINCIPAL, LOCAL_TENANT
from sre.governance.oidc import OIDCIssuer, issuers_from_config
from sre.governance.quotas import QuotaDefaults
from sre.governance.secret_keys import KEY_ENV, KEY_FILE, parse_keys
from sre.models.config import read_toml
from sre.types.errors import ConfigError

__all__ = ["LOCAL_PRINCIPAL", "LOCAL_TENANT", "Settings"]

DEFAULT_DATA_DIR = ".sre"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_LEASE_SECONDS = 1.5  # renewed every half second; a dead worker's run resumes within it


@dataclass
class Settings:
    data_dir: Path
    database_url: str | None  # None: SQLite in data_dir
    config: dict[str, Any] = field(default_factory=dict)
    config_path: Path | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # how long a worker's claim on a run lasts unrenewed
    context: ContextDefaults = field(default_factory=ContextDefaults)
    sqlite_synchronous: str = "normal"  # "full": every commit synced to disk (survives power loss)
    oidc: tuple[OIDCIssuer, ...] = ()  # identity providers whose access tokens are accepted
    quotas: QuotaDefaults = field(default_factory=QuotaDefaults)  # limits of every subject of a kind
    secret_key: str | None = field(default=None, repr=False)  # SRE_SECRET_KEY: keys, newest first

    @property
    def embedded(self) -> bool:
        return self.database_url is None or self.database_url.startswith("sqlite")

    @property
    def secret_key_file(self) -> Path | None:
        """Where the embedded store keeps the key it generates when `SRE_SECRET_KEY` is unset: beside
        its database (`<data_dir>/secret.key`). None on PostgreSQL, which needs `SRE_SECRET_KEY`."""
        if not self.embedded:
            return None
        if self.database_url is not None:
            database = sa.engine.make_url(self.database_url).database
            if database and database != ":memory:":
                return Path(database).parent / KEY_FILE
        return self.data_dir / KEY_FILE

    @classmethod
    def load(
        cls,
        *,
        data_dir: str | Path | None = None,
        database_url: str | None = None,
        config_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Settings:
        env = os.environ if env is None else env
        path = config_path or env.get("SRE_CONFIG") or None
        config = read_toml(path)
        server = config.get("server", {})
        if not isinstance(server, dict):
            raise ConfigError("[server] must be a table")
        unknown = set(config) - {
            "models",
            "default_model",
            "server",
            "embeddings",
            "default_embedding_model",
            "tools",
            "mcp_servers",
            "context",
            "auth",
            "quotas",
        }
        if unknown:
            raise ConfigError(f"unknown top-level keys in config: {', '.join(sorted(unknown))}")
        raw_max = env.get("SRE_MAX_BODY_BYTES") or server.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
        try:
            max_body = int(raw_max)
        except (TypeError, ValueError):
            raise ConfigError(f"max_body_bytes must be an integer, got {raw_max!r}") from None
        raw_lease = env.get("SRE_LEASE_SECONDS") or server.get("lease_seconds", DEFAULT_LEASE_SECONDS)
        try:
            lease = float(raw_lease)
        except (TypeError, ValueError):
            raise ConfigError(f"lease_seconds must be a number, got {raw_lease!r}") from None
        if not 0.3 <= lease <= 3600:
            raise ConfigError(f"lease_seconds must be between 0.3 and 3600, got {lease}")
        synchronous = str(
            env.get("SRE_SQLITE_SYNCHRONOUS") or server.get("sqlite_synchronous", "normal")
        ).lower()
        if synchronous not in ("normal", "full"):
            raise ConfigError(f"sqlite_synchronous must be 'normal' or 'full', got {synchronous!r}")
        secret_key = env.get(KEY_ENV) or None
        if secret_key is not None:
            parse_keys(secret_key)  # a malformed key stops the start before anything is opened
        return cls(
            sqlite_synchronous=synchronous,
            data_dir=Path(data_dir or env.get("SRE_DATA_DIR") or server.get("data_dir") or DEFAULT_DATA_DIR),
            database_url=database_url or env.get("SRE_DATABASE_URL") or server.get("database_url") or None,
            config=config,
            config_path=None if path is None else Path(path),
            max_body_bytes=max_body,
            lease_seconds=lease,
            context=ContextDefaults.from_config(config.get("context")),
            oidc=issuers_from_config(config.get("auth")),
            quotas=QuotaDefaults.from_config(config.get("quotas")),
            secret_key=secret_key,
        )
