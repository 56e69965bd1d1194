"""The fleet-sharing decisions: workload, priorities, fan-out sizes and chunk sizes."""

from __future__ import annotations

import pytest

from kronos_jobs.core.names import JobKind
from kronos_jobs.core.routing import slots_of
from kronos_jobs.core.names import Queue
from kronos_jobs.core.workload import (
    DEFAULT_PRIORITY,
    PRIORITY_MAX,
    PRIORITY_MIN,
    Workload,
    broker_priority,
    chunk_series,
    fanout_batch_size,
    job_priority,
    split_sizes,
    workload_of,
)


def test_people_are_interactive_and_schedules_are_bulk():
    assert workload_of(JobKind.FORECAST, scheduled=False) is Workload.INTERACTIVE
    assert workload_of(JobKind.FINETUNE, scheduled=False) is Workload.INTERACTIVE
    assert workload_of(JobKind.FORECAST, scheduled=True) is Workload.BULK
    assert workload_of("backtest", scheduled=False) is Workload.BULK


def test_interactive_default_outranks_bulk_and_requests_are_kept():
    assert job_priority(Workload.INTERACTIVE, None) > job_priority(Workload.BULK, None)
    assert job_priority(Workload.BULK, 9) == 9 and job_priority(Workload.INTERACTIVE, 0) == 0
    with pytest.raises(ValueError, match="priority"):
        job_priority(Workload.INTERACTIVE, PRIORITY_MAX + 1)


def test_higher_priority_gets_the_lower_broker_step():
    steps = [broker_priority(p) for p in range(PRIORITY_MIN, PRIORITY_MAX + 1)]
    assert steps == sorted(steps, reverse=True) and steps[-1] == 0 and steps[0] == 9
    assert broker_priority(DEFAULT_PRIORITY[Workload.INTERACTIVE]) < broker_priority(DEFAULT_PRIORITY[Workload.BULK])


@pytest.mark.parametrize(("n", "slots", "max_batch", "size", "jobs"), [
    (200, 2, 250, 100, 2),  # the night: one job before, now one per process
    (1000, 2, 250, 250, 4),  # bounded by the maximum batch: more jobs than slots
    (1000, 16, 2000, 63, 16),  # eight GPUs with two slots each: every slot gets a job
    (3, 8, 250, 1, 3),  # fewer symbols than slots: one symbol per job
    (10, 0, 250, 10, 1),  # no live worker: one job waits for the first one
])
def test_fanout_spreads_over_live_slots_within_the_maximum(n, slots, max_batch, size, jobs):
    assert fanout_batch_size(n, slots, max_batch) == size
    assert -(-n // size) == jobs


def test_chunks_follow_the_measured_cost():
    assert chunk_series(None, 3.0, 500, probe=4) == 4  # nothing measured yet
    assert chunk_series((0.0, 0.1), 3.0, 500, probe=4) == 30  # 0.1 s per series: 30 in 3 s
    assert chunk_series((0.5, 0.1), 3.0, 500, probe=4) == 25  # 0.5 s of it is fixed: 25 fit
    assert chunk_series((0.05, 0.001), 3.0, 500, probe=4) == 500  # a fast GPU: the whole remainder
    # A slow CPU (2.7 s fixed + 0.3 s per series): not one series per chunk, but enough that the
    # fixed part is a quarter of the chunk, so the night does not pay it for every series.
    assert chunk_series((2.7, 0.3), 3.0, 500, probe=4) == 27
    assert chunk_series((0.0, 5.0), 3.0, 500, probe=4) == 1  # slower than one series per chunk


def test_slots_count_the_concurrency_of_consumers_of_the_queue():
    workers = [{"queues": ["forecast.cpu"], "concurrency": 2}, {"queues": ["forecast.cpu", "finetune.cpu"], "concurrency": 1},
               {"queues": ["forecast.gpu"], "concurrency": 4}]
    assert slots_of(Queue.FORECAST_CPU, workers) == 3 and slots_of(Queue.FORECAST_GPU, workers) == 4
    assert slots_of(Queue.FINETUNE_GPU, workers) == 0


def test_the_cost_model_sees_the_fixed_part_once_two_chunk_sizes_are_measured():
    from kronos_jobs.jobs import pace

    key = pace.shape_key("m", "cpu", 400, 48, 1)
    pace.forget()
    assert pace.cost_model(key) is None
    pace.record(key, 4, 3.9)
    assert pace.cost_model(key) == (0.0, 3.9 / 4)  # one size: cost per series only
    pace.record(key, 1, 3.0)
    fixed, per_series = pace.cost_model(key)
    assert fixed == pytest.approx(2.7) and per_series == pytest.approx(0.3)
    pace.forget()


@pytest.mark.parametrize(("n", "batch", "slots", "max_series", "min_series", "sizes"), [
    (200, 64, 2, 250, 8, [128, 72]),  # whole batches, as even as two slots allow
    (100, 64, 2, 250, 8, [64, 36]),
    (65, 64, 2, 250, 8, [65]),  # a one-series part would cost a worker's fixed model time: it joins the first
    (30, 64, 4, 250, 8, [30]),  # one batch: nothing to split
    (1000, 64, 8, 250, 8, [128] * 7 + [104]),
    (1000, 64, 2, 250, 8, [192, 192, 192, 192, 128, 104]),  # at most three batches (192 <= 250) a part
    (300, 64, 0, 250, 8, [192, 108]),  # nobody live: only the maximum cuts it
    (7, 2, 2, 250, 1, [4, 3]),
])
def test_a_large_job_splits_into_whole_batches_over_the_live_slots(n, batch, slots, max_series, min_series, sizes):
    got = split_sizes(n, batch=batch, slots=slots, max_series=max_series, min_series=min_series)
    assert got == sizes and sum(got) == n
    assert all(size % batch == 0 for size in got[:-1])  # every part but the last starts on a batch boundary
