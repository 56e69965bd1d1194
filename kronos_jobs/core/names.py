"""Names shared by the API, the workers and the CLI: job states, job kinds, pools and queues.

Every literal here has exactly one home; import it instead of writing the string again.
"""

from __future__ import annotations

from enum import Enum

# Input bars (and given future timestamps) carry each timestamp's UTC offset in minutes next to the
# UTC `timestamp`: the model sees local wall-clock time = UTC + offset (kronos_jobs/inputs/wall_clock.py).
UTC_OFFSET_COLUMN = "utc_offset_minutes"


class JobState(str, Enum):
    QUEUED = "queued"  # row committed, task sent (or about to be re-sent by the reconciler)
    RUNNING = "running"  # a worker holds the lease and heartbeats it
    SUCCEEDED = "succeeded"  # every symbol produced a forecast (or the fine-tune finished)
    PARTIALLY_SUCCEEDED = "partially_succeeded"  # some symbols failed, the rest have results
    FAILED = "failed"  # nothing usable was produced; `error` says why
    CANCELLED = "cancelled"  # stopped by a user before finishing

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.PARTIALLY_SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)


class JobKind(str, Enum):
    FORECAST = "forecast"
    FINETUNE = "finetune"
    BACKTEST = "backtest"  # rolling-origin evaluation; runs on the forecast queues


class DevicePreference(str, Enum):
    """What a job asks for; routing turns it into a queue."""

    AUTO = "auto"  # a live GPU worker if there is one, else CPU
    CPU = "cpu"
    GPU = "gpu"


class Pool(str, Enum):
    CPU = "cpu"
    GPU = "gpu"


class Queue(str, Enum):
    FORECAST_CPU = "forecast.cpu"
    FORECAST_GPU = "forecast.gpu"
    FINETUNE_CPU = "finetune.cpu"
    FINETUNE_GPU = "finetune.gpu"


# Kinds that share another kind's queues (and so its workers and routing).
QUEUE_KIND: dict[JobKind, JobKind] = {JobKind.BACKTEST: JobKind.FORECAST}


def queue_for(kind: JobKind, pool: Pool) -> Queue:
    """The queue that carries jobs of `kind` to workers of `pool`."""
    kind = QUEUE_KIND.get(JobKind(kind), JobKind(kind))
    return Queue(f"{kind.value}.{Pool(pool).value}")


# Queues each pool consumes. A GPU-pool worker whose device fell back to CPU consumes
# POOL_QUEUES[Pool.CPU] instead, so GPU jobs never run on a CPU unnoticed.
POOL_QUEUES: dict[Pool, tuple[Queue, ...]] = {
    Pool.CPU: (Queue.FORECAST_CPU, Queue.FINETUNE_CPU),
    Pool.GPU: (Queue.FORECAST_GPU, Queue.FINETUNE_GPU),
}

# Celery task names (tasks carry only the job id).
TASK_RUN_FORECAST = "kronos_jobs.run_forecast"
TASK_RUN_FINETUNE = "kronos_jobs.run_finetune"
TASK_RUN_BACKTEST = "kronos_jobs.run_backtest"
TASK_PRUNE = "kronos_jobs.prune"  # beat: delete what retention lets go (jobs/retention.py)

DEFAULT_TENANT = "default"


class Scope(str, Enum):
    """What an API key may do. `admin` includes the other two."""

    READ = "read"  # GET: jobs, results, series, schedules, models, workers
    SUBMIT = "submit"  # create, change, cancel and delete the tenant's jobs, series, schedules, models
    ADMIN = "admin"  # everything, plus what identifies the deployment: hostnames, pids, versions


# Tenant names: what a key's tenant may be called (they also appear in logs and metrics).
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Result columns, in order; quantile columns follow as q<level>_<column>.
PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = ("open", "high", "low", "close", "volume", "amount")
RESULT_COLUMNS = ("symbol", "timestamp", *BAR_COLUMNS)


def quantile_column(level: float, column: str) -> str:
    """`q0.1_close` for level 0.1 and column close (levels printed without trailing zeros)."""
    return f"q{level:g}_{column}"


class RunTrigger(str, Enum):
    """Why a schedule run exists (schedule_runs.trigger)."""

    SCHEDULE = "schedule"  # the beat found the cron occurrence due (the latest one, after downtime)
    MANUAL = "manual"  # POST /v1/schedules/{id}/run or `kronos-jobs schedules run`


SOURCE_STORE = "store"  # job_inputs.source of a forecast whose bars were read from the series store
