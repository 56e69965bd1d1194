"""The fine-tune lifecycle run in-process (no broker, no worker) on a migrated test database."""

from __future__ import annotations

import threading
import time
from unittest import mock

import pandas as pd
import pytest

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.core.errors import ArtifactVerificationError, InvalidRequest
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import models as model_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.finetune import artifacts_dir, model_id_for, run_finetune_job
from kronos_jobs.jobs.finetune_submit import FinetuneParams, check_data, submit_finetune, validate_params, window_warnings
from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.jobs.submit import submit_forecast
from kronos_jobs.jobs.training import FINAL_DIR, verify_artifact
from kronos_jobs.testing.factories import TINY_FINETUNE, make_bars, worker_identity
from kronos_jobs.testing.factories import load_job as load
from kronos_jobs.testing.factories import submit_finetune_job as submit
from model.checkpoint import WEIGHTS_NAME, file_sha256


def test_finetune_trains_registers_and_a_forecast_uses_it(job_settings, tiny_checkpoint, bars):
    job_id, warnings = submit(job_settings, tiny_checkpoint, bars)
    assert warnings == ["no live worker consumes finetune.cpu; the job stays queued until one starts "
                        "(kronos-jobs worker --pool cpu)"]
    assert run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    job = load(job_settings, job_id)
    assert job.state == "succeeded" and job.error is None and job.attempts == 1
    assert job.progress_done == job.progress_total == 24  # 2 phases x 2 epochs x ceil(48 / 8)
    detail = job.progress_detail
    assert detail["phase"] == "predictor" and detail["step"] == 12 and detail["eta_seconds"] == 0
    assert detail["train_loss"] > 0 and detail["val_loss"] > 0 and detail["epoch"] == detail["epochs"] == 2

    # --- registered version: verified artifact, metrics, the validation loss went down ------------------
    model_id = model_id_for(job_id)
    with session_scope(job_settings) as session:
        listed = {m.id: m for m in model_crud.list_models(session, tenant_id=DEFAULT_TENANT)}
        assert model_id in listed
        version = listed[model_id]
        session.expunge(version)
    final = artifacts_dir(job_settings, job_id) / FINAL_DIR
    assert version.kind == "finetuned" and version.job_id == job_id and version.base_model == str(tiny_checkpoint)
    assert version.artifact_path == str(final) and version.checksum == file_sha256(final / "model" / WEIGHTS_NAME)
    assert version.data_summary["n_symbols"] == 3 and version.data_summary["train_windows"] > 0
    assert version.hyperparameters["batch_size"] == 8 and version.hyperparameters["amp"] is False
    for phase in ("tokenizer", "predictor"):
        losses = version.metrics["phases"][phase]
        assert losses["val_loss_after"] < losses["val_loss_before"], (phase, losses)
    evaluation = version.metrics["evaluation"]
    assert evaluation["n_windows"] == 12 and evaluation["horizon"] == 4
    for name in ("base", "finetuned", "last_value"):
        assert evaluation[name]["mse_close"] >= 0
    assert 0 <= evaluation["finetuned"]["direction_accuracy"] <= 1 and evaluation["last_value"]["direction_accuracy"] is None
    # Only the registered model stays; the training states are gone.
    assert sorted(p.name for p in artifacts_dir(job_settings, job_id).iterdir()) == [FINAL_DIR]
    meta = job.execution_metadata
    assert meta["finetuned_model_id"] == model_id and meta["model_checksum"] == version.checksum
    assert meta["resumed_from"] == [] and meta["device_resolved"] == "cpu" and meta["queue"] == "finetune.cpu"

    # --- a forecast names the fine-tuned id; its metadata says so -----------------------------------------
    request = {"model": model_id, "device": "cpu", "lookback": 24, "pred_len": 4, "sampling": {"seed": 1}}
    with session_scope(job_settings) as session:
        forecast_id = submit_forecast(session, job_settings, tenant_id=DEFAULT_TENANT, request=request,
                                      bars=bars[bars.symbol == "SIM000.XS"], future=None, source="inline").id
    assert run_forecast_job(forecast_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    fmeta = load(job_settings, forecast_id).execution_metadata
    assert fmeta["model"] == model_id and fmeta["model_source"] == "finetuned"
    assert fmeta["model_checksum"] == version.checksum

    # --- retiring: new jobs cannot name it, old jobs stay readable -----------------------------------------
    with session_scope(job_settings) as session:
        model_crud.retire_model(session, tenant_id=DEFAULT_TENANT, model_id=model_id)
    with session_scope(job_settings) as session, pytest.raises(InvalidRequest, match="retired") as excinfo:
        submit_forecast(session, job_settings, tenant_id=DEFAULT_TENANT, request=request, bars=bars, future=None,
                        source="inline")
    assert excinfo.value.field == "model"
    assert load(job_settings, forecast_id).state == "succeeded" and load(job_settings, job_id).state == "succeeded"


def test_cancel_while_training_stops_and_removes_artifacts(job_settings, tiny_checkpoint, bars):
    job_id, _ = submit(job_settings, tiny_checkpoint, bars, train="predictor", epochs=50, samples_per_epoch=None)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(state=run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings))))
    runner.start()
    deadline = time.monotonic() + 60
    while load(job_settings, job_id).progress_done < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (artifacts_dir(job_settings, job_id) / "predictor").is_dir()
    with session_scope(job_settings) as session:
        job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
    runner.join(60)
    job = load(job_settings, job_id)
    assert outcome["state"] is JobState.CANCELLED and job.state == "cancelled" and job.error["code"] == "cancelled"
    assert 3 <= job.progress_done < job.progress_total
    assert not artifacts_dir(job_settings, job_id).exists()  # policy: partial artifacts are removed
    with session_scope(job_settings) as session:
        assert model_id_for(job_id) not in {m.id for m in model_crud.list_models(session, tenant_id=DEFAULT_TENANT)}


def test_resume_continues_from_the_checkpoint(job_settings, tiny_checkpoint, bars):
    """A delivery that died (here: its loop raised after step 5) leaves a checkpoint; the next resumes."""
    from model.finetune import FinetuneLoop

    job_id, _ = submit(job_settings, tiny_checkpoint, bars, train="predictor", epochs=1)
    real_step = FinetuneLoop._train_step

    def dies_after_five(self, indices):
        if self.step == 5:
            raise SystemExit("worker killed")  # not an Exception: nothing records the job, as with SIGKILL
        return real_step(self, indices)

    with mock.patch.object(FinetuneLoop, "_train_step", dies_after_five), pytest.raises(SystemExit):
        run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    assert load(job_settings, job_id).state == "running"
    time.sleep(job_settings.lease_seconds + 0.5)  # the dead delivery's lease lapses
    assert run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    job = load(job_settings, job_id)
    assert job.attempts == 2 and job.execution_metadata["resumed_from"] == [{"phase": "predictor", "step": 3, "epoch": 0}]


def test_verify_artifact_catches_wrong_weights(tmp_path, tiny_checkpoint):
    import torch

    from kronos_jobs.jobs.registry import save_local_model
    from model.tokenizer import KronosTokenizer
    from model.transformer import Kronos

    model = Kronos.from_pretrained(tiny_checkpoint / "model")
    tokenizer = KronosTokenizer.from_pretrained(tiny_checkpoint / "tokenizer")
    save_local_model(tmp_path, model, tokenizer)
    checksums = verify_artifact(tmp_path, model, tokenizer)
    assert checksums[0] == file_sha256(tmp_path / "model" / WEIGHTS_NAME)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # trained weights that were not the ones saved
    with pytest.raises(ArtifactVerificationError, match="differs from the trained weights"):
        verify_artifact(tmp_path, model, tokenizer)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"train": "all"}, "train"),
    ({"epochs": 0}, "epochs"),
    ({"batch_size": 4, "accumulation_steps": 5}, "accumulation_steps"),
    ({"tokenizer_learning_rate": 0}, "tokenizer_learning_rate"),
    ({"adam_beta2": 1.0}, "adam_beta2"),
    ({"validation_split": 0.7}, "validation_split"),
    ({"max_seconds": -1}, "max_seconds"),
    ({"lookback": 10, "predict_window": 70}, "predict_window"),  # a horizon beyond the tiny model's context 64
])
def test_bad_values_name_the_field(overrides, field):
    params = FinetuneParams.from_value({"model": "x", **TINY_FINETUNE, **overrides})
    with pytest.raises(InvalidRequest) as excinfo:
        validate_params(params, max_context=64)
    assert excinfo.value.field == field


def test_windows_beyond_the_context_are_trained_with_a_warning():
    params = FinetuneParams.from_value({"model": "x", **TINY_FINETUNE, "lookback": 60, "predict_window": 10})
    validate_params(params, max_context=64)  # upstream trains such windows too
    (warning,) = window_warnings(params, max_context=64)
    assert "70 tokens" in warning and "context length 64" in warning and "never used at inference" in warning
    assert window_warnings(FinetuneParams.from_value({"model": "x", **TINY_FINETUNE}), max_context=64) == []


def test_too_little_data_names_the_field():
    params = FinetuneParams.from_value({"model": "x", **TINY_FINETUNE})
    with pytest.raises(InvalidRequest, match="too little data for one training window of .* 29 bars") as excinfo:
        check_data(params, sample_bars(2, 30))
    assert excinfo.value.field == "file"
    with pytest.raises(InvalidRequest) as excinfo:
        check_data(params, sample_bars(1, 100))  # 80 train rows, but 20 held out < one window
    assert excinfo.value.field == "validation_split"
    assert check_data(FinetuneParams.from_value({**params.to_json(), "validation_split": 0}), sample_bars(1, 100))[
        "validation_windows"] == 0


def test_max_seconds_bounds_the_whole_job_and_it_still_registers(job_settings, tiny_checkpoint, bars):
    job_id, _ = submit(job_settings, tiny_checkpoint, bars, epochs=50, samples_per_epoch=None, max_seconds=1.0)
    assert run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    with session_scope(job_settings) as session:
        phases = model_crud.get_model(session, tenant_id=DEFAULT_TENANT, model_id=model_id_for(job_id)).metrics["phases"]
    assert phases["tokenizer"]["stopped"] == "max_seconds" and phases["tokenizer"]["steps"] >= 1
    assert phases["predictor"] == {**phases["predictor"], "stopped": "max_seconds", "skipped": True}


def test_idempotency_key_returns_the_same_job(job_settings, tiny_checkpoint, bars):
    def once(**overrides):
        with session_scope(job_settings) as session:
            job, _ = submit_finetune(session, job_settings, tenant_id=DEFAULT_TENANT, idempotency_key="k1",
                                     request={"model": str(tiny_checkpoint), **TINY_FINETUNE, **overrides},
                                     bars=bars, source="csv")
            return job.id

    assert once() == once()
    with pytest.raises(Exception, match="Idempotency-Key"):
        once(seed=6)


def test_the_reconciler_resends_finetunes_as_finetunes():
    from kronos_jobs.core.names import TASK_RUN_FINETUNE, TASK_RUN_FORECAST, Queue
    from kronos_jobs.jobs.submit import task_for_queue

    assert task_for_queue(Queue.FINETUNE_GPU) == task_for_queue("finetune.cpu") == TASK_RUN_FINETUNE
    assert task_for_queue(Queue.FORECAST_CPU) == TASK_RUN_FORECAST


def test_amp_is_asked_for_and_used_only_on_cuda(tiny_checkpoint, bars, tmp_path):
    from kronos_jobs.core.settings import Settings
    from kronos_jobs.jobs.training import loop_config, run_local

    params = FinetuneParams.from_value({"model": str(tiny_checkpoint), **TINY_FINETUNE, "train": "tokenizer",
                                        "max_steps": 2, "eval_windows": 2})
    assert loop_config(params, "predictor").amp is True and loop_config(params, "predictor").amp_dtype == "bfloat16"
    summary = run_local(params, bars, device="cpu", work_dir=tmp_path,
                        settings=Settings(data_dir=tmp_path / "d", model_dirs=[tiny_checkpoint.parent]))
    assert summary["amp"] is False and summary["device"] == "cpu"


def _csv(frame, stamps) -> bytes:
    return frame.assign(timestamp=stamps).to_csv(index=False).encode()


def test_finetune_trains_and_evaluates_on_the_bars_local_wall_clock(settings):
    """+08:00 bars: training windows and the held-out evaluation see local hours (11:00, not 03:00 UTC),
    exactly as the same bars given as naive local times, and the stored bars stay UTC."""
    from kronos_jobs.core.names import UTC_OFFSET_COLUMN
    from kronos_jobs.inputs.parsing import parse_upload
    from kronos_jobs.jobs.finetune_submit import split_series
    from kronos_jobs.jobs.holdout import evaluate, holdout_windows
    from model.windows import BarWindows

    frame = make_bars({"A": 60, "B": 50}, freq="1h", start="2024-06-17 17:00")  # UTC, from 01:00 local
    local = frame["timestamp"].dt.tz_localize(None) + pd.Timedelta(hours=8)
    offset = parse_upload(_csv(frame, local.dt.strftime("%Y-%m-%dT%H:%M:%S+08:00")), filename="b.csv",
                          content_type=None, freq=None, settings=settings).bars
    naive = parse_upload(_csv(frame, local.dt.strftime("%Y-%m-%dT%H:%M:%S")), filename="b.csv",
                         content_type=None, freq=None, settings=settings).bars
    assert (offset[UTC_OFFSET_COLUMN] == 480).all() and offset["timestamp"].iloc[0] == pd.Timestamp("2024-06-17 17:00", tz="UTC")

    train, val = split_series(offset, 0.4)
    expected = {s: pd.DatetimeIndex(local[frame["symbol"] == s]) for s in ("A", "B")}
    for symbol in ("A", "B"):
        got = pd.concat([train[symbol], val[symbol]])["timestamp"]
        assert got.dt.tz is None and list(got) == list(expected[symbol])
        assert UTC_OFFSET_COLUMN not in train[symbol].columns
    naive_train, naive_val = split_series(naive, 0.4)
    for symbol in ("A", "B"):  # the +08:00 input trains and evaluates on the same frames as naive local input
        pd.testing.assert_frame_equal(train[symbol], naive_train[symbol])
        pd.testing.assert_frame_equal(val[symbol], naive_val[symbol])

    windows = BarWindows(train, lookback=8, predict_window=3)
    _, stamp = windows.batch(range(len(windows)))  # (B, W, 5): minute, hour, weekday, day, month
    first = windows[0][1].numpy()
    assert first[:, 1].tolist() == list(expected["A"].hour[:12]) and first[0, 1] == 1  # 01:00 local, not 17:00 UTC
    assert first[:, 3].tolist() == list(expected["A"].day[:12])
    assert stamp.shape[1] == 12

    seen = []

    class Spy:
        def predict_batch(self, dfs, xs, ys, pred_len, **_):
            seen.extend(zip(xs, ys))
            return [pd.DataFrame({"close": df["close"].iloc[-1]}, index=range(pred_len)) for df in dfs]

    held_out = holdout_windows(val, 8, 3, 64)
    metrics = evaluate({"finetuned": Spy()}, held_out, 3)
    assert metrics["n_windows"] == len(held_out) == len(seen) > 0
    for window, (x, y) in zip(held_out, seen):
        truth = expected[window.symbol]
        assert pd.DatetimeIndex(x).tz is None and set(pd.DatetimeIndex(x)) <= set(truth)
        assert set(pd.DatetimeIndex(y)) <= set(truth) and pd.DatetimeIndex(y)[0] > pd.DatetimeIndex(x)[-1]
    assert pd.DatetimeIndex(seen[0][0])[0] == expected[held_out[0].symbol][len(train[held_out[0].symbol])]
