"""Accept a fine-tune job: its parameters, up-front validation, the data split, routing, commit, send.

Runs in the API and CLI processes and never imports torch. The worker (`jobs/finetune.py`) reads
the same `FinetuneParams` back from the job row and splits the stored bars with the same
`split_series`, so what was validated here is exactly what is trained.

Defaults are the spec §6 values (upstream's Qlib pipeline for the hyper-parameters, its CSV pipeline
for the validation share). Fine-tunes go to `finetune.gpu` unless the request says `device="cpu"`:
`auto` does not fall back to CPU for training, because a CPU fine-tune of Kronos-small takes hours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from typing import Any

import pandas as pd

from kronos_jobs.core.errors import invalid
from kronos_jobs.core.names import DevicePreference, JobKind, Queue
from kronos_jobs.core.routing import choose_queue, consumers_of
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.inputs.wall_clock import local_bars
from kronos_jobs.jobs.registry import ModelSpec, resolve_model, resolve_pair
from kronos_jobs.jobs.submit import enqueue

logger = logging.getLogger(__name__)

TRAIN_CHOICES = ("tokenizer", "predictor", "both")  # "both" trains the tokenizer first, then the predictor
DATA_FIELD = "file"  # the request field named when the data is too short


@dataclasses.dataclass
class FinetuneParams:
    """A fine-tune request minus its bars; stored as the job's `params`.

    The training-loop fields (epochs .. amp) and their defaults are `model.finetune.FinetuneConfig`'s,
    written out here because this module runs in the API, which must not import torch (and `model/`
    does); tests/jobs/test_finetune_defaults.py checks that every shared default is equal, and the
    worker builds its FinetuneConfig from the shared names (`jobs/finetune.py` `loop_config`). The
    job-level fields are the service's own: train, per-phase epochs, validation_split, max_seconds
    (the whole job, resumes included), eval_windows, name, description.
    """

    model: str
    # A separate tokenizer checkpoint directory (upstream's layout); `model` is then the predictor's directory.
    tokenizer: str | None = None
    device: DevicePreference = DevicePreference.AUTO
    train: str = "both"
    epochs: int = 30
    tokenizer_epochs: int | None = None  # None: `epochs`
    predictor_epochs: int | None = None  # None: `epochs`
    batch_size: int = 50
    tokenizer_learning_rate: float = 2e-4
    predictor_learning_rate: float = 4e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_weight_decay: float = 0.1
    accumulation_steps: int = 1
    lookback: int = 90
    predict_window: int = 10
    clip: float = 5.0
    validation_split: float = 0.1  # the last share of every series; held out for validation and evaluation
    seed: int = 100
    max_steps: int | None = None  # optimiser steps per phase
    max_seconds: float | None = None  # wall time of the whole job, resumes included
    samples_per_epoch: int | None = None  # windows drawn per epoch (upstream n_train_iter); None: all
    log_interval: int = 10  # steps between progress reports with a train loss
    checkpoint_every_steps: int = 100  # besides every epoch end
    eval_windows: int = 64  # held-out windows the evaluation forecasts
    amp: bool = True  # mixed precision; only ever used on CUDA
    name: str | None = None
    description: str | None = None

    @classmethod
    def from_value(cls, value: "FinetuneParams | dict[str, Any]") -> "FinetuneParams":
        if isinstance(value, cls):
            return value
        data = {k: v for k, v in dict(value).items() if k not in ("source", "data_summary")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise invalid(unknown[0], f"unknown fine-tune parameter(s) {unknown}")
        params = cls(**data)
        try:
            params.device = DevicePreference(params.device)
        except ValueError:
            raise invalid("device", f"must be one of auto, cpu, gpu, got {params.device!r}") from None
        return params

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["device"] = DevicePreference(self.device).value
        return data

    @property
    def window(self) -> int:
        """Rows per training window: lookback + predict_window + 1 (spec §6.1)."""
        return self.lookback + self.predict_window + 1

    @property
    def phases(self) -> tuple[str, ...]:
        return ("tokenizer", "predictor") if self.train == "both" else (self.train,)

    def phase_epochs(self, phase: str) -> int:
        specific = self.tokenizer_epochs if phase == "tokenizer" else self.predictor_epochs
        return specific or self.epochs

    def hyperparameters(self) -> dict[str, Any]:
        """What a registered model records about how it was trained."""
        skip = {"model", "tokenizer", "device", "name", "description"}
        return {k: v for k, v in self.to_json().items() if k not in skip}


# --- validation ------------------------------------------------------------------------------------


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise invalid(field, message)


def validate_params(params: FinetuneParams, max_context: int) -> None:
    """Value checks (the API schema repeats the simple ones; the CLI and YAML path rely on these)."""
    _check(params.train in TRAIN_CHOICES, "train", f"must be one of {', '.join(TRAIN_CHOICES)}, got {params.train!r}")
    for name in ("epochs", "batch_size", "lookback", "predict_window", "accumulation_steps", "log_interval",
                 "checkpoint_every_steps", "eval_windows"):
        value = getattr(params, name)
        _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, f"must be an integer >= 1, got {value!r}")
    for name in ("tokenizer_epochs", "predictor_epochs", "max_steps", "samples_per_epoch"):
        value = getattr(params, name)
        _check(value is None or (isinstance(value, int) and value >= 1), name, f"must be null or an integer >= 1, got {value!r}")
    for name in ("tokenizer_learning_rate", "predictor_learning_rate", "clip"):
        value = getattr(params, name)
        _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, name, f"must be > 0, got {value!r}")
    for name in ("adam_beta1", "adam_beta2"):
        value = getattr(params, name)
        _check(isinstance(value, (int, float)) and 0 <= value < 1, name, f"must be in [0, 1), got {value!r}")
    _check(isinstance(params.adam_weight_decay, (int, float)) and 0 <= params.adam_weight_decay < math.inf,
           "adam_weight_decay", f"must be >= 0, got {params.adam_weight_decay!r}")
    _check(isinstance(params.validation_split, (int, float)) and 0 <= params.validation_split <= 0.5,
           "validation_split", f"must be in [0, 0.5], got {params.validation_split!r}")
    _check(params.max_seconds is None or (isinstance(params.max_seconds, (int, float)) and params.max_seconds > 0),
           "max_seconds", f"must be null or > 0, got {params.max_seconds!r}")
    _check(params.accumulation_steps <= params.batch_size, "accumulation_steps",
           f"({params.accumulation_steps}) must not exceed batch_size ({params.batch_size})")
    _check(params.predict_window <= max_context, "predict_window",
           f"{params.predict_window} exceeds the model's context length {max_context} (it is also the horizon "
           "the evaluation forecasts)")


def window_warnings(params: FinetuneParams, max_context: int) -> list[str]:
    """What a valid but unusual request means, for the job's warnings.

    Training windows may be longer than the model's context, as upstream trains them (its CSV template:
    512 + 48 on a 512-token model); forecasts still see at most `max_context` tokens.
    """
    tokens = params.lookback + params.predict_window
    if tokens <= max_context:
        return []
    return [f"lookback + predict_window = {tokens} tokens per training window exceeds the model's context length "
            f"{max_context}: training attends over all {tokens} positions, but forecasts use at most the last "
            f"{max_context} bars, so positions {max_context}..{tokens - 1} are trained and never used at inference "
            "(as with upstream's scripts)"]


def resolve_finetune_model(params: FinetuneParams, session=None, *, tenant_id: str | None = None,
                           model_dirs=()) -> "ModelSpec":
    """The base model of a fine-tune: `model` alone, or `model` + `tokenizer` as two checkpoint directories."""
    kwargs = {} if tenant_id is None else {"tenant_id": tenant_id}
    if params.tokenizer is not None:
        return resolve_pair(params.model, params.tokenizer, model_dirs=model_dirs)
    return resolve_model(params.model, session, model_dirs=model_dirs, **kwargs)


# --- the data: chronological split, window counts ---------------------------------------------------


def split_series(bars: pd.DataFrame, validation_split: float) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Per symbol: the first rows train, the last `validation_split` share validates (and is evaluated).

    Chronological and disjoint, like upstream's CSV pipeline (spec §6.2): a validation window never
    overlaps a training row, so neither the validation loss nor the evaluation sees trained targets.

    The frames are what the model gets (training windows, validation, evaluation): `timestamp` is the
    bars' naive local wall-clock time and the offset column is gone (kronos_jobs/inputs/wall_clock.py, the
    rule forecasts use too); the stored bars stay UTC.
    """
    train, val = {}, {}
    for symbol, frame in local_bars(bars).groupby("symbol", sort=True):
        frame = frame.drop(columns="symbol").reset_index(drop=True)
        n_val = int(round(len(frame) * validation_split))
        train[str(symbol)] = frame.iloc[: len(frame) - n_val].reset_index(drop=True)
        if n_val:
            val[str(symbol)] = frame.iloc[len(frame) - n_val:].reset_index(drop=True)
    return train, val


def window_count(series: dict[str, pd.DataFrame], window: int) -> int:
    return sum(max(0, len(frame) - window + 1) for frame in series.values())


def phase_steps(params: FinetuneParams, phase: str, train_windows: int) -> int:
    """Optimiser steps of one phase, as `model.finetune.FinetuneLoop` counts them."""
    samples = min(train_windows, params.samples_per_epoch or train_windows)
    steps = params.phase_epochs(phase) * math.ceil(samples / params.batch_size)
    return min(steps, params.max_steps) if params.max_steps else steps


def check_data(params: FinetuneParams, bars: pd.DataFrame, *, field: str = DATA_FIELD) -> dict[str, Any]:
    """Too little data for one window is a 4xx naming the field; returns the data summary."""
    if bars.empty:
        raise invalid(field, "no bars")
    train, val = split_series(bars, params.validation_split)
    train_windows, val_windows = window_count(train, params.window), window_count(val, params.window)
    lengths = bars.groupby("symbol").size()
    if train_windows == 0:
        raise invalid(
            field, f"too little data for one training window of lookback + predict_window + 1 = {params.window} "
            f"bars after holding out validation_split={params.validation_split:g}; the longest series "
            f"({lengths.idxmax()}) has {int(lengths.max())} bars")
    if params.validation_split > 0 and val_windows == 0:
        longest = max(len(f) for f in val.values()) if val else 0
        raise invalid(
            "validation_split", f"the held-out part of every series is shorter than one window of {params.window} "
            f"bars (longest: {longest}); give more bars, a larger validation_split, or 0 to skip validation")
    symbols = sorted(map(str, lengths.index))
    return {
        "symbols": symbols[:50], "n_symbols": len(symbols), "n_bars": int(len(bars)),
        "start": pd.Timestamp(bars["timestamp"].min()).isoformat(), "end": pd.Timestamp(bars["timestamp"].max()).isoformat(),
        "train_windows": train_windows, "validation_windows": val_windows,
        "validation_split": params.validation_split,
    }


def total_steps(params: FinetuneParams, train_windows: int) -> int:
    return sum(phase_steps(params, phase, train_windows) for phase in params.phases)


# --- submitting ----------------------------------------------------------------------------------


def choose_finetune_queue(device: DevicePreference, live_workers) -> tuple[Queue, str]:
    """finetune.gpu unless cpu was asked for explicitly; the reason warns when nobody consumes it."""
    device = DevicePreference(device)
    if device is not DevicePreference.AUTO:
        return choose_queue(JobKind.FINETUNE, device, live_workers)
    queue, reason = choose_queue(JobKind.FINETUNE, DevicePreference.GPU, live_workers)
    return queue, reason.replace("requested gpu", "auto: fine-tunes go to the GPU queue (ask device=cpu to train on CPU)", 1)


def no_consumer_warning(queue: Queue, live_workers) -> str | None:
    if consumers_of(queue, live_workers):
        return None
    pool = queue.value.split(".")[1]
    return (f"no live worker consumes {queue.value}; the job stays queued until one starts "
            f"(kronos-jobs worker --pool {pool})")


def request_hash(params: FinetuneParams, bars: pd.DataFrame) -> str:
    digest = hashlib.sha256(json.dumps(params.to_json(), sort_keys=True, default=str).encode())
    digest.update(pd.util.hash_pandas_object(bars.reset_index(drop=True), index=False).to_numpy().tobytes())
    digest.update(",".join(map(str, bars.columns)).encode())
    return digest.hexdigest()


def submit_finetune(session, settings: Settings, *, tenant_id: str, request: FinetuneParams | dict[str, Any],
                    bars: pd.DataFrame, source: str, idempotency_key: str | None = None, priority: int | None = None):
    """Validate, route, insert the job and its bars, COMMIT, then send the task; return (Job, warnings).
    `priority` None takes the interactive default (core/workload.py)."""
    params = FinetuneParams.from_value(request)
    spec = resolve_finetune_model(params, session, tenant_id=tenant_id, model_dirs=settings.effective_model_dirs)
    validate_params(params, spec.max_context)
    if params.max_seconds is not None and params.max_seconds >= settings.finetune_soft_time_limit:
        raise invalid("max_seconds", f"must be below KRONOS_FINETUNE_SOFT_TIME_LIMIT ({settings.finetune_soft_time_limit} s), "
                                     f"or the task is interrupted first; got {params.max_seconds:g}")
    summary = check_data(params, bars)
    summary["source"] = source
    live = worker_crud.live_worker_queues(session, stale_seconds=settings.worker_stale_seconds)
    queue, reason = choose_finetune_queue(params.device, live)
    warning = no_consumer_warning(queue, live)
    job = enqueue(session, settings, tenant_id=tenant_id, kind=JobKind.FINETUNE, device=params.device, queue=queue,
                  reason=reason, model=params.model, params={**params.to_json(), "source": source, "data_summary": summary},
                  progress_total=total_steps(params, summary["train_windows"]), bars=bars, future=None, source=source,
                  idempotency_key=idempotency_key, digest=request_hash(params, bars), priority=priority,
                  summary=f"fine-tune {params.train} of {params.model}, {summary['train_windows']} windows")
    return job, window_warnings(params, spec.max_context) + ([warning] if warning else [])
