"""An ASGI middleware that gives every request an id: in the `x-request-id` response header (as
OpenAI's API does) and, through `sre.types.audit.REQUEST_ID`, in every audit event the request leads
to (the work it starts in tasks and worker threads carries the id with its context); and the scope
within which a service's acting for a user (`sre.types.audit.ACTING`) and the binding of the store's
transactions to the caller's tenant (`sre.store.tenancy.BOUND_TENANT`) hold."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sre.store.tenancy import BOUND_TENANT
from sre.types.audit import ACTING, REQUEST_ID


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + uuid.uuid4().hex
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        acting = ACTING.set(None)  # set by the request's authentication when a service acts for a user
        tenant = BOUND_TENANT.set(None)  # and the tenant its store work is bound to
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            BOUND_TENANT.reset(tenant)
            ACTING.reset(acting)
            REQUEST_ID.reset(token)
