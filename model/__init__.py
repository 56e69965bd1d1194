"""Kronos as a small library: tokenizer, predictor model, fast predictor engine, device resolution,
checkpoint load/save and fine-tuning.

Code written for upstream Kronos keeps working::

    from model import Kronos, KronosTokenizer, KronosPredictor

    tokenizer = KronosTokenizer.from_pretrained("NeoQuasar/Kronos-Tokenizer-base")
    model = Kronos.from_pretrained("NeoQuasar/Kronos-small")
    predictor = KronosPredictor(model, tokenizer, device="auto", max_context=512)
"""

from .checkpoint import CheckpointError, CheckpointMismatchError, CheckpointNotFoundError, file_sha256
from .device import device_info, resolve_device
from .finetune import FinetuneConfig, FinetuneLoop, FinetuneResult, finetune_predictor, finetune_tokenizer
from .predictor import Forecast, KronosPredictor
from .tokenizer import TOKENIZER_CONFIGS, KronosTokenizer, KronosTokenizerConfig
from .transformer import KRONOS_CONFIGS, Kronos, KronosConfig
from .windows import BarWindows

__all__ = [
    "KRONOS_CONFIGS",
    "TOKENIZER_CONFIGS",
    "BarWindows",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
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
    "resolve_device",
]
