"""The HTTP API: OpenAI-compatible Responses and Conversations routes, and SRE's agents, approvals,
audit trail and quotas, over `Runtime`.

Routes parse input (pydantic models shared with the Python API), resolve the caller from the
bearer key, call one `Runtime` method and shape the result. Nothing else happens here.
"""

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from sre.api import errors
from sre.api.limits import BodyLimit
from sre.api.request_ids import RequestIds
from sre.governance.access import ON_BEHALF_OF_HEADER
from sre.governance.roles import RIGHTS, rights
from sre.runtime import Runtime
from sre.store.tenancy import BOUND_TENANT
from sre.types.agents import MAX_AGENT_VERSION, AgentDefinition, UpdateAgent
from sre.types.audit import ACTING
from sre.types.directory import AddMember, CreateGroup, CreateKey, CreatePrincipal, RotateKey, UpdatePrincipal
from sre.types.errors import InvalidRequest, SREError
from sre.types.quotas import SetQuota
from sre.types.records import Caller
from sre.types.requests import (
    CompactResponse,
    CountInputTokens,
    CreateConversation,
    CreateEmbeddings,
    CreateItems,
    CreateResponse,
    UpdateConversation,
)
from sre.types.secrets import CreateSecret, UpdateSecret

Limit = Annotated[int, Query(ge=1, le=100)]
Order = Annotated[str, Query(pattern="^(asc|desc)$")]
After = Annotated[str | None, Query(max_length=64)]
AuditText = Annotated[str | None, Query(min_length=1, max_length=200)]
Version = Annotated[int | None, Query(ge=1, le=MAX_AGENT_VERSION)]
Include = Annotated[list[str] | None, Query(max_length=16)]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: Annotated[str, Field(max_length=4096)] | None = None


ApprovalStatus = Annotated[str | None, Query(pattern="^(pending|approved|denied|cancelled)$")]
SubjectKind = Annotated[str | None, Query(pattern="^(tenant|principal|key)$")]
QuotaId = Annotated[str | None, Query(min_length=1, max_length=200)]


class ForkConversation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    item_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None


def _right_of(route: object) -> str | None:
    """The right a route requires (its `Require` dependency's), if any."""
    if not isinstance(route, APIRoute):
        return None
    return next((r for d in route.dependant.dependencies if (r := getattr(d.call, "right", None))), None)


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _sse_stream(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for event in events:
        yield _sse(event)


def _event_stream(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    return StreamingResponse(
        _sse_stream(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def create_app(
    runtime: Runtime,
    *,
    auth: bool = True,
    close_runtime: bool = False,
    warm: bool = False,
    workers: int = 0,
) -> FastAPI:
    """The API over `runtime`; with `close_runtime`, the app closes it when the server stops, with
    `warm`, local model weights load in the background as it starts, and `workers` worker tasks
    execute background runs inside the server."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        warming = asyncio.create_task(runtime.warm()) if warm else None
        # What exists at start lives as long as the server: keep it out of every later collection
        # (full collections over it were the worst turn's pauses, 35-50 ms).
        gc.collect()
        gc.freeze()
        runtime.start_workers(workers)
        yield
        if warming is not None and not warming.done():
            warming.cancel()
        if close_runtime:
            await runtime.aclose()
        elif runtime.workers is not None:
            await runtime.workers.aclose()
            runtime.workers = None

    app = FastAPI(
        lifespan=lifespan,
        title="SRE — Stateful Runtime Environment",
        version="0.1.0",
        description="OpenAI-compatible Responses and Conversations API with durable state.",
    )
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=runtime.settings.max_body_bytes)
    app.add_middleware(RequestIds)  # outermost: even a refused body has its id

    async def caller(request: Request) -> Caller:
        """Who is asking: the key's or token's principal, or, with `X-SRE-On-Behalf-Of` from a
        service holding `act_as`, the user it acts for; each request is counted once against its
        rate limits (429 over one)."""
        found: Caller | None = getattr(request.state, "sre_caller", None)
        if found is not None:
            return found
        who = (
            runtime.local_caller()
            if not auth
            else await runtime.authenticate_header(request.headers.get("authorization"))
        )
        user = request.headers.get(ON_BEHALF_OF_HEADER)
        if user is not None:
            if not user.strip() or len(user) > 200:
                raise InvalidRequest(
                    f"'{ON_BEHALF_OF_HEADER}' must name a user (1 to 200 characters).",
                    param=ON_BEHALF_OF_HEADER,
                )
            who = await runtime.act_for(who, user, _route_name(request))
        await runtime.admit(who)
        if who.actor_id is not None:
            ACTING.set(who.actor_id)  # reset when the request ends (`RequestIds`)
        BOUND_TENANT.set(who.tenant_id)  # the rest of the request is the tenant's (row-level security)
        request.state.sre_caller = who
        return who

    class Require:
        """The dependency of a route that takes `right` (`sre.governance.roles`): it authenticates
        the caller and refuses (403, audited) one without the right."""

        def __init__(self, right: str) -> None:
            assert right in RIGHTS, right
            self.right = right

        async def __call__(self, request: Request) -> Caller:
            who = await caller(request)
            await runtime.check_access(who, self.right, _route_name(request))
            return who

    Responding = Annotated[Caller, Depends(Require("responses"))]
    Modeling = Annotated[Caller, Depends(Require("models"))]
    AgentReader = Annotated[Caller, Depends(Require("agents.read"))]
    AgentWriter = Annotated[Caller, Depends(Require("agents.write"))]
    Approving = Annotated[Caller, Depends(Require("approvals"))]
    UsageReader = Annotated[Caller, Depends(Require("usage"))]
    KeyHolder = Annotated[Caller, Depends(Require("keys"))]
    DirectoryReader = Annotated[Caller, Depends(Require("directory"))]
    Admin = Annotated[Caller, Depends(Require("admin"))]
    AuditReader = Annotated[Caller, Depends(Require("audit"))]
    SecretKeeper = Annotated[Caller, Depends(Require("secrets"))]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI parses a JSON body before it resolves dependencies: authenticate and check the
        # route's right first anyway, so that a caller without it learns nothing of the body's shape.
        try:
            who = await caller(request) if auth else None
            right = _right_of(request.scope.get("route"))
            if who is not None and right is not None:
                await runtime.check_access(who, right, _route_name(request))
        except SREError as err:
            return errors.error_response(err)
        return errors.validation_response(exc)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        try:
            await asyncio.to_thread(runtime.store.db.current_revision)
        except Exception:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/v1/models", tags=["models"])
    async def list_models(who: Modeling) -> dict[str, Any]:
        return runtime.list_models()

    # -- responses ----------------------------------------------------------------------------

    @app.post("/v1/responses", tags=["responses"], response_model=None)
    async def create_response(
        body: CreateResponse, who: Responding, request: Request
    ) -> JSONResponse | StreamingResponse:
        if body.user is not None and who.actor_id is None and "act_as" in rights(who):
            who = await runtime.act_for(who, body.user, _route_name(request))  # OpenAI's `user` field
            ACTING.set(who.actor_id)
        if body.stream:
            return _event_stream(await runtime.stream_response(who, body))
        return JSONResponse(await runtime.create_response(who, body))

    @app.post("/v1/responses/compact", tags=["responses"])
    async def compact_response(body: CompactResponse, who: Responding) -> dict[str, Any]:
        return await runtime.compact_response(who, body)

    @app.post("/v1/responses/input_tokens", tags=["responses"])
    async def count_input_tokens(body: CountInputTokens, who: Modeling) -> dict[str, Any]:
        return await runtime.count_input_tokens(who, body)

    @app.post("/v1/embeddings", tags=["embeddings"])
    async def create_embeddings(body: CreateEmbeddings, who: Modeling) -> dict[str, Any]:
        return await runtime.create_embeddings(who, body)

    @app.get("/v1/usage", tags=["usage"])
    async def usage(
        who: UsageReader,
        start_time: Annotated[int | None, Query(ge=0)] = None,
        end_time: Annotated[int | None, Query(ge=0)] = None,
    ) -> dict[str, Any]:
        return await runtime.usage(who, start=start_time, end=end_time)

    @app.get("/v1/responses/{response_id}", tags=["responses"], response_model=None)
    async def get_response(
        response_id: str,
        who: Responding,
        stream: bool = False,
        starting_after: Annotated[int | None, Query(ge=-1)] = None,
        include: Include = None,
        include_brackets: Annotated[list[str] | None, Query(alias="include[]", max_length=16)] = None,
        include_obfuscation: bool | None = None,
    ) -> dict[str, Any] | StreamingResponse:
        if stream:
            events = await runtime.stream_background_response(who, response_id, starting_after=starting_after)
            return _event_stream(events)
        wanted = [*(include or []), *(include_brackets or [])]
        return await runtime.get_response(who, response_id, include=wanted)

    @app.post("/v1/responses/{response_id}/cancel", tags=["responses"])
    async def cancel_response(response_id: str, who: Responding) -> dict[str, Any]:
        return await runtime.cancel_response(who, response_id)

    @app.delete("/v1/responses/{response_id}", tags=["responses"])
    async def delete_response(response_id: str, who: Responding) -> dict[str, Any]:
        return await runtime.delete_response(who, response_id)

    @app.get("/v1/responses/{response_id}/input_items", tags=["responses"])
    async def list_input_items(
        response_id: str, who: Responding, after: After = None, limit: Limit = 20, order: Order = "desc"
    ) -> dict[str, Any]:
        return await runtime.list_input_items(who, response_id, after=after, limit=limit, order=order)

    # -- conversations ------------------------------------------------------------------------

    @app.post("/v1/conversations", tags=["conversations"])
    async def create_conversation(who: Responding, body: CreateConversation | None = None) -> dict[str, Any]:
        return await runtime.create_conversation(who, body or CreateConversation())

    @app.get("/v1/conversations/{conversation_id}", tags=["conversations"])
    async def get_conversation(conversation_id: str, who: Responding) -> dict[str, Any]:
        return await runtime.get_conversation(who, conversation_id)

    @app.post("/v1/conversations/{conversation_id}", tags=["conversations"])
    async def update_conversation(
        conversation_id: str, body: UpdateConversation, who: Responding
    ) -> dict[str, Any]:
        return await runtime.update_conversation(who, conversation_id, body)

    @app.delete("/v1/conversations/{conversation_id}", tags=["conversations"])
    async def delete_conversation(conversation_id: str, who: Responding) -> dict[str, Any]:
        return await runtime.delete_conversation(who, conversation_id)

    @app.post("/v1/conversations/{conversation_id}/fork", tags=["conversations"])
    async def fork_conversation(
        conversation_id: str, who: Responding, body: ForkConversation | None = None
    ) -> dict[str, Any]:
        at = body.item_id if body is not None else None
        return await runtime.fork_conversation(who, conversation_id, at_item_id=at)

    @app.post("/v1/conversations/{conversation_id}/items", tags=["conversations"])
    async def create_items(conversation_id: str, body: CreateItems, who: Responding) -> dict[str, Any]:
        return await runtime.create_items(who, conversation_id, body)

    @app.get("/v1/conversations/{conversation_id}/items", tags=["conversations"])
    async def list_items(
        conversation_id: str, who: Responding, after: After = None, limit: Limit = 20, order: Order = "desc"
    ) -> dict[str, Any]:
        return await runtime.list_items(who, conversation_id, after=after, limit=limit, order=order)

    @app.get("/v1/conversations/{conversation_id}/items/{item_id}", tags=["conversations"])
    async def get_item(conversation_id: str, item_id: str, who: Responding) -> dict[str, Any]:
        return await runtime.get_item(who, conversation_id, item_id)

    @app.delete("/v1/conversations/{conversation_id}/items/{item_id}", tags=["conversations"])
    async def delete_item(conversation_id: str, item_id: str, who: Responding) -> dict[str, Any]:
        return await runtime.delete_item(who, conversation_id, item_id)

    # -- agents (SRE's own) ---------------------------------------------------------------------

    @app.post("/v1/agents", tags=["agents"])
    async def create_agent(body: AgentDefinition, who: AgentWriter) -> dict[str, Any]:
        return await runtime.create_agent(who, body)

    @app.get("/v1/agents", tags=["agents"])
    async def list_agents(
        who: AgentReader, after: After = None, limit: Limit = 20, order: Order = "asc"
    ) -> dict[str, Any]:
        return await runtime.list_agents(who, after=after, limit=limit, order=order)

    @app.get("/v1/agents/{name}", tags=["agents"])
    async def get_agent(name: str, who: AgentReader, version: Version = None) -> dict[str, Any]:
        return await runtime.get_agent(who, name, version=version)

    @app.post("/v1/agents/{name}", tags=["agents"])
    async def update_agent(name: str, body: UpdateAgent, who: AgentWriter) -> dict[str, Any]:
        return await runtime.update_agent(who, name, body)

    @app.delete("/v1/agents/{name}", tags=["agents"])
    async def delete_agent(name: str, who: AgentWriter) -> dict[str, Any]:
        return await runtime.delete_agent(who, name)

    @app.get("/v1/agents/{name}/versions", tags=["agents"])
    async def list_agent_versions(
        name: str, who: AgentReader, after: Version = None, limit: Limit = 20, order: Order = "desc"
    ) -> dict[str, Any]:
        return await runtime.list_agent_versions(who, name, after=after, limit=limit, order=order)

    @app.get("/v1/approvals", tags=["approvals"])
    async def list_approvals(
        who: Approving,
        status: ApprovalStatus = None,
        response_id: Annotated[str | None, Query(max_length=64)] = None,
        after: After = None,
        limit: Limit = 20,
    ) -> dict[str, Any]:
        return await runtime.list_approvals(
            who, status=status, response_id=response_id, after=after, limit=limit
        )

    @app.get("/v1/audit", tags=["audit"])
    async def list_audit(
        who: AuditReader,
        action: AuditText = None,
        actor: AuditText = None,
        on_behalf_of: AuditText = None,
        agent: AuditText = None,
        resource_type: AuditText = None,
        resource_id: AuditText = None,
        outcome: Annotated[str | None, Query(pattern="^(success|denied|failure|error)$")] = None,
        request_id: AuditText = None,
        since: Annotated[int | None, Query(ge=0, lt=2**41)] = None,
        until: Annotated[int | None, Query(ge=0, lt=2**41)] = None,
        after: After = None,
        limit: Limit = 20,
        order: Order = "desc",
    ) -> dict[str, Any]:
        """The tenant's audit events (admins and auditors), newest first unless `order=asc`."""
        given = {
            "action": action,
            "actor": actor,
            "on_behalf_of": on_behalf_of,
            "agent": agent,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "outcome": outcome,
            "request_id": request_id,
        }
        return await runtime.list_audit(
            who,
            filters={k: v for k, v in given.items() if v is not None},
            since=since,
            until=until,
            after=after,
            limit=limit,
            order=order,
        )

    @app.get("/v1/quotas", tags=["quotas"])
    async def get_quotas(who: UsageReader, subject: SubjectKind = None, id: QuotaId = None) -> dict[str, Any]:
        return await runtime.get_quotas(who, subject=subject, id=id)

    @app.post("/v1/quotas", tags=["quotas"])
    async def set_quota(body: SetQuota, who: Admin) -> dict[str, Any]:
        return await runtime.set_quota(who, body)

    @app.delete("/v1/quotas", tags=["quotas"])
    async def delete_quota(who: Admin, subject: SubjectKind, id: QuotaId = None) -> dict[str, Any]:
        return await runtime.delete_quota(who, subject=subject, id=id)

    @app.get("/v1/approvals/{approval_id}", tags=["approvals"])
    async def get_approval(approval_id: str, who: Approving) -> dict[str, Any]:
        return await runtime.get_approval(who, approval_id)

    @app.post("/v1/approvals/{approval_id}/approve", tags=["approvals"])
    async def approve(approval_id: str, who: Approving, body: Decision | None = None) -> dict[str, Any]:
        reason = body.reason if body is not None else None
        return await runtime.decide_approval(who, approval_id, approve=True, reason=reason)

    @app.post("/v1/approvals/{approval_id}/deny", tags=["approvals"])
    async def deny(approval_id: str, who: Approving, body: Decision | None = None) -> dict[str, Any]:
        reason = body.reason if body is not None else None
        return await runtime.decide_approval(who, approval_id, approve=False, reason=reason)

    # -- the directory: principals, groups, keys (SRE's own) ----------------------------------

    @app.get("/v1/principals", tags=["directory"])
    async def list_principals(who: DirectoryReader, after: After = None, limit: Limit = 20) -> dict[str, Any]:
        return await runtime.list_principals(who, after=after, limit=limit)

    @app.post("/v1/principals", tags=["directory"])
    async def create_principal(body: CreatePrincipal, who: Admin) -> dict[str, Any]:
        return await runtime.create_principal(who, body)

    @app.get("/v1/principals/{principal}", tags=["directory"])
    async def get_principal(principal: str, who: DirectoryReader) -> dict[str, Any]:
        return await runtime.get_principal(who, principal)

    @app.post("/v1/principals/{principal}", tags=["directory"])
    async def update_principal(principal: str, body: UpdatePrincipal, who: Admin) -> dict[str, Any]:
        return await runtime.update_principal(who, principal, body)

    @app.get("/v1/groups", tags=["directory"])
    async def list_groups(who: DirectoryReader, after: After = None, limit: Limit = 20) -> dict[str, Any]:
        return await runtime.list_groups(who, after=after, limit=limit)

    @app.post("/v1/groups", tags=["directory"])
    async def create_group(body: CreateGroup, who: Admin) -> dict[str, Any]:
        return await runtime.create_group(who, body)

    @app.get("/v1/groups/{group}", tags=["directory"])
    async def get_group(group: str, who: DirectoryReader) -> dict[str, Any]:
        return await runtime.get_group(who, group)

    @app.delete("/v1/groups/{group}", tags=["directory"])
    async def delete_group(group: str, who: Admin) -> dict[str, Any]:
        return await runtime.delete_group(who, group)

    @app.post("/v1/groups/{group}/members", tags=["directory"])
    async def add_group_member(group: str, body: AddMember, who: Admin) -> dict[str, Any]:
        return await runtime.add_group_member(who, group, body)

    @app.delete("/v1/groups/{group}/members/{member_id}", tags=["directory"])
    async def remove_group_member(group: str, member_id: str, who: Admin) -> dict[str, Any]:
        return await runtime.remove_group_member(who, group, member_id)

    @app.get("/v1/keys", tags=["directory"])
    async def list_keys(
        who: KeyHolder,
        principal: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
        after: After = None,
        limit: Limit = 20,
    ) -> dict[str, Any]:
        return await runtime.list_api_keys(who, principal=principal, after=after, limit=limit)

    @app.post("/v1/keys", tags=["directory"])
    async def create_key(who: KeyHolder, body: CreateKey | None = None) -> dict[str, Any]:
        return await runtime.create_api_key(who, body or CreateKey())

    @app.get("/v1/keys/{key_id}", tags=["directory"])
    async def get_key(key_id: str, who: KeyHolder) -> dict[str, Any]:
        return await runtime.get_api_key(who, key_id)

    @app.delete("/v1/keys/{key_id}", tags=["directory"])
    async def revoke_key(key_id: str, who: KeyHolder) -> dict[str, Any]:
        return await runtime.revoke_api_key(who, key_id)

    @app.post("/v1/keys/{key_id}/rotate", tags=["directory"])
    async def rotate_key(key_id: str, who: KeyHolder, body: RotateKey | None = None) -> dict[str, Any]:
        return await runtime.rotate_api_key(who, key_id, body)

    # -- secrets: written, never read back -------------------------------------------------------

    @app.get("/v1/secrets", tags=["secrets"])
    async def list_secrets(who: SecretKeeper, after: After = None, limit: Limit = 20) -> dict[str, Any]:
        return await runtime.list_secrets(who, after=after, limit=limit)

    @app.post("/v1/secrets", tags=["secrets"])
    async def create_secret(body: CreateSecret, who: SecretKeeper) -> dict[str, Any]:
        return await runtime.create_secret(who, body)

    @app.get("/v1/secrets/{secret}", tags=["secrets"])
    async def get_secret(secret: str, who: SecretKeeper) -> dict[str, Any]:
        return await runtime.get_secret(who, secret)

    @app.post("/v1/secrets/{secret}", tags=["secrets"])
    async def update_secret(secret: str, body: UpdateSecret, who: SecretKeeper) -> dict[str, Any]:
        return await runtime.update_secret(who, secret, body)

    @app.delete("/v1/secrets/{secret}", tags=["secrets"])
    async def delete_secret(secret: str, who: SecretKeeper) -> dict[str, Any]:
        return await runtime.delete_secret(who, secret)

    return app


def route_rights(app: FastAPI) -> dict[tuple[str, str], str | None]:
    """Each route's required right (None: open to anyone, as health checks are), read from the
    routes' own dependencies: the table docs/governance.md prints."""
    table: dict[tuple[str, str], str | None] = {}
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        for method in sorted(route.methods or ()):
            table[(method, route.path)] = _right_of(route)
    return table
