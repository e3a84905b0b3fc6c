"""A switch that makes real model requests fail, for test suites.

Tests set `SRE_BLOCK_MODEL_REQUESTS=1` (inherited by server subprocesses) or call
`sre.testing.block_model_requests()`. Loopback hosts stay allowed: the tests' fake upstream servers
listen there, and they are not real models.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from sre.types.errors import ModelError

_blocked_here = False


def set_blocked(value: bool) -> None:
    global _blocked_here
    _blocked_here = value


def requests_blocked() -> bool:
    return _blocked_here or os.environ.get("SRE_BLOCK_MODEL_REQUESTS", "") not in ("", "0", "false")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_allowed(url: str) -> None:
    if requests_blocked() and not _is_loopback(urlsplit(url).hostname or ""):
        raise ModelError(
            f"real model requests are blocked (SRE_BLOCK_MODEL_REQUESTS) and {url!r} is not on loopback",
            code="model_requests_blocked",
        )
