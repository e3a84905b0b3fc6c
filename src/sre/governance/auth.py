"""Who is calling: an API key from an `Authorization: Bearer` header, the local user of the embedded
setup (`--no-auth`, the first-start key) or the CLI acting within a tenant; and the keys themselves.

Keys are hashed at rest (`sre.store.keys`); a lookup is one indexed read per request, so a revoked
key is refused by every process at once. Where OIDC issuers are configured, a bearer secret shaped
like a JWT (three dot-separated segments, which no key has) is a token for `sre.governance.sso`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sre.governance.oidc import OIDCIssuer, looks_like_jwt
from sre.governance.roles import check_scopes
from sre.governance.sso import SingleSignOn
from sre.store import Store
from sre.store.keys import KEY_PREFIX
from sre.types.directory import MAX_GRACE, MAX_KEY_LIFETIME
from sre.types.errors import InvalidRequest, NotFound, Unauthenticated
from sre.types.records import ApiKey, Caller, Principal

LOCAL_TENANT = "default"
LOCAL_PRINCIPAL = "local"
CLI_PRINCIPAL = "cli"


class Authenticator:
    def __init__(self, store: Store, oidc: Sequence[OIDCIssuer] = ()) -> None:
        self.store = store
        self._local: Caller | None = None
        self.sso = SingleSignOn(store, oidc) if oidc else None

    def from_header(self, header: str | None) -> Caller:
        """The caller an `Authorization` header names; `Unauthenticated` when it names none."""
        scheme, _, secret = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated(
                "You didn't provide an API key. Send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        return self.authenticate(secret.strip())

    def authenticate(self, secret: str) -> Caller:
        if self.sso is not None and looks_like_jwt(secret) and not secret.startswith(KEY_PREFIX):
            return self.sso.caller(secret)
        caller = self.store.keys.authenticate(secret)
        if caller is None:
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        return caller

    def local_caller(self) -> Caller:
        """The caller of the embedded, single-user setup (`--no-auth`, first-start key)."""
        if self._local is None:
            tenant_id = self.store.keys.ensure_tenant(LOCAL_TENANT)
            principal = self.store.keys.ensure_principal(tenant_id, LOCAL_PRINCIPAL, role="admin")
            self._local = Caller(tenant_id=tenant_id, principal_id=principal.id, role=principal.role)
        return self._local

    def tenant_caller(self, tenant: str | None, principal: str | None = None) -> Caller:
        """Act within a tenant: as `principal` (created if new), else as its `cli` service principal,
        or, with no tenant named, as the local user."""
        tenant_id = self.store.keys.find_tenant(tenant or LOCAL_TENANT)
        if tenant_id is None:
            raise InvalidRequest(f"no tenant named {tenant or LOCAL_TENANT!r}", param="tenant")
        if principal is not None:
            found = self.store.keys.ensure_principal(tenant_id, principal)
        elif tenant is None:
            found = self.store.keys.ensure_principal(tenant_id, LOCAL_PRINCIPAL, "user", "admin")
        else:
            found = self.store.keys.ensure_principal(tenant_id, CLI_PRINCIPAL, "service", "admin")
        return Caller(tenant_id=tenant_id, principal_id=found.id, role=found.role)

    def principal(self, caller: Caller) -> Principal:
        return self.store.keys.get_principal(caller.tenant_id, caller.principal_id)

    def create_key(
        self,
        tenant: str,
        principal: str,
        name: str = "default",
        role: str | None = None,
        expires_in: int | None = None,
        *,
        scopes: list[str] | None = None,
        kind: str = "user",
    ) -> tuple[ApiKey, str]:
        """A key for `principal` (created if new, as a `member` unless `role` says otherwise; an
        existing one gets `role` when it is given), refused `expires_in` seconds from now if given."""
        if expires_in is not None and not 0 < expires_in <= MAX_KEY_LIFETIME:
            raise InvalidRequest(
                f"a key's lifetime must be between 1 second and {MAX_KEY_LIFETIME // 86400} days",
                param="expires_in",
            )
        checked = None if scopes is None else check_scopes(scopes)
        tenant_id = self.store.keys.find_tenant(tenant)
        existing = None if tenant_id is None else self.store.keys.find_principal(tenant_id, principal)
        actual_kind = existing.kind if existing is not None else kind
        if checked is not None and "act_as" in checked and actual_kind != "service":
            raise InvalidRequest(  # before anything is written
                f"Only a service acts for users: '{principal}' is a {actual_kind} (use --kind service).",
                param="scopes",
            )
        tenant_id = self.store.keys.ensure_tenant(tenant)
        found = self.store.keys.ensure_principal(tenant_id, principal, kind, role=role or "member")
        if role is not None and found.role != role:
            found = self.store.keys.set_role(tenant_id, found.id, role)
        expires_at = None if expires_in is None else int(time.time()) + expires_in
        return self.store.keys.create_key(tenant_id, found.id, name, expires_at=expires_at, scopes=checked)

    def rotate_key(self, key_id: str, grace_seconds: int = 0) -> tuple[ApiKey, str, ApiKey]:
        if not 0 <= grace_seconds <= MAX_GRACE:
            raise InvalidRequest(f"the grace period must be at most {MAX_GRACE // 86400} days", param="grace")
        key = next((k for k in self.store.keys.list_keys() if k.id == key_id), None)
        if key is None:
            raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
        return self.store.keys.rotate_key(key.tenant_id, key_id, grace_seconds=grace_seconds)

    def bootstrap_local_key(self) -> str | None:
        """On the first start of an embedded store, create and return a key for the local user."""
        if self.store.keys.list_keys():
            return None
        caller = self.local_caller()
        _, secret = self.store.keys.create_key(caller.tenant_id, caller.principal_id, "local")
        return secret

    def list_keys(self, tenant: str | None = None) -> list[tuple[ApiKey, str, str]]:
        """Keys (never their secrets) with their tenant's and principal's names."""
        keys = self.store.keys
        tenant_id = None
        if tenant is not None:
            tenant_id = keys.find_tenant(tenant)
            if tenant_id is None:
                raise InvalidRequest(f"no tenant named {tenant!r}", param="tenant")
        tenants, principals = keys.tenant_names(), keys.principal_names()
        return [
            (k, tenants.get(k.tenant_id, "?"), principals.get((k.tenant_id, k.principal_id), "?"))
            for k in keys.list_keys(tenant_id)
        ]

    def revoke_key(self, key_id: str) -> ApiKey:
        return self.store.keys.revoke_key(key_id)
