"""Print the roles' rights and each route's right as Markdown, for docs/governance.md, from the code
itself (`sre.governance.roles` and the app's routes), so the written table cannot drift from what is
enforced: `python -m sre.api.rights`; a test checks the committed document contains it.
"""

from __future__ import annotations

import tempfile

from sre.api.app import create_app, route_rights
from sre.governance.roles import RIGHTS, ROLE_RIGHTS
from sre.types.records import ROLES


def rights_markdown() -> str:
    from sre.runtime import Runtime

    with tempfile.TemporaryDirectory() as data_dir:
        runtime = Runtime.open(data_dir=data_dir, models=[], env={})
        try:
            table = route_rights(create_app(runtime))
        finally:
            runtime.close()
    lines = [f"| Right | What it allows | {' | '.join(ROLES)} |", "|---|---|" + ":-:|" * len(ROLES)]
    for right, what in RIGHTS.items():
        marks = " | ".join("✓" if right in ROLE_RIGHTS[role] else "" for role in ROLES)
        lines.append(f"| `{right}` | {what} | {marks} |")
    lines += ["", "| Route | Right |", "|---|---|"]
    for (method, path), needed in table.items():
        if method != "HEAD":
            lines.append(f"| `{method} {path}` | {f'`{needed}`' if needed else 'none'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(rights_markdown(), end="")
