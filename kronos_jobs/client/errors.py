"""Errors the client raises, one class per kind of API answer (the envelope's code, message, details).

    ClientError
    ├── ApiConnectionError        the API could not be reached (after retries)
    ├── JobTimeout                `wait(timeout=...)` ran out; the job goes on
    └── ApiError                  the API answered 4xx/5xx: .status_code, .code, .message, .details
        ├── BadRequestError       400, 413, 415
        ├── AuthenticationError   401
        ├── PermissionDeniedError 403
        ├── NotFoundError         404
        ├── ConflictError         409
        ├── InvalidRequestError   422 (a field is wrong: .details names it)
        ├── RateLimitedError      429 (after the retries)
        ├── UnavailableError      503 (after the retries)
        └── ServerError           other 5xx
"""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """Base of every error the client raises."""


class ApiConnectionError(ClientError):
    """The API could not be reached (connection refused, DNS, timeout), after the retries."""


class JobTimeout(ClientError):
    """`Job.wait(timeout=...)` gave up; the job itself keeps running."""


class ApiError(ClientError):
    """The API answered with an error envelope `{"error": {"code", "message", "details"}}`."""

    def __init__(self, status_code: int, code: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(f"HTTP {status_code} {code}: {message}")
        self.status_code, self.code, self.message, self.details = status_code, code, message, details or []


class BadRequestError(ApiError):
    """400, 413 or 415: the request could not be read (malformed, too large, wrong media type)."""


class AuthenticationError(ApiError):
    """401: no API key, or one the API does not know (set api_key or KRONOS_API_KEY)."""


class PermissionDeniedError(ApiError):
    """403: the key is valid but lacks the scope for this call."""


class NotFoundError(ApiError):
    """404: no such job, model, schedule or series for this caller."""


class ConflictError(ApiError):
    """409: the request contradicts what is stored (e.g. a result asked for before the job finished)."""


class InvalidRequestError(ApiError):
    """422: a field is invalid; `details` lists `{"field", "message"}` per problem."""


class RateLimitedError(ApiError):
    """429 after the client's retries."""


class UnavailableError(ApiError):
    """503 after the client's retries (database or broker down, queue full)."""


class ServerError(ApiError):
    """Any other 5xx."""


_BY_STATUS = {400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
              409: ConflictError, 413: BadRequestError, 415: BadRequestError, 422: InvalidRequestError,
              429: RateLimitedError, 503: UnavailableError}


def error_from_response(response: httpx.Response) -> ApiError:
    """The typed error for an error response; a body without the envelope keeps its text as message."""
    try:
        body = response.json()["error"]
        code, message, details = str(body.get("code")), str(body.get("message")), list(body.get("details") or [])
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message, details = f"http_{response.status_code}", response.text[:500], []
    cls = _BY_STATUS.get(response.status_code, ServerError if response.status_code >= 500 else ApiError)
    return cls(response.status_code, code, message, details)
