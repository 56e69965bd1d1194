"""Errors raised by the job system. The API maps each to one HTTP status in `api/errors.py`.

    KronosJobsError
    ├── InvalidRequest            (422) a request field or uploaded file is wrong; names the field
    │   └── PayloadTooLarge       (413) a body or file is over the configured size
    ├── NotFound                  (404) no such job / model / worker / series / schedule for this tenant
    ├── Conflict                  (409) the request contradicts stored state
    │   ├── IdempotencyConflict   (409) same Idempotency-Key, different body
    │   └── InvalidTransition     (409) e.g. cancelling a finished job
    ├── Unavailable               (503) database or broker unreachable; safe to retry
    └── JobFailure                (-) raised inside workers; never reaches HTTP
        ├── TransientJobError     a retry with backoff may succeed (database, broker, hub hiccup)
        ├── LeaseLost             another worker holds the job's lease; this delivery stops quietly
        ├── JobCancelled          the job was cancelled while running
        └── ModelUnavailable      the checkpoint cannot be loaded (hub unreachable, files missing)
"""

from __future__ import annotations

from typing import Any


class KronosJobsError(Exception):
    """Base of every error the job system raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidRequest(KronosJobsError):
    """A request field, query parameter or uploaded file is invalid; `details` name each field."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, details: list[dict[str, Any]] | None = None):
        if field is not None and not details:
            details = [{"field": field, "message": message}]
        super().__init__(message, details=details)
        self.field = field


class PayloadTooLarge(InvalidRequest):
    """A request body or uploaded file is larger than KRONOS_MAX_UPLOAD_BYTES."""

    code = "payload_too_large"


class NotFound(KronosJobsError):
    """The named resource does not exist for the caller's tenant."""

    code = "not_found"


class Conflict(KronosJobsError):
    """The request contradicts what is stored."""

    code = "conflict"


class IdempotencyConflict(Conflict):
    """An Idempotency-Key was reused with a different request body."""

    code = "idempotency_conflict"


class InvalidTransition(Conflict):
    """A job cannot move from its current state to the asked one (e.g. cancel a finished job)."""

    code = "invalid_transition"


class Unavailable(KronosJobsError):
    """The database or the broker cannot be reached right now."""

    code = "unavailable"


class JobFailure(KronosJobsError):
    """Raised inside a worker while running a job."""

    code = "job_failure"


class TransientJobError(JobFailure):
    """A retry with backoff may succeed (database or broker hiccup, hub timeout)."""

    code = "transient"


class LeaseLost(JobFailure):
    """Another delivery holds the job's lease (or the job is already finished); stop quietly."""

    code = "lease_lost"


class JobCancelled(JobFailure):
    """The job was cancelled while it ran; raised at the next batch or step boundary."""

    code = "cancelled"


class ModelUnavailable(JobFailure):
    """The model's checkpoint cannot be loaded (hub unreachable or offline, files missing or
    mismatched); the message says how to use a local checkpoint or `random:small` instead."""

    code = "model_unavailable"
