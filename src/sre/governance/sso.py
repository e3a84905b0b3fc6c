"""Single sign-on: a caller from an OIDC access token, and the audit of a refused one.

`sre.governance.oidc` checks the token; this maps what it names onto the store: the principal of
that name in the issuer's tenant, a `user` created (with the issuer's role) on first sight, found by
one indexed read after; the token's groups travel on the `Caller`. A refused token is an
`auth.failure` event in the issuer's tenant, or in the system chain when no configured issuer
claims it, with the reason and the issuer, never the token. Nothing else is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sre.governance.oidc import OIDCIssuer, TokenIdentity, TokenRejected, TokenVerifier
from sre.store import Store
from sre.store.audit import SYSTEM_TENANT
from sre.types.audit import AuditEvent
from sre.types.errors import Unauthenticated
from sre.types.records import Caller, Principal

T = TypeVar("T")


def _first_sight(create: Callable[[], T], find: Callable[[], T | None]) -> T:
    """`create()`, or, when a concurrent first request created the same row and the unique index
    refused ours, what `find()` reads."""
    try:
        return create()
    except Exception:
        found = find()
        if found is None:
            raise
        return found


class SingleSignOn:
    def __init__(self, store: Store, issuers: Sequence[OIDCIssuer]) -> None:
        self.store = store
        self.verifier = TokenVerifier(issuers)
        self._tenant_ids: dict[str, str] = {}  # the issuers' tenants, by name (tenants never go)

    def caller(self, token: str) -> Caller:
        """The caller a token names; `Unauthenticated` (audited) when it is refused."""
        try:
            identity = self.verifier.verify(token)
            tenant_id = self._tenant_id(identity.issuer.tenant)
            principal = self._principal(tenant_id, identity)
            if principal.disabled_at is not None:
                raise TokenRejected(
                    "principal_disabled", f"Principal '{principal.name}' is disabled.", issuer=identity.issuer
                )
        except TokenRejected as exc:
            issuer = exc.issuer
            event = AuditEvent(
                action="auth.failure",
                resource_type="token",
                resource_id=None,
                actor=None,
                outcome="denied",
                details={"reason": exc.reason, "issuer": exc.presented if issuer is None else issuer.name},
            )
            self.store.audit.append(
                SYSTEM_TENANT if issuer is None else self._tenant_id(issuer.tenant), [event]
            )
            raise Unauthenticated(exc.message, code="invalid_token") from None
        return Caller(
            tenant_id=tenant_id,
            principal_id=principal.id,
            role=principal.role,
            groups=identity.groups,
            grants=principal.grants,
        )

    def _tenant_id(self, name: str) -> str:
        found = self._tenant_ids.get(name)
        if found is None:
            keys = self.store.keys
            found = keys.find_tenant(name) or _first_sight(
                lambda: keys.ensure_tenant(name), lambda: keys.find_tenant(name)
            )
            self._tenant_ids[name] = found
        return found

    def _principal(self, tenant_id: str, identity: TokenIdentity) -> Principal:
        keys, name = self.store.keys, identity.principal
        return keys.find_principal(tenant_id, name) or _first_sight(
            lambda: keys.ensure_principal(tenant_id, name, "user", identity.issuer.role),
            lambda: keys.find_principal(tenant_id, name),
        )
