"""The keys secrets are encrypted with, and the encryption itself (`cryptography`'s Fernet).

`SRE_SECRET_KEY` holds one or more Fernet keys (URL-safe base64 of 32 bytes), comma-separated,
newest first: a secret is encrypted with the newest and decrypted with the key that encrypted it,
found by its fingerprint (`key_id`, stored beside the ciphertext), so keeping an old key in the list
keeps its secrets readable until a rotation re-encrypts them. Without the variable, the embedded
store generates one key on first use into `secret.key` beside its database (mode 0600). What is
encrypted is an envelope naming the secret's tenant and id with the value, so a ciphertext copied
into another row or tenant does not decrypt there. No key, and no value, is ever put into a message
or a log; a fingerprint (a hash of a key) is what messages name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from sre.types.errors import ConfigError, SREError
from sre.types.secrets import SecretRecord

KEY_ENV = "SRE_SECRET_KEY"
KEY_FILE = "secret.key"
ENVELOPE_VERSION = 1

log = logging.getLogger("sre.governance.secrets")


def fingerprint(key: bytes) -> str:
    """A key's public name: 16 hex digits of a hash of it (it reveals nothing of the key)."""
    return hashlib.sha256(b"sre-secret-key\x00" + key).hexdigest()[:16]


def generate_key() -> str:
    """A fresh key, for `SRE_SECRET_KEY`."""
    return Fernet.generate_key().decode()


class SecretKeys:
    """The keys in use, newest first; `origin` says where they came from (for messages)."""

    def __init__(self, keys: Sequence[bytes], origin: str) -> None:
        self._fernets = {fingerprint(k): Fernet(k) for k in keys}
        self.ids = tuple(self._fernets)
        self.origin = origin
        if not self.ids:
            raise ConfigError(f"{origin} holds no key")

    def __repr__(self) -> str:  # never the keys themselves
        return f"SecretKeys({', '.join(self.ids)} from {self.origin})"

    @property
    def current(self) -> str:
        """The fingerprint of the key new ciphertexts are made with."""
        return self.ids[0]

    def seal(self, tenant_id: str, secret_id: str, value: str) -> tuple[str, str]:
        """The ciphertext of `value` for the secret `secret_id` of `tenant_id`, and its key's id."""
        envelope = {"v": ENVELOPE_VERSION, "tenant": tenant_id, "secret": secret_id, "value": value}
        token = self._fernets[self.current].encrypt(json.dumps(envelope).encode())
        return token.decode(), self.current

    def unseal(self, record: SecretRecord, ciphertext: str, key_id: str) -> str:
        """The value of `record` (`ConfigError` naming the secret, never a traceback, when no key
        here opens it)."""
        fernet = self._fernets.get(key_id)
        what = f"secret '{record.name}' ({record.id})"
        if fernet is None:
            raise ConfigError(
                f"{what} was encrypted with key {key_id}, which is not in {self.origin} "
                f"(it holds {', '.join(self.ids)}): add that key back, after the newest."
            )
        try:
            envelope = json.loads(fernet.decrypt(ciphertext.encode()))
        except (InvalidToken, ValueError):
            raise SREError(f"{what} does not decrypt with key {key_id}: its ciphertext is damaged.") from None
        if (
            not isinstance(envelope, dict)
            or envelope.get("v") != ENVELOPE_VERSION
            or (envelope.get("tenant"), envelope.get("secret")) != (record.tenant_id, record.id)
            or not isinstance(envelope.get("value"), str)
        ):
            raise SREError(f"{what} holds a ciphertext that belongs to another secret.")
        return str(envelope["value"])

    def reseal(self, record: SecretRecord, ciphertext: str, key_id: str) -> str:
        """The ciphertext of the same secret made with the newest key."""
        return self.seal(record.tenant_id, record.id, self.unseal(record, ciphertext, key_id))[0]


def parse_keys(text: str, origin: str = KEY_ENV) -> SecretKeys:
    """Keys from `text` (comma-separated, newest first); `ConfigError` naming which one is wrong."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(
            f"{origin} is set but holds no key: make one with `sre admin rotate-secret-key --generate`"
        )
    keys: list[bytes] = []
    for n, part in enumerate(parts, 1):
        try:
            Fernet(part.encode())
        except ValueError:
            raise ConfigError(
                f"{origin}: key {n} of {len(parts)} is not a Fernet key (URL-safe base64 of 32 bytes); "
                "make one with `sre admin rotate-secret-key --generate`"
            ) from None
        keys.append(part.encode())
    return SecretKeys(list(dict.fromkeys(keys)), origin)


def key_file(path: Path, *, create: bool) -> SecretKeys | None:
    """The key in `path`; when it does not exist, a new one written there (mode 0600) if `create`,
    else None. Two processes creating it at once end up with the same key."""
    if not path.exists():
        if not create:
            return None
        _create_key_file(path)
    elif path.stat().st_mode & 0o077:
        log.warning("the secret key file %s is readable by others: chmod 600 it", path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret key file {path}: {exc.strerror}") from None
    return parse_keys(text, origin=str(path))


def _create_key_file(path: Path) -> None:
    # Written whole under a temporary name, then linked into place: a reader never sees half a key,
    # and of two processes racing, the second finds the first one's file and uses it.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generate_key() + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
            log.warning("generated a secret key for the embedded store in %s: back it up", path)
    except OSError as exc:
        raise ConfigError(f"cannot write the secret key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
