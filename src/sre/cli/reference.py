"""Print the CLI reference (docs/cli.md) from the commands' own `--help`, so the docs cannot rot.

`python -m sre.cli.reference > docs/cli.md`; a test checks the committed file matches.
"""

from __future__ import annotations

import typer

from sre.cli.commands import app


def _walk(command: typer.core.TyperGroup | typer.core.TyperCommand, path: list[str], out: list[str]) -> None:
    import typer._click as click

    ctx = click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100)
    formatter = ctx.make_formatter()
    click.Command.format_help(command, ctx, formatter)
    out.append(f"## `{' '.join(path)}`\n\n```text\n{formatter.getvalue().rstrip()}\n```\n")
    if isinstance(command, typer.core.TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                _walk(sub, [*path, name], out)  # type: ignore[arg-type]


def reference() -> str:
    out = ["# CLI reference\n", "Generated from `--help` by `make docs`; do not edit by hand.\n"]
    _walk(typer.main.get_command(app), ["sre"], out)  # type: ignore[arg-type]
    return "\n".join(out)


if __name__ == "__main__":
    print(reference(), end="")
