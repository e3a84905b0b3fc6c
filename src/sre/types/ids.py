"""Identifiers: a type prefix and 32 hex digits that sort by creation time.

The first 12 hex digits are milliseconds since the epoch, the rest random, so ids are unique across
processes without coordination and index inserts stay append-friendly. Pure functions, no imports
from SRE.
"""

from __future__ import annotations

import os
import re
import time

PREFIXES = ("resp", "conv", "msg", "fc", "fco", "item", "key", "ten", "prn", "call", "mc")
_ID_RE = re.compile(r"^[a-z]{1,8}_[0-9a-f]{32}$")


def new_id(prefix: str) -> str:
    millis = int(time.time() * 1000) & 0xFFFFFFFFFFFF
    return f"{prefix}_{millis:012x}{os.urandom(10).hex()}"


def looks_like_id(value: str, prefix: str | None = None) -> bool:
    if not _ID_RE.match(value):
        return False
    return prefix is None or value.startswith(prefix + "_")
