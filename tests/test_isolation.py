"""Isolation: every route of the API, probed with keys that must not reach Alice's resources.

The probes are generated from the application's route table: a route that is not described in
`ROUTES` below fails `test_every_route_is_probed`, so a new route cannot ship unprobed. Alice (a
member of tenant A) owns a conversation with items, a stored response, a background response paused
on an approval, and an agent; tenant A has a secret. Each route is called, with its path filled with
Alice's ids and a body that would be valid for her, by:

  * Bob, another member of tenant A: Alice's conversations, responses, approvals and keys are not
    found (404, as another tenant's would be), listings do not show them, and the directory's and
    the agents' changes are refused for want of the right (403);
  * Bob again, signed in with a token of the OIDC issuer whose users are tenant A's ("sso-bob");
  * Carol, an admin of tenant B: everything of tenant A is not found (404, never 403);
  * a revoked key of Alice's, an expired one, and a key that does not exist: 401 on every route;
  * a token from an issuer that is not configured, and a token naming Alice from the configured
    issuer but signed by another key: 401 on every route.

Whatever the status, no response body carries one of Alice's ids that the probe did not send itself,
nor the secret's value, and afterwards all of Alice's resources (and the secret) are as they were.
On both stores.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from sre import Runtime
from sre.api import create_app
from sre.governance.secret_keys import generate_key
from sre.models import ModelRequest
from sre.testing import FunctionModel, ScriptedToolCall
from sre.tools import ToolRegistry
from sre.types.items import FunctionCallOutput
from tests.support.asgi import asgi_client
from tests.support.oidc import IdentityProvider, oidc_config

# How each route is probed: (method, path) -> (kind, body). `kind` says whose the route's resource is:
#   "private": Alice's own (conversations, responses, approvals): others get 404;
#   "tenant": shared within tenant A (agents): Bob may use it, Carol gets 404;
#   "own": the caller's own collection or a new resource of the caller (lists, creates): any status,
#          but no body shows Alice's ids;
#   "directory": tenant A's principals, groups and secrets: Bob (a member) lacks the right (403),
#                Carol gets 404;
#   "public": no tenant data at all (health).
# Bodies use {conv}, {resp}, {bg}, {item}, {apr}, {agent}: Alice's ids.
ROUTES: dict[tuple[str, str], tuple[str, dict[str, Any] | None]] = {
    ("GET", "/healthz"): ("public", None),
    ("GET", "/readyz"): ("public", None),
    ("GET", "/v1/models"): ("own", None),
    ("POST", "/v1/responses"): ("private", {"model": "m", "input": "hi", "conversation": "{conv}"}),
    ("POST", "/v1/responses/compact"): ("private", {"model": "m", "previous_response_id": "{resp}"}),
    ("POST", "/v1/responses/input_tokens"): (
        "private",
        {"model": "m", "input": "x", "conversation": "{conv}"},
    ),
    ("POST", "/v1/embeddings"): ("own", {"input": "hello"}),
    ("GET", "/v1/usage"): ("own", None),
    ("GET", "/v1/responses/{response_id}"): ("private", None),
    ("POST", "/v1/responses/{response_id}/cancel"): ("private", None),
    ("DELETE", "/v1/responses/{response_id}"): ("private", None),
    ("GET", "/v1/responses/{response_id}/input_items"): ("private", None),
    ("POST", "/v1/conversations"): ("own", {"items": [{"role": "user", "content": "mine"}]}),
    ("GET", "/v1/conversations/{conversation_id}"): ("private", None),
    ("POST", "/v1/conversations/{conversation_id}"): ("private", {"metadata": {"k": "v"}}),
    ("DELETE", "/v1/conversations/{conversation_id}"): ("private", None),
    ("POST", "/v1/conversations/{conversation_id}/fork"): ("private", {}),
    ("POST", "/v1/conversations/{conversation_id}/items"): (
        "private",
        {"items": [{"role": "user", "content": "injected"}]},
    ),
    ("GET", "/v1/conversations/{conversation_id}/items"): ("private", None),
    ("GET", "/v1/conversations/{conversation_id}/items/{item_id}"): ("private", None),
    ("DELETE", "/v1/conversations/{conversation_id}/items/{item_id}"): ("private", None),
    ("POST", "/v1/agents"): ("own", {"name": "probe-{nonce}", "model": "m"}),
    ("GET", "/v1/agents"): ("own", None),
    ("GET", "/v1/agents/{name}"): ("tenant", None),
    ("POST", "/v1/agents/{name}"): ("tenant", {"instructions": "changed"}),
    ("DELETE", "/v1/agents/{name}"): ("tenant", None),
    ("GET", "/v1/agents/{name}/versions"): ("tenant", None),
    ("GET", "/v1/approvals"): ("own", None),
    ("GET", "/v1/audit"): ("own", None),
    ("GET", "/v1/approvals/{approval_id}"): ("private", None),
    ("POST", "/v1/approvals/{approval_id}/approve"): ("private", {}),
    ("POST", "/v1/approvals/{approval_id}/deny"): ("private", {}),
    ("GET", "/v1/principals"): ("own", None),
    ("POST", "/v1/principals"): ("own", {"name": "probe-{nonce}"}),
    ("GET", "/v1/principals/{principal}"): ("directory", None),
    ("POST", "/v1/principals/{principal}"): ("directory", {"role": "admin"}),
    ("GET", "/v1/groups"): ("own", None),
    ("POST", "/v1/groups"): ("own", {"name": "probe-{nonce}", "members": ["{alice}"]}),
    ("GET", "/v1/groups/{group}"): ("directory", None),
    ("DELETE", "/v1/groups/{group}"): ("directory", None),
    ("POST", "/v1/groups/{group}/members"): ("directory", {"member": "{alice}"}),
    ("DELETE", "/v1/groups/{group}/members/{member_id}"): ("directory", None),
    ("GET", "/v1/keys"): ("own", None),
    ("POST", "/v1/keys"): ("own", {"principal": "{alice}"}),
    ("GET", "/v1/keys/{key_id}"): ("private", None),
    ("DELETE", "/v1/keys/{key_id}"): ("private", None),
    ("POST", "/v1/keys/{key_id}/rotate"): ("private", {}),
    ("GET", "/v1/quotas"): ("own", None),
    ("POST", "/v1/quotas"): ("own", {"subject": "principal", "id": "{alice}", "requests_per_minute": 0}),
    ("DELETE", "/v1/quotas"): ("own", None),
    ("GET", "/v1/secrets"): ("own", None),
    ("POST", "/v1/secrets"): ("own", {"name": "probe-{nonce}", "value": "probe value {nonce}"}),
    ("GET", "/v1/secrets/{secret}"): ("directory", None),
    ("POST", "/v1/secrets/{secret}"): ("directory", {"value": "overwritten"}),
    ("DELETE", "/v1/secrets/{secret}"): ("directory", None),
}
SECRET_VALUE = "tenant-a-db-password-3f9c"  # in no answer to anyone, ever
# Extra probes of routes whose query changes what they do.
VARIANTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/v1/responses/{response_id}", {"stream": "true"}),  # a background run's event stream
    ("GET", "/v1/responses/{response_id}", {"include[]": "context_manifest"}),
    ("GET", "/v1/approvals", {"response_id": "{bg}"}),
    ("GET", "/v1/audit", {"resource_id": "{conv}"}),
    ("GET", "/v1/quotas", {"subject": "principal", "id": "{alice}"}),  # an admin's look at Alice's
    ("DELETE", "/v1/quotas", {"subject": "principal", "id": "{alice}"}),
]


def _reply(request: ModelRequest) -> Any:
    if isinstance(request.items[-1], FunctionCallOutput):
        return "paid"
    if request.tools:
        return ScriptedToolCall("pay", {"amount": 5})
    return "ok"


@dataclass
class World:
    runtime: Runtime
    app: Any
    keys: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def client(self, who: str) -> httpx.AsyncClient:
        return asgi_client(self.app, self.keys[who])


@pytest.fixture
def store_url(app_store_url: str) -> str:
    return app_store_url  # on PostgreSQL, as a role subject to row-level security


@pytest.fixture
async def world(store_url: str, tmp_path: Path) -> AsyncIterator[World]:
    registry = ToolRegistry()

    @registry.tool(risk="high", idempotent=False)
    def pay(amount: int) -> str:
        """Pay."""
        return f"paid {amount}"

    tag = uuid.uuid4().hex[:10]
    idp = IdentityProvider()  # its principals are tenant A's: "alice" is Alice
    config = tmp_path / "sre.toml"
    config.write_text(oidc_config(idp, str(idp.write_jwks(tmp_path / "jwks.json")), f"iso-a-{tag}"))
    runtime = Runtime.open(
        database_url=store_url,
        config=config,
        models=[FunctionModel(_reply, name="m")],
        env={"SRE_SECRET_KEY": generate_key()},
        tools=registry,
    )
    w = World(runtime, create_app(runtime))
    alice_key, w.keys["alice"] = runtime.create_key(f"iso-a-{tag}", "alice", role="developer")
    w.keys["bob"] = runtime.create_key(f"iso-a-{tag}", "bob")[1]
    w.keys["carol"] = runtime.create_key(f"iso-b-{tag}", "carol", role="admin")[1]
    revoked, w.keys["revoked"] = runtime.create_key(f"iso-a-{tag}", "alice", "old")
    runtime.revoke_key(revoked.id)
    tenant_a = runtime.store.keys.find_tenant(f"iso-a-{tag}")
    assert tenant_a is not None
    alice_id = runtime.store.keys.ensure_principal(tenant_a, "alice").id
    w.keys["expired"] = runtime.store.keys.create_key(
        tenant_a, alice_id, "gone", expires_at=int(time.time()) - 1
    )[1]
    w.keys["unknown"] = "sre-" + uuid.uuid4().hex
    w.keys["unknown_issuer"] = IdentityProvider(issuer="https://elsewhere.example.test").token("alice")
    w.keys["bad_signature"] = idp.forged_with_other_key("alice")
    w.keys["sso-bob"] = idp.token("sso-bob")
    group = runtime.store.directory.create_group(tenant_a, "finance")
    runtime.store.directory.add_member(tenant_a, group.id, alice_id)
    secret = runtime.secrets.create(tenant_a, "db-password", SECRET_VALUE)
    async with w.client("alice") as alice:
        conv = (await alice.post("/v1/conversations", json={})).json()["id"]
        resp = (
            await alice.post(
                "/v1/responses", json={"model": "m", "input": "secret plan", "conversation": conv}
            )
        ).json()
        agent = {"name": f"guarded-{tag}", "model": "m", "tools": [{"type": "server", "name": "pay"}],
                 "approval": {"tools_requiring_approval": ["pay"]}}  # fmt: skip
        assert (await alice.post("/v1/agents", json=agent)).status_code == 200
        bg = (
            await alice.post("/v1/responses", json={"model": f"agent:{agent['name']}", "input": "pay"})
        ).json()
        assert bg["status"] == "requires_action", bg
        items = (await alice.get(f"/v1/conversations/{conv}/items")).json()["data"]
        w.ids = {
            "conv": conv,
            "resp": resp["id"],
            "bg": bg["id"],
            "apr": bg["required_action"]["approval_ids"][0],
            "item": items[0]["id"],
            "agent": agent["name"],
            "alice": alice_id,
            "principal": alice_id,
            "member_id": alice_id,
            "group": group.id,
            "key": alice_key.id,
            "secret": secret.id,
        }
    yield w
    await runtime.aclose()


def _fill(value: Any, ids: dict[str, str], nonce: str) -> Any:
    if isinstance(value, str):
        for name, found in {**ids, "nonce": nonce}.items():
            value = value.replace("{" + name + "}", found)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, ids, nonce) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids, nonce) for v in value]
    return value


def _path(path: str, ids: dict[str, str]) -> str:
    return (
        path.replace("{response_id}", ids["resp"] if "cancel" not in path else ids["bg"])
        .replace("{conversation_id}", ids["conv"])
        .replace("{item_id}", ids["item"])
        .replace("{approval_id}", ids["apr"])
        .replace("{name}", ids["agent"])
        .replace("{principal}", ids["principal"])
        .replace("{group}", ids["group"])
        .replace("{member_id}", ids["member_id"])
        .replace("{key_id}", ids["key"])
        .replace("{secret}", ids["secret"])
    )


async def _state(world: World) -> dict[str, Any]:
    async with world.client("alice") as alice:
        conv = await alice.get(f"/v1/conversations/{world.ids['conv']}/items", params={"limit": 100})
        resp = await alice.get(f"/v1/responses/{world.ids['resp']}")
        bg = await alice.get(f"/v1/responses/{world.ids['bg']}")
        apr = await alice.get(f"/v1/approvals/{world.ids['apr']}")
        agent = await alice.get(f"/v1/agents/{world.ids['agent']}/versions")
        keys = await alice.get("/v1/keys")
    directory = world.runtime.store.directory
    tenant = (await world.runtime.authenticate(world.keys["alice"])).tenant_id
    return {
        "keys": keys.json(),
        "group": directory.group(tenant, world.ids["group"]),
        "principal": directory.principal(tenant, world.ids["alice"]),
        "secret": (
            world.runtime.secrets.get(tenant, world.ids["secret"]),
            world.runtime.secrets.reveal(tenant, world.ids["secret"]),
        ),
        "items": [i["id"] for i in conv.json()["data"]],
        "meta": (await _conv(world)).get("metadata"),
        "resp": resp.json()["status"],
        "bg": bg.json()["status"],
        "apr": apr.json()["status"],
        "agent": agent.status_code,
    }


async def _conv(world: World) -> dict[str, Any]:
    async with world.client("alice") as alice:
        return (await alice.get(f"/v1/conversations/{world.ids['conv']}")).json()  # type: ignore[no-any-return]


def _routes(world: World) -> set[tuple[str, str]]:
    found = set()
    for route in world.app.routes:
        if isinstance(route, APIRoute):
            for method in route.methods:
                if method != "HEAD":
                    found.add((method, route.path))
    return found


async def test_every_route_is_probed(world: World) -> None:
    missing = _routes(world) - set(ROUTES)
    assert not missing, f"describe these routes in tests/test_isolation.py ROUTES: {sorted(missing)}"
    assert not set(ROUTES) - _routes(world), "ROUTES names routes that no longer exist"


REFUSED = ("revoked", "expired", "unknown", "unknown_issuer", "bad_signature")


@pytest.mark.parametrize("who", ["bob", "sso-bob", "carol", *REFUSED])
async def test_no_route_leaks_alices_resources(world: World, who: str) -> None:
    before = await _state(world)
    private = {k: v for k, v in world.ids.items() if k != "agent"}
    probes = [(m, p, None) for (m, p) in ROUTES] + VARIANTS
    # Destructive probes go last, so every other probe still finds Alice's resources in place.
    probes.sort(key=lambda probe: probe[0] == "DELETE")
    async with world.client(who) as client:
        for method, path, query in probes:
            kind, body = ROUTES[(method, path)]
            url = _path(path, world.ids)
            sent_body = _fill(body, world.ids, uuid.uuid4().hex[:8])
            params = _fill(query, world.ids, "") if query else None
            response = await client.request(method, url, json=sent_body, params=params)
            where = f"{who}: {method} {url} {params or ''} -> {response.status_code} {response.text[:300]}"
            sent = url + json.dumps(sent_body) + json.dumps(params)
            assert SECRET_VALUE not in response.text, f"{where}: shows a secret's value"
            for name, value in private.items():
                if value not in sent:
                    assert value not in response.text, f"{where}: shows Alice's {name}"
            if kind == "public":
                assert response.status_code == 200, where
            elif who in REFUSED:
                assert response.status_code == 401, where
                assert response.json()["error"]["type"] == "authentication_error", where
            elif kind == "private" or (kind in ("tenant", "directory") and who == "carol"):
                assert response.status_code == 404, where
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}, where
            elif kind == "directory":  # a member lacks the right: refused before anything is looked up
                assert response.status_code == 403, where
                assert response.json()["error"]["code"] == "role_required", where
    after = await _state(world)
    assert after == before


async def test_shared_conversations_and_oversight(world: World) -> None:
    """A conversation its owner shares is the tenant's to use; an admin reads private ones, each read
    audited; only the owner changes the visibility."""
    conv = world.ids["conv"]
    runtime = world.runtime
    tenant = (await runtime.authenticate(world.keys["alice"])).tenant_id
    admin_key = runtime.create_key(runtime.store.keys.tenant_names()[tenant], "root", "k", "admin")[1]
    world.keys["root"] = admin_key
    async with world.client("root") as root:
        assert (await root.get(f"/v1/conversations/{conv}")).status_code == 200
        assert (await root.get(f"/v1/responses/{world.ids['resp']}")).status_code == 200
        # Reading is oversight; continuing or deleting someone else's is not.
        answer = await root.post("/v1/responses", json={"model": "m", "input": "x", "conversation": conv})
        assert answer.status_code == 404
        assert (await root.delete(f"/v1/conversations/{conv}")).status_code == 404
        reads = (await root.get("/v1/audit", params={"action": "conversation.read"})).json()["data"]
        assert [r["resource"]["id"] for r in reads] == [conv] and reads[0]["details"]["owner"] == world.ids[
            "alice"
        ]
        assert (await root.get("/v1/audit", params={"action": "response.read"})).json()["data"]
    async with world.client("bob") as bob:
        assert (await bob.get(f"/v1/conversations/{conv}")).status_code == 404
        refused = await bob.post(f"/v1/conversations/{conv}", json={"visibility": "tenant"})
        assert refused.status_code == 404
    async with world.client("alice") as alice:
        shared = await alice.post(f"/v1/conversations/{conv}", json={"visibility": "tenant"})
        assert shared.status_code == 200 and shared.json()["visibility"] == "tenant"
    async with world.client("bob") as bob:
        assert (await bob.get(f"/v1/conversations/{conv}")).status_code == 200
        turn = await bob.post("/v1/responses", json={"model": "m", "input": "bob here", "conversation": conv})
        assert turn.status_code == 200, turn.text
        back = await bob.post(f"/v1/conversations/{conv}", json={"visibility": "private"})
        assert back.status_code == 403 and back.json()["error"]["code"] == "not_the_owner"
        # Bob's turn is Bob's: Alice's stored response in it stays hers.
        assert (await bob.get(f"/v1/responses/{world.ids['resp']}")).status_code == 404
    async with world.client("carol") as carol:  # sharing is within the tenant only
        assert (await carol.get(f"/v1/conversations/{conv}")).status_code == 404
