"""Error mapping for HTTP: every failure leaves as OpenAI's error shape with a fitting status.

`SREError`s carry their status (a 429 its `Retry-After`); FastAPI's validation errors become 400s naming the field
(`validation_response`, installed by the app once it can authenticate first); unknown
routes and methods are 404/405 in the same shape; anything unexpected is a 500 that reveals no
internals.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sre.types.errors import SREError
from sre.types.requests import invalid_from_error, pick_error

log = logging.getLogger("sre.api")


def error_response(exc: SREError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    if exc.status_code == 429 and exc.retry_after is not None:  # whole seconds, at least one
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    err = pick_error(exc.errors())
    loc = tuple(err.get("loc", ()))
    where = loc[0] if loc else None
    if where in ("body", "query", "path"):
        loc = loc[1:]
    return error_response(
        invalid_from_error(err.get("type", ""), loc, err.get("msg", "invalid"), err.get("ctx"))
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(SREError)
    async def _sre(_: Request, exc: SREError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = "Unknown route." if exc.status_code == 404 else str(exc.detail)
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        body = {
            "error": {
                "message": "The server had an error processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        return JSONResponse(body, status_code=500)
