"""Server-side tools for the tests, registered on `sre.tools.default_registry` when imported (a
server loads them with `[tools] modules = ["tests.support.tools"]`).

Side effects go to a journal file (`SRE_TEST_TOOL_LOG`, one JSON line per event), so a test can
count exactly how many times a tool ran, even across processes killed with SIGKILL. A tool can be
held mid-call: it writes a `start` line, then waits while the file named by `SRE_TEST_TOOL_HOLD`
exists, so a test can kill the server during the call.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import sre


def _log(event: str, **fields: Any) -> None:
    path = os.environ.get("SRE_TEST_TOOL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")
            out.flush()
            os.fsync(out.fileno())


def _hold() -> None:
    hold = os.environ.get("SRE_TEST_TOOL_HOLD")
    deadline = time.monotonic() + 30
    while hold and Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Transfer(BaseModel):
    account: str = Field(min_length=1, max_length=64)
    amount: int = Field(ge=1)


@sre.tool(risk="high", idempotent=False, timeout=20)
def transfer(args: Transfer) -> str:
    """Move money to an account (a side effect: must happen exactly once)."""
    _log("start", tool="transfer", account=args.account, amount=args.amount)
    _hold()
    _log("done", tool="transfer", account=args.account, amount=args.amount)
    return f"sent {args.amount} to {args.account}"


@sre.tool(idempotent=True, timeout=20)
def lookup(city: str) -> str:
    """Look up the weather of a city (read-only)."""
    _log("start", tool="lookup", city=city)
    _hold()
    _log("done", tool="lookup", city=city)
    return json.dumps({"city": city, "weather": "sunny"})


@sre.tool(timeout=0.5)
async def sleepy(seconds: float) -> str:
    """Sleep for a while (times out after half a second)."""
    import asyncio

    await asyncio.sleep(seconds)
    return "awake"


@sre.tool
def explode() -> str:
    """Always fails."""
    raise RuntimeError("the tool broke")
