"""Kronos as a small library: tokenizer, predictor model, fast predictor engine, device resolution,
checkpoint load/save and fine-tuning.

Code written for upstream Kronos keeps working::

    from model import Kronos, KronosTokenizer, KronosPredictor

    tokenizer = KronosTokenizer.from_pretrained("NeoQuasar/Kronos-Tokenizer-base")
    model = Kronos.from_pretrained("NeoQuasar/Kronos-small")
    predictor = KronosPredictor(model, tokenizer, device="auto", max_context=512)

Upstream's other public names live where upstream has them: ``model.kronos`` (sampling helpers,
``auto_regressive_inference``, ``calc_time_stamps``), ``model.module`` (the building blocks),
``model.model_dict`` and ``model.get_model_class``.
"""

from .checkpoint import CheckpointError, CheckpointMismatchError, CheckpointNotFoundError, file_sha256
from .decoding import DecodeStopped
from .device import device_info, resolve_device
from .finetune import FinetuneConfig, FinetuneLoop, FinetuneResult, finetune_predictor, finetune_tokenizer
from .predictor import Forecast, KronosPredictor
from .tokenizer import TOKENIZER_CONFIGS, KronosTokenizer, KronosTokenizerConfig
from .transformer import KRONOS_CONFIGS, Kronos, KronosConfig
from .windows import BarWindows

__version__ = "0.1.0"

# Upstream's name -> class registry.
model_dict = {"kronos_tokenizer": KronosTokenizer, "kronos": Kronos, "kronos_predictor": KronosPredictor}


def get_model_class(model_name: str):
    """The class registered under ``model_name`` in ``model_dict``.

    Raises ``NotImplementedError`` (upstream's exception) naming the registered names otherwise.
    """
    try:
        return model_dict[model_name]
    except (KeyError, TypeError):
        raise NotImplementedError(f"model {model_name!r} not found in model_dict; known: {sorted(model_dict)}") from None

__all__ = [
    "KRONOS_CONFIGS",
    "TOKENIZER_CONFIGS",
    "BarWindows",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "DecodeStopped",
    "FinetuneConfig",
    "FinetuneLoop",
    "FinetuneResult",
    "Forecast",
    "Kronos",
    "KronosConfig",
    "KronosPredictor",
    "KronosTokenizer",
    "KronosTokenizerConfig",
    "device_info",
    "file_sha256",
    "finetune_predictor",
    "finetune_tokenizer",
    "get_model_class",
    "model_dict",
    "resolve_device",
]
