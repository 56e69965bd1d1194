"""Per-process LRU of loaded predictors, keyed by (model spec, device, dtype).

Loading happens in the worker child on the first task that needs a model — never in the parent
(which forks) and never in `worker_process_init` (Celery kills a child whose init takes over 4 s).
Each process holds at most `settings.model_cache_size` predictors; the least recently used one is
dropped first. A cached predictor keeps the smaller chunk size it learned from a CUDA out-of-memory
error (`KronosPredictor.oom_rows_cap`) for the jobs after it; `clear()` forgets it with the predictor.
A load includes the predictor's warm-up (CPU kernel choice, packing, first allocations), so the
first job on a model runs as fast as later ones and the load time in its metadata shows the cost.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict

import torch

from kronos_jobs.core.errors import ModelUnavailable
from kronos_jobs.core.settings import Settings
from kronos_jobs.jobs.artifact_store import fetch_model
from kronos_jobs.jobs.registry import LOCAL_MODEL_SUBDIR, LOCAL_TOKENIZER_SUBDIR, RANDOM_SEED, ModelSpec

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
__all__ = ["LoadedModel", "ModelUnavailable", "cached_keys", "clear", "get_predictor", "load_pair"]


@dataclasses.dataclass
class LoadedModel:
    """A predictor and where its weights came from, for job metadata."""

    predictor: object  # model.KronosPredictor
    spec: ModelSpec
    device: str
    dtype: str
    load_seconds: float  # time the original load took
    model_checksum: str | None
    tokenizer_checksum: str | None


_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()


def _build_random(spec: ModelSpec):
    from model.tokenizer import TOKENIZER_CONFIGS, KronosTokenizer
    from model.transformer import KRONOS_CONFIGS, Kronos

    # Fork the global RNG so seeding here never changes another caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        tokenizer = KronosTokenizer(TOKENIZER_CONFIGS[spec.tokenizer_size])
        model = Kronos(KRONOS_CONFIGS[spec.size])
    label = f"random-seed-{RANDOM_SEED}"
    model.checksum, tokenizer.checksum = label, label
    return model.eval(), tokenizer.eval()


def _hub_help(spec: ModelSpec, exc: Exception) -> str:
    return (
        f"cannot load model {spec.name!r} ({spec.model_path}"
        f"{'@' + spec.model_revision if spec.model_revision else ''}, tokenizer {spec.tokenizer_path}): {exc}. "
        "If the Hugging Face hub is unreachable, download the checkpoints elsewhere and point the job's "
        "`model` at a directory under KRONOS_MODEL_DIRS holding model/ and tokenizer/ (see kronos_jobs.jobs.registry.save_local_model), "
        "set KRONOS_HF_CACHE_DIR to a pre-filled cache with HF_HUB_OFFLINE=1, or use model `random:small` "
        "to try the pipeline with random weights."
    )


def load_pair(spec: ModelSpec, settings: Settings):
    """A fresh, uncached (model, tokenizer) for `spec`; fine-tunes train such a copy in place."""
    if spec.source == "random":
        return _build_random(spec)
    if spec.artifact_url:  # a registered model in the object store: load the verified local copy
        directory = fetch_model(settings, name=spec.name, url=spec.artifact_url, checksum=spec.checksum)
        spec = dataclasses.replace(spec, model_path=str(directory / LOCAL_MODEL_SUBDIR),
                                   tokenizer_path=str(directory / LOCAL_TOKENIZER_SUBDIR))
    from model.checkpoint import CheckpointError
    from model.tokenizer import KronosTokenizer
    from model.transformer import Kronos

    cache_dir = str(settings.hf_cache_dir) if settings.hf_cache_dir else None
    try:
        model = Kronos.from_pretrained(spec.model_path, revision=spec.model_revision, cache_dir=cache_dir)
        tokenizer = KronosTokenizer.from_pretrained(spec.tokenizer_path, revision=spec.tokenizer_revision,
                                                    cache_dir=cache_dir)
    except (CheckpointError, OSError) as exc:
        raise ModelUnavailable(_hub_help(spec, exc) if spec.source == "hub" else
                               f"cannot load model {spec.name!r} from {spec.model_path}: {exc}") from exc
    if spec.checksum and model.checksum != spec.checksum:
        raise ModelUnavailable(f"model {spec.name!r}: weights checksum {model.checksum} does not match the "
                               f"registered {spec.checksum}; the artifact changed after registration")
    return model, tokenizer


def get_predictor(spec: ModelSpec, device: str, settings: Settings) -> tuple[LoadedModel, bool]:
    """The cached predictor for (spec, device, dtype), loading it on a miss; returns (entry, was_cached)."""
    from model.predictor import KronosPredictor

    dtype = settings.autocast_dtype if device.startswith("cuda") else \
        "bf16" if device == "cpu" and settings.cpu_precision == "approximate-bf16" else "none"
    key = (spec.key, device, dtype)
    with _lock:  # one load at a time per process; a second caller waits and then hits the cache
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
            return entry, True
        started = time.perf_counter()
        model, tokenizer = load_pair(spec, settings)
        try:  # builds the decoding weights, chooses the CPU kernels and warms up: the first job runs warm
            predictor = KronosPredictor(model, tokenizer, device=device, max_context=spec.max_context,
                                        autocast_dtype=AUTOCAST_DTYPES[dtype], cpu_kernel=settings.cpu_kernel)
        except ValueError as exc:  # e.g. approximate bf16 asked for on a CPU without native support
            setting = "KRONOS_CPU_PRECISION" if device == "cpu" and dtype != "none" else "the worker's settings"
            raise ModelUnavailable(f"cannot build a predictor for {spec.name!r} on {device} with {setting}: {exc}") from exc
        entry = LoadedModel(predictor=predictor, spec=spec, device=str(predictor.device), dtype=dtype,
                            load_seconds=time.perf_counter() - started,
                            model_checksum=getattr(model, "checksum", None),
                            tokenizer_checksum=getattr(tokenizer, "checksum", None))
        _cache[key] = entry
        while len(_cache) > settings.model_cache_size:
            evicted_key, _ = _cache.popitem(last=False)
            logger.info("model cache: evicted %s on %s", evicted_key[0], evicted_key[1])
        logger.info("model cache: loaded %s on %s in %.2f s", spec.name, entry.device, entry.load_seconds)
        return entry, False


def clear() -> None:
    """Drop every cached predictor (tests, or a worker freeing memory)."""
    with _lock:
        _cache.clear()


def cached_keys() -> list[tuple[str, str, str]]:
    with _lock:
        return list(_cache)
