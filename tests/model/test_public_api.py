"""The public surface of ``model`` is pinned (httpx's test_exported_members)."""

import model

EXPECTED = {
    "KRONOS_CONFIGS", "TOKENIZER_CONFIGS", "BarWindows", "CheckpointError", "CheckpointMismatchError",
    "CheckpointNotFoundError", "DecodeStopped", "FinetuneConfig", "FinetuneLoop", "FinetuneResult", "Forecast", "Kronos",
    "KronosConfig", "KronosPredictor", "KronosTokenizer", "KronosTokenizerConfig", "device_info",
    "file_sha256", "finetune_predictor", "finetune_tokenizer", "get_model_class", "model_dict", "resolve_device",
}


def test_all_is_pinned_and_importable():
    assert set(model.__all__) == EXPECTED
    assert len(model.__all__) == len(EXPECTED)
    for name in model.__all__:
        assert getattr(model, name) is not None, name


def test_upstream_style_import():
    from model import Kronos, KronosPredictor, KronosTokenizer  # noqa: F401

    assert issubclass(model.CheckpointError, OSError)
    assert issubclass(model.CheckpointNotFoundError, model.CheckpointError)
    assert issubclass(model.CheckpointMismatchError, model.CheckpointError)
