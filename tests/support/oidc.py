"""A stand-in identity provider for tests: keys it generates itself, a JWKS for them (written to a
file or served on loopback), and tokens it signs. Nothing reaches the network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://idp.example.test/realms/corp"
AUDIENCE = "sre-api"

# Generating an RSA key takes a while: one set for the whole test run.
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_NEXT = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class IdentityProvider:
    """Signs tokens for `issuer` with an RSA key (kid "rsa-1") and an EC key (kid "ec-1")."""

    def __init__(self, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.keys: dict[str, Any] = {"rsa-1": _RSA, "ec-1": _EC}

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys.items():
            algorithm = jwt.algorithms.RSAAlgorithm if kid.startswith("rsa") else jwt.algorithms.ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def rotate(self) -> None:
        """Publish a new RSA key, "rsa-2", beside the others."""
        self.keys["rsa-2"] = _RSA_NEXT

    def claims(self, subject: str | None = "alice", **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "iat": now, "exp": now + 600}
        if subject is not None:
            claims["sub"] = subject
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self, subject: str | None = "alice", *, kid: str = "rsa-1", key: Any = None, **claims: Any
    ) -> str:
        """A token for `subject` (extra claims as keywords; a claim given as None is left out),
        signed with the key `kid` names (or `key`, under that kid)."""
        signer = key if key is not None else self.keys[kid]
        alg = "ES256" if isinstance(signer, ec.EllipticCurvePrivateKey) else "RS256"
        return jwt.encode(self.claims(subject, **claims), signer, algorithm=alg, headers={"kid": kid})

    def forged_with_other_key(self, subject: str = "alice") -> str:
        """Signed by a key that is not the issuer's, under the issuer's kid."""
        return self.token(subject, key=_RSA_OTHER)

    def unsigned(self, subject: str = "alice") -> str:
        """`alg: none`, no signature."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa-1"}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(subject)).encode())}."

    def hmac_with_public_key(self, subject: str = "alice") -> str:
        """HS256 with the issuer's public key (PEM) as the secret: the algorithm-confusion attack."""
        secret = _RSA.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
        payload = _b64(json.dumps(self.claims(subject)).encode())
        signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"


def oidc_config(provider: IdentityProvider, jwks: str, tenant: str, name: str = "corp", **more: Any) -> str:
    """An `[auth.oidc.NAME]` table for `provider`."""
    lines = [
        f"[auth.oidc.{name}]",
        f"issuer = {json.dumps(provider.issuer)}",
        f"audience = {json.dumps(provider.audience)}",
        f"jwks = {json.dumps(jwks)}",
        f"tenant = {json.dumps(tenant)}",
        *(f"{key} = {json.dumps(value)}" for key, value in more.items()),
    ]
    return "\n".join(lines) + "\n"


def unique_tenant(prefix: str = "sso") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class JWKSServer:
    """Serves a provider's current JWKS on loopback and counts the fetches (`status` to fail them)."""

    def __init__(self, provider: IdentityProvider) -> None:
        self.provider = provider
        self.fetches = 0
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.provider.jwks()).encode()
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def start(self) -> Self:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
