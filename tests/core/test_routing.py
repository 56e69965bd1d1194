"""routing.choose_queue: a pure function, so no broker and no database."""

from types import SimpleNamespace

import pytest

from kronos_jobs.core.names import POOL_QUEUES, DevicePreference, JobKind, Pool, Queue
from kronos_jobs.core.routing import choose_queue, consumers_of


def worker(*queues):
    return SimpleNamespace(queues=[q.value for q in queues])


GPU_WORKER = worker(*POOL_QUEUES[Pool.GPU])
CPU_WORKER = worker(*POOL_QUEUES[Pool.CPU])
FALLEN_BACK_GPU_WORKER = worker(*POOL_QUEUES[Pool.CPU])  # a gpu-pool worker whose device fell back


@pytest.mark.parametrize(
    "kind, device, workers, queue, reason_has",
    [
        (JobKind.FORECAST, "gpu", [GPU_WORKER], Queue.FORECAST_GPU, "requested gpu"),
        (JobKind.FORECAST, "gpu", [CPU_WORKER], Queue.FORECAST_GPU, "warning: no live worker consumes forecast.gpu"),
        (JobKind.FORECAST, "cpu", [GPU_WORKER, CPU_WORKER], Queue.FORECAST_CPU, "requested cpu"),
        (JobKind.FORECAST, "cpu", [GPU_WORKER], Queue.FORECAST_CPU, "warning: no live worker consumes forecast.cpu"),
        (JobKind.FORECAST, "auto", [GPU_WORKER, CPU_WORKER], Queue.FORECAST_GPU, "1 live GPU worker(s)"),
        (JobKind.FORECAST, "auto", [CPU_WORKER], Queue.FORECAST_CPU, "using CPU"),
        (JobKind.FORECAST, "auto", [FALLEN_BACK_GPU_WORKER], Queue.FORECAST_CPU, "no live worker consumes forecast.gpu"),
        (JobKind.FORECAST, "auto", [], Queue.FORECAST_CPU, "forecast.cpu either"),
        (JobKind.FINETUNE, "auto", [GPU_WORKER], Queue.FINETUNE_GPU, "finetune.gpu"),
        (JobKind.FINETUNE, "auto", [worker(Queue.FORECAST_GPU)], Queue.FINETUNE_CPU, "using CPU"),
        (JobKind.FINETUNE, "cpu", [CPU_WORKER], Queue.FINETUNE_CPU, "requested cpu"),
    ],
)
def test_choose_queue(kind, device, workers, queue, reason_has):
    chosen, reason = choose_queue(kind, device, workers)
    assert chosen is queue
    assert reason_has in reason


def test_plain_requests_without_warning():
    assert choose_queue(JobKind.FORECAST, DevicePreference.GPU, [GPU_WORKER])[1] == "requested gpu"
    assert choose_queue(JobKind.FORECAST, DevicePreference.CPU, [CPU_WORKER])[1] == "requested cpu"


def test_workers_as_dicts_and_enum_queues():
    assert consumers_of(Queue.FORECAST_GPU, [{"queues": [Queue.FORECAST_GPU]}, {"queues": None}]) == 1


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError):
        choose_queue(JobKind.FORECAST, "tpu", [])
