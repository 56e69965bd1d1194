"""Upstream Kronos CSV fine-tune YAML files (spec §6.2) as fine-tune requests.

People who fine-tune upstream Kronos keep `finetune_csv` YAML files. `map_upstream` turns one into
`FinetuneParams` fields, the data file and a warning for every key that has no meaning here (each
warning names the key and says why), so `kronos-jobs finetune --config FILE.yaml` can submit it or
run it with `--local`. Keys it does not know are warned about too, never silently dropped.

Upstream's own template works unchanged apart from its paths: `pretrained_tokenizer` and
`pretrained_predictor` may be two checkpoint directories (`model` + `tokenizer` of the request),
its windows may exceed the model's context (the job warns what that means for inference), and
`model_paths` give upstream's output layout, which `--local` writes besides ours. Relative paths
are taken from the YAML file's directory, like `data.data_path`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kronos_jobs.core.errors import UpstreamConfigError
from kronos_jobs.jobs.registry import PUBLISHED_MODELS

# section.key -> FinetuneParams field (same meaning, same unit).
MAPPED: dict[str, str] = {
    "data.lookback_window": "lookback",
    "data.predict_window": "predict_window",
    "data.clip": "clip",
    "training.epochs": "epochs",
    "training.tokenizer_epochs": "tokenizer_epochs",
    "training.basemodel_epochs": "predictor_epochs",
    "training.batch_size": "batch_size",
    "training.log_interval": "log_interval",
    "training.seed": "seed",
    "training.tokenizer_learning_rate": "tokenizer_learning_rate",
    "training.predictor_learning_rate": "predictor_learning_rate",
    "training.adam_beta1": "adam_beta1",
    "training.adam_beta2": "adam_beta2",
    "training.adam_weight_decay": "adam_weight_decay",
    "training.accumulation_steps": "accumulation_steps",
    "experiment.name": "name",
    "experiment.description": "description",
}

# section.key -> why it has no meaning here.
NO_MEANING: dict[str, str] = {
    "data.max_context": "unused by upstream training as well; the context length comes from the base model",
    "training.num_workers": "windows are cut in the training process; there are no DataLoader workers",
    "experiment.use_comet": "no Comet logging; losses and progress are on the job (kronos-jobs status)",
    "experiment.skip_existing": "every job trains into its own directory, so nothing exists to skip",
    "distributed.use_ddp": "training runs in one process on one device",
    "distributed.backend": "training runs in one process on one device",
}
# Handled by code below (they combine or change meaning).
SPECIAL = {
    "data.data_path", "data.train_ratio", "data.val_ratio", "data.test_ratio",
    "model_paths.pretrained_tokenizer", "model_paths.pretrained_predictor",
    "experiment.train_tokenizer", "experiment.train_basemodel", "experiment.pre_trained",
    "experiment.pre_trained_tokenizer", "experiment.pre_trained_predictor", "device.use_cuda", "device.device_id",
    # upstream's output layout, written by --local besides ours (`UpstreamConfig.output_dirs`)
    "model_paths.exp_name", "model_paths.base_path", "model_paths.base_save_path", "model_paths.finetuned_tokenizer",
    "model_paths.tokenizer_save_name", "model_paths.basemodel_save_name",
}
# Where a queued job's checkpoints go instead of upstream's layout.
ARTIFACTS_NOTE = ("a queued job's checkpoints go to KRONOS_ARTIFACTS_DIR/<job id>/ and the model is registered as "
                  "ft-<job id>; only --local also writes upstream's layout")

UPSTREAM_RATIOS = (0.9, 0.1, 0.0)  # train / val / test defaults of the upstream CSV pipeline


@dataclasses.dataclass
class UpstreamConfig:
    """What an upstream YAML means here."""

    params: dict[str, Any]  # FinetuneParams fields
    data_path: Path | None
    test_ratio: float  # share of each series' last rows upstream keeps for testing (dropped here)
    use_cuda: bool
    device_id: int
    warnings: list[str]
    # phase ("tokenizer" | "predictor") -> upstream's `<base_save_path>/<save_name>/best_model` directory
    output_dirs: dict[str, Path] = dataclasses.field(default_factory=dict)
    # checkpoint directories the file names itself (trusted as model roots by --local only)
    checkpoint_dirs: list[Path] = dataclasses.field(default_factory=list)

    @property
    def device_preference(self) -> str:
        """Queue preference for a submitted job."""
        return "gpu" if self.use_cuda else "cpu"

    @property
    def local_device(self) -> str:
        """Torch device for `--local`, like upstream's `device.use_cuda` / `device_id`."""
        return f"cuda:{self.device_id}" if self.use_cuda else "cpu"


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for section, values in config.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            flat[str(section)] = values
    return flat


def _local_checkpoint(value: Any, base_dir: Path | None) -> Path | None:
    """A checkpoint directory (`config.json` inside) that `value` names, relative paths from `base_dir`."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value.strip()).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path.resolve() if (path / "config.json").is_file() else None


def _template(value: Any, exp_name: str) -> str:
    return str(value).replace("{exp_name}", exp_name)


def _output_dirs(flat: dict[str, Any], base_dir: Path | None) -> dict[str, Path]:
    """Upstream's checkpoint layout (spec §6.2): `{base_save_path}/{tokenizer,basemodel}/best_model`,
    `base_save_path` defaulting to `{base_path}/{exp_name}`; relative paths from `base_dir`."""
    exp_name = str(flat.get("model_paths.exp_name") or "default_experiment")
    base_save = _template(flat.get("model_paths.base_save_path") or "", exp_name)
    if not base_save:
        base_path = flat.get("model_paths.base_path")
        if not base_path:
            return {}
        base_save = str(Path(_template(base_path, exp_name)) / exp_name)
    root = Path(base_save).expanduser()
    if not root.is_absolute() and base_dir is not None:
        root = base_dir / root
    names = {"tokenizer": flat.get("model_paths.tokenizer_save_name") or "tokenizer",
             "predictor": flat.get("model_paths.basemodel_save_name") or "basemodel"}
    return {phase: root / _template(name, exp_name) / "best_model" for phase, name in names.items()}


def _model_name(predictor: str | None, tokenizer: str | None, warnings: list[str]) -> str | None:
    if predictor is None:
        return None
    for name, published in PUBLISHED_MODELS.items():
        if predictor in (published.model_repo, name):
            if tokenizer not in (None, published.tokenizer_repo):
                warnings.append(f"model_paths.pretrained_tokenizer: {tokenizer!r} is replaced by {published.tokenizer_repo!r}, "
                                f"the tokenizer {name} is published with")
            return name
    if tokenizer is not None and tokenizer != predictor:
        warnings.append("model_paths.pretrained_tokenizer: a base model here is one directory holding model/ and "
                        f"tokenizer/ (or a registered id); {tokenizer!r} is not read separately")
    return str(predictor)


def map_upstream(config: dict[str, Any], *, base_dir: Path | None = None) -> UpstreamConfig:
    """Map an upstream config dict; relative `data.data_path` is taken from `base_dir`."""
    if not isinstance(config, dict):
        raise UpstreamConfigError(f"expected a mapping of sections (data, training, ...), got {type(config).__name__}")
    flat = _flatten(config)
    warnings: list[str] = []
    params: dict[str, Any] = {}
    for key, value in flat.items():
        if key in MAPPED:
            params[MAPPED[key]] = value
        elif key in NO_MEANING:
            warnings.append(f"{key}: ignored; {NO_MEANING[key]}")
        elif key not in SPECIAL:
            warnings.append(f"{key}: unknown upstream key; ignored")

    # --- data: the file and the chronological split -----------------------------------------------
    data_path = flat.get("data.data_path")
    if data_path is not None:
        data_path = Path(str(data_path)).expanduser()
        if not data_path.is_absolute() and base_dir is not None:
            data_path = base_dir / data_path
    train_r, val_r, test_r = (float(flat.get(f"data.{k}_ratio", d)) for k, d in zip(("train", "val", "test"), UPSTREAM_RATIOS))
    if min(train_r, val_r, test_r) < 0 or train_r + val_r <= 0:
        raise UpstreamConfigError(f"data.train_ratio / val_ratio / test_ratio must be >= 0 with train + val > 0, "
                                  f"got {train_r} / {val_r} / {test_r}")
    params["validation_split"] = round(val_r / (train_r + val_r), 6)
    if test_r > 0:
        warnings.append(f"data.test_ratio: the last {test_r:g} of each series is dropped, as upstream keeps it out of "
                        "training; evaluation here uses the validation windows instead")

    # --- what to train, from what --------------------------------------------------------------------
    train_tok = bool(flat.get("experiment.train_tokenizer", True))
    train_pred = bool(flat.get("experiment.train_basemodel", True))
    if not (train_tok or train_pred):
        raise UpstreamConfigError("experiment.train_tokenizer and experiment.train_basemodel are both false: nothing to train")
    params["train"] = "both" if train_tok and train_pred else ("tokenizer" if train_tok else "predictor")
    output_dirs = _output_dirs(flat, base_dir)
    exp_name = str(flat.get("model_paths.exp_name") or "default_experiment")
    predictor_dir = _local_checkpoint(flat.get("model_paths.pretrained_predictor"), base_dir)
    tokenizer_dir = _local_checkpoint(flat.get("model_paths.pretrained_tokenizer"), base_dir)
    if params["train"] == "predictor":
        # Upstream's predictor phase reads the tokenizer its tokenizer phase saved (finetuned_tokenizer,
        # default: the tokenizer's best_model in the output layout), when it is there.
        finetuned = flat.get("model_paths.finetuned_tokenizer")
        finetuned_dir = (_local_checkpoint(_template(finetuned, exp_name), base_dir) if finetuned
                         else _local_checkpoint(str(output_dirs["tokenizer"]), None) if output_dirs else None)
        tokenizer_dir = finetuned_dir or tokenizer_dir
    checkpoint_dirs: list[Path] = []
    if predictor_dir is not None and tokenizer_dir is not None and predictor_dir != tokenizer_dir:
        # Upstream's layout: one checkpoint directory per half.
        model: str | None = str(predictor_dir)
        params["tokenizer"] = str(tokenizer_dir)
        checkpoint_dirs = [predictor_dir, tokenizer_dir]
    else:
        model = _model_name(flat.get("model_paths.pretrained_predictor"), flat.get("model_paths.pretrained_tokenizer"),
                            warnings)
    pre_trained = flat.get("experiment.pre_trained")
    pre_tok = flat.get("experiment.pre_trained_tokenizer", True if pre_trained is None else pre_trained)
    pre_pred = flat.get("experiment.pre_trained_predictor", True if pre_trained is None else pre_trained)
    if not pre_tok and not pre_pred and model in PUBLISHED_MODELS:
        model = f"random:{PUBLISHED_MODELS[model].size}"  # upstream: random init from the config.json
    elif not pre_tok or not pre_pred:
        which = "experiment.pre_trained_tokenizer" if not pre_tok else "experiment.pre_trained_predictor"
        warnings.append(f"{which}: false is honoured only for both halves of a published model (random:<size>); "
                        "the pretrained weights are used")
    if model is not None:
        params["model"] = model

    # --- device ------------------------------------------------------------------------------------
    use_cuda = bool(flat.get("device.use_cuda", True))
    try:
        device_id = int(flat.get("device.device_id", 0))
    except (TypeError, ValueError):
        raise UpstreamConfigError(f"device.device_id must be an integer, got {flat.get('device.device_id')!r}") from None
    params["device"] = "gpu" if use_cuda else "cpu"
    if use_cuda and device_id:
        warnings.append(f"device.device_id: used by --local (cuda:{device_id}); a queued job runs on its GPU worker's device")
    return UpstreamConfig(params=params, data_path=data_path, test_ratio=test_r, use_cuda=use_cuda,
                          device_id=device_id, warnings=warnings, output_dirs=output_dirs, checkpoint_dirs=checkpoint_dirs)


def load_upstream_yaml(path: str | Path) -> UpstreamConfig:
    """Read and map an upstream YAML file."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UpstreamConfigError(f"{path}: not YAML: {exc}") from None
    return map_upstream(config or {}, base_dir=path.parent)


def prepare_data_file(path: str | Path, *, symbol: str | None = None, test_ratio: float = 0.0) -> tuple[bytes, str]:
    """The training file as (bytes, file name) in the service's long format.

    Upstream CSV files hold one series without a `symbol` column: one is added (`symbol`, default
    the file's stem). With `test_ratio` > 0 the last share of each series is dropped, as upstream
    keeps it out of training. A file that needs neither is sent as it is.
    """
    import pandas as pd

    path = Path(path)
    parquet = path.suffix.lower() == ".parquet"
    frame = pd.read_parquet(path) if parquet else pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {str(c).strip().lower(): c for c in frame.columns}
    if "symbol" in columns and test_ratio <= 0:
        return path.read_bytes(), path.name
    if "symbol" not in columns:
        frame.insert(0, "symbol", symbol or path.stem)
        columns["symbol"] = "symbol"
    if test_ratio > 0:
        stamp = columns.get("timestamps") or columns.get("timestamp")
        if stamp is None:
            raise UpstreamConfigError(f"{path}: no timestamps column to order the rows by")
        frame = frame.assign(_order=pd.to_datetime(frame[stamp], utc=True, errors="coerce")).sort_values(
            [columns["symbol"], "_order"], kind="stable")
        keep = frame.groupby(columns["symbol"], sort=False)["_order"].transform(
            lambda s: pd.Series(range(len(s)), index=s.index) < len(s) - int(len(s) * test_ratio))
        frame = frame[keep].drop(columns="_order")
    return frame.to_csv(index=False).encode("utf-8"), f"{path.stem}.csv"
