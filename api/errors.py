"""The one error mapping: every failure leaves the API as `{"error": {code, message, details}}`.

    KronosJobsError subclasses    -> STATUS_BY_ERROR (InvalidRequest 422, PayloadTooLarge 413, ...)
    RequestValidationError        -> 422 invalid_request, one detail per field (400 malformed_json
                                     when the body is not JSON)
    HTTPException (routing, 405, 413, 415 from the transport layer) -> its status, CODE_BY_STATUS
    database unreachable          -> 503 unavailable
    anything else                 -> 500 internal_error (logged; never a client mistake)

Field names read like the request: `sampling.top_p`, `series[0].bars[3].high`, `cursor`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kronos_jobs.core.errors import (
    Conflict,
    Gone,
    InvalidRequest,
    KronosJobsError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)

logger = logging.getLogger(__name__)

# Most specific first: the first isinstance match wins.
STATUS_BY_ERROR: tuple[tuple[type[KronosJobsError], int], ...] = (
    (PayloadTooLarge, 413),
    (InvalidRequest, 422),
    (NotFound, 404),
    (Gone, 410),
    (Conflict, 409),
    (Unavailable, 503),
)
CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}
_LOCATIONS = {"body", "query", "path", "header", "cookie"}
MALFORMED_JSON = "json_invalid"


def status_for(exc: KronosJobsError) -> int:
    return next((status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls)), 500)


def error_response(status: int, code: str, message: str, details: Sequence[dict[str, Any]] = (), headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": list(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


def field_path(loc: Sequence[Any]) -> str:
    """("body", "series", 0, "bars", 3, "high") -> "series[0].bars[3].high"."""
    parts = list(loc)
    if parts and parts[0] in _LOCATIONS and len(parts) > 1:
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def _validation_details(errors: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    details = []
    for error in errors:
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")  # pydantic's prefix for our validators
        details.append({"field": field_path(error.get("loc", ())), "message": message})
    return details


async def handle_kronos_error(request: Request, exc: KronosJobsError) -> JSONResponse:
    status = status_for(exc)
    if status >= 500:
        logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, status, exc.code, exc.message)
    return error_response(status, exc.code, exc.message, exc.details)


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    details = _validation_details(errors)
    if any(e.get("type") == MALFORMED_JSON for e in errors):
        where = details[0]["field"]
        where = "body" if where.strip("[]0123456789") in ("", "body") else where
        message = f"{where} is not valid JSON: {details[0]['message']}"
        return error_response(400, "malformed_json", message, [{"field": where, "message": details[0]["message"]}])
    more = f" (and {len(details) - 1} more problems)" if len(details) > 1 else ""
    message = f"{details[0]['field']}: {details[0]['message']}{more}" if details else "invalid request"
    return error_response(422, "invalid_request", message, details)


async def handle_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = CODE_BY_STATUS.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def handle_database_down(request: Request, exc: OperationalError) -> JSONResponse:
    logger.error("database error on %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "unavailable", "the database is unreachable or busy; retry shortly")


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; the server log has the traceback")


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(KronosJobsError, handle_kronos_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(OperationalError, handle_database_down)
    app.add_exception_handler(Exception, handle_unexpected)
