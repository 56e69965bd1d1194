"""Browser safety: trusted Host names, CORS allow-list, cross-site request guard, security headers.

A browser lets any web page send a "simple" cross-site request (a form POST, multipart included)
without asking the server first, and DNS rebinding lets a page reach a loopback API under its own
host name. So: Starlette's TrustedHostMiddleware answers only KRONOS_TRUSTED_HOSTS; CORS is off
unless KRONOS_CORS_ORIGINS lists origins (Starlette's CORSMiddleware); and a state-changing request
that a browser marks as cross-site (`Sec-Fetch-Site`) or whose `Origin` is neither this API's own
nor an allowed one is refused with 403 before any handler runs. Clients that are not browsers
(curl, the CLI) send neither header and pass.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kronos_jobs.core.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})  # "none": typed in the address bar, a bookmark

# JSON, CSV and Parquet responses never need to run, frame or load anything; HTML pages (the
# OpenAPI docs) load their own scripts, so they get only the framing and sniffing rules.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
CSP_DATA = b"default-src 'none'; frame-ancestors 'none'"
CSP_HTML = b"frame-ancestors 'none'"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class CrossSiteGuard:
    """403 for a state-changing request a browser sent from another site."""

    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/").lower() for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self._problem(scope, headers)
        if problem is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": {"code": "forbidden", "message": problem,
                                     "details": [{"field": "Origin", "message": problem}]}}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _problem(self, scope: Scope, headers: Headers) -> str | None:
        origin = headers.get("origin")
        if origin is not None:
            origin = origin.rstrip("/").lower()
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
            if origin in self.allowed or origin == own:
                return None
            return (f"cross-site {scope['method']} from origin {origin[:200]!r} refused; "
                    "allow it in KRONOS_CORS_ORIGINS if it is yours")
        site = headers.get("sec-fetch-site")
        if site is not None and site.lower() not in SAME_SITE_FETCH:
            return f"cross-site {scope['method']} refused (Sec-Fetch-Site: {site[:40]})"
        return None


class SecurityHeaders:
    """Adds SECURITY_HEADERS and a Content-Security-Policy to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
                for name, value in SECURITY_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", CSP_HTML if content_type.startswith(b"text/html") else CSP_DATA))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_browser_safety(app: FastAPI, settings: Settings) -> None:
    """Install the middleware; call after the app's own middleware so these run first."""
    app.add_middleware(SecurityHeaders)
    app.add_middleware(CrossSiteGuard, allowed_origins=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
                           expose_headers=["Location", "Retry-After"])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts)
