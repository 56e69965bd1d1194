"""The one settings object shared by the API, the workers and the CLI.

Only this module reads `KRONOS_*` environment variables. Everything else receives a `Settings`
(or plain values taken from it). With nothing configured, everything runs on one machine: a SQLite
file and kombu's filesystem transport under `data_dir`, no server needed.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# KRONOS_DEVICE takes model/device.py's device grammar. It is checked here with this pattern rather
# than by importing model.device, because settings load in the API, which never imports torch;
# tests/core/test_settings.py checks that both accept exactly the same specs.
DEVICE_SPEC_FORMS = "auto, cpu, cuda, cuda:N, mps"
_DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
# Older examples shipped this database password; a deployment still using it is refused.
PLACEHOLDER_PASSWORD = "change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KRONOS_", env_file=None, extra="ignore")

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path("kronos-data"), description="Root of the embedded default: SQLite file, broker folders, artifacts.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/kronos.db. PostgreSQL: postgresql+psycopg://user@host/db")
    broker_url: str | None = Field(None, description="Celery broker URL; default filesystem:// under <data_dir>/broker. Production: redis://host:6379/0")
    artifacts_dir: Path | None = Field(None, description="Fine-tune checkpoints and registered models; default <data_dir>/artifacts.")
    hf_cache_dir: Path | None = Field(None, description="Hugging Face cache for published checkpoints; default: huggingface_hub's own.")
    # A job's `model` comes from untrusted clients: a local checkpoint directory is accepted only
    # inside one of these roots (after symlinks and `..` are followed), never anywhere on disk.
    model_dirs: Annotated[list[Path] | None, NoDecode] = Field(
        None, description="Roots that may hold local checkpoint directories (model/ + tokenizer/), named by a job's "
                          "`model` absolutely or relative to a root; a JSON list or paths separated by os.pathsep; "
                          "default [<data_dir>/models].")

    # --- API and CLI -------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_url: str | None = Field(None, description="Where the CLI finds the API; default http://<api_host>:<api_port>.")
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="Largest accepted request body / uploaded file.")
    max_series_per_job: int = Field(10_000, ge=1)
    max_bars_per_series: int = Field(20_000, ge=2)

    # --- workers -------------------------------------------------------------------------------
    device: str = Field("auto", description="Torch device a worker resolves at start-up: auto, cpu, cuda, cuda:N, mps.")
    worker_concurrency: int = Field(1, ge=1, description="Prefork child processes per worker.")
    torch_threads: int | None = Field(None, ge=1, description="Torch threads per child; default cores // concurrency.")
    default_model: str = "kronos-small"
    model_cache_size: int = Field(2, ge=1, description="Models kept per worker process (LRU by model, device, dtype).")
    max_batch_size: int = Field(64, ge=1, description="Series per predict_batch chunk; bounds memory.")
    autocast_dtype: Literal["none", "bf16", "fp16"] = Field("none", description="Opt-in reduced precision on CUDA workers.")
    cpu_kernel: Literal["auto", "addmm", "onednn"] = Field(
        "auto", description="Float32 matrix kernel of CPU workers: auto (the fastest measured on this CPU that agrees "
                            "with float64, kept under $XDG_CACHE_HOME/kronos/kernels), or force addmm / onednn.")
    cpu_precision: Literal["fp32", "approximate-bf16"] = Field(
        "fp32", description="CPU workers' arithmetic; approximate-bf16 is opt-in, needs AVX-512 BF16 or AMX (jobs fail "
                            "with the reason elsewhere) and may change forecasts slightly.")

    # --- reliability ---------------------------------------------------------------------------
    forecast_soft_time_limit: int = Field(3_600, ge=1, description="Seconds before a forecast task gets SoftTimeLimitExceeded.")
    forecast_time_limit: int = Field(3_900, ge=1, description="Seconds before a forecast task's process is killed.")
    finetune_soft_time_limit: int = Field(86_400, ge=1)
    finetune_time_limit: int = Field(87_000, ge=1)
    visibility_timeout: int | None = Field(None, ge=1, description="Redis redelivery timeout; default 2 x the longest hard limit.")
    lease_seconds: int = Field(60, ge=2, description="A running job's lease; another worker may take the job only after it lapses.")
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a worker renews its job lease and its registration.")
    worker_stale_seconds: int = Field(60, ge=1, description="A worker with no heartbeat for this long is not live.")
    max_retries: int = Field(3, ge=0, description="Retries of transient errors (database, broker) per task.")
    broker_polling_interval: float = Field(0.05, gt=0, description="Polling interval of server-less brokers (filesystem).")
    log_level: str = "INFO"

    # --- schedules -----------------------------------------------------------------------------
    schedule_batch_symbols: int = Field(250, ge=1, description="Most symbols per forecast job when a schedule run fans out to CPU workers (runs are split over at least as many jobs as live worker slots).")
    scheduler_interval: float = Field(5.0, gt=0, description="Seconds between the beat's reads of the schedules table.")

    # --- hostile input and recovery (robust) -----------------------------------------------------
    max_upload_rows: int = Field(2_000_000, ge=1, description="Data rows an uploaded CSV or Parquet file may hold, counted before parsing.")
    upload_parse_seconds: float = Field(30.0, gt=0, description="Time limit for parsing one upload; the parsing process is killed after it.")
    upload_parse_workers: int = Field(2, ge=1, description="Processes the API parses uploads in (off its request threads).")
    upload_parse_queue: int = Field(16, ge=1, description="Uploads waiting for a parsing process before the API answers 503.")
    dispatch_interval: float = Field(2.0, gt=0, description="Seconds between beat's sends of queued jobs whose task was never sent (the outbox).")
    dispatch_after_seconds: float = Field(5.0, ge=0, description="A queued job unsent for this long is sent by the dispatcher.")
    transient_retries: int = Field(40, ge=0, description="Retries of a task hit by a database or broker outage; at the backoff cap (full jitter) they span about 5 minutes.")
    retry_backoff_max: int = Field(15, ge=1, description="Cap in seconds of the backoff between those retries: a task finds the service back within this long.")
    cancel_check_seconds: float = Field(1.0, gt=0, description="At most one cancel check per this many seconds while a forecast decodes.")
    # --- artifact store and retention (issue 15: several machines, a year of nights) -----------
    artifacts_url: str | None = Field(
        None, description="Where fine-tune checkpoints, resumable training state and registered models are kept: a "
                          "local path, or an object store URL such as s3://bucket/prefix; default KRONOS_ARTIFACTS_DIR. "
                          "Credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID, ...).")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph...) for s3:// artifact URLs; "
                                                          "default: AWS itself.")
    model_cache_dir: Path | None = Field(None, description="Local copies of registered models fetched from an object "
                                                           "store, one folder per checksum; default <data_dir>/model-cache.")
    # Days to keep each kind of record after its job (or run) finished; 0 keeps it forever.
    retain_inputs_days: int = Field(30, ge=0, description="Days to keep a finished job's input bars.")
    retain_results_days: int = Field(365, ge=0, description="Days to keep a finished forecast's result rows.")
    retain_jobs_days: int = Field(365, ge=0, description="Days to keep finished job rows (metadata, errors).")
    retain_schedule_runs_days: int = Field(365, ge=0, description="Days to keep finished schedule runs.")
    retain_retired_models_days: int = Field(90, ge=0, description="Days to keep a retired model's artifact files.")
    prune_batch_rows: int = Field(5_000, ge=1, description="Rows deleted per transaction when pruning (bounds lock time).")
    prune_interval_seconds: float = Field(3_600.0, gt=0, description="How often beat prunes what retention lets go.")

    # --- auth, tenants and browser safety (issue 11) -------------------------------------------
    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="API keys: on = every /v1 request needs a key; off = no keys (only while KRONOS_API_HOST is "
                            "loopback); auto = off only for the embedded default (no KRONOS_DATABASE_URL) bound to "
                            "loopback, on otherwise.")
    api_key: str | None = Field(None, description="The key the CLI and the Python client send (Authorization: Bearer).")
    auth_cache_seconds: float = Field(
        5.0, ge=0, description="How long an API process trusts a key it has looked up (a revoke takes effect within "
                               "this time); 0 = look every key up on every request.")
    rate_limit: str | None = Field(
        "600/minute", description="Requests per API key, in the `limits` package's notation (e.g. 10/second;600/minute); "
                                  "empty = no limit. Counted in Redis when the broker is Redis, in memory otherwise.")
    max_inflight_jobs: int | None = Field(
        1_000, ge=1, description="Queued plus running jobs a tenant may have; a submit beyond it answers 429. Empty = no quota.")
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        ["localhost", "127.0.0.1", "::1"], description="Host header values the API answers (DNS-rebinding guard); a JSON "
                                                       "list or comma-separated; * accepts any.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [], description="Browser origins allowed to call the API cross-site (e.g. https://ops.example.com); default none.")
    # --- sharing the fleet: priorities, bulk chunks, fan-out by capacity, tenant fairness --------
    queue_policy: Literal["priority", "fifo"] = Field(
        "priority", description="priority: interactive jobs go first, bulk jobs yield between chunks and schedule runs "
                                "fan out over the live worker slots; fifo: no message priorities, bulk jobs run whole, "
                                "fixed fan-out batches (the behaviour before priorities; kept for comparison).")
    bulk_chunk_seconds: float = Field(3.0, gt=0, description="Model time a bulk job's chunk aims at on the worker's device; an interactive job waits at most about one chunk.")
    bulk_probe_series: int = Field(4, ge=1, description="Series in a worker's first chunk of a shape, before it has measured its throughput.")
    schedule_batch_symbols_gpu: int = Field(2_000, ge=1, description="Most symbols per forecast job when a schedule run fans out to GPU workers.")
    split_min_series: int = Field(8, ge=1, description="Fewest series in one part when a large POSTed forecast is split over the live worker slots (a smaller last part joins the one before it).")
    tenant_bulk_limit: int = Field(0, ge=0, description="Bulk tasks of one tenant running at once; a claim over it waits and retries. 0 = no limit.")

    # --- backtests and live scoring (issue 10) -----------------------------------------------
    score_interval: float = Field(300.0, gt=0, description="Seconds between the beat's live scoring of stored forecasts.")

    # --- looking at the service: progress, worker metrics (issue 12) -------------------
    progress_write_seconds: float = Field(1.0, gt=0, description="Least seconds between a forecast's progress writes within a chunk.")
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port where each worker serves Prometheus metrics of all its processes; none when unset.")

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        spec = str(value).strip().lower()
        if not _DEVICE_SPEC.match(spec):  # name the variable: the user set KRONOS_DEVICE, not "device"
            raise ValueError(f"KRONOS_DEVICE: device {value!r} is not one of {DEVICE_SPEC_FORMS}")
        return spec

    @field_validator("model_dirs", mode="before")
    @classmethod
    def _path_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"KRONOS_MODEL_DIRS: not a JSON list of paths: {exc}") from None
        return [part for part in value.split(os.pathsep) if part.strip()]

    @field_validator("trusted_hosts", "cors_origins", mode="before")
    @classmethod
    def _name_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not a JSON list of names: {exc}") from None
        return [part.strip() for part in value.split(",") if part.strip()]

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_form(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"KRONOS_RATE_LIMIT: {value!r} is not a rate like 10/second;600/minute ({exc})") from None
        return value.strip()

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> "Settings":
        for kind in ("forecast", "finetune"):
            soft, hard = getattr(self, f"{kind}_soft_time_limit"), getattr(self, f"{kind}_time_limit")
            if soft >= hard:
                raise ValueError(f"KRONOS_{kind.upper()}_SOFT_TIME_LIMIT ({soft}) must be below KRONOS_{kind.upper()}_TIME_LIMIT ({hard})")
        if self.visibility_timeout is not None and self.visibility_timeout <= self.longest_time_limit:
            raise ValueError(
                f"KRONOS_VISIBILITY_TIMEOUT ({self.visibility_timeout}) must exceed the longest task time limit "
                f"({self.longest_time_limit}), or Redis redelivers tasks that are still running"
            )
        if self.retain_jobs_days and self.retain_results_days and self.retain_jobs_days < self.retain_results_days:
            raise ValueError(f"KRONOS_RETAIN_JOBS_DAYS ({self.retain_jobs_days}) must be at least KRONOS_RETAIN_RESULTS_DAYS "
                             f"({self.retain_results_days}): a result is served through its job row")
        if self.retain_jobs_days and not self.retain_results_days:
            raise ValueError("KRONOS_RETAIN_JOBS_DAYS is set but KRONOS_RETAIN_RESULTS_DAYS is 0 (keep forever): results "
                             "cannot outlive their job rows")
        if self.heartbeat_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"KRONOS_HEARTBEAT_SECONDS ({self.heartbeat_seconds}) must be at most half of KRONOS_LEASE_SECONDS ({self.lease_seconds})"
            )
        if self.database_url and f":{PLACEHOLDER_PASSWORD}@" in self.database_url:
            raise ValueError(f"KRONOS_DATABASE_URL uses the placeholder password {PLACEHOLDER_PASSWORD!r}: set a real one")
        if self.auth == "off" and not self.binds_loopback:
            raise ValueError(f"KRONOS_AUTH=off needs KRONOS_API_HOST to be a loopback address, not {self.api_host!r}: "
                             "anyone who can reach the API would own it")
        return self

    # --- derived values (one place for each default) -------------------------------------------
    @property
    def longest_time_limit(self) -> int:
        return max(self.forecast_time_limit, self.finetune_time_limit)

    @property
    def effective_visibility_timeout(self) -> int:
        return self.visibility_timeout or 2 * self.longest_time_limit

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'kronos.db').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def effective_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def effective_artifacts_url(self) -> str:
        return self.artifacts_url or str(self.effective_artifacts_dir)

    @property
    def effective_model_cache_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "model-cache").resolve()

    @property
    def effective_model_dirs(self) -> list[Path]:
        roots = self.model_dirs if self.model_dirs is not None else [self.data_dir / "models"]
        return [root.expanduser().resolve() for root in roots]

    @property
    def effective_api_url(self) -> str:
        return (self.api_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def api_auth_headers(self) -> dict[str, str]:
        """What a client of the API sends to authenticate (KRONOS_API_KEY), or nothing."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def binds_loopback(self) -> bool:
        return self.api_host.strip("[]").lower() in ("localhost", "::1") or self.api_host.startswith("127.")

    @property
    def auth_required(self) -> bool:
        """Whether /v1 requests need an API key (KRONOS_AUTH resolved)."""
        if self.auth == "auto":
            return not (self.database_url is None and self.binds_loopback)
        return self.auth == "on"

    def effective_torch_threads(self, concurrency: int | None = None) -> int:
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // (concurrency or self.worker_concurrency))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
