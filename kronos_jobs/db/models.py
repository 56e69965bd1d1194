"""Tables. The database is the only source of job state; Celery's result backend is not used.

Every row that belongs to a user carries `tenant_id` (one default tenant until API keys arrive).
Timestamps are stored timezone-aware in UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from kronos_jobs.core.names import DEFAULT_TENANT


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime(timezone=True) that always hands back tz-aware UTC.

    SQLite has no time zone type: it stores the text of the datetime and returns it naive, so
    without this the same column would compare and serialise differently on the two databases.
    Values are normalised to UTC on the way in (naive ones are taken as UTC), which also keeps
    SQLite's text comparisons (leases, cursors) in chronological order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# Deterministic constraint names: SQLite migrations run in batch mode (copy the table), which can
# only drop or alter a constraint it can name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # The reconciler's scans: queued jobs not touched for a while, running jobs by lease.
        Index("ix_jobs_state", "state", "updated_at"),
        Index("ix_jobs_outbox", "state", "sent_at"),  # the dispatcher's scan for unsent queued jobs
        Index("ix_jobs_finished_at", "finished_at"),  # retention's scans (jobs/retention.py)
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex; also the Celery task id
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    kind: Mapped[str] = mapped_column(String(16))  # names.JobKind
    state: Mapped[str] = mapped_column(String(24))  # names.JobState
    device_requested: Mapped[str] = mapped_column(String(8))  # names.DevicePreference
    queue: Mapped[str] = mapped_column(String(32))  # names.Queue
    routing_reason: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(256))  # name, local dir or registry id as requested
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # request minus the bars
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_detail: Mapped[dict[str, Any]] = mapped_column(default=dict)  # e.g. fine-tune phase/epoch/loss
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # {"code","message"}
    symbol_errors: Mapped[list[Any]] = mapped_column(default=list)  # [{"symbol","code","message"}]
    execution_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)  # device, versions, timings...
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # deliveries that claimed the job
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)  # task reached the broker (the outbox)
    # Set when retention deleted the job's input bars / result rows (jobs/retention.py).
    input_pruned_at: Mapped[datetime | None] = mapped_column(nullable=True)
    result_pruned_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # --- sharing the fleet (core/workload.py) ---
    priority: Mapped[int] = mapped_column(Integer, default=6, server_default="6")  # 0..9, higher runs first
    workload: Mapped[str] = mapped_column(String(16), default="interactive", server_default="interactive")
    # When the job last went onto the queue (submit, a bulk chunk's yield, a give-back): the next
    # claim measures its wait from here.
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    queue_wait_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # submit -> first claim
    # A large job split over the live worker slots (jobs/parts.py): the parent counts its `parts`,
    # each part is a job of its own whose `parent_id` names it, deleted once the parent finishes.
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True, index=True)
    parts: Mapped[int | None] = mapped_column(Integer, nullable=True)


class JobChunk(Base):
    """A finished chunk of a bulk job that yielded its worker: the rows wait here until the last
    chunk's delivery writes every chunk's rows, the metadata and the final state in one transaction."""

    __tablename__ = "job_chunks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    start: Mapped[int] = mapped_column(Integer, primary_key=True)  # index of its first series
    stop: Mapped[int] = mapped_column(Integer)  # one past its last series
    rows_parquet: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # NULL: every series failed
    symbol_errors: Mapped[list[Any]] = mapped_column(default=list)
    inference_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    wait_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # queue wait before this chunk
    device: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobInput(Base):
    """The bars a job reads, stored with the job so nothing accepted depends on a temp file."""

    __tablename__ = "job_inputs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    # Parquet bytes, long format: symbol, timestamp, open, high, low, close[, volume, amount].
    bars_parquet: Mapped[bytes] = mapped_column(LargeBinary)
    # Parquet bytes, long format: symbol, timestamp — given future timestamps; NULL = from freq.
    future_parquet: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # inline | csv | parquet | store
    n_series: Mapped[int] = mapped_column(Integer)
    n_bars: Mapped[int] = mapped_column(BigInteger)


class ForecastRow(Base):
    __tablename__ = "forecasts"
    __table_args__ = (
        # One row per (job, symbol, step): a second delivery rewrites, never duplicates.
        UniqueConstraint("job_id", "symbol", "step", name="uq_forecasts_job_symbol_step"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    # No separate job_id index: the unique (job_id, symbol, step) index serves reads and deletes.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    symbol: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(Integer)  # 0-based horizon index
    timestamp: Mapped[datetime] = mapped_column()
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float] = mapped_column(Float)
    amount: Mapped[float] = mapped_column(Float)
    quantiles: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # {"q0.1_close": ...}


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery node name, e.g. cpu@host
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    pool: Mapped[str] = mapped_column(String(8))  # names.Pool asked for on the command line
    queues: Mapped[list[Any]] = mapped_column(default=list)  # what it actually consumes
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    torch_threads: Mapped[int] = mapped_column(Integer, default=1)
    device_requested: Mapped[str] = mapped_column(String(32))
    device_resolved: Mapped[str] = mapped_column(String(32))
    device_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    device_warning: Mapped[str | None] = mapped_column(Text, nullable=True)  # exact fallback text
    device_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ModelVersion(Base):
    """Published checkpoints and fine-tuned versions that forecasts can name."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # e.g. kronos-small, ft-<hex>
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    kind: Mapped[str] = mapped_column(String(16))  # published | finetuned
    base_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_repo: Mapped[str | None] = mapped_column(String(256), nullable=True)
    model_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tokenizer_repo: Mapped[str | None] = mapped_column(String(256), nullable=True)
    tokenizer_revision: Mapped[str | None] = mapped_column(String(64), nullable=True)
    max_context: Mapped[int] = mapped_column(Integer)
    artifact_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    data_summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(nullable=True)
    artifact_pruned_at: Mapped[datetime | None] = mapped_column(nullable=True)  # retention deleted its files


# --- series store and schedules (issue 5) ----------------------------------------------------------


class SeriesBar(Base):
    """One stored bar. The primary key is the upsert key: re-importing a bar replaces it."""

    __tablename__ = "series_bars"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True, default=DEFAULT_TENANT)
    symbol: Mapped[str] = mapped_column(String(128), primary_key=True)
    freq: Mapped[str] = mapped_column(String(32), primary_key=True)  # pandas offset alias, as given
    timestamp: Mapped[datetime] = mapped_column(primary_key=True)  # UTC
    open: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    low: Mapped[float] = mapped_column(Float)
    close: Mapped[float] = mapped_column(Float)
    volume: Mapped[float | None] = mapped_column(Float, nullable=True)
    amount: Mapped[float | None] = mapped_column(Float, nullable=True)


class Schedule(Base):
    """A cron-driven multi-symbol forecast; the database-backed beat reads this table each tick."""

    __tablename__ = "schedules"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_schedules_tenant_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(128))
    cron: Mapped[str] = mapped_column(String(128))  # five-field cron, evaluated in `timezone`
    timezone: Mapped[str] = mapped_column(String(64))  # IANA zone, e.g. America/New_York
    symbols: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)  # NULL = every stored symbol
    freq: Mapped[str | None] = mapped_column(String(32), nullable=True)  # universe filter by frequency
    model: Mapped[str] = mapped_column(String(256))
    device: Mapped[str] = mapped_column(String(8))  # names.DevicePreference
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # lookback, pred_len, sampling, quantiles
    calendar: Mapped[dict[str, Any]] = mapped_column(default=dict)  # kronos_jobs.inputs.calendar spec + per symbol
    min_history: Mapped[int | None] = mapped_column(Integer, nullable=True)  # NULL = lookback
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Occurrences after this instant are due; moved on by each scheduled run and by cron edits.
    anchor_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_run_at: Mapped[datetime | None] = mapped_column(nullable=True)  # informational
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ScheduleRun(Base):
    """One execution of a schedule. (schedule_id, scheduled_for) is unique: two beats, or a tick
    racing a manual trigger, insert one row and the loser reads the winner's."""

    __tablename__ = "schedule_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_schedule_runs_schedule_id_scheduled_for"),
        Index("ix_schedule_runs_state", "state"),
        Index("ix_schedule_runs_finished_at", "finished_at"),  # retention's scans
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    scheduled_for: Mapped[datetime] = mapped_column()
    trigger: Mapped[str] = mapped_column(String(16))  # names.RunTrigger
    state: Mapped[str] = mapped_column(String(24))  # names.JobState: queued (fan-out pending) .. terminal
    progress_done: Mapped[int] = mapped_column(Integer, default=0)  # symbols finished (ok or error)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)  # symbols in the universe
    symbol_errors: Mapped[list[Any]] = mapped_column(default=list)  # [{"symbol","code","message"}]
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)  # timings, batch count
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ScheduleRunJob(Base):
    """The forecast jobs a run fanned out to (one per batch of symbols)."""

    __tablename__ = "schedule_run_jobs"
    __table_args__ = (Index("ix_schedule_run_jobs_job_id", "job_id"),
                      Index("ix_schedule_run_jobs_schedule_id", "schedule_id"))

    run_id: Mapped[str] = mapped_column(ForeignKey("schedule_runs.id", ondelete="CASCADE"), primary_key=True)
    batch: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    schedule_id: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)


class PrunedRecord(Base):
    """A tombstone: retention deleted this job or schedule run, so the API answers 410 Gone, not 404."""

    __tablename__ = "pruned_records"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "job" | "schedule_run"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    pruned_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- API keys (issue 11) ---------------------------------------------------------------------------


class ApiKey(Base):
    """An API key: only the SHA-256 of the token is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public id, also inside the token
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # hex digest; the lookup key
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    scopes: Mapped[list[Any]] = mapped_column(default=list)  # names.Scope values
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


# --- backtests and live scoring (issue 10) -----------------------------------------------------------


class BacktestResult(Base):
    """A backtest's per-origin forecasts and truths, one Parquet table per job (rows are read whole:
    the result endpoint returns all of them, and a job writes them once, in its finish)."""

    __tablename__ = "backtest_results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    # model, kind, lookback, symbol, origin, repeat, step, timestamp, open..amount, q<level>_<column>,
    # actual_open..actual_amount, last_close[, crps]
    rows_parquet: Mapped[bytes] = mapped_column(LargeBinary)
    n_rows: Mapped[int] = mapped_column(BigInteger)


class BacktestMetric(Base):
    """One row of a backtest's metrics table: model x lookback[ x symbol] x step, or x sub-horizon."""

    __tablename__ = "backtest_metrics"
    __table_args__ = (Index("ix_backtest_metrics_job_id", "job_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    model: Mapped[str] = mapped_column(String(256))  # the model as requested, or a baseline's name
    kind: Mapped[str] = mapped_column(String(16))  # model | baseline
    lookback: Mapped[int] = mapped_column(Integer)
    symbol: Mapped[str | None] = mapped_column(String(128), nullable=True)  # NULL: all symbols pooled
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1-based; NULL on sub-horizon rows
    horizon: Mapped[int | None] = mapped_column(Integer, nullable=True)  # steps 1..horizon pooled; NULL on step rows
    n: Mapped[int] = mapped_column(Integer)
    mae: Mapped[float | None] = mapped_column(Float, nullable=True)
    rmse: Mapped[float | None] = mapped_column(Float, nullable=True)
    smape: Mapped[float | None] = mapped_column(Float, nullable=True)
    mase: Mapped[float | None] = mapped_column(Float, nullable=True)
    directional_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    crps: Mapped[float | None] = mapped_column(Float, nullable=True)
    skill: Mapped[float | None] = mapped_column(Float, nullable=True)
    dm_stat: Mapped[float | None] = mapped_column(Float, nullable=True)
    dm_pvalue: Mapped[float | None] = mapped_column(Float, nullable=True)
    bands: Mapped[dict[str, Any]] = mapped_column(default=dict)  # pinball_q<level>, coverage_<lo>_<hi>


class ForecastScore(Base):
    """A stored forecast bar scored against the realized bar: the model's close, the actual close,
    and persistence (the last close the forecast saw). (job, symbol, step) is the idempotency key."""

    __tablename__ = "forecast_scores"
    __table_args__ = (Index("ix_forecast_scores_tenant_timestamp", "tenant_id", "timestamp"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(128), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0-based, as in `forecasts`
    tenant_id: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    schedule_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    model: Mapped[str] = mapped_column(String(256))
    timestamp: Mapped[datetime] = mapped_column()
    forecast: Mapped[float] = mapped_column(Float)
    actual: Mapped[float] = mapped_column(Float)
    naive: Mapped[float] = mapped_column(Float)
    scored_at: Mapped[datetime] = mapped_column(default=utcnow)
