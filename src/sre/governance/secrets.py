"""Secrets: a tenant's provider API keys and connectors' credentials, encrypted at rest.

`Secrets` is what the runtime and, later, the connectors use: it encrypts a value before the store
sees it (`sre.governance.secret_keys`), lists and shows secrets without their values, and gives a
value back only to `reveal`, a Python call that no route exposes. It rotates the key: every secret
of every tenant not encrypted with the newest key is re-encrypted, a batch per transaction. Values
this process has handled are remembered (a bounded set) so that `redact` can blank them out of any
text, and `install_log_redaction` makes every log record of the process go through it. Without
`SRE_SECRET_KEY`, the embedded store makes its own key file; PostgreSQL refuses to store secrets
(400 `secrets_unavailable`) but runs everything else.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sre.governance.secret_keys import KEY_ENV, SecretKeys, key_file, parse_keys
from sre.store import Store
from sre.types.errors import InvalidRequest, SREError
from sre.types.ids import new_id
from sre.types.secrets import SecretRecord

REDACTED = "[redacted]"
MIN_REDACTED = 4  # shorter values are not blanked out of text: they would blank out ordinary words
_REMEMBERED = 4096
_known: dict[str, None] = {}  # values this process has handled, oldest first
_known_lock = threading.Lock()
_installed = False


def remember(value: str) -> None:
    """Blank `value` out of whatever `redact` sees from now on."""
    if len(value) < MIN_REDACTED:
        return
    with _known_lock:
        _known.pop(value, None)
        _known[value] = None
        while len(_known) > _REMEMBERED:
            del _known[next(iter(_known))]


def redact(text: str) -> str:
    """`text` with every secret value this process has handled replaced by `[redacted]`."""
    if not _known:
        return text
    with _known_lock:
        values = sorted(_known, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _redact_record(record: logging.LogRecord) -> None:
    if not _known:
        return
    message = record.getMessage()
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact(text)  # what formatters print instead of formatting it again


def install_log_redaction() -> None:
    """Make every log record of this process pass through `redact` (the server and worker
    commands call it; a library user decides for their own process)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


@dataclass(frozen=True)
class Rekeyed:
    """What a rotation did: the newest key's id, how many secrets it re-encrypted by tenant name,
    and a line for each secret it had to leave as it was (no key here decrypts it)."""

    key_id: str
    by_tenant: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def secrets(self) -> int:
        return sum(self.by_tenant.values())


class Secrets:
    """Encrypted secrets over the store; `keys` is `SRE_SECRET_KEY`'s text (checked now), and
    `generated_key` the file that holds the embedded store's own key when it is unset."""

    def __init__(self, store: Store, *, keys: str | None = None, generated_key: Path | None = None) -> None:
        self.store = store
        self._configured = parse_keys(keys) if keys else None
        self._file = generated_key
        self._from_file: SecretKeys | None = None
        self._lock = threading.Lock()

    def keys(self, *, create: bool = False) -> SecretKeys:
        """The keys in use; on the embedded store without `SRE_SECRET_KEY`, its key file (made now
        if `create`). `InvalidRequest` (`secrets_unavailable`) where there are none."""
        if self._configured is not None:
            return self._configured
        if self._file is not None:
            with self._lock:
                if self._from_file is None:
                    self._from_file = key_file(self._file, create=create)
            if self._from_file is not None:
                return self._from_file
            raise InvalidRequest(
                f"No secret key: {KEY_ENV} is unset and the embedded store's key file {self._file} "
                "does not exist (it is made when the first secret is stored).",
                code="secrets_unavailable",
            )
        raise InvalidRequest(
            f"Secrets are unavailable: set {KEY_ENV} (one or more Fernet keys, newest first) on "
            "every SRE process to store and read them.",
            code="secrets_unavailable",
        )

    def listing(
        self, tenant_id: str, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[SecretRecord], bool]:
        return self.store.secrets.listing(tenant_id, after=after, limit=limit)

    def get(self, tenant_id: str, ref: str) -> SecretRecord:
        return self.store.secrets.get(tenant_id, ref)

    def create(
        self, tenant_id: str, name: str, value: str, *, description: str = "", actor: str | None = None
    ) -> SecretRecord:
        keys = self.keys(create=True)
        remember(value)
        now = int(time.time())
        record = SecretRecord(tenant_id, new_id("sec"), name, description, now, now, actor)
        ciphertext, key_id = keys.seal(tenant_id, record.id, value)
        return self.store.secrets.create(record, ciphertext, key_id, actor=actor)

    def update(
        self,
        tenant_id: str,
        ref: str,
        value: str,
        *,
        description: str | None = None,
        actor: str | None = None,
    ) -> SecretRecord:
        keys = self.keys(create=True)
        remember(value)
        found = self.store.secrets.get(tenant_id, ref)
        ciphertext, key_id = keys.seal(tenant_id, found.id, value)
        return self.store.secrets.replace(
            tenant_id, found.id, ciphertext, key_id, description=description, actor=actor
        )

    def delete(self, tenant_id: str, ref: str, *, actor: str | None = None) -> SecretRecord:
        return self.store.secrets.delete(tenant_id, ref, actor=actor)

    def reveal(self, tenant_id: str, ref: str) -> str:
        """The value of the secret `ref` (a name or id) of the tenant: for connectors and model
        providers inside SRE, never for a route."""
        sealed = self.store.secrets.sealed(tenant_id, ref)
        value = self.keys().unseal(sealed.record, sealed.ciphertext, sealed.key_id)
        remember(value)
        return value

    def rotate(self, *, batch_size: int = 100) -> Rekeyed:
        """Re-encrypt every secret that the newest key did not encrypt, tenant by tenant, a batch
        per transaction: safe to stop and run again; a run with nothing to do changes nothing. A
        secret no key decrypts is left as it was and reported, and the others are still done."""
        if not 1 <= batch_size <= 10_000:
            raise InvalidRequest("the batch size must be between 1 and 10000", param="batch_size")
        keys = self.keys()
        done = Rekeyed(keys.current)
        tenants = self.store.secrets.tenants_to_rekey(keys.current)
        names = self.store.keys.tenant_names() if tenants else {}
        for tenant_id in tenants:
            name = names.get(tenant_id, tenant_id)
            reseal = partial(_reseal, keys, name, done.failures)
            after: str | None = None
            while True:
                count, seen, after = self.store.secrets.rekey_batch(
                    tenant_id, keys.current, reseal, after=after, limit=batch_size
                )
                if count:
                    done.by_tenant[name] = done.by_tenant.get(name, 0) + count
                if seen < batch_size:
                    break
        return done


def _reseal(
    keys: SecretKeys, tenant: str, failures: list[str], record: SecretRecord, ciphertext: str, key_id: str
) -> str | None:
    try:
        return keys.reseal(record, ciphertext, key_id)
    except SREError as exc:
        failures.append(f"tenant '{tenant}': {exc.message}")
        return None
