"""Upstream CSV fine-tune YAML files: key mapping with warnings, and `kronos-jobs finetune --config`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.cli import main
from kronos_jobs.cli.finetune_yaml import NO_MEANING, map_upstream, prepare_data_file
from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.core.errors import UpstreamConfigError
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint

UPSTREAM = {
    "data": {"data_path": "bars.csv", "lookback_window": 24, "predict_window": 4, "max_context": 512, "clip": 5.0,
             "train_ratio": 0.7, "val_ratio": 0.2, "test_ratio": 0.1},
    "training": {"tokenizer_epochs": 1, "basemodel_epochs": 1, "batch_size": 8, "log_interval": 4, "num_workers": 6,
                 "seed": 42, "tokenizer_learning_rate": 0.003, "predictor_learning_rate": 0.003, "adam_beta1": 0.9,
                 "adam_beta2": 0.95, "adam_weight_decay": 0.1, "accumulation_steps": 1},
    "model_paths": {"pretrained_tokenizer": "NeoQuasar/Kronos-Tokenizer-base", "pretrained_predictor": "NeoQuasar/Kronos-small",
                    "exp_name": "demo", "base_path": "./outputs", "base_save_path": "", "finetuned_tokenizer": "",
                    "tokenizer_save_name": "tokenizer", "basemodel_save_name": "basemodel"},
    "experiment": {"name": "demo-run", "description": "d", "use_comet": False, "train_tokenizer": True,
                   "train_basemodel": True, "skip_existing": False},
    "device": {"use_cuda": True, "device_id": 0},
    "distributed": {"use_ddp": False, "backend": "nccl"},
}


def test_mapping_keeps_what_has_a_meaning_and_warns_about_the_rest(tmp_path):
    mapped = map_upstream({**UPSTREAM, "extra": {"knob": 1}}, base_dir=tmp_path)
    assert mapped.params == {
        "lookback": 24, "predict_window": 4, "clip": 5.0, "tokenizer_epochs": 1, "predictor_epochs": 1, "batch_size": 8,
        "log_interval": 4, "seed": 42, "tokenizer_learning_rate": 0.003, "predictor_learning_rate": 0.003,
        "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_weight_decay": 0.1, "accumulation_steps": 1, "name": "demo-run",
        "description": "d", "validation_split": round(0.2 / 0.9, 6), "train": "both", "model": "kronos-small",
        "device": "gpu",
    }
    assert mapped.data_path == tmp_path / "bars.csv" and mapped.test_ratio == 0.1
    assert (mapped.local_device, mapped.device_preference) == ("cuda:0", "gpu")
    warned = {w.split(":")[0] for w in mapped.warnings}
    present = {f"{s}.{k}" for s, keys in UPSTREAM.items() for k in keys}
    assert warned == (set(NO_MEANING) & present) | {"data.test_ratio", "extra.knob"}
    assert all(": ignored;" in w or "dropped" in w or "unknown" in w for w in mapped.warnings)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"experiment": {"train_tokenizer": False}}, {"train": "predictor"}),
    ({"experiment": {"train_basemodel": False}}, {"train": "tokenizer"}),
    ({"experiment": {"pre_trained": False}}, {"model": "random:small"}),
    ({"device": {"use_cuda": False}}, {"device": "cpu"}),
    ({"training": {"epochs": 3}}, {"epochs": 3}),
    ({"model_paths": {"pretrained_predictor": "ft-abc"}}, {"model": "ft-abc"}),
])
def test_mapping_variants(changes, expected):
    config = {section: {**values, **changes.get(section, {})} for section, values in UPSTREAM.items()}
    params = map_upstream(config).params
    assert {k: params.get(k) for k in expected} == expected


def test_mapping_errors_and_tokenizer_warning():
    with pytest.raises(UpstreamConfigError, match="nothing to train"):
        map_upstream({"experiment": {"train_tokenizer": False, "train_basemodel": False}})
    with pytest.raises(UpstreamConfigError, match="train_ratio"):
        map_upstream({"data": {"train_ratio": 0, "val_ratio": 0}})
    mapped = map_upstream({"model_paths": {"pretrained_predictor": "NeoQuasar/Kronos-small",
                                           "pretrained_tokenizer": "NeoQuasar/Kronos-Tokenizer-2k"}})
    assert any("replaced by 'NeoQuasar/Kronos-Tokenizer-base'" in w for w in mapped.warnings)


def test_prepare_data_file_adds_the_symbol_and_drops_the_test_tail(tmp_path):
    frame = sample_bars(1, 100).drop(columns="symbol").rename(columns={"timestamp": "timestamps"})
    frame.iloc[::-1].to_csv(tmp_path / "one.csv", index=False)  # any row order
    data, name = prepare_data_file(tmp_path / "one.csv", test_ratio=0.1)
    out = pd.read_csv(__import__("io").BytesIO(data))
    assert name == "one.csv" and set(out.symbol) == {"one"} and len(out) == 90
    assert pd.to_datetime(out.timestamps).max() == pd.Timestamp(frame.timestamps.iloc[89])


# --- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def upstream_yaml(tmp_path, settings):
    checkpoint = save_tiny_checkpoint(settings.effective_model_dirs[0] / "tiny")  # default root: <data_dir>/models
    sample_bars(1, 300).drop(columns="symbol").rename(columns={"timestamp": "timestamps"}).to_csv(tmp_path / "bars.csv", index=False)
    config = {**UPSTREAM, "model_paths": {"pretrained_predictor": str(checkpoint), "pretrained_tokenizer": str(checkpoint)},
              "device": {"use_cuda": False}}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_cli_submits_the_yaml_with_warnings(settings, upstream_yaml):
    with TestClient(create_app(settings)) as http:
        result = CliRunner().invoke(main, ["finetune", "--config", str(upstream_yaml), "--set", "max_steps=5"],
                                    obj={"settings": settings, "http": http}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        job_id = result.stdout.strip().splitlines()[-1]
        job = http.get(f"/v1/jobs/{job_id}").json()
    assert "warning: data.max_context: ignored" in result.stderr and "warning: no live worker consumes finetune.cpu" in result.stderr
    assert job["kind"] == "finetune" and job["queue"] == "finetune.cpu" and job["params"]["max_steps"] == 5
    assert job["params"]["lookback"] == 24 and job["params"]["data_summary"]["n_bars"] == 270  # test tail dropped


def test_cli_local_trains_in_process(settings, upstream_yaml, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["finetune", "--config", str(upstream_yaml), "--local", "--device", "cpu",
                                       "--out-dir", str(out), "--set", "samples_per_epoch=16", "--set", "eval_windows=4"],
                                obj={"settings": settings}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model_path"] == str((out / "final").resolve()) and summary["device"] == "cpu"
    assert set(summary["metrics"]["phases"]) == {"tokenizer", "predictor"}
    assert (Path(summary["model_path"]) / "model" / "model.safetensors").is_file()
    assert "predictor epoch 1/1 step 4/4" in result.stderr
    assert "to forecast with it, move it under KRONOS_MODEL_DIRS" in result.stderr  # out/ is outside the roots


# --- upstream's own template: separate checkpoint directories, its 512 + 48 windows, its output layout ---

# finetune_csv's template (spec §6.2 keys and example values); tests change only paths.
UPSTREAM_TEMPLATE = {
    "data": {"data_path": "data/bars.csv", "lookback_window": 512, "predict_window": 48, "max_context": 512, "clip": 5.0,
             "train_ratio": 0.9, "val_ratio": 0.1, "test_ratio": 0.0},
    "training": {"tokenizer_epochs": 30, "basemodel_epochs": 20, "batch_size": 32, "log_interval": 50, "num_workers": 6,
                 "seed": 42, "tokenizer_learning_rate": 0.0002, "predictor_learning_rate": 0.000001, "adam_beta1": 0.9,
                 "adam_beta2": 0.95, "adam_weight_decay": 0.1, "accumulation_steps": 1},
    "model_paths": {"pretrained_tokenizer": "pretrained/Kronos-Tokenizer-base", "pretrained_predictor": "pretrained/Kronos-small",
                    "exp_name": "my_exp", "base_path": "./outputs", "base_save_path": "", "finetuned_tokenizer": "",
                    "tokenizer_save_name": "tokenizer", "basemodel_save_name": "basemodel"},
    "experiment": {"name": "kronos_custom_finetune", "description": "", "use_comet": False, "train_tokenizer": True,
                   "train_basemodel": True, "skip_existing": False},
    "device": {"use_cuda": True, "device_id": 0},
    "distributed": {"use_ddp": False, "backend": "nccl"},
}


def _separate_checkpoints(root: Path) -> tuple[Path, Path]:
    """Tiny random halves saved the way upstream keeps them: one checkpoint directory each."""
    import torch

    from model import Kronos, KronosTokenizer
    from kronos_jobs.testing.tiny import TINY_KRONOS_CONFIG, TINY_TOKENIZER_CONFIG

    torch.manual_seed(3)
    tokenizer_dir, predictor_dir = root / "Kronos-Tokenizer-base", root / "Kronos-small"
    KronosTokenizer(**TINY_TOKENIZER_CONFIG).save_pretrained(tokenizer_dir)
    Kronos(**TINY_KRONOS_CONFIG).save_pretrained(predictor_dir)
    return predictor_dir, tokenizer_dir


def test_template_maps_separate_directories_and_upstreams_output_layout(tmp_path):
    predictor_dir, tokenizer_dir = _separate_checkpoints(tmp_path / "pretrained")
    mapped = map_upstream(UPSTREAM_TEMPLATE, base_dir=tmp_path)
    assert mapped.params["model"] == str(predictor_dir.resolve()) and mapped.params["tokenizer"] == str(tokenizer_dir.resolve())
    assert (mapped.params["lookback"], mapped.params["predict_window"]) == (512, 48)
    assert mapped.output_dirs == {"tokenizer": tmp_path / "outputs" / "my_exp" / "tokenizer" / "best_model",
                                  "predictor": tmp_path / "outputs" / "my_exp" / "basemodel" / "best_model"}
    assert not any(w.startswith("model_paths") for w in mapped.warnings)
    # predictor only: upstream reads the tokenizer its tokenizer phase saved, when it is there
    from model import KronosTokenizer

    finetuned = mapped.output_dirs["tokenizer"]
    KronosTokenizer.from_pretrained(tokenizer_dir).save_pretrained(finetuned)
    only = {**UPSTREAM_TEMPLATE, "experiment": {**UPSTREAM_TEMPLATE["experiment"], "train_tokenizer": False}}
    assert map_upstream(only, base_dir=tmp_path).params["tokenizer"] == str(finetuned.resolve())
    custom = {**UPSTREAM_TEMPLATE, "model_paths": {**UPSTREAM_TEMPLATE["model_paths"], "base_save_path": "runs/{exp_name}-v2"}}
    assert map_upstream(custom, base_dir=tmp_path).output_dirs["predictor"] == tmp_path / "runs" / "my_exp-v2" / "basemodel" / "best_model"


def test_cli_local_trains_upstreams_template(settings, tmp_path):
    from model import Kronos, KronosTokenizer

    _separate_checkpoints(tmp_path / "pretrained")
    (tmp_path / "data").mkdir()
    sample_bars(1, 5700).drop(columns="symbol").rename(columns={"timestamp": "timestamps"}).to_csv(
        tmp_path / "data" / "bars.csv", index=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(UPSTREAM_TEMPLATE), encoding="utf-8")
    out = tmp_path / "ours"
    result = CliRunner().invoke(main, ["finetune", "--config", str(path), "--local", "--device", "cpu", "--out-dir", str(out),
                                       "--set", "max_steps=2", "--set", "batch_size=4", "--set", "samples_per_epoch=8",
                                       "--set", "eval_windows=1"],
                                obj={"settings": settings}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert ("warning: lookback + predict_window = 560 tokens per training window exceeds the model's context length 512"
            in result.stderr)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (Path(summary["model_path"]) / "model" / "model.safetensors").is_file()  # our layout
    layout = tmp_path / "outputs" / "my_exp"
    tuned = Kronos.from_pretrained(layout / "basemodel" / "best_model")  # and upstream's
    KronosTokenizer.from_pretrained(layout / "tokenizer" / "best_model")
    ours = Kronos.from_pretrained(Path(summary["model_path"]) / "model")
    assert all(a.equal(b) for a, b in zip(tuned.state_dict().values(), ours.state_dict().values()))
    assert f"predictor also saved to {layout / 'basemodel' / 'best_model'}" in result.stderr


def test_cli_submits_upstreams_template_with_separate_directories(settings, tmp_path):
    predictor_dir, tokenizer_dir = _separate_checkpoints(settings.effective_model_dirs[0] / "pretrained")
    (tmp_path / "data").mkdir()
    sample_bars(1, 5700).drop(columns="symbol").rename(columns={"timestamp": "timestamps"}).to_csv(
        tmp_path / "data" / "bars.csv", index=False)
    config = {**UPSTREAM_TEMPLATE, "model_paths": {**UPSTREAM_TEMPLATE["model_paths"],
                                                   "pretrained_predictor": str(predictor_dir),
                                                   "pretrained_tokenizer": str(tokenizer_dir)}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with TestClient(create_app(settings)) as http:
        result = CliRunner().invoke(main, ["finetune", "--config", str(path)], obj={"settings": settings, "http": http},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        job = http.get(f"/v1/jobs/{result.stdout.strip().splitlines()[-1]}").json()
    assert job["params"]["model"] == str(predictor_dir.resolve()) and job["params"]["tokenizer"] == str(tokenizer_dir.resolve())
    assert "560 tokens per training window exceeds the model's context length 512" in result.stderr
    assert "warning: model_paths: a queued job's checkpoints go to KRONOS_ARTIFACTS_DIR" in result.stderr
