"""Data access: keyword-only functions taking an explicit Session, one module per aggregate.

Functions flush but never commit; the caller owns the transaction (`db.session.session_scope`).
"""

from kronos_jobs.crud import jobs, models, results, workers

__all__ = ["jobs", "models", "results", "workers"]
