"""The worker's identity: who runs a job and on which device, as one value.

The worker bootstrap (kronos_jobs/runtime/worker.py) builds it once, after resolving the device,
and registers it; job services take it as an argument and copy `job_metadata()` into each job.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any


@dataclasses.dataclass
class WorkerIdentity:
    """Who this worker is and what it runs on; stored on its row and in every job it runs."""

    worker_id: str
    hostname: str
    pid: int
    pool: str
    queues: list[str]
    concurrency: int
    torch_threads: int
    device_requested: str  # KRONOS_DEVICE as the worker read it ("cpu" for a cpu pool)
    device_resolved: str
    device_name: str | None
    device_warning: str | None
    device_info: dict[str, Any]

    @property
    def device(self) -> str:
        return self.device_resolved

    def job_metadata(self) -> dict[str, Any]:
        """What a job records about the worker that ran it (pid is the child that ran it)."""
        import torch

        return {
            "worker_id": self.worker_id, "worker_host": self.hostname, "worker_pid": os.getpid(),
            "worker_pool": self.pool, "worker_device_requested": self.device_requested,
            "device_resolved": self.device_resolved, "device_name": self.device_name,
            "device_warning": self.device_warning, "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda, "torch_threads": torch.get_num_threads(),
        }
