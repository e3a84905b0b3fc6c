"""Alembic environment: runs migrations on the connection SRE hands over (see `sre.store.database`)."""

from __future__ import annotations

from alembic import context

from sre.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
