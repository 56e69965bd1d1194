"""Errors raised by the job system. The API maps each to one HTTP status in `api/errors.py`.

    KronosJobsError
    ├── InvalidRequest            (422) a request field or uploaded file is wrong; names the field
    │   ├── PayloadTooLarge       (413) a body or file is over the configured size
    │   └── UpstreamConfigError   (CLI) an upstream fine-tune YAML that cannot be imported
    ├── NotFound                  (404) no such job / model / worker / series / schedule for this tenant
    ├── Gone                      (410) it existed, but retention deleted it (KRONOS_RETAIN_*)
    ├── Conflict                  (409) the request contradicts stored state
    │   ├── IdempotencyConflict   (409) same Idempotency-Key, different body
    │   └── InvalidTransition     (409) e.g. cancelling a finished job
    ├── Unavailable               (503) database or broker unreachable; safe to retry
    └── JobFailure                (-) raised inside workers; never reaches HTTP
        ├── TransientJobError     a retry with backoff may succeed (database, broker, hub hiccup)
        ├── LeaseLost             another worker holds the job's lease; this delivery stops quietly
        │   └── LeaseHeld         ... and it is live: look again when it would lapse
        ├── JobCancelled          the job was cancelled while running
        ├── JobGivenBack          a shutting-down worker gave the job back; its task is sent again
        ├── TenantBusy            the tenant runs its limit of bulk tasks; the task is sent again later
        ├── StoppedForShutdown    a fine-tune stopped at a step boundary for a shutdown (checkpointed)
        ├── ArtifactVerificationError  a saved checkpoint does not reload to the trained weights
        └── ModelUnavailable      the checkpoint cannot be loaded (hub unreachable, files missing)
            └── ArtifactUnavailable   a registered model's files are missing, corrupt or unreadable in the artifact store
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


def invalid(field: str, problem: str) -> InvalidRequest:
    """An InvalidRequest whose message starts with the field and whose one detail names it."""
    return InvalidRequest(f"{field}: {problem}", field=field, details=[{"field": field, "message": problem}])


class PayloadTooLarge(InvalidRequest):
    """A request body or uploaded file is larger than KRONOS_MAX_UPLOAD_BYTES."""

    code = "payload_too_large"


class UpstreamConfigError(InvalidRequest):
    """The YAML given to `kronos-jobs finetune` is not an upstream fine-tune config, or a key holds an
    unusable value."""


class NotFound(KronosJobsError):
    """The named resource does not exist for the caller's tenant."""

    code = "not_found"


class Gone(KronosJobsError):
    """The job, result or run existed but retention deleted it (kronos_jobs/jobs/retention.py)."""

    code = "gone"


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


class LeaseHeld(LeaseLost):
    """Another delivery holds a live lease on the running job. If its worker died (SIGKILL, OOM),
    the lease lapses in `retry_after` seconds and this delivery should try again then."""

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class JobCancelled(JobFailure):
    """The job was cancelled while it ran; raised at the next batch or step boundary."""

    code = "cancelled"


class JobGivenBack(JobFailure):
    """This delivery gave its job back to the queue (its worker is shutting down and the job saved a
    checkpoint); the task must be sent again so another worker resumes the job."""

    code = "given_back"


class TenantBusy(JobFailure):
    """A bulk job's claim found its tenant already running KRONOS_TENANT_BULK_LIMIT bulk tasks; the
    job stays where it was and its task is sent again after `retry_after` seconds (not a failure)."""

    code = "tenant_busy"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class StoppedForShutdown(JobFailure):
    """The training loop stopped at a step boundary because the worker is shutting down; its
    checkpoint is saved, and the job is given back (JobGivenBack) unless a cancel won."""

    code = "stopped_for_shutdown"

    def __init__(self, phase: str, step: int):
        super().__init__(f"checkpointed for worker shutdown at step {step} ({phase} phase)")
        self.phase, self.step = phase, step


class ArtifactVerificationError(JobFailure):
    """The saved checkpoint does not reload to the trained weights (keys, shapes, values or checksum)."""

    code = "artifact_verification_failed"


class ModelUnavailable(JobFailure):
    """The model's checkpoint cannot be loaded (hub unreachable or offline, files missing or
    mismatched); the message says how to use a local checkpoint or `random:small` instead."""

    code = "model_unavailable"


class ArtifactUnavailable(ModelUnavailable):
    """A registered model's files cannot be fetched from the artifact store (KRONOS_ARTIFACTS_URL):
    an object is missing, its sha256 differs from the manifest or the registry, or access is
    denied. The message names the model and the URL, never credentials."""

    code = "artifact_unavailable"
