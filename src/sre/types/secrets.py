"""Secrets' shapes: the stored record, the request bodies of `/v1/secrets` and the object they answer
with, shared by the HTTP API and the Python API.

A secret's value is write-only: it is in a request body and nowhere else of these shapes, and a
body that fails validation never repeats it (the messages name fields and limits, not inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sre.types.errors import InvalidField

MAX_SECRET_BYTES = 64 * 1024  # a value, UTF-8 encoded
SECRET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"

_STRICT = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)
SecretName = Annotated[str, Field(min_length=1, max_length=128, pattern=SECRET_NAME_PATTERN)]
Description = Annotated[str, Field(max_length=1000)]


def _value(value: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SECRET_BYTES:
        raise InvalidField(
            f"Invalid value for 'value': a secret is at most {MAX_SECRET_BYTES} bytes (UTF-8).",
            param="value",
            code="invalid_value",
        )
    return value


# Characters first (cheap), then bytes (`_value`): a value of 64 Ki characters may be more bytes.
Value = Annotated[str, Field(min_length=1, max_length=MAX_SECRET_BYTES), AfterValidator(_value)]


@dataclass(frozen=True, slots=True)
class SecretRecord:
    """A secret as the store keeps it, less its ciphertext."""

    tenant_id: str
    id: str
    name: str
    description: str
    created_at: int
    updated_at: int
    created_by: str | None  # the principal that created it (None: the system)


class CreateSecret(BaseModel):
    model_config = _STRICT
    name: SecretName
    value: Value
    description: Description = ""


class UpdateSecret(BaseModel):
    """A new value (and optionally a new description) for an existing secret."""

    model_config = _STRICT
    value: Value
    description: Description | None = None


def secret_object(s: SecretRecord) -> dict[str, Any]:
    return {
        "id": s.id,
        "object": "secret",
        "name": s.name,
        "description": s.description,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "created_by": s.created_by,
    }
