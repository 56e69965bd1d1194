"""Fine-tuning of the tokenizer or the predictor: one loop, parameterised by what is trained (spec §6).

``FinetuneLoop(phase, model, train_data, val_data, config, ...)`` trains either a ``KronosTokenizer``
(``phase="tokenizer"``) or a ``Kronos`` predictor on top of a frozen tokenizer
(``phase="predictor"``). ``finetune_tokenizer`` / ``finetune_predictor`` are the entry points. The
loop knows nothing about jobs: it reports through ``on_progress(dict)``, asks ``should_stop()``
before every step, and writes resumable state to a directory.

Upstream training defects fixed here (spec §7.3):

* item 4 — the predictor's s2 head is trained conditioned on the **target** s1 (teacher forcing),
  not on an s1 sampled from the model; validation is computed **causally** (the dependency layer
  is left in its causal training mode while everything else is in eval mode; it has no dropout),
  so the validation loss is not optimistic.
* item 12 — no per-worker copies of one seeded RNG: windows are picked by a permutation drawn from
  a ``torch.Generator`` seeded with ``seed + epoch``, and the dataset is a pure function of the index.
* item 13 — both phases use AdamW with the configured betas, and OneCycleLR runs with
  ``cycle_momentum=False`` so it no longer overrides beta1.
* item 14 — windows are normalised with the statistics of their first ``lookback`` rows only (the
  #227 fix), so the targets do not leak into the inputs. (The DDP bypass does not arise: this loop
  is single-process; distributed training is not implemented.)

Also: the batch dimension is never squeezed (PR #243), AMP (autocast + GradScaler) is used only on
CUDA with ``amp=True``, and gradient accumulation works in both phases.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import atomic_write
from .device import resolve_device
from .windows import BarWindows

logger = logging.getLogger(__name__)

PHASES = ("tokenizer", "predictor")
TRAINING_STATE_NAME = "training_state.pt"
BEST_MODEL_DIR = "best_model"
STATE_FORMAT = 1


@dataclasses.dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning phase: the one declaration of their defaults.

    The optimisation defaults are upstream's Qlib pipeline (spec §6.1). The three run-keeping
    defaults are the job service's, so a job and a direct library call train alike: ``amp`` (mixed
    precision, only ever applied on CUDA), ``log_interval`` (steps between progress reports) and
    ``checkpoint_every_steps`` (besides every epoch end; a no-op without a ``checkpoint_dir``).
    ``kronos_jobs.jobs.finetune_submit.FinetuneParams`` mirrors these fields for the API, which
    cannot import torch; tests/jobs/test_finetune_defaults.py keeps the two equal.

    ``max_steps`` counts optimiser steps over the whole run (resumes included); ``max_seconds``
    bounds one ``fit`` call. ``samples_per_epoch`` caps the windows drawn per epoch (upstream's
    ``n_train_iter``); ``val_max_windows`` caps validation. The validation split is the caller's.
    """

    epochs: int = 30
    batch_size: int = 50
    tokenizer_learning_rate: float = 2e-4
    predictor_learning_rate: float = 4e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_weight_decay: float = 0.1
    lookback: int = 90
    predict_window: int = 10
    clip: float = 5.0
    seed: int = 100
    max_steps: int | None = None
    max_seconds: float | None = None
    tokenizer_grad_clip: float = 2.0
    predictor_grad_clip: float = 3.0
    accumulation_steps: int = 1
    amp: bool = True
    amp_dtype: str = "bfloat16"
    pct_start: float = 0.03
    div_factor: float = 10.0
    samples_per_epoch: int | None = None
    val_max_windows: int | None = None
    log_interval: int = 10
    checkpoint_every_steps: int | None = 100

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lookback", "predict_window", "accumulation_steps", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "samples_per_epoch", "val_max_windows", "checkpoint_every_steps"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")
        if self.accumulation_steps > self.batch_size:
            raise ValueError(f"accumulation_steps ({self.accumulation_steps}) must not exceed "
                             f"batch_size ({self.batch_size})")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {self.amp_dtype!r}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be None or > 0, got {self.max_seconds}")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {self.pct_start}")

    @property
    def window(self) -> int:
        """Rows per training window: ``lookback + predict_window + 1``."""
        return self.lookback + self.predict_window + 1


@dataclasses.dataclass
class FinetuneResult:
    """Outcome of ``FinetuneLoop.fit``; ``stopped`` is completed | max_steps | max_seconds | cancelled."""

    phase: str
    stopped: str
    step: int
    total_steps: int
    epoch: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    best_model_dir: str | None
    elapsed: float
    history: list[dict[str, Any]]
    device: str = "cpu"
    device_warning: str | None = None


@contextmanager
def causal_eval(model: torch.nn.Module):
    """Eval mode (no dropout) but with the predictor's dependency layer in its causal training mode.

    In eval mode upstream's dependency layer attends to future positions for a full-length query
    (spec §4.3), which makes validation losses optimistic (§7.3 item 4). It has no dropout, so its
    training mode only switches on the causal mask and positions.
    """
    was_training = model.training
    model.eval()
    dep = getattr(model, "dep_layer", None)
    if dep is not None:
        dep.train()
    try:
        yield model
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------
# the loop


class FinetuneLoop:
    """One training run of the tokenizer or the predictor, resumable and cancellable.

    Parameters
    ----------
    phase : {"tokenizer", "predictor"}
        What is trained. ``"predictor"`` needs ``tokenizer`` (frozen, used to encode windows).
    model : KronosTokenizer or Kronos
        Trained in place and moved to ``device``.
    train_data, val_data : dict/list of DataFrames or BarWindows
        Bars with ``open, high, low, close`` (+ ``volume``, ``amount``) and timestamps (a
        ``timestamps``/``timestamp`` column or a DatetimeIndex). ``val_data`` may be None.
    config : FinetuneConfig
    device : str or torch.device
        Resolved with ``resolve_device``; the fallback warning is kept in ``device_warning``.
    checkpoint_dir : path, optional
        Where ``training_state.pt`` (every ``checkpoint_every_steps`` steps, at each epoch end and
        when stopped early) and ``best_model/`` (best validation loss) are written.
    on_progress : callable(dict), optional
        Receives ``phase, epoch (1-based), epochs, step, total_steps, train_loss, val_loss, lr,
        elapsed`` every ``log_interval`` steps and at each epoch end.
    should_stop : callable() -> bool, optional
        Asked before every step; True stops the run (``stopped="cancelled"``) after a checkpoint.
    """

    def __init__(self, phase: str, model: torch.nn.Module, train_data, val_data=None,
                 config: FinetuneConfig | None = None, *, tokenizer: torch.nn.Module | None = None,
                 device: str | torch.device | None = "auto", checkpoint_dir: str | os.PathLike | None = None,
                 on_progress: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if phase == "predictor" and tokenizer is None:
            raise ValueError("phase 'predictor' needs tokenizer= (the frozen tokenizer that encodes windows)")
        self.phase = phase
        self.config = config = config or FinetuneConfig()
        self.device, self.device_warning = resolve_device(device)
        self.model = model.to(self.device)
        self.tokenizer = None if tokenizer is None else tokenizer.to(self.device).eval().requires_grad_(False)
        self.train_set = self._windows(train_data)
        self.val_set = None if val_data is None else self._windows(val_data)
        if len(self.train_set) == 0:
            raise ValueError(f"train_data has no window of lookback + predict_window + 1 = {config.window} rows")
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.on_progress, self.should_stop = on_progress, should_stop

        lr = config.tokenizer_learning_rate if phase == "tokenizer" else config.predictor_learning_rate
        self.grad_clip = config.tokenizer_grad_clip if phase == "tokenizer" else config.predictor_grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(config.adam_beta1, config.adam_beta2),
                                           weight_decay=config.adam_weight_decay)
        samples = min(len(self.train_set), config.samples_per_epoch or len(self.train_set))
        self.steps_per_epoch = math.ceil(samples / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        # OneCycleLR needs a warm-up of at least one step and >= 4 steps in all; tiny runs get that.
        sched_steps = max(self.total_steps, 4)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=lr, total_steps=sched_steps, pct_start=max(config.pct_start, 2.0 / sched_steps),
            div_factor=config.div_factor, cycle_momentum=False)
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        self.amp_dtype = getattr(torch, config.amp_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_val_loss: float | None = None
        self.elapsed_before = 0.0  # time spent in earlier (resumed) runs
        self.history: list[dict[str, Any]] = []

    def _windows(self, data) -> BarWindows:
        if isinstance(data, BarWindows):
            return data
        c = self.config
        return BarWindows(data, c.lookback, c.predict_window, c.clip)

    # ---- losses ----------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext()

    def _loss(self, x: torch.Tensor, stamp: torch.Tensor, train: bool) -> torch.Tensor:
        """Mean loss of a batch ``x (B, W, 6)``, ``stamp (B, W, 5)``."""
        if self.phase == "tokenizer":
            with self._autocast():
                (z_pre, z_full), bsq_loss, _, _ = self.model(x)
                if not train:  # upstream's validation metric: reconstruction from all bits
                    return F.mse_loss(z_full.float(), x)
                return 0.5 * (F.mse_loss(z_pre.float(), x) + F.mse_loss(z_full.float(), x) + bsq_loss.float())
        with torch.no_grad():  # the frozen tokenizer runs in float32 so ids match inference
            s1, s2 = self.tokenizer.encode(x, half=True)  # (B, W) each
        with self._autocast():
            # Teacher forcing: inputs are tokens 0..W-2, targets 1..W-1, and the s2 head is
            # conditioned on the target s1 (§7.3 item 4 fixed).
            logits_s1, logits_s2 = self.model(s1[:, :-1], s2[:, :-1], stamp[:, :-1],
                                              use_teacher_forcing=True, s1_targets=s1[:, 1:])
        ce1 = F.cross_entropy(logits_s1.float().flatten(0, 1), s1[:, 1:].flatten())
        ce2 = F.cross_entropy(logits_s2.float().flatten(0, 1), s2[:, 1:].flatten())
        return 0.5 * (ce1 + ce2)

    def _train_step(self, indices) -> float:
        self.model.train()
        x, stamp = (t.to(self.device) for t in self.train_set.batch(indices))
        self.optimizer.zero_grad(set_to_none=True)
        chunks = list(zip(x.chunk(self.config.accumulation_steps), stamp.chunk(self.config.accumulation_steps)))
        total = 0.0
        for xs, ss in chunks:
            loss = self._loss(xs, ss, train=True) / len(chunks)
            self.scaler.scale(loss).backward()
            total += loss.item()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return total

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean per-window validation loss, computed causally in eval mode (None without val data)."""
        if self.val_set is None or len(self.val_set) == 0:
            return None
        count = min(len(self.val_set), self.config.val_max_windows or len(self.val_set))
        total = 0.0
        with causal_eval(self.model):
            for lo in range(0, count, self.config.batch_size):
                idx = range(lo, min(lo + self.config.batch_size, count))
                x, stamp = (t.to(self.device) for t in self.val_set.batch(idx))
                total += self._loss(x, stamp, train=False).item() * len(idx)
        return total / count

    # ---- run -------------------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[list[int]]:
        # A fresh generator per epoch: the order depends only on (seed, epoch), so a resumed run
        # replays exactly the batches that were left (§7.3 item 12 fixed).
        g = torch.Generator().manual_seed(self.config.seed + epoch)
        order = torch.randperm(len(self.train_set), generator=g)[: self.steps_per_epoch * self.config.batch_size]
        order = order.tolist()
        return [order[i:i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]

    def _stop_reason(self, started: float) -> str | None:
        if self.config.max_steps is not None and self.step >= self.config.max_steps:
            return "max_steps"
        if self.config.max_seconds is not None and time.monotonic() - started >= self.config.max_seconds:
            return "max_seconds"
        if self.should_stop is not None and self.should_stop():
            return "cancelled"
        return None

    def _report(self, train_loss: float | None, val_loss: float | None, started: float) -> None:
        event = {"phase": self.phase, "epoch": min(self.epoch + 1, self.config.epochs),
                 "epochs": self.config.epochs, "step": self.step, "total_steps": self.total_steps,
                 "train_loss": train_loss, "val_loss": val_loss, "lr": self.scheduler.get_last_lr()[0],
                 "elapsed": self.elapsed_before + time.monotonic() - started}
        self.history.append(event)
        logger.info("finetune %(phase)s epoch %(epoch)s step %(step)s/%(total_steps)s "
                    "train %(train_loss)s val %(val_loss)s", event)
        if self.on_progress is not None:
            self.on_progress(dict(event))

    def fit(self) -> FinetuneResult:
        """Train until ``epochs`` are done or a stop condition holds; see ``FinetuneResult``."""
        started = time.monotonic()
        if self.step == 0 and self.batch_in_epoch == 0:
            torch.manual_seed(self.config.seed)  # dropout RNG; restored from the state on resume
        stopped, losses, last_train, val_loss = "completed", [], None, None
        while self.epoch < self.config.epochs and stopped == "completed":
            batches = self._epoch_order(self.epoch)
            for indices in batches[self.batch_in_epoch:]:
                reason = self._stop_reason(started)
                if reason:
                    stopped = reason
                    break
                losses.append(self._train_step(indices))
                self.step += 1
                self.batch_in_epoch += 1
                if self.step % self.config.log_interval == 0:
                    last_train = float(np.mean(losses))
                    losses = []
                    self._report(last_train, None, started)
                if self.config.checkpoint_every_steps and self.step % self.config.checkpoint_every_steps == 0:
                    self.save_checkpoint(started)
            else:
                # ---- epoch end: validate, keep the best model, checkpoint
                if losses:
                    last_train, losses = float(np.mean(losses)), []
                val_loss = self.validate()
                self._report(last_train, val_loss, started)
                self.epoch += 1
                self.batch_in_epoch = 0
                if val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss):
                    self.best_val_loss = val_loss
                    if self.checkpoint_dir is not None:
                        self.model.save_pretrained(self.checkpoint_dir / BEST_MODEL_DIR)
                self.save_checkpoint(started)
        if stopped != "completed":
            if losses:
                last_train = float(np.mean(losses))
            self.save_checkpoint(started)
            logger.info("finetune %s stopped (%s) at step %d", self.phase, stopped, self.step)
        self.model.eval()  # ready for save_pretrained / inference
        best_dir = None
        if self.checkpoint_dir is not None and (self.checkpoint_dir / BEST_MODEL_DIR).is_dir():
            best_dir = str(self.checkpoint_dir / BEST_MODEL_DIR)
        return FinetuneResult(self.phase, stopped, self.step, self.total_steps, self.epoch, last_train, val_loss,
                              self.best_val_loss, best_dir, self.elapsed_before + time.monotonic() - started,
                              list(self.history), str(self.device), self.device_warning)

    # ---- resumable state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: model, optimiser, scheduler, scaler, counters and RNG."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": STATE_FORMAT, "phase": self.phase, "config": dataclasses.asdict(self.config),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_val_loss": self.best_val_loss, "elapsed": self.elapsed_before, "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; the phase must match, config changes are logged."""
        if state.get("format") != STATE_FORMAT or state.get("phase") != self.phase:
            raise ValueError(f"training state is for phase {state.get('phase')!r} (format {state.get('format')}), "
                             f"this loop trains {self.phase!r} (format {STATE_FORMAT})")
        changed = {k: (v, getattr(self.config, k)) for k, v in state["config"].items()
                   if getattr(self.config, k, v) != v}
        if changed:
            logger.warning("resuming with changed config values (saved, now): %s", changed)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_val_loss, self.elapsed_before = state["best_val_loss"], state["elapsed"]
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def save_checkpoint(self, started: float | None = None) -> Path | None:
        """Atomically write ``training_state.pt`` into ``checkpoint_dir`` (no-op without one)."""
        if self.checkpoint_dir is None:
            return None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if started is not None:
            state["elapsed"] = self.elapsed_before + time.monotonic() - started
        atomic_write(self.checkpoint_dir, TRAINING_STATE_NAME, lambda tmp: torch.save(state, tmp))
        return self.checkpoint_dir / TRAINING_STATE_NAME

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> bool:
        """Resume from ``path`` (default ``checkpoint_dir/training_state.pt``); False if it does not exist.

        Loaded with ``weights_only=True``: tensors and plain containers only, no arbitrary unpickling.
        """
        path = Path(path) if path is not None else (
            None if self.checkpoint_dir is None else self.checkpoint_dir / TRAINING_STATE_NAME)
        if path is None or not path.is_file():
            return False
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        logger.info("resumed finetune %s from %s at step %d", self.phase, path, self.step)
        return True


# ---------------------------------------------------------------------------------------------------
# entry points


def finetune_tokenizer(tokenizer, train_data, val_data=None, config: FinetuneConfig | None = None, *,
                       resume: bool = True, **loop_kwargs) -> FinetuneResult:
    """Fine-tune a ``KronosTokenizer`` in place; resumes from ``checkpoint_dir`` when ``resume``.

    ``loop_kwargs``: ``device``, ``checkpoint_dir``, ``on_progress``, ``should_stop`` (see
    ``FinetuneLoop``). Loss: ``(MSE(z_pre, x) + MSE(z_full, x) + L_bsq) / 2``; validation
    ``MSE(z_full, x)``.
    """
    loop = FinetuneLoop("tokenizer", tokenizer, train_data, val_data, config, **loop_kwargs)
    if resume:
        loop.load_checkpoint()
    return loop.fit()


def finetune_predictor(model, tokenizer, train_data, val_data=None, config: FinetuneConfig | None = None, *,
                       resume: bool = True, **loop_kwargs) -> FinetuneResult:
    """Fine-tune a ``Kronos`` predictor in place on ids from a frozen ``tokenizer``.

    Loss: ``(CE(s1) + CE(s2)) / 2`` over next-token targets with teacher forcing; validation is the
    same loss computed causally in eval mode. Other arguments as ``finetune_tokenizer``.
    """
    loop = FinetuneLoop("predictor", model, train_data, val_data, config, tokenizer=tokenizer, **loop_kwargs)
    if resume:
        loop.load_checkpoint()
    return loop.fit()
