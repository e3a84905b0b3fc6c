"""Quotas across three `sre serve` processes on one PostgreSQL: every process counts requests and runs in
the shared store, so a limit holds for the deployment, not per process. The limits are set with the
CLI (`sre admin quotas set`), as an operator would."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sre import Runtime
from sre.testing import ScriptedModel
from tests.support.server import ServerProcess
from tests.test_cli import sre

pytestmark = pytest.mark.slow

CONFIG = """
default_model = "m"
[models.m]
provider = "scripted"
replies = ["ok"]
"""


@pytest.fixture
def deployment(tmp_path: Path, pg_url: str) -> Iterator[tuple[list[ServerProcess], dict[str, str], str]]:
    tenant = f"quotas-{uuid.uuid4().hex[:8]}"
    runtime = Runtime.open(database_url=pg_url, models=[ScriptedModel()], env={})
    try:
        keys = {who: runtime.create_key(tenant, who, who)[1] for who in ("ops", "runner")}
    finally:
        runtime.close()
    config = tmp_path / "sre.toml"
    config.write_text(CONFIG)
    env = {"SRE_DATABASE_URL": pg_url}
    servers = [
        ServerProcess(
            data_dir=tmp_path / f"data-{i}", env=env, args=["--config", str(config), "--workers", "0"]
        )
        for i in range(3)
    ]
    try:
        for server in servers:
            server.start(timeout=60)
        yield servers, keys, tenant
    finally:
        for server in servers:
            server.stop()


def admin(pg_url: str, tenant: str, *args: str) -> str:
    done = sre("admin", "quotas", *args, "--tenant", tenant, "--database-url", pg_url)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def fire(
    servers: list[ServerProcess], key: str, count: int, method: str, path: str, body: object = None
) -> list[httpx.Response]:
    """`count` requests at once, spread over the servers in turn."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.request(method, servers[i % len(servers)].base_url + path, json=body)
                for i in range(count)
            )
        )


def test_limits_hold_across_processes(
    deployment: tuple[list[ServerProcess], dict[str, str], str], pg_url: str
) -> None:
    servers, keys, tenant = deployment
    admin(pg_url, tenant, "set", "--principal", "ops", "--requests-per-minute", "30")
    admin(pg_url, tenant, "set", "--principal", "runner", "--concurrent-runs", "3")
    # 90 requests at once for a limit of 30 a minute: exactly 30 get through. They must fall in one
    # minute: start early in a fresh one (they take a few seconds), and try again if the minute turned.
    for _ in range(2):
        if time.time() % 60 > 30:
            time.sleep(60 - time.time() % 60 + 0.5)
        minute = time.time() // 60
        answers = asyncio.run(fire(servers, keys["ops"], 90, "GET", "/models"))
        if time.time() // 60 == minute:
            break
    else:
        pytest.fail("the requests kept straddling a minute's end")
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == 30 and statuses.count(429) == 60, statuses
    for refused in (r for r in answers if r.status_code == 429):
        assert refused.headers["Retry-After"].isdigit() and int(refused.headers["Retry-After"]) >= 1
        error = refused.json()["error"]
        assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
        assert "principal 'ops'" in error["message"]
    assert {r.status_code for r in asyncio.run(fire(servers, keys["runner"], 3, "GET", "/models"))} == {200}
    # 30 background runs at once for 3 places: exactly 3 are queued (no process executes runs here).
    body = {"model": "m", "input": "later", "background": True}
    answers = asyncio.run(fire(servers, keys["runner"], 30, "POST", "/responses", body))
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == 3 and statuses.count(429) == 27, statuses
    assert {r.json()["status"] for r in answers if r.status_code == 200} == {"queued"}
    assert {r.headers["Retry-After"] for r in answers if r.status_code == 429} == {"2"}
    shown = admin(pg_url, tenant, "show", "--principal", "runner")
    assert "concurrent_runs      3 (override)" in shown and "used 3" in shown
    # A cancelled run gives its place back to whichever process asks next.
    queued = next(r.json()["id"] for r in answers if r.status_code == 200)
    cancel = httpx.post(
        f"{servers[0].base_url}/responses/{queued}/cancel",
        headers={"Authorization": f"Bearer {keys['runner']}"},
    )
    assert cancel.status_code == 200, cancel.text
    answers = asyncio.run(fire(servers, keys["runner"], 6, "POST", "/responses", body))
    assert sorted(r.status_code for r in answers) == [200] + [429] * 5
