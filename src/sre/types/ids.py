"""Identifiers: a type prefix and 32 hex digits that sort by creation time.

The first 12 hex digits are milliseconds since the epoch, the rest random, so ids are unique across
processes without coordination and index inserts stay append-friendly. Pure functions, no imports
from SRE.
"""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    millis = int(time.time() * 1000) & 0xFFFFFFFFFFFF
    return f"{prefix}_{millis:012x}{os.urandom(10).hex()}"
