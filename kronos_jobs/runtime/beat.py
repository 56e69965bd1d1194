"""The beat scheduler: OUR schedules table, the recovery sweep (the outbox dispatcher and the
reconciler, kronos_jobs/jobs/recovery.py) and live scoring (stored forecasts whose bars arrived,
kronos_jobs/evaluation/scoring.py, every KRONOS_SCORE_INTERVAL seconds). All run inside the beat
process, not as tasks on a worker queue: a backlog of long jobs cannot delay them, and no message
can expire unrun.

Why not a library: sqlalchemy-celery-beat (and django-celery-beat) keep their own tables of
periodic tasks and crontabs, so every schedule would live twice (ours, with universe, forecast
parameters, calendar and runs; theirs, with a crontab row) and the two would have to be kept in
step on every API edit; its task would still need our unique (schedule, time) run row to be safe
against a second beat. celery-redbeat keeps schedules in Redis, which the embedded default does
not have. So this is a small `PersistentScheduler` subclass that, every KRONOS_SCHEDULER_INTERVAL
seconds, calls `kronos_jobs.jobs.schedules.tick(now)`: it reads the schedules table afresh (API changes
take effect on the next tick, no restart), creates due runs through the unique key and fans them
out. The same `tick` is what tests drive directly with a chosen `now`.
"""

from __future__ import annotations

import logging
import time

from celery.beat import PersistentScheduler

from kronos_jobs.broker.celery_app import prune_processed_messages
from kronos_jobs.core.settings import get_settings
from kronos_jobs.db.session import session_scope
from kronos_jobs.evaluation.scoring import score_new_forecasts
from kronos_jobs.jobs import recovery, schedules

logger = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 60.0


class DatabaseScheduler(PersistentScheduler):
    """Ticks the database schedules and the recovery sweep between Celery's own entries."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = get_settings()
        self._next_db_tick = 0.0
        self._next_sweep = 0.0
        self._next_prune = 0.0
        self._next_score = 0.0

    def tick(self, *args, **kwargs) -> float:
        delay = super().tick(*args, **kwargs)
        if time.monotonic() >= self._next_sweep:
            try:
                recovery.sweep(self.settings)
            except Exception as exc:  # database or broker down: the next sweep retries
                logger.warning("beat: recovery sweep failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc,
                               self.settings.dispatch_interval)
            self._next_sweep = time.monotonic() + self.settings.dispatch_interval
        if time.monotonic() >= self._next_prune:  # the filesystem broker's consumed messages
            try:
                prune_processed_messages(self.settings)
            except OSError as exc:
                logger.warning("beat: pruning consumed broker messages failed (%s)", exc)
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        if time.monotonic() >= self._next_score:
            try:
                with session_scope(self.settings) as session:
                    score_new_forecasts(session)
            except Exception:  # a database hiccup must not stop the beat; the next interval retries
                logger.exception("beat: live scoring failed; retrying in %.1f s", self.settings.score_interval)
            self._next_score = time.monotonic() + self.settings.score_interval
        if time.monotonic() >= self._next_db_tick:
            try:
                created = schedules.tick(self.settings)
                if created:
                    logger.info("beat: %d schedule run(s) started: %s", len(created), ", ".join(created))
            except Exception:  # a database hiccup must not stop the beat; the next tick retries
                logger.exception("beat: schedule tick failed; retrying in %.1f s", self.settings.scheduler_interval)
            self._next_db_tick = time.monotonic() + self.settings.scheduler_interval
        return max(0.0, min(delay, self._next_db_tick - time.monotonic(), self._next_sweep - time.monotonic()))
