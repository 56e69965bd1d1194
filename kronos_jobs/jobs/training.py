"""Fine-tuning a model pair on stored bars: the training both the worker and `kronos-jobs finetune
--local` run.

`train_pair` trains the tokenizer and/or the predictor (model/finetune.py's FinetuneLoop, one phase
after the other, each resuming from its own `training_state.pt`), keeps each phase's best weights,
saves the pair under `<work dir>/final/`, verifies that the saved files reload to the trained
weights, and evaluates it against the base model on the held-out windows (jobs/holdout.py).
`Progress` receives the loop's events; the job lifecycle (jobs/finetune.py) subclasses it to write
them to the job row and to stop on a cancel or a worker shutdown.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from kronos_jobs.core.errors import (
    ArtifactVerificationError,
    JobCancelled,
    StoppedForShutdown,
)
from kronos_jobs.core.settings import Settings
from kronos_jobs.jobs.finetune_submit import (
    FinetuneParams,
    check_data,
    phase_steps,
    resolve_finetune_model,
    split_series,
    validate_params,
    window_count,
    window_warnings,
)
from kronos_jobs.jobs.artifact_store import FINAL_DIR  # registered model: final/model, final/tokenizer
from kronos_jobs.jobs.holdout import evaluate, holdout_windows
from kronos_jobs.jobs.model_cache import load_pair
from kronos_jobs.jobs.registry import (
    LOCAL_MODEL_SUBDIR,
    LOCAL_TOKENIZER_SUBDIR,
    ModelSpec,
    local_spec,
    save_local_model,
)
from model.checkpoint import WEIGHTS_NAME, CheckpointError, file_sha256
from model.finetune import FinetuneConfig, FinetuneLoop
from model.predictor import KronosPredictor
from model.tokenizer import KronosTokenizer
from model.transformer import Kronos

logger = logging.getLogger(__name__)

BASELINE_FILE = "val_loss_before.json"  # a phase's validation loss before its first step


# --- progress: the loop's callbacks -----------------------------------------------------------------


class Progress:
    """Receives the loop's `on_progress` events and answers its `should_stop` (base: local runs)."""

    def __init__(self, totals: dict[str, int], on_event: Callable[[dict[str, Any]], None] | None = None):
        self.totals = totals
        self.total = sum(totals.values())
        self.offsets = {phase: sum(list(totals.values())[:i]) for i, phase in enumerate(totals)}
        self.on_event = on_event
        self.loop = None
        self.phase: str | None = None
        self.detail: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self.first_done: int | None = None
        self.stop_reason: str | None = None  # why should_stop said yes: "cancelled" | "worker_shutdown"

    def start_phase(self, phase: str, loop) -> None:
        self.phase, self.loop = phase, loop
        self.detail = {}  # losses of the previous phase are not this phase's
        if self.first_done is None:
            self.first_done = self.done

    @property
    def done(self) -> int:
        return 0 if self.loop is None else self.offsets[self.phase] + self.loop.step

    def eta_seconds(self) -> float | None:
        steps = self.done - (self.first_done or 0)
        if steps <= 0:
            return None
        return round((time.perf_counter() - self.t0) / steps * max(0, self.total - self.done), 1)

    def report(self, event: dict[str, Any]) -> None:
        self.detail.update({k: v for k, v in event.items() if v is not None or k not in self.detail})
        self.detail.update(step=event["step"], total_steps=event["total_steps"])
        self.flush(force=True)

    def snapshot(self) -> dict[str, Any]:
        detail = dict(self.detail, phase=self.phase, eta_seconds=self.eta_seconds())
        if self.loop is not None:
            detail.update(step=self.loop.step, total_steps=self.loop.total_steps,
                          epoch=min(self.loop.epoch + 1, self.loop.config.epochs), epochs=self.loop.config.epochs)
        return detail

    def flush(self, force: bool = False) -> bool:
        if self.on_event is not None and force:
            self.on_event({"done": self.done, "total": self.total, **self.snapshot()})
        return False

    def should_stop(self) -> bool:
        if self.flush():
            self.stop_reason = "cancelled"
        return self.stop_reason is not None


# --- training: shared by the worker and `kronos-jobs finetune --local` --------------------------------


@dataclasses.dataclass
class TrainingOutcome:
    final_dir: Path
    model_checksum: str
    tokenizer_checksum: str
    phases: dict[str, dict[str, Any]]
    evaluation: dict[str, Any]
    resumed_from: list[dict[str, Any]]
    device: str
    device_warning: str | None
    amp: bool

    def metrics(self) -> dict[str, Any]:
        return {"evaluation": self.evaluation, "phases": self.phases}


# FinetuneConfig fields a job sets under another meaning: epochs per phase, max_seconds for the whole job.
JOB_LEVEL_FIELDS = frozenset({"epochs", "max_seconds"})


def loop_config(params: FinetuneParams, phase: str):
    """The phase's FinetuneConfig: every field the two dataclasses share, plus the phase's epochs."""

    loop_fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    shared = ({f.name for f in dataclasses.fields(FinetuneParams)} & loop_fields) - JOB_LEVEL_FIELDS
    return FinetuneConfig(epochs=params.phase_epochs(phase), **{name: getattr(params, name) for name in shared})


def _val_loss_before(loop, directory: Path) -> float | None:
    """The validation loss before the phase's first step, kept on disk so a resumed run still knows it."""
    path = directory / BASELINE_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["val_loss"]
    if loop.step != 0:
        return None
    value = loop.validate()
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"val_loss": value}), encoding="utf-8")
    return value


def _keep_best(loop, result) -> float | None:
    """Use the epoch-end best weights when they validate better than the last ones; the kept loss."""
    final = loop.validate()
    if result.best_model_dir and loop.best_val_loss is not None and (final is None or loop.best_val_loss < final):
        best = type(loop.model).from_pretrained(result.best_model_dir, map_location=loop.device)
        loop.model.load_state_dict(best.state_dict())
        return loop.best_val_loss
    return final


def verify_artifact(final_dir: Path, model, tokenizer) -> tuple[str, str]:
    """Reload both halves through `from_pretrained` (strict keys and shapes), compare every tensor
    with the trained one and the sha256 of each weights file; returns (model, tokenizer) checksums.

    Catches a checkpoint that saved the wrong module or stale weights (upstream Kronos PR #266).
    """


    checksums = []
    for sub, module, cls in ((LOCAL_MODEL_SUBDIR, model, Kronos), (LOCAL_TOKENIZER_SUBDIR, tokenizer, KronosTokenizer)):
        try:
            loaded = cls.from_pretrained(final_dir / sub)
        except CheckpointError as exc:
            raise ArtifactVerificationError(f"saved {sub} does not reload: {exc}") from exc
        trained = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        reloaded = loaded.state_dict()
        differ = [k for k, v in trained.items() if k not in reloaded or not torch.equal(v, reloaded[k])]
        if differ:
            raise ArtifactVerificationError(f"saved {sub} differs from the trained weights in {differ[:5]}")
        checksum = file_sha256(final_dir / sub / WEIGHTS_NAME)
        if loaded.checksum != checksum:
            raise ArtifactVerificationError(f"saved {sub}: sha256 changed between reload and check")
        checksums.append(checksum)
    return checksums[0], checksums[1]


class _ReportingLoop(FinetuneLoop):
    """A FinetuneLoop that hands its checkpoint folder to `on_checkpoint` after each checkpoint it
    writes (the fine-tune job uploads it to the artifact store: jobs/artifact_store.py)."""

    on_checkpoint: Callable[[Path], None] | None = None

    def save_checkpoint(self, started: float | None = None) -> Path | None:
        path = super().save_checkpoint(started)
        if path is not None and self.on_checkpoint is not None:
            self.on_checkpoint(self.checkpoint_dir)
        return path


def train_pair(params: FinetuneParams, bars: pd.DataFrame, spec: ModelSpec, *, work_dir: Path, device: str,
               settings: Settings, progress_factory: Callable[[dict[str, int]], Progress],
               on_checkpoint: Callable[[Path], None] | None = None) -> TrainingOutcome:
    """Train the asked phases from `spec`'s weights in `work_dir` (resuming what is there), save,
    verify and evaluate. Raises JobCancelled when the progress object asked the loop to stop.
    `on_checkpoint(phase_dir)` runs after every checkpoint a phase writes."""

    train, val = split_series(bars, params.validation_split)
    val = {k: v for k, v in val.items() if len(v) >= params.window} or None
    n_windows = window_count(train, params.window)
    progress = progress_factory({phase: phase_steps(params, phase, n_windows) for phase in params.phases})
    model, tokenizer = load_pair(spec, settings)
    phases: dict[str, dict[str, Any]] = {}
    resumed, seconds_used, loop = [], 0.0, None
    for phase in params.phases:
        directory = work_dir / phase
        loop = _ReportingLoop(phase, tokenizer if phase == "tokenizer" else model, train, val, loop_config(params, phase),
                            tokenizer=tokenizer if phase == "predictor" else None, device=device,
                            checkpoint_dir=directory, on_progress=progress.report, should_stop=progress.should_stop)
        loop.on_checkpoint = on_checkpoint
        if loop.load_checkpoint():
            resumed.append({"phase": phase, "step": loop.step, "epoch": loop.epoch})
        progress.start_phase(phase, loop)
        before = _val_loss_before(loop, directory)
        left = None if params.max_seconds is None else params.max_seconds - seconds_used - loop.elapsed_before
        if left is not None and left <= 0:
            phases[phase] = {"stopped": "max_seconds", "steps": loop.step, "val_loss_before": before,
                             "val_loss_after": loop.validate(), "skipped": True}
            continue
        loop.config.max_seconds = left
        result = loop.fit()
        if result.stopped == "cancelled":  # the loop saved a checkpoint before returning
            if progress.stop_reason == "worker_shutdown":
                raise StoppedForShutdown(phase, loop.step)
            raise JobCancelled(f"cancelled during the {phase} phase at step {loop.step}")
        seconds_used += result.elapsed
        after = _keep_best(loop, result)
        phases[phase] = {"stopped": result.stopped, "steps": result.step, "total_steps": result.total_steps,
                         "epochs_done": result.epoch, "train_loss": result.train_loss, "val_loss_before": before,
                         "val_loss_after": after, "best_val_loss": result.best_val_loss,
                         "seconds": round(result.elapsed, 3)}
    progress.flush(force=True)

    # --- save, verify, evaluate -----------------------------------------------------------------------
    final_dir = work_dir / FINAL_DIR
    save_local_model(final_dir, model, tokenizer, max_context=spec.max_context)
    model_checksum, tokenizer_checksum = verify_artifact(final_dir, model, tokenizer)
    windows = holdout_windows(val or {}, params.lookback, params.predict_window, params.eval_windows)
    evaluation: dict[str, Any] = {"n_windows": 0}
    if windows:
        base_model, base_tokenizer = load_pair(spec, settings)
        tuned = local_spec(str(final_dir), final_dir)  # our own output, not a client's path
        tuned_model, tuned_tokenizer = load_pair(tuned, settings)
        predictors = {name: KronosPredictor(m, t, device=device, max_context=spec.max_context,
                                            cpu_kernel=settings.cpu_kernel)
                      for name, (m, t) in {"base": (base_model, base_tokenizer),
                                           "finetuned": (tuned_model, tuned_tokenizer)}.items()}
        evaluation = evaluate(predictors, windows, params.predict_window)
    else:
        evaluation = evaluate({}, [], params.predict_window)
    return TrainingOutcome(final_dir=final_dir, model_checksum=model_checksum, tokenizer_checksum=tokenizer_checksum,
                           phases=phases, evaluation=evaluation, resumed_from=resumed, device=str(loop.device),
                           device_warning=loop.device_warning, amp=bool(loop.use_amp))


def run_local(params: FinetuneParams | dict[str, Any], bars: pd.DataFrame, *, device: str, work_dir: Path,
              settings: Settings, on_event: Callable[[dict[str, Any]], None] | None = None,
              on_warning: Callable[[str], None] | None = None, model_dirs=None) -> dict[str, Any]:
    """`kronos-jobs finetune --local`: the same training in this process, no queue and no database.

    `model_dirs` replaces KRONOS_MODEL_DIRS as the roots local checkpoints may come from (the CLI
    adds the directories its own config file names); `on_warning` receives `window_warnings`.
    """
    params = FinetuneParams.from_value(params)
    spec = resolve_finetune_model(params, model_dirs=settings.effective_model_dirs if model_dirs is None else model_dirs)
    validate_params(params, spec.max_context)
    for warning in window_warnings(params, spec.max_context):
        logger.warning(warning)
        if on_warning is not None:
            on_warning(warning)
    summary = check_data(params, bars)
    outcome = train_pair(params, bars, spec, work_dir=Path(work_dir).resolve(), device=device, settings=settings,
                         progress_factory=lambda totals: Progress(totals, on_event))
    return {"model_path": str(outcome.final_dir), "model_checksum": outcome.model_checksum,
            "tokenizer_checksum": outcome.tokenizer_checksum, "device": outcome.device,
            "device_warning": outcome.device_warning, "amp": outcome.amp, "resumed_from": outcome.resumed_from,
            "data_summary": summary, "metrics": outcome.metrics()}
