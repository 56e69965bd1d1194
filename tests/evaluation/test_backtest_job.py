"""The backtest lifecycle in-process (no broker, no worker) on a migrated test database."""

from __future__ import annotations

import numpy as np

from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import backtests as backtest_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import model_cache
from kronos_jobs.jobs.backtest import contexts_for, prepare_series, run_backtest_job
from kronos_jobs.jobs.backtest_submit import BacktestParams, submit_backtest
from kronos_jobs.jobs.registry import resolve_model
from kronos_jobs.testing.factories import load_job, make_bars, run_backtest_to_end, worker_identity

GREEDY = {"temperature": 1.0, "top_k": 1, "top_p": 1.0, "sample_count": 1, "seed": 3}


def submit(settings, checkpoint, bars, **overrides) -> str:
    request = {"models": [str(checkpoint)], "device": "cpu", "lookbacks": [24, 32], "horizon": 5, "horizons": [2, 3],
               "n_windows": 6, "step_size": 3, "sampling": GREEDY, **overrides}
    with session_scope(settings) as session:
        return submit_backtest(session, settings, tenant_id=DEFAULT_TENANT, request=request, bars=bars,
                               source="inline").id


def load(settings, job_id, by_symbol=False):
    with session_scope(settings) as session:
        return (backtest_crud.read_rows(session, job_id=job_id),
                backtest_crud.read_metrics(session, job_id=job_id, by_symbol=by_symbol))


def test_greedy_backtest_equals_the_per_origin_loop(job_settings, tiny_checkpoint):
    bars = make_bars({"AAA": 60, "BBB": 55})
    job_id = submit(job_settings, tiny_checkpoint, bars)
    assert run_backtest_to_end(job_settings, job_id) is JobState.SUCCEEDED
    job = load_job(job_settings, job_id)
    rows, metrics = load(job_settings, job_id)
    assert (job.progress_done, job.progress_total) == (2 * 2 * 6, 2 * 2 * 6)
    model_rows = rows[rows["kind"] == "model"]
    assert len(model_rows) == 2 * 2 * 6 * 5 and set(rows["model"]) == {str(tiny_checkpoint), "naive", "seasonal_naive", "drift"}

    # The same forecasts one origin at a time through predictor.predict.
    spec = resolve_model(str(tiny_checkpoint), model_dirs=job_settings.effective_model_dirs)
    predictor = model_cache.get_predictor(spec, "cpu", job_settings)[0].predictor
    params = BacktestParams.from_job(job.params)
    for s in prepare_series(bars, params):
        for lookback in params.lookbacks:
            for origin in s.origins:
                item = contexts_for(s, int(origin), lookback, params.horizon)
                alone = predictor.predict(item.context, item.x_timestamp, item.y_timestamp, params.horizon,
                                          top_k=1, top_p=1.0, seed=3)
                mine = model_rows[(model_rows.symbol == s.symbol) & (model_rows.lookback == lookback)
                                  & (model_rows.origin == s.stamps[origin])].sort_values("step")
                # The same tokens; the decoder's float32 matmuls of a batch may round the last bit differently.
                np.testing.assert_allclose(mine[["open", "high", "low", "close", "volume", "amount"]].to_numpy(),
                                           alone.to_numpy(dtype="float64"), rtol=1e-6, atol=0)
                truth = bars[(bars.symbol == s.symbol) & (bars.timestamp > s.stamps[origin])].head(5)
                np.testing.assert_array_equal(mine["actual_close"].to_numpy(), truth["close"].to_numpy())
                assert list(mine["timestamp"]) == list(truth["timestamp"])

    # Metrics: every model x lookback x step, then the sub-horizons 2, 3 and 5.
    mine = metrics[metrics.model == str(tiny_checkpoint)]
    assert len(mine) == 2 * (5 + 3)
    assert sorted(mine["horizon"].dropna().unique()) == [2, 3, 5]
    assert mine["skill"].notna().all() and mine["mae"].gt(0).all()
    naive = metrics[(metrics.model == "naive") & metrics.step.notna()]
    assert (naive["skill"] == 0).all()
    per_symbol = load(job_settings, job_id, by_symbol=True)[1]
    assert set(per_symbol["symbol"]) == {"AAA", "BBB"}


def test_backtests_ride_the_forecast_queues_with_their_own_task():
    from kronos_jobs.core.names import TASK_RUN_BACKTEST, TASK_RUN_FORECAST, JobKind, Queue
    from kronos_jobs.core.routing import choose_queue
    from kronos_jobs.jobs.submit import task_for_queue

    assert choose_queue(JobKind.BACKTEST, "auto", []) == choose_queue(JobKind.FORECAST, "auto", [])
    gpu_worker = {"queues": ["forecast.gpu"]}
    assert choose_queue(JobKind.BACKTEST, "auto", [gpu_worker])[0] is Queue.FORECAST_GPU
    assert task_for_queue(Queue.FORECAST_CPU, JobKind.BACKTEST) == TASK_RUN_BACKTEST
    assert task_for_queue(Queue.FORECAST_CPU) == task_for_queue(Queue.FORECAST_CPU, JobKind.FORECAST) == TASK_RUN_FORECAST


def test_a_lost_backtest_is_resent_as_a_backtest(job_settings, tiny_checkpoint, monkeypatch):
    from kronos_jobs.jobs import recovery

    job_id = submit(job_settings, tiny_checkpoint, make_bars({"AAA": 60}))
    sent = []
    monkeypatch.setattr(recovery, "send_job", lambda settings, job_id, queue, kind=None, **options: sent.append((job_id, kind)))
    with session_scope(job_settings) as session:
        recovery.requeue_stale_jobs(session, job_settings, queued_older_than=0)
    assert sent == [(job_id, "backtest")]


def test_cancel_while_running_keeps_no_rows(job_settings, tiny_checkpoint, monkeypatch):
    from kronos_jobs.crud import jobs as job_crud

    job_id = submit(job_settings, tiny_checkpoint, make_bars({s: 60 for s in "ABCD"}))  # 4 x 2 x 6 = 48 forecasts
    real = model_cache.get_predictor

    class CancelOnFirstCall:
        def __init__(self, predictor):
            self.predictor = predictor

        def predict_batch(self, *args, **kwargs):
            with session_scope(job_settings) as session:
                job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
            return self.predictor.predict_batch(*args, **kwargs)

    def patched(spec, device, settings):
        entry, cached = real(spec, device, settings)
        return type(entry)(**{**entry.__dict__, "predictor": CancelOnFirstCall(entry.predictor)}), cached

    monkeypatch.setattr(model_cache, "get_predictor", patched)
    assert run_backtest_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.CANCELLED
    job = load_job(job_settings, job_id)
    assert job.state == "cancelled" and job.progress_done == 2  # stopped after the first batch of 2 contexts
    rows, metrics = load(job_settings, job_id)
    assert rows is None and metrics.empty
