"""Sharing the fleet: which work is interactive and which is bulk, priorities, and how bulk work is cut.

Pure decisions, no I/O (like `routing.py`): the API, the schedule fan-out and the workers call them.

* `workload_of`: a job a person asked for (a POSTed forecast, a fine-tune) is interactive; work a
  machine generates in volume (schedule fan-out, backtests) is bulk.
* Priorities are 0..9, higher runs first (the AMQP convention). Interactive jobs default to
  DEFAULT_PRIORITY[INTERACTIVE] and bulk work to DEFAULT_PRIORITY[BULK], so a person's forecast
  posted behind a queued nightly run is taken first. `broker_priority` turns them into the value
  kombu's Redis transport and our filesystem broker order by, where 0 is served first.
* `fanout_batch_size`: how many symbols one job of a schedule run gets, so that every live worker
  slot of the run's queue has a job, within the largest batch a task may carry.
* `chunk_series`: how many series a bulk job's delivery decodes before it yields the worker, so
  that a chunk takes about `target_seconds` of model time on the device it runs on (from the
  worker's measured cost, jobs/pace.py).
"""

from __future__ import annotations

import math
from enum import Enum

from kronos_jobs.core.names import JobKind


class Workload(str, Enum):
    INTERACTIVE = "interactive"  # a person waits for it: runs before bulk work in the same pool
    BULK = "bulk"  # schedule fan-out, backtests: cut into chunks, yields the worker between them


PRIORITY_MIN, PRIORITY_MAX = 0, 9  # kombu's Redis transport and our filesystem broker keep 10 steps
DEFAULT_PRIORITY: dict[Workload, int] = {Workload.INTERACTIVE: 6, Workload.BULK: 3}

# Job kinds that are bulk whoever submits them (the backtest kind, once it exists, is one).
BULK_KINDS = frozenset({"backtest"})


def workload_of(kind: JobKind | str, *, scheduled: bool) -> Workload:
    """Bulk for scheduled work and bulk kinds; interactive for everything a person asked for."""
    kind_value = kind.value if isinstance(kind, JobKind) else str(kind)
    return Workload.BULK if scheduled or kind_value in BULK_KINDS else Workload.INTERACTIVE


def job_priority(workload: Workload | str, requested: int | None) -> int:
    """The job's priority: the request's (already checked to lie within the limits) or the default."""
    if requested is None:
        return DEFAULT_PRIORITY[Workload(workload)]
    if not PRIORITY_MIN <= requested <= PRIORITY_MAX:  # the API schema rejects these with a 422 first
        raise ValueError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {requested}")
    return requested


def broker_priority(priority: int) -> int:
    """The message priority the broker orders by: kombu's Redis transport serves step 0 first."""
    return PRIORITY_MAX - min(max(int(priority), PRIORITY_MIN), PRIORITY_MAX)


def fanout_batch_size(n_symbols: int, slots: int, max_batch: int) -> int:
    """Symbols per job so that the run has at least `slots` jobs (one per live worker slot), but
    never more than `max_batch` symbols in one job."""
    if n_symbols <= 0:
        return max(1, max_batch)
    per_slot = math.ceil(n_symbols / max(1, slots))
    return max(1, min(max_batch, per_slot))


def chunk_series(cost: tuple[float, float] | None, target_seconds: float, max_series: int, probe: int) -> int:
    """Series in one bulk chunk, within [1, max_series]; `probe` series until a cost is known.

    `cost` (fixed seconds, seconds per series), measured on this worker for this shape: the most
    series whose predicted time fits `target_seconds`. When the fixed part alone exceeds the
    target (a slow CPU), a chunk still takes enough series that the fixed part is at most a quarter
    of its time: cutting smaller would not shorten an interactive job's wait much but would
    multiply the night's model time."""
    if cost is None:
        return max(1, min(probe, max_series))
    fixed, per_series = cost
    if per_series <= 0:
        return max(1, max_series)
    fits = (target_seconds - fixed) / per_series
    floor = 3 * fixed / per_series  # the fixed part is a quarter of the chunk
    return max(1, min(max_series, int(max(fits, floor))))


def split_sizes(n_series: int, *, batch: int, slots: int, max_series: int, min_series: int) -> list[int]:
    """Series per part when a large job is split over `slots` live worker slots ([n_series]: not split).

    Parts are whole predictor batches of `batch` series (the last batch may be short), so every
    batch, and the seed it draws from, is the one the unsplit job would run: a split job's
    forecasts equal the unsplit job's, sampled ones included, however many workers were live. As
    many parts as slots, within `max_series` per part where whole batches allow; a part under
    `min_series` (its worker's fixed model cost would outweigh the gain) joins the one before it."""
    if n_series <= 0:
        return [max(0, n_series)]
    batch = max(1, batch)
    batches = [batch] * (n_series // batch) + ([n_series % batch] if n_series % batch else [])
    per_part = max(1, max_series // batch)  # whole batches a part may hold
    wanted = max(min(max(1, slots), len(batches)), math.ceil(len(batches) / per_part))
    parts = []
    for count in _even(len(batches), wanted):
        taken, batches = batches[:count], batches[count:]
        parts.append(sum(taken))
    while len(parts) > 1 and parts[-1] < min_series:
        last = parts.pop()
        parts[-1] += last
    return parts


def _even(n: int, k: int) -> list[int]:
    """`n` items over `k` groups as evenly as possible, larger groups first."""
    base, extra = divmod(n, k)
    return [base + (1 if i < extra else 0) for i in range(k)]
