"""Single sign-on: OIDC access tokens (JWTs) from configured issuers, checked and read.

Owns the `[auth.oidc.NAME]` configuration (`OIDCIssuer`, `issuers_from_config`) and the checks on a
token (`TokenVerifier`): its issuer is one configured (matched exactly on `iss`), its algorithm one
the issuer allows (never `none`; HMAC only when configured), its signature verifies against a key of
the issuer's JWKS (`sre.governance.jwks`), its audience is accepted, it has not expired and is valid
already (with the issuer's leeway), and its principal and group claims are well formed. A refusal is
a `TokenRejected` with a short reason. It never writes: `sre.governance.sso` maps what a token names
to a principal and audits refusals through the store. A token is never logged or kept.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from sre.governance.jwks import KeyNotFound, KeySet, check_location
from sre.types.errors import ConfigError
from sre.types.records import ROLES

MAX_TOKEN_CHARS = 16 * 1024
MAX_GROUPS = 100
MAX_NAME_CHARS = 200  # a principal's or a group's name
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")  # a shared secret in the JWKS: only when configured
CONFIG_KEYS = frozenset(
    {
        "issuer",
        "audience",
        "jwks",
        "principal_claim",
        "groups_claim",
        "tenant",
        "algorithms",
        "leeway",
        "role",
    }
)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class OIDCIssuer:
    """One trusted identity provider: whose tokens are accepted, and what they are mapped to."""

    name: str  # the configuration's label (`[auth.oidc.NAME]`), recorded in audit events
    issuer: str  # the exact `iss` of its tokens
    audience: tuple[str, ...]  # a token must name one of these in `aud`
    jwks: str  # a JWKS file's path, or an https:// URL
    principal_claim: str = "sub"
    groups_claim: str | None = "groups"  # None: the token's groups are not read
    tenant: str = "default"  # the tenant of its principals
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0  # seconds of clock skew allowed on exp, nbf and iat
    role: str = "member"  # the role of a principal its tokens create

    @classmethod
    def from_config(cls, name: str, table: object) -> OIDCIssuer:
        """An issuer from its TOML table; anything wrong is a one-line `ConfigError`."""
        where = f"[auth.oidc.{name}]"
        if not _NAME.fullmatch(name) or not isinstance(table, Mapping):
            raise ConfigError(f"{where}: a name of letters, digits, '_' or '-', and a table")
        unknown = set(table) - CONFIG_KEYS
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {sorted(unknown)[0]!r} (expected {', '.join(sorted(CONFIG_KEYS))})"
            )
        for required in ("issuer", "audience", "jwks"):
            if required not in table:
                raise ConfigError(f"{where}: '{required}' is required", param=required)
        given: dict[str, Any] = dict(table)
        for key in ("issuer", "jwks", "principal_claim", "tenant"):
            if key in given and not _text(given[key]):
                raise ConfigError(f"{where}: '{key}' must be a non-empty string", param=key)
        check_location(given["jwks"], where)
        audience = [given["audience"]] if isinstance(given["audience"], str) else given["audience"]
        if not isinstance(audience, list) or not audience or not all(_text(a) for a in audience):
            raise ConfigError(f"{where}: 'audience' must be a string or a list of strings", param="audience")
        given["audience"] = tuple(audience)
        if "tenant" in given:
            given["tenant"] = given["tenant"].strip()
            if len(given["tenant"]) > MAX_NAME_CHARS:
                raise ConfigError(f"{where}: 'tenant' is longer than {MAX_NAME_CHARS} characters")
        if "groups_claim" in given:
            if not isinstance(given["groups_claim"], str):
                raise ConfigError(f"{where}: 'groups_claim' must be a claim name ('' for none)")
            given["groups_claim"] = given["groups_claim"] or None
        if "algorithms" in given:
            algorithms = given["algorithms"]
            accepted = ALGORITHMS + HMAC_ALGORITHMS
            if (
                not isinstance(algorithms, list)
                or not algorithms
                or not all(a in accepted for a in algorithms)
            ):
                raise ConfigError(
                    f"{where}: 'algorithms' must be a list of {', '.join(accepted)} ('none' never is)",
                    param="algorithms",
                )
            given["algorithms"] = tuple(algorithms)
        if "leeway" in given:
            leeway = given["leeway"]
            if isinstance(leeway, bool) or not isinstance(leeway, int | float) or not 0 <= leeway <= 600:
                raise ConfigError(f"{where}: 'leeway' must be a number of seconds from 0 to 600")
            given["leeway"] = float(leeway)
        if "role" in given and given["role"] not in ROLES:
            raise ConfigError(f"{where}: 'role' must be one of {', '.join(ROLES)}", param="role")
        return cls(name=name, **given)


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def issuers_from_config(table: object) -> tuple[OIDCIssuer, ...]:
    """The issuers of the configuration's `[auth]` table (`[auth.oidc.NAME]` tables); none without it."""
    if table is None:
        return ()
    if not isinstance(table, Mapping) or set(table) - {"oidc"}:
        raise ConfigError("[auth] takes one key, 'oidc': a table of tables, one per OIDC issuer")
    oidc = table.get("oidc", {})
    if not isinstance(oidc, Mapping):
        raise ConfigError("[auth.oidc] must be a table of tables, one per issuer")
    issuers = tuple(OIDCIssuer.from_config(name, t) for name, t in oidc.items())
    seen: dict[str, str] = {}
    for issuer in issuers:
        if issuer.issuer in seen:
            raise ConfigError(
                f"[auth.oidc.{issuer.name}]: issuer {issuer.issuer!r} is configured already, "
                f"as [auth.oidc.{seen[issuer.issuer]}]"
            )
        seen[issuer.issuer] = issuer.name
    return issuers


class TokenRejected(Exception):
    """A token SRE refuses: `reason` for the audit, `message` for the caller, and the configured
    issuer it claimed to come from (None: no configured one, and `presented` is its `iss`)."""

    def __init__(
        self, reason: str, message: str, issuer: OIDCIssuer | None = None, presented: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.issuer = issuer
        self.presented = presented


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    """Who a verified token says the caller is."""

    issuer: OIDCIssuer
    principal: str
    groups: tuple[str, ...]


def looks_like_jwt(secret: str) -> bool:
    """Three dot-separated segments: a compact JWS (SRE's own keys have no dots)."""
    return secret.count(".") == 2


_REFUSALS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (  # the most specific first
    (jwt.ExpiredSignatureError, "expired", "The token has expired."),
    (jwt.ImmatureSignatureError, "not_yet_valid", "The token is not valid yet."),
    (jwt.InvalidAudienceError, "wrong_audience", "The token is not meant for this server (audience)."),
    (jwt.InvalidIssuerError, "wrong_issuer", "The token's issuer does not match."),
    (jwt.MissingRequiredClaimError, "missing_claim", "The token lacks a required claim."),
    (jwt.InvalidSignatureError, "bad_signature", "The token's signature does not verify."),
    (jwt.InvalidAlgorithmError, "algorithm_not_allowed", "The token's algorithm is not accepted."),
    (jwt.DecodeError, "malformed", "The token is not a well-formed JWT."),
    (jwt.PyJWTError, "invalid_token", "The token is not valid."),
)


class TokenVerifier:
    """Checks tokens against the configured issuers; safe to call from many threads."""

    def __init__(self, issuers: Sequence[OIDCIssuer], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.issuers = {issuer.issuer: issuer for issuer in issuers}
        self._keys: dict[str, KeySet] = {}
        for issuer in issuers:
            try:
                self._keys[issuer.issuer] = KeySet(issuer.jwks, clock=clock)
            except ConfigError as exc:
                raise ConfigError(f"[auth.oidc.{issuer.name}]: {exc.message}", param="jwks") from None

    def verify(self, token: str) -> TokenIdentity:
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenRejected("too_large", f"The token is longer than {MAX_TOKEN_CHARS} characters.")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError):
            raise TokenRejected("malformed", "The token is not a well-formed JWT.") from None
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise TokenRejected("unknown_issuer", "The token names no issuer.")
        issuer = self.issuers.get(iss)
        if issuer is None:  # echo a little of it: enough to recognise, not a channel for anything
            raise TokenRejected(
                "unknown_issuer",
                f"The token's issuer {iss[:100]!r} is not configured on this server.",
                presented=iss[:200],
            )
        try:
            claims = self._checked(issuer, token, header)
            return TokenIdentity(issuer, _principal(issuer, claims), _groups(issuer, claims))
        except TokenRejected as exc:
            exc.issuer = issuer
            raise

    def _checked(self, issuer: OIDCIssuer, token: str, header: dict[str, Any]) -> dict[str, Any]:
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in issuer.algorithms:
            raise TokenRejected("algorithm_not_allowed", "The token's algorithm is not accepted.")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed", "The token's key id is not a string.")
        try:
            key = self._keys[issuer.issuer].key(kid, alg)
        except KeyNotFound as exc:
            raise TokenRejected(exc.reason, exc.message) from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,  # bound to `alg` and of its type (jwks.KeySet.key)
                algorithms=[alg],
                audience=list(issuer.audience),
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            reason, message = next((r, m) for kind, r, m in _REFUSALS if isinstance(exc, kind))
            raise TokenRejected(reason, message) from None
        return claims


# The principals SRE itself acts as (the embedded setup's user, the CLI's): no token may name them.
RESERVED_PRINCIPALS = ("local", "cli")


def _principal(issuer: OIDCIssuer, claims: dict[str, Any]) -> str:
    value = claims.get(issuer.principal_claim)
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > MAX_NAME_CHARS:
        raise TokenRejected(
            "missing_claim",
            f"The token's '{issuer.principal_claim}' claim must name the principal "
            f"(a string of 1 to {MAX_NAME_CHARS} characters).",
        )
    if value.strip() in RESERVED_PRINCIPALS:
        raise TokenRejected(
            "reserved_principal", f"A token may not name the built-in principal '{value.strip()}'."
        )
    return value.strip()


def _groups(issuer: OIDCIssuer, claims: dict[str, Any]) -> tuple[str, ...]:
    if issuer.groups_claim is None or claims.get(issuer.groups_claim) is None:
        return ()
    value = claims[issuer.groups_claim]
    if (
        not isinstance(value, list)
        or len(value) > MAX_GROUPS
        or not all(isinstance(g, str) and 0 < len(g) <= MAX_NAME_CHARS for g in value)
    ):
        raise TokenRejected(
            "invalid_groups",
            f"The token's '{issuer.groups_claim}' claim must be a list of at most {MAX_GROUPS} "
            f"group names of 1 to {MAX_NAME_CHARS} characters.",
        )
    return tuple(dict.fromkeys(value))
