"""One error shape for every failure, OpenAI style::

    {"error": {"code": "...", "message": "...", "param": "sparsity.top_p", "type": "invalid_request_error"}}

FastAPI's own 422s, unknown routes (404/405) and body-size rejections (413) are converted to it, so a
client can always read ``error.param`` to find the field at fault.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.registry import SpecError

log = logging.getLogger(__name__)

#: Retry-After of the 503 answered while Redis is unreachable.
REDIS_RETRY_AFTER_S = 2


class APIError(Exception):
    """An error response: raise it from a route."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "param": param, "type": kind}},
        headers=headers,
    )


def _loc_to_param(loc: tuple | list, drop_first: bool) -> str | None:
    parts = [str(p) for p in loc]
    if drop_first and parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or None


def validation_error_to_api_error(exc: ValidationError | RequestValidationError, from_request: bool) -> APIError:
    """The first problem of a pydantic error, as a 400 naming the field and the rule."""
    err = exc.errors()[0]
    param = _loc_to_param(err.get("loc", ()), drop_first=from_request)
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return APIError(400, "unknown_parameter", f"{param}: unknown field", param)
    if kind == "missing":
        return APIError(400, "missing_required_parameter", f"{param}: field required", param)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return APIError(400, "invalid_value", f"{param}: {msg}" if param else msg, param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers)

    @app.exception_handler(SpecError)
    async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
        return error_response(400, exc.code, str(exc), exc.param)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        e = validation_error_to_api_error(exc, from_request=True)
        return error_response(e.status, e.code, e.message, e.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis error: %s", exc)
        return error_response(503, "unavailable", "the job store (Redis) is unavailable; retry later",
                              headers={"Retry-After": str(REDIS_RETRY_AFTER_S)})
