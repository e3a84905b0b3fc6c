"""The directory through the facade: a tenant's principals, groups and API keys.

Who may do what here is the roles' table (`sre.governance.roles`): reading the directory takes
`directory` (admins, auditors), changing it takes `admin`; every principal manages its own keys
(`keys`), an admin every key of the tenant. A key never carries a scope its creator lacks, and only
an admin gives `act_as`, only to a service. Someone else's key is not found, as another tenant's.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from sre.governance.roles import check_scopes, rights
from sre.runtime.base import RuntimeParts, _coerce, _page_args
from sre.types.directory import (
    AddMember,
    CreateGroup,
    CreateKey,
    CreatePrincipal,
    RotateKey,
    UpdatePrincipal,
    group_object,
    key_object,
    principal_object,
)
from sre.types.errors import InvalidRequest, NotFound, PermissionDenied
from sre.types.lists import list_object
from sre.types.records import ANY, ApiKey, Caller


class DirectoryAPI(RuntimeParts):
    # -- principals ------------------------------------------------------------------------------

    async def list_principals(
        self, caller: Caller, *, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        _page_args(limit, "asc")
        found, more = await asyncio.to_thread(
            partial(self.store.directory.principals, caller.tenant_id, after=after, limit=limit)
        )
        return list_object([principal_object(p) for p in found], more)

    async def get_principal(self, caller: Caller, principal: str) -> dict[str, Any]:
        found = await asyncio.to_thread(self.store.directory.principal, caller.tenant_id, principal)
        return principal_object(found)

    async def create_principal(
        self, caller: Caller, body: CreatePrincipal | dict[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(CreatePrincipal, body)
        made = await asyncio.to_thread(
            partial(
                self.store.directory.create_principal,
                caller.tenant_id,
                body.name,
                kind=body.kind,
                role=body.role,
                grants=body.grants.grants() if body.grants is not None else ANY,
                actor=caller.principal_id,
            )
        )
        return principal_object(made)

    async def update_principal(
        self, caller: Caller, principal: str, body: UpdatePrincipal | dict[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(UpdatePrincipal, body)
        target = await asyncio.to_thread(self.store.directory.principal, caller.tenant_id, principal)
        if target.id == caller.principal_id and (body.role not in (None, target.role) or body.disabled):
            raise InvalidRequest(
                "A principal may not change its own role or disable itself.", param="principal"
            )
        grants = None  # unchanged; `"grants": null` gives back every right
        if "grants" in body.model_fields_set:
            grants = body.grants.grants() if body.grants is not None else ANY
        changed = await asyncio.to_thread(
            partial(
                self.store.directory.update_principal,
                caller.tenant_id,
                target.id,
                role=body.role,
                grants=grants,
                disabled=body.disabled,
                actor=caller.principal_id,
            )
        )
        return principal_object(changed)

    # -- groups ----------------------------------------------------------------------------------

    async def list_groups(
        self, caller: Caller, *, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        _page_args(limit, "asc")
        found, more = await asyncio.to_thread(
            partial(self.store.directory.groups, caller.tenant_id, after=after, limit=limit)
        )
        return list_object([group_object(g) for g in found], more)

    async def get_group(self, caller: Caller, group: str) -> dict[str, Any]:
        return group_object(await asyncio.to_thread(self.store.directory.group, caller.tenant_id, group))

    async def create_group(self, caller: Caller, body: CreateGroup | dict[str, Any]) -> dict[str, Any]:
        body = _coerce(CreateGroup, body)
        made = await asyncio.to_thread(
            partial(
                self.store.directory.create_group,
                caller.tenant_id,
                body.name,
                members=body.members,
                actor=caller.principal_id,
            )
        )
        return group_object(made)

    async def delete_group(self, caller: Caller, group: str) -> dict[str, Any]:
        gone = await asyncio.to_thread(
            partial(self.store.directory.delete_group, caller.tenant_id, group, actor=caller.principal_id)
        )
        return {"object": "group.deleted", "id": gone.id, "deleted": True}

    async def add_group_member(
        self, caller: Caller, group: str, body: AddMember | dict[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(AddMember, body)
        changed = await asyncio.to_thread(
            partial(
                self.store.directory.add_member,
                caller.tenant_id,
                group,
                body.member,
                actor=caller.principal_id,
            )
        )
        return group_object(changed)

    async def remove_group_member(self, caller: Caller, group: str, member_id: str) -> dict[str, Any]:
        changed = await asyncio.to_thread(
            partial(
                self.store.directory.remove_member,
                caller.tenant_id,
                group,
                member_id,
                actor=caller.principal_id,
            )
        )
        return group_object(changed)

    # -- keys ------------------------------------------------------------------------------------

    def _manages_all_keys(self, caller: Caller) -> bool:
        return "admin" in rights(caller)

    async def list_api_keys(
        self, caller: Caller, *, principal: str | None = None, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        """The caller's own keys; with the `directory` right, any principal's of the tenant (all of
        them unless `principal` names one). Never a secret."""
        _page_args(limit, "asc")
        everyone = "directory" in rights(caller)
        owner: str | None = caller.principal_id
        if principal is not None:
            found = await asyncio.to_thread(self.store.directory.principal, caller.tenant_id, principal)
            if found.id != caller.principal_id and not everyone:
                raise NotFound(f"No principal '{principal}'.", param="principal")
            owner = found.id
        elif everyone:
            owner = None
        keys = await asyncio.to_thread(
            partial(
                self.store.keys.list_keys, caller.tenant_id, principal_id=owner, after=after, limit=limit + 1
            )
        )
        return list_object([key_object(k) for k in keys[:limit]], len(keys) > limit)

    @staticmethod
    def _not_acting(caller: Caller) -> None:
        if caller.actor_id is not None:
            raise PermissionDenied(
                "A service acting for a user cannot make, rotate or revoke that user's keys.",
                code="act_as_refused",
            )

    async def _own_key(self, caller: Caller, key_id: str, *, change: bool = False) -> ApiKey:
        if change:
            self._not_acting(caller)
        key = await asyncio.to_thread(self.store.keys.get_key, caller.tenant_id, key_id)
        allowed = self._manages_all_keys(caller) or (not change and "directory" in rights(caller))
        if key.principal_id != caller.principal_id and not allowed:
            raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
        return key

    async def get_api_key(self, caller: Caller, key_id: str) -> dict[str, Any]:
        return key_object(await self._own_key(caller, key_id))

    async def create_api_key(self, caller: Caller, body: CreateKey | dict[str, Any]) -> dict[str, Any]:
        """A key for the caller, or (admins) for any principal of the tenant; its secret is in this
        answer and nowhere else."""
        body = _coerce(CreateKey, body)
        self._not_acting(caller)
        target = await asyncio.to_thread(
            self.store.directory.principal, caller.tenant_id, body.principal or caller.principal_id
        )
        if target.id != caller.principal_id and not self._manages_all_keys(caller):
            raise NotFound(f"No principal '{body.principal}'.", param="principal")
        scopes = None if body.scopes is None else check_scopes(body.scopes, caller)
        if caller.scopes is not None and scopes is None:
            scopes = caller.scopes  # a scoped key makes keys no wider than itself
        if scopes is not None and "act_as" in scopes and target.kind != "service":
            raise PermissionDenied(
                f"Only a service may act for users: '{target.name}' is a {target.kind}.",
                code="act_as_refused",
            )
        if target.disabled_at is not None:
            raise InvalidRequest(f"Principal '{target.name}' is disabled.", param="principal")
        expires_at = None if body.expires_in is None else int(time.time()) + body.expires_in
        key, secret = await asyncio.to_thread(
            partial(
                self.store.keys.create_key,
                caller.tenant_id,
                target.id,
                body.name,
                actor=caller.principal_id,
                expires_at=expires_at,
                scopes=scopes,
            )
        )
        return key_object(key, secret)

    async def revoke_api_key(self, caller: Caller, key_id: str) -> dict[str, Any]:
        await self._own_key(caller, key_id, change=True)
        key = await asyncio.to_thread(
            partial(self.store.keys.revoke_key, key_id, actor=caller.principal_id, tenant_id=caller.tenant_id)
        )
        return key_object(key)

    async def rotate_api_key(
        self, caller: Caller, key_id: str, body: RotateKey | dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A new key in place of `key_id` (same principal, name, scopes, expiry); the old one is
        revoked now or after `grace_seconds`."""
        body = _coerce(RotateKey, body or {})
        await self._own_key(caller, key_id, change=True)
        key, secret, old = await asyncio.to_thread(
            partial(
                self.store.keys.rotate_key,
                caller.tenant_id,
                key_id,
                grace_seconds=body.grace_seconds,
                actor=caller.principal_id,
            )
        )
        return {**key_object(key, secret), "replaced": key_object(old)}
