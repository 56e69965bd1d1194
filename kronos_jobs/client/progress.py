"""A job's progress as one number that moves, and the tqdm bar `wait(progress=True)` and
`kronos-jobs wait` draw from it.

A forecast reports symbols done and, while a chunk decodes, series-steps (one forecast bar of one
symbol) in `progress.detail`; a fine-tune reports optimiser steps. The bar counts from what was
done when watching began (tqdm's `initial`), so an already finished job shows no made-up rate.
"""

from __future__ import annotations

import sys
from typing import Any

TERMINAL = {"succeeded", "partially_succeeded", "failed", "cancelled"}


def job_progress(job: dict[str, Any]) -> tuple[int, int, str]:
    """(done, total, unit) of a job as the API returns it: series-steps for forecasts, optimiser
    steps for fine-tunes, else what `progress` counts."""
    progress = job.get("progress") or {}
    done, total = int(progress.get("done") or 0), int(progress.get("total") or 0)
    if job.get("kind") == "finetune":
        return done, total, "step"
    params = job.get("params") or {}
    pred_len, symbols = int(params.get("pred_len") or 0), total or int(params.get("n_series") or 0)
    if job.get("kind") != "forecast" or not (pred_len and symbols):
        return done, total, "item"
    steps_total = symbols * pred_len
    if job.get("state") in TERMINAL:
        return steps_total, steps_total, "series-step"
    detail = progress.get("detail") or {}
    steps = max(done * pred_len, int(detail.get("series_steps_done") or 0))
    return min(steps, steps_total), steps_total, "series-step"


class ProgressBar:
    """A tqdm bar fed with successive job dicts (`update(job)`); a context manager."""

    def __init__(self, job: dict[str, Any], *, file=None, desc: str | None = None):
        from tqdm.auto import tqdm

        done, total, unit = job_progress(job)
        self.bar = tqdm(total=total or None, initial=done, desc=desc or job["id"][:8], unit=unit,
                        file=file or sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(job.get("state", ""))

    def update(self, job: dict[str, Any]) -> None:
        done, total, _ = job_progress(job)
        if total and self.bar.total != total:
            self.bar.total = total
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(job.get("state", ""))

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
