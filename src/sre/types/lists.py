"""The list envelope every listing of the API answers with, defined once.

`{"object": "list", "data": [...], "first_id", "last_id", "has_more"}`, as OpenAI's lists; a
listing whose cursor is not an id (an agent's versions) names its own cursor key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def list_object(data: Sequence[dict[str, Any]], has_more: bool, *, cursor: str = "id") -> dict[str, Any]:
    rows = list(data)
    return {
        "object": "list",
        "data": rows,
        f"first_{cursor}": rows[0][cursor] if rows else None,
        f"last_{cursor}": rows[-1][cursor] if rows else None,
        "has_more": has_more,
    }
