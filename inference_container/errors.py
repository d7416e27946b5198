"""How the API answers errors: `{"status": "ERROR", "detail": "<what is wrong>"}` for bad requests
and bugs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_container.predict import error_body

log = logging.getLogger(__name__)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(error_body(message), status, headers=headers, media_type="application/json")


async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response(422, "; ".join(parts) or "invalid request")


async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def unexpected(request: Request, exc: Exception) -> Response:
    """A bug, never bad input: log it and answer 500 with an id to find the log line by."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    log.error(
        "unhandled error",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"request_id": request_id, "path": request.url.path},
    )
    return error_response(500, f"internal error (request id {request_id})")


EXCEPTION_HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    RequestValidationError: invalid_request,
    StarletteHTTPException: http_error,
    Exception: unexpected,
}
