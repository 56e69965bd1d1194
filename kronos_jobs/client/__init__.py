"""The kronos-jobs Python client: `Client`, `AsyncClient`, job handles and typed errors."""

from kronos_jobs.client.client import AsyncClient, Client
from kronos_jobs.client.errors import (
    ApiConnectionError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    InvalidRequestError,
    JobTimeout,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    UnavailableError,
)
from kronos_jobs.client.jobs import AsyncJob, Job

__all__ = [
    "ApiConnectionError", "ApiError", "AsyncClient", "AsyncJob", "AuthenticationError", "BadRequestError", "Client",
    "ClientError", "ConflictError", "InvalidRequestError", "Job", "JobTimeout", "NotFoundError",
    "PermissionDeniedError", "RateLimitedError", "ServerError", "UnavailableError",
]
