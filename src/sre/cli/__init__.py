"""The `sre` command line: serve, chat, keys, admin, conversations, agents, approvals, audit and db, as thin commands over
`Runtime`.

Every command parses its flags, calls the runtime (or, for `chat`, the HTTP API), and prints; an
error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

import sre.cli.admin  # registers `sre admin`
import sre.cli.secrets  # noqa: F401  (registers `sre admin secrets`, `sre admin rotate-secret-key`)
from sre.cli.commands import app

__all__ = ["app", "main"]


def main() -> None:
    from sre.cli.commands import run

    sys.exit(run())
