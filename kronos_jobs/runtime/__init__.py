"""Processes: Celery tasks, the worker bootstrap (device, registration, drain), the beat scheduler
and the one-machine launcher. Imported only by worker-side and CLI server commands."""
