"""`sre admin secrets` and `sre admin rotate-secret-key`: a tenant's secrets, and the key that
encrypts every tenant's, from the command line.

The secrets commands are thin calls of the runtime's secrets methods as the tenant's `cli` admin
service, validated and audited as `/v1/secrets` is. A value is read from a file or standard input
(a hidden prompt on a terminal), never from an argument, which would leave it in shell histories
and process lists; no command prints a value. `rotate-secret-key` re-encrypts every tenant's
secrets with the newest key of `SRE_SECRET_KEY`, or with `--generate` prints a fresh key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from sre.cli.admin import _call, _listing, _when, admin_app
from sre.cli.commands import CLIError, DatabaseUrl, DataDir, Tenant, _open, _say
from sre.governance.secret_keys import generate_key
from sre.types.errors import NotFound

secrets_app = typer.Typer(
    help="Store, list and delete a tenant's secrets (values are never shown).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
admin_app.add_typer(secrets_app, name="secrets")


def _read_value(from_file: Path | None) -> str:
    if from_file is not None:
        try:
            text = from_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CLIError(f"cannot read {from_file}: {getattr(exc, 'strerror', None) or exc}") from None
    elif sys.stdin.isatty():
        text = typer.prompt("Value", hide_input=True, err=True)
    else:
        text = sys.stdin.read()
    # One trailing line end is the file's or the pipe's, not the secret's (`echo x | …`).
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise CLIError("the value is empty")
    return text


@secrets_app.command("set")
def secrets_set(
    name: Annotated[str, typer.Argument(help="The secret's name, unique in the tenant (or its id).")],
    from_file: Annotated[
        Path | None,
        typer.Option("--from-file", help="Read the value from this file [default: standard input]."),
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="What the secret is for (shown in listings).")
    ] = None,
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Store a secret, or replace the value of an existing one. The value comes from --from-file or
    standard input (one trailing newline dropped), never from an argument."""
    value = _read_value(from_file)
    try:
        _call(data_dir, database_url, tenant, "get_secret", name)
    except NotFound:
        body = {"name": name, "value": value, "description": description or ""}
        made = _call(data_dir, database_url, tenant, "create_secret", body)
        _say(f"Stored secret {made['name']!r} ({made['id']}).")
        return
    update = {"value": value} if description is None else {"value": value, "description": description}
    changed = _call(data_dir, database_url, tenant, "update_secret", name, update)
    _say(f"Replaced the value of secret {changed['name']!r} ({changed['id']}).")


@secrets_app.command("list")
def secrets_list(tenant: Tenant = None, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List the tenant's secrets: names, ids and dates, never values."""
    print(f"{'ID':<37} {'NAME':<32} {'UPDATED':<19} DESCRIPTION")
    for s in _listing(data_dir, database_url, tenant, "list_secrets"):
        print(f"{s['id']:<37} {s['name']:<32} {_when(s['updated_at']):<19} {s['description'] or '-'}")


@secrets_app.command("delete")
def secrets_delete(
    name: Annotated[str, typer.Argument(help="The secret's name or id.")],
    tenant: Tenant = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete a secret."""
    gone = _call(data_dir, database_url, tenant, "delete_secret", name)
    _say(f"Deleted secret {gone['id']}.")


@admin_app.command("rotate-secret-key")
def rotate_secret_key(
    generate: Annotated[
        bool, typer.Option("--generate", help="Print a fresh key for SRE_SECRET_KEY and change nothing.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=10_000, help="Secrets re-encrypted per transaction.")
    ] = 100,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Re-encrypt every tenant's secrets with the first key of SRE_SECRET_KEY (keep the old key after
    it until this has run). Safe to run again: what is already re-encrypted is left alone."""
    if generate:
        print(generate_key())
        return
    runtime = _open(data_dir, database_url, None)
    try:
        done = runtime.rotate_secret_key(batch_size)
    finally:
        runtime.close()
    for tenant, count in sorted(done.by_tenant.items()):
        _say(f"  {tenant}: {count}")
    _say(f"Re-encrypted {done.secrets} secret(s) of {len(done.by_tenant)} tenant(s) with key {done.key_id}.")
    if done.failures:
        for line in done.failures[:20]:
            _say(f"  left as it was: {line}")
        raise CLIError(
            f"{len(done.failures)} secret(s) could not be decrypted with the keys in SRE_SECRET_KEY and were "
            "left as they were: add the keys they name (after the newest) and run this again"
        )
    _say("Every secret is now encrypted with it: the old keys may be dropped from SRE_SECRET_KEY.")
