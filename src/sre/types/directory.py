"""The request bodies of the directory routes (principals, groups, API keys) and the objects they
answer with, shared by the HTTP API and the Python API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sre.types.records import ApiKey, Grants, Group, Principal

_STRICT = ConfigDict(extra="forbid", strict=True)
Name = Annotated[str, Field(min_length=1, max_length=200)]
Ref = Annotated[str, Field(min_length=1, max_length=200)]  # an id or a name
Role = Literal["admin", "developer", "member", "auditor"]
MAX_KEY_LIFETIME = 10 * 366 * 86400  # ten years
MAX_GRACE = 7 * 86400


class GrantsBody(BaseModel):
    """What runs acting for a principal may use (null: anything)."""

    model_config = _STRICT
    tools: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=256)] | None
    ) = None
    models: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=256)] | None
    ) = None

    def grants(self) -> Grants:
        return Grants(
            tools=None if self.tools is None else tuple(dict.fromkeys(self.tools)),
            models=None if self.models is None else tuple(dict.fromkeys(self.models)),
        )


class CreatePrincipal(BaseModel):
    model_config = _STRICT
    name: Name
    kind: Literal["user", "service", "agent"] = "user"
    role: Role = "member"
    grants: GrantsBody | None = None


class UpdatePrincipal(BaseModel):
    model_config = _STRICT
    role: Role | None = None
    grants: GrantsBody | None = None
    disabled: bool | None = None


class CreateGroup(BaseModel):
    model_config = _STRICT
    name: Name
    members: Annotated[list[Ref], Field(max_length=100)] = Field(default_factory=list)


class AddMember(BaseModel):
    model_config = _STRICT
    member: Ref


class CreateKey(BaseModel):
    model_config = _STRICT
    name: Name = "default"
    principal: Ref | None = None  # another principal's (admins); the caller's own by default
    scopes: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=32)]], Field(max_length=32)] | None
    ) = None
    expires_in: Annotated[int, Field(ge=1, le=MAX_KEY_LIFETIME)] | None = None


class RotateKey(BaseModel):
    model_config = _STRICT
    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE)] = 0


def principal_object(p: Principal) -> dict[str, Any]:
    return {
        "object": "principal",
        "id": p.id,
        "name": p.name,
        "kind": p.kind,
        "role": p.role,
        "grants": p.grants.as_dict(),
        "created_at": p.created_at,
        "disabled_at": p.disabled_at,
    }


def group_object(g: Group) -> dict[str, Any]:
    return {
        "object": "group",
        "id": g.id,
        "name": g.name,
        "members": list(g.members),
        "created_at": g.created_at,
    }


def key_object(k: ApiKey, secret: str | None = None) -> dict[str, Any]:
    out = {
        "object": "api_key",
        "id": k.id,
        "name": k.name,
        "principal_id": k.principal_id,
        "prefix": k.prefix,
        "scopes": None if k.scopes is None else list(k.scopes),
        "created_at": k.created_at,
        "expires_at": k.expires_at,
        "revoked_at": k.revoked_at,
        "rotated_from": k.rotated_from,
    }
    if secret is not None:
        out["secret"] = secret  # shown once, when the key is made
    return out
