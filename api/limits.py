"""Request-body size limit, enforced while the body streams in (before anything parses it)."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for multipart boundaries, part headers and the `request` form field around a file of
# KRONOS_MAX_UPLOAD_BYTES; the route checks the file itself against the exact limit.
MULTIPART_SLACK_BYTES = 256 * 1024


class BodySizeLimit:
    """Answer 413 when Content-Length, or the bytes actually received, exceed `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Handled by api.errors like any HTTPException: 413 in the error envelope.
                    raise HTTPException(413, self._message(received))
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int) -> str:
        return f"request body is {size} bytes or more, at most {self.max_bytes} accepted (KRONOS_MAX_UPLOAD_BYTES)"

    async def _reject(self, send: Send, size: int) -> None:
        message = self._message(size)
        body = json.dumps({"error": {"code": "payload_too_large", "message": message, "details": [{"field": "body", "message": message}]}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
