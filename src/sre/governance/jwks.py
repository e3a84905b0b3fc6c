"""An OIDC issuer's signing keys: a JWKS document read from a file or fetched from a URL.

A file is read when the runtime starts (a missing or unusable one is a `ConfigError`) and read again
when its modification time or size changes. A URL is fetched on the first token, with a timeout and
a size limit, kept for `CACHE_SECONDS`, and fetched again sooner only when a token names a key id
the cached document lacks (the issuer rotated its keys) — at most once per `REFETCH_SECONDS`, so
tokens with made-up key ids cannot make SRE hammer the issuer. A failed fetch keeps the keys already
known. This module only finds keys; it checks no token and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from sre.types.errors import ConfigError

log = logging.getLogger("sre.governance.oidc")

CACHE_SECONDS = 600.0
REFETCH_SECONDS = 60.0
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class KeyNotFound(Exception):
    """No usable key for a token: `reason` is recorded in the audit, `message` goes to the caller."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def check_location(location: str, where: str) -> None:
    """A JWKS URL is https (plain http only on loopback, where nothing can alter it in transit)."""
    if not is_url(location):
        return
    parts = urlsplit(location)
    if not parts.hostname:
        raise ConfigError(f"{where}: 'jwks' is not a valid URL", param="jwks")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ConfigError(f"{where}: a 'jwks' URL must be https:// (http:// only on loopback)", param="jwks")


def parse_jwks(data: bytes) -> list[dict[str, Any]]:
    """The signing keys of a JWKS document (keys for encryption or of unsupported types are skipped);
    `ValueError` when it has none."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document (an object with a 'keys' list)")
    usable = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        if "kid" in jwk and not isinstance(jwk["kid"], str):
            continue
        try:
            jwt.PyJWK(jwk)
        except jwt.PyJWTError:
            continue
        usable.append(jwk)
    if not usable:
        raise ValueError("no usable signing key in the JWKS document")
    return usable


class KeySet:
    """The keys of one issuer; `key(kid, alg)` is safe to call from many threads."""

    def __init__(self, location: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.location = location
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[dict[str, Any]] = []
        self._prepared: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._stamp: tuple[int, int] | None = None  # the file's (mtime_ns, size) when read
        self._fetched_at = -float("inf")
        self._tried_at = -float("inf")
        if not is_url(location):
            try:
                self._read_file()
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the JWKS file {location!r}: {exc}", param="jwks") from None

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key a token signed with `alg` names by `kid` (or the only key, when it names none)."""
        with self._lock:
            self._refresh()
            jwk = self._find(kid)
            if jwk is None and kid is not None and is_url(self.location) and self._may_fetch():
                self._fetch()
                jwk = self._find(kid)
            if jwk is None:
                if not self._keys:
                    raise KeyNotFound("jwks_unavailable", "The token issuer's signing keys are unavailable.")
                raise KeyNotFound(
                    "unknown_kid", "The token is signed with a key its issuer does not publish."
                )
            prepared = self._prepared.get((kid, alg))
            if prepared is None:
                prepared = self._prepare(jwk, alg)
                self._prepared[(kid, alg)] = prepared
            return prepared

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return next((jwk for jwk in self._keys if jwk.get("kid") == kid), None)

    @staticmethod
    def _prepare(jwk: dict[str, Any], alg: str) -> jwt.PyJWK:
        # A key that declares its algorithm is used with that one only; otherwise with the token's
        # (already one the issuer allows), provided the key is of its type: an RSA key never becomes
        # an HMAC secret.
        if jwk.get("alg", alg) != alg:
            raise KeyNotFound("algorithm_mismatch", "The token's algorithm does not match its key.")
        try:
            return jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError:
            raise KeyNotFound("algorithm_mismatch", "The token's algorithm does not match its key.") from None

    def _refresh(self) -> None:
        if not is_url(self.location):
            try:
                stat = os.stat(self.location)
                if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._read_file()
            except (OSError, ValueError) as exc:  # mid-rewrite, say: keep the keys read before
                log.warning("could not re-read the JWKS file %s: %s", self.location, exc)
            return
        stale = self._clock() - self._fetched_at >= CACHE_SECONDS
        if (stale or not self._keys) and self._may_fetch():
            self._fetch()

    def _read_file(self) -> None:
        with open(self.location, "rb") as f:
            stat = os.fstat(f.fileno())
            data = f.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
        self._keys = parse_jwks(data)
        self._prepared.clear()
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def _may_fetch(self) -> bool:
        return self._clock() - self._tried_at >= REFETCH_SECONDS

    def _fetch(self) -> None:
        self._tried_at = self._clock()
        try:
            with (
                httpx.Client(timeout=FETCH_TIMEOUT) as client,
                client.stream("GET", self.location, headers={"accept": "application/json"}) as response,
            ):
                response.raise_for_status()
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_JWKS_BYTES:
                        raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
            keys = parse_jwks(data)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not fetch the JWKS %s: %s", self.location, exc)
            return
        self._keys = keys
        self._prepared.clear()
        self._fetched_at = self._tried_at
