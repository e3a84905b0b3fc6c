"""Docs that cannot rot: the CLI reference matches `--help`, and the README's example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sre.cli.reference import reference
from tests.conftest import upstream_config
from tests.support.server import ServerProcess
from tests.support.upstream import ChatUpstream

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == reference(), "run `make docs` and commit docs/cli.md"


def test_governance_prints_the_rights_as_enforced() -> None:
    from sre.api.rights import rights_markdown

    assert rights_markdown() in (ROOT / "docs" / "governance.md").read_text(), (
        "run `python -m sre.api.rights` and put its tables in docs/governance.md (Rights)"
    )


def test_readme_has_a_two_command_quickstart() -> None:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make serve", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_example_runs(tmp_path: Path, upstream: ChatUpstream) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None
    code = example.group(1)
    assert len(code.strip().splitlines()) <= 10
    key = subprocess.run(
        [
            sys.executable,
            "-m",
            "sre",
            "keys",
            "create",
            "--tenant",
            "readme",
            "--principal",
            "ada",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    config = upstream_config(tmp_path / "sre.toml", upstream)
    server = ServerProcess(data_dir=tmp_path / "data", args=["--config", str(config)]).start()
    try:
        script = tmp_path / "example.py"
        script.write_text(code.replace("http://127.0.0.1:8000/v1", server.base_url))
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SRE_API_KEY": key},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["echo: My name is Ada.", "echo: What is my name?"]
        sent = [m["content"] for m in upstream.requests[-1]["messages"]]
        assert sent == ["My name is Ada.", "echo: My name is Ada.", "What is my name?"]
    finally:
        server.stop()
