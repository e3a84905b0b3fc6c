"""An `httpx` client that calls the app in-process (no server), as a given key or token."""

from __future__ import annotations

from typing import Any

import httpx


def asgi_client(app: Any, secret: str, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sre",
        headers={"Authorization": f"Bearer {secret}", **headers},
        timeout=30,
    )
