"""NUL bytes are refused at the edge, on every route, as a 422 naming the field.

PostgreSQL cannot store a NUL character in a text column, and no legitimate symbol, cron, name or
key holds one, so a NUL anywhere in the URL path, a query parameter or a JSON body (raw, or escaped
as `\\u0000`) is answered here, before routing, with the one error envelope. Multipart uploads
carry binary files (Parquet holds NUL bytes), so only their `request` JSON field is checked
(api/uploads.py calls `nul_field`); a file's cells go through the bar checks like any bad value.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import CODE_BY_STATUS, error_response

NUL = "\x00"
_ESCAPED = (b"\\u0000", b"\\U0000")


def nul_field(value: Any, prefix: str = "") -> str | None:
    """The path (`series[0].symbol`) of the first string or key in `value` holding a NUL, else None."""
    if isinstance(value, str):
        return (prefix or "body") if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            shown = str(key).replace(NUL, "\\u0000")  # the field name itself may be the culprit
            here = f"{prefix}.{shown}" if prefix else shown
            if NUL in str(key):
                return here
            if (found := nul_field(item, here)) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := nul_field(item, f"{prefix}[{i}]" if prefix else f"[{i}]")) is not None:
                return found
    return None


def nul_in_json(raw: bytes, prefix: str = "") -> str | None:
    """The field of a JSON text that holds a NUL (raw or escaped), or None; cheap when there is none."""
    if b"\x00" not in raw and not any(marker in raw for marker in _ESCAPED):
        return None
    try:
        # strict=False: a raw NUL inside a string is a control character plain json refuses; it
        # is read here so the answer can name the field it sits in.
        value = json.loads(raw.decode("utf-8", errors="replace"), strict=False)
    except ValueError:
        return (prefix or "body") if b"\x00" in raw else None  # not JSON: the body parser says why
    return nul_field(value, prefix)


def nul_response(field: str):
    message = "must not contain NUL characters (\\u0000)"
    return error_response(422, "invalid_request", f"{field}: {message}", [{"field": field, "message": message}])


class NulByteGuard:
    """422 for a NUL in the path, a query parameter or a JSON body; other requests pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        field = self._url_field(scope)
        if field is None and self._is_json(scope):
            try:
                body, receive = await self._buffer(receive)
            except HTTPException as exc:  # the body-size limit (api/limits.py) fired while reading
                response = error_response(exc.status_code, CODE_BY_STATUS.get(exc.status_code, "http_error"),
                                          str(exc.detail), [{"field": "body", "message": str(exc.detail)}])
                await response(scope, receive, send)
                return
            field = nul_in_json(body)
        if field is not None:
            await nul_response(field)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _url_field(scope: Scope) -> str | None:
        if NUL in scope.get("path", ""):
            return "path"
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if NUL in key or NUL in value:
                    return key.replace(NUL, "") or "query"
            return "query"
        return None

    @staticmethod
    def _is_json(scope: Scope) -> bool:
        headers = dict(scope.get("headers") or [])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        return media == b"application/json" or media.endswith(b"+json")

    @staticmethod
    async def _buffer(receive: Receive) -> tuple[bytes, Receive]:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return body, replay
