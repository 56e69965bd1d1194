"""What `wait` draws: series-steps that move within a chunk, and no made-up rate for a finished job."""

from __future__ import annotations

import io

from kronos_jobs.client.progress import ProgressBar, job_progress


def job(state="running", done=0, total=3, detail=None, kind="forecast"):
    return {"id": "abcdef123456", "kind": kind, "state": state, "params": {"pred_len": 4, "n_series": 3},
            "progress": {"done": done, "total": total, "detail": detail or {}}}


def test_forecast_progress_counts_series_steps():
    assert job_progress(job(done=0, total=0)) == (0, 12, "series-step")  # not claimed yet: from params
    assert job_progress(job(done=0, detail={"series_steps_done": 5, "series_steps_total": 12})) == (5, 12, "series-step")
    assert job_progress(job(done=2)) == (8, 12, "series-step")
    assert job_progress(job(state="succeeded", done=3, detail={"series_steps_done": 7})) == (12, 12, "series-step")
    assert job_progress(job(kind="finetune", done=40, total=100)) == (40, 100, "step")


def test_an_already_finished_job_shows_no_rate():
    out = io.StringIO()
    with ProgressBar(job(state="succeeded", done=3), file=out) as bar:
        bar.update(job(state="succeeded", done=3))
    text = out.getvalue()
    assert "12/12" in text and "?series-step/s" in text.replace(" ", "")


def test_the_bar_moves_within_a_chunk():
    out = io.StringIO()
    with ProgressBar(job(), file=out) as bar:
        bar.update(job(detail={"series_steps_done": 6, "series_steps_total": 12}))
        assert bar.bar.n == 6
        bar.update(job(state="succeeded", done=3))
        assert bar.bar.n == 12
