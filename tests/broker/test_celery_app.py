"""The Celery configuration: reliability settings, the two brokers, and a cheap import."""

from __future__ import annotations

import subprocess
import sys

from kronos_jobs.broker.celery_app import broker_folders, celery_config, make_celery
from kronos_jobs.core.names import TASK_RUN_FINETUNE, TASK_RUN_FORECAST


def test_reliability_settings(settings):
    conf = make_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_acks_on_failure is True and conf.task_acks_on_timeout is True
    assert conf.worker_cancel_long_running_tasks_on_connection_loss and conf.worker_send_task_events
    assert conf.task_ignore_result and conf.result_backend is None and conf.broker_connection_retry_on_startup
    assert not conf.task_routes  # the queue is chosen per job and passed at send time
    limits = conf.task_annotations
    assert limits[TASK_RUN_FORECAST] == {"soft_time_limit": settings.forecast_soft_time_limit,
                                         "time_limit": settings.forecast_time_limit,
                                         "max_retries": settings.transient_retries}
    assert limits[TASK_RUN_FINETUNE]["time_limit"] == settings.finetune_time_limit


def test_redis_visibility_timeout_set_in_all_three_places(settings):
    redis = settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/3", "visibility_timeout": 200_000})
    conf = celery_config(redis)
    assert conf["broker_transport_options"]["visibility_timeout"] == 200_000
    assert conf["result_backend_transport_options"]["visibility_timeout"] == 200_000
    assert conf["visibility_timeout"] == 200_000
    assert conf["broker_transport_options"]["visibility_timeout"] > settings.longest_time_limit
    assert conf["broker_transport_options"]["socket_keepalive"] and conf["broker_transport_options"]["health_check_interval"]


def test_filesystem_broker_one_folder_for_producers_and_consumers(settings):
    options = celery_config(settings)["broker_transport_options"]
    folders = broker_folders(settings)
    assert options["data_folder_in"] == options["data_folder_out"] == str(folders["data"])
    assert options["store_processed"] and options["polling_interval"] == settings.broker_polling_interval
    assert all(folder.is_dir() for folder in folders.values())


def test_import_is_cheap(tmp_path):
    """Importing the app reads no settings, creates no folder, and imports no torch."""
    code = ("import sys, kronos_jobs.broker.celery_app, kronos_jobs.jobs.submit; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2])})
    assert not (tmp_path / "kronos-data").exists()
