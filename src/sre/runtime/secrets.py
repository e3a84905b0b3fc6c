"""Secrets through the facade: a tenant's encrypted provider keys and connectors' credentials.

Routes that reach these take the `secrets` right (admins). A value goes in (create, replace) and
never comes out of these methods: they answer with the secret's name, description and dates. The
one way back to a value is `runtime.secrets.reveal(tenant_id, name)`, for the parts of SRE that use
a credential (connectors, model providers); no route calls it. `rotate_secret_key` is the
operator's: every tenant's secrets, re-encrypted with the newest key.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from sre.governance.secrets import Rekeyed
from sre.runtime.base import RuntimeParts, _coerce
from sre.types.errors import InvalidRequest
from sre.types.lists import list_object
from sre.types.records import Caller
from sre.types.secrets import CreateSecret, UpdateSecret, secret_object


class SecretsAPI(RuntimeParts):
    async def list_secrets(
        self, caller: Caller, *, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise InvalidRequest("Invalid value for 'limit': must be between 1 and 100.", param="limit")
        found, more = await asyncio.to_thread(
            partial(self.secrets.listing, caller.tenant_id, after=after, limit=limit)
        )
        return list_object([secret_object(s) for s in found], more)

    async def get_secret(self, caller: Caller, secret: str) -> dict[str, Any]:
        return secret_object(await asyncio.to_thread(self.secrets.get, caller.tenant_id, secret))

    async def create_secret(self, caller: Caller, body: CreateSecret | dict[str, Any]) -> dict[str, Any]:
        """Store a new secret (409 when the name is taken); the answer never holds the value."""
        body = _coerce(CreateSecret, body)
        made = await asyncio.to_thread(
            partial(
                self.secrets.create,
                caller.tenant_id,
                body.name,
                body.value,
                description=body.description,
                actor=caller.principal_id,
            )
        )
        return secret_object(made)

    async def update_secret(
        self, caller: Caller, secret: str, body: UpdateSecret | dict[str, Any]
    ) -> dict[str, Any]:
        """Replace a secret's value (and its description, when given)."""
        body = _coerce(UpdateSecret, body)
        changed = await asyncio.to_thread(
            partial(
                self.secrets.update,
                caller.tenant_id,
                secret,
                body.value,
                description=body.description,
                actor=caller.principal_id,
            )
        )
        return secret_object(changed)

    async def delete_secret(self, caller: Caller, secret: str) -> dict[str, Any]:
        gone = await asyncio.to_thread(
            partial(self.secrets.delete, caller.tenant_id, secret, actor=caller.principal_id)
        )
        return {"object": "secret.deleted", "id": gone.id, "deleted": True}

    def rotate_secret_key(self, batch_size: int = 100) -> Rekeyed:
        """Re-encrypt every tenant's secrets with the newest key of `SRE_SECRET_KEY` (the
        operator's command); idempotent."""
        return self.secrets.rotate(batch_size=batch_size)
