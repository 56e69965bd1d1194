"""The model table, in one place: what a model name means.

A job's `model` field may be

* a published name — `kronos-mini`, `kronos-small`, `kronos-base` — which maps to a hub model repo,
  its paired tokenizer repo, its context length and a pinned revision (`PUBLISHED_MODELS`);
* `random:<mini|small|base>` — that architecture with random weights from a fixed seed, for trying
  the pipeline offline; every output made with it is labelled "random weights";
* a local directory holding `model/` and `tokenizer/` subdirectories in hub layout (`config.json` +
  `model.safetensors` each), as written by `save_local_model`, inside one of the roots of
  KRONOS_MODEL_DIRS — named absolutely or relative to a root. The name comes from untrusted
  clients, so any other path is an unknown model, with the same message whether or not it exists;
* the id of a fine-tuned model in the `models` table (tenant-scoped).

Upstream Kronos scatters hub ids and context lengths over a dozen files, so a copy can pair a model
with the wrong tokenizer; here each pairing is written once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kronos_jobs.core.errors import InvalidRequest, NotFound
from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.jobs.artifact_store import is_remote_url

if TYPE_CHECKING:  # torch stays out of the API process
    from sqlalchemy.orm import Session

RANDOM_PREFIX = "random:"
RANDOM_WEIGHTS_LABEL = "random weights"
RANDOM_SEED = 0  # fixed, so `random:small` is the same model in every process
LOCAL_MODEL_SUBDIR, LOCAL_TOKENIZER_SUBDIR = "model", "tokenizer"
LOCAL_MANIFEST = "kronos-jobs.json"  # optional: {"max_context": N} next to model/ and tokenizer/
DEFAULT_LOCAL_MAX_CONTEXT = 512


@dataclasses.dataclass(frozen=True)
class PublishedModel:
    """One published checkpoint and the tokenizer it was trained with (spec §1)."""

    size: str  # key of model.transformer.KRONOS_CONFIGS
    model_repo: str
    tokenizer_repo: str
    tokenizer_size: str  # key of model.tokenizer.TOKENIZER_CONFIGS
    max_context: int
    # None = the repo's `main` branch: only kronos-small and Kronos-Tokenizer-base have revisions
    # verified by the upstream regression test (spec §8); the others are not pinned yet.
    model_revision: str | None
    tokenizer_revision: str | None
    params: str  # README figure, for `GET /v1/models`


PUBLISHED_MODELS: dict[str, PublishedModel] = {
    "kronos-mini": PublishedModel(
        size="mini", model_repo="NeoQuasar/Kronos-mini", tokenizer_repo="NeoQuasar/Kronos-Tokenizer-2k",
        tokenizer_size="2k", max_context=2048, model_revision=None, tokenizer_revision=None, params="4.1M",
    ),
    "kronos-small": PublishedModel(
        size="small", model_repo="NeoQuasar/Kronos-small", tokenizer_repo="NeoQuasar/Kronos-Tokenizer-base",
        tokenizer_size="base", max_context=512,
        model_revision="901c26c1332695a2a8f243eb2f37243a37bea320",
        tokenizer_revision="0e0117387f39004a9016484a186a908917e22426", params="24.7M",
    ),
    "kronos-base": PublishedModel(
        size="base", model_repo="NeoQuasar/Kronos-base", tokenizer_repo="NeoQuasar/Kronos-Tokenizer-base",
        tokenizer_size="base", max_context=512, model_revision=None,
        tokenizer_revision="0e0117387f39004a9016484a186a908917e22426", params="102.3M",
    ),
}
RANDOM_MODELS = tuple(f"{RANDOM_PREFIX}{p.size}" for p in PUBLISHED_MODELS.values())


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load a model pair, and what job metadata says about it."""

    name: str  # as the job named it
    source: str  # "hub" | "random" | "local" | "finetuned"
    model_path: str  # hub repo id or local directory ("" for random)
    tokenizer_path: str
    max_context: int
    model_revision: str | None = None
    tokenizer_revision: str | None = None
    size: str | None = None  # architecture preset for random weights
    tokenizer_size: str | None = None
    checksum: str | None = None  # registry checksum of a fine-tuned artifact
    label: str | None = None  # "random weights" when so
    artifact_url: str | None = None  # a registered model in an object store: fetched into the local cache to load

    @property
    def key(self) -> str:
        """Cache key: two specs with the same key load the same weights."""
        return "|".join(str(v) for v in (self.source, self.model_path, self.model_revision,
                                         self.tokenizer_path, self.tokenizer_revision, self.size))

    def metadata(self) -> dict[str, Any]:
        meta = {
            "model": self.name, "model_source": self.source, "model_path": self.model_path,
            "model_revision": self.model_revision, "tokenizer_path": self.tokenizer_path,
            "tokenizer_revision": self.tokenizer_revision, "max_context": self.max_context,
        }
        if self.label:
            meta["label"] = self.label
        return meta


def provenance(metadata: dict[str, Any] | None, model: str) -> dict[str, str | None]:
    """Which model and checkpoint produced a job's rows, for every output format to carry.

    `checkpoint` is the hub repo@revision or directory the weights came from ("random weights" for
    random:* models, which have no checkpoint); `label` is "random weights" where that is true."""
    meta = metadata or {}
    path, revision = meta.get("model_path"), meta.get("model_revision")
    if meta.get("model_source") == "random" or (model.startswith(RANDOM_PREFIX) and not path):
        checkpoint = RANDOM_WEIGHTS_LABEL
    elif path:
        checkpoint = f"{path}@{revision}" if revision else str(path)
    else:
        checkpoint = None  # the job never loaded a model (failed or cancelled before)
    label = meta.get("label") or (RANDOM_WEIGHTS_LABEL if model.startswith(RANDOM_PREFIX) else None)
    return {"model": meta.get("model") or model, "source": meta.get("model_source"), "checkpoint": checkpoint,
            "checksum": meta.get("model_checksum"), "label": label}


def model_choices() -> list[str]:
    return [*PUBLISHED_MODELS, *RANDOM_MODELS, "<directory with model/ and tokenizer/ under KRONOS_MODEL_DIRS>", "<fine-tuned model id>"]


def _unknown(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"model {name!r} {why}; expected one of: {', '.join(model_choices())}", field="model")


# One message for every name that means nothing here: a path outside the roots gets it whether or
# not the path exists, so the API cannot be used to probe the server's file system.
NOT_A_MODEL = ("is not a published name, a random:<size> name, a registered model id or a checkpoint directory "
               "under KRONOS_MODEL_DIRS (local checkpoints must live there)")


def local_model_dir(name: str, roots: Sequence[Path]) -> Path | None:
    """The directory `name` means, resolved (symlinks and `..` followed), when it lies inside one of
    `roots`; None otherwise. A relative name is looked up under each root in order."""
    resolved_roots = [Path(root).resolve() for root in roots]
    path = Path(name)
    candidates = [path] if path.is_absolute() else [root / path for root in resolved_roots]
    for candidate in candidates:
        try:
            resolved = candidate.resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: no directory of ours
            continue
        if any(resolved.is_relative_to(root) for root in resolved_roots) and resolved.is_dir():
            return resolved
    return None


def published_spec(name: str) -> ModelSpec:
    p = PUBLISHED_MODELS[name]
    return ModelSpec(name=name, source="hub", model_path=p.model_repo, tokenizer_path=p.tokenizer_repo,
                     max_context=p.max_context, model_revision=p.model_revision,
                     tokenizer_revision=p.tokenizer_revision, size=p.size, tokenizer_size=p.tokenizer_size)


def random_spec(name: str) -> ModelSpec:
    size = name[len(RANDOM_PREFIX):]
    published = next((p for p in PUBLISHED_MODELS.values() if p.size == size), None)
    if published is None:
        raise _unknown(name, f"names no architecture (random:<{'|'.join(p.size for p in PUBLISHED_MODELS.values())}>)")
    return ModelSpec(name=name, source="random", model_path="", tokenizer_path="", max_context=published.max_context,
                     size=size, tokenizer_size=published.tokenizer_size, label=RANDOM_WEIGHTS_LABEL)


def local_spec(name: str, directory: Path) -> ModelSpec:
    model_dir, tokenizer_dir = directory / LOCAL_MODEL_SUBDIR, directory / LOCAL_TOKENIZER_SUBDIR
    missing = [str(d) for d in (model_dir, tokenizer_dir) if not (d / "config.json").is_file()]
    if missing:
        raise _unknown(name, f"is a directory but lacks a checkpoint in {', '.join(missing)}")
    max_context = DEFAULT_LOCAL_MAX_CONTEXT
    manifest = directory / LOCAL_MANIFEST
    if manifest.is_file():
        max_context = int(json.loads(manifest.read_text(encoding="utf-8")).get("max_context", max_context))
    return ModelSpec(name=name, source="local", model_path=str(model_dir.resolve()),
                     tokenizer_path=str(tokenizer_dir.resolve()), max_context=max_context)


def finetuned_spec(name: str, session: "Session", tenant_id: str) -> ModelSpec:
    from kronos_jobs.crud import models as model_crud  # DB layer only when a session is given

    try:
        row = model_crud.get_model(session, tenant_id=tenant_id, model_id=name)
    except NotFound:
        raise _unknown(name, NOT_A_MODEL) from None
    if getattr(row, "retired_at", None) is not None:
        raise _unknown(name, "was retired")
    if not row.artifact_path:
        raise _unknown(name, "has no artifact to load")
    if getattr(row, "artifact_pruned_at", None) is not None:
        raise _unknown(name, "had its files deleted by retention (KRONOS_RETAIN_RETIRED_MODELS_DAYS)")
    if is_remote_url(row.artifact_path):  # checked and fetched by the worker that loads it (artifact_store.fetch_model)
        url = row.artifact_path.rstrip("/")
        return ModelSpec(name=name, source="finetuned", model_path=f"{url}/{LOCAL_MODEL_SUBDIR}",
                         tokenizer_path=f"{url}/{LOCAL_TOKENIZER_SUBDIR}", max_context=row.max_context,
                         checksum=row.checksum, artifact_url=url)
    spec = local_spec(name, Path(row.artifact_path))
    label = RANDOM_WEIGHTS_LABEL if from_random_weights(row, session, tenant_id) else None
    return dataclasses.replace(spec, source="finetuned", checksum=row.checksum, max_context=row.max_context,
                               label=label)


def from_random_weights(row: Any, session: "Session", tenant_id: str) -> bool:
    """Whether a fine-tuned model descends from `random:*` weights, through any chain of fine-tunes:
    training on real bars does not make random initial weights a published model."""
    from kronos_jobs.crud import models as model_crud

    seen: set[str] = set()
    while row is not None and row.id not in seen:
        seen.add(row.id)
        base = row.base_model or ""
        if base.startswith(RANDOM_PREFIX):
            return True
        if not base or base in PUBLISHED_MODELS:
            return False
        try:
            row = model_crud.get_model(session, tenant_id=tenant_id, model_id=base)
        except NotFound:  # a local checkpoint directory, or a model since deleted
            return False
    return False


def local_model_names(roots: Sequence[Path], depth: int = 2) -> list[str]:
    """Checkpoint directories (holding model/ and tokenizer/) under `roots`, named relative to their
    root as a job may name them; at most `depth` levels deep, so a large tree is not walked."""
    names: list[str] = []
    for root in roots:
        root = Path(root)
        level = [root] if root.is_dir() else []
        for _ in range(depth):
            children = []
            for folder in level:
                try:
                    entries = sorted(p for p in folder.iterdir() if p.is_dir())
                except OSError:
                    continue
                for entry in entries:
                    if all((entry / sub / "config.json").is_file() for sub in (LOCAL_MODEL_SUBDIR, LOCAL_TOKENIZER_SUBDIR)):
                        names.append(entry.relative_to(root).as_posix())
                    else:
                        children.append(entry)
            level = children
    return sorted(set(names))


def resolve_model(name: str, session: "Session | None" = None, *, tenant_id: str = DEFAULT_TENANT,
                  model_dirs: Sequence[Path] = ()) -> ModelSpec:
    """Turn a job's `model` field into a `ModelSpec`; unknown names raise InvalidRequest(field="model").

    `model_dirs` (settings.effective_model_dirs) are the roots a local checkpoint may live in; with
    none, no local directory is accepted.
    """
    if not isinstance(name, str) or not name.strip():
        raise _unknown(str(name), "is empty")
    name = name.strip()
    if name in PUBLISHED_MODELS:
        return published_spec(name)
    if name.startswith(RANDOM_PREFIX):
        return random_spec(name)
    directory = local_model_dir(name, model_dirs)
    if directory is not None:
        return local_spec(name, directory)
    if session is not None:
        return finetuned_spec(name, session, tenant_id)
    raise _unknown(name, NOT_A_MODEL)


def resolve_pair(model: str, tokenizer: str, *, model_dirs: Sequence[Path] = ()) -> ModelSpec:
    """A predictor and a tokenizer in two checkpoint directories (upstream's layout: each holds its own
    `config.json` + `model.safetensors`), both inside `model_dirs` like any local checkpoint.

    The context length comes from a `kronos-jobs.json` manifest in the predictor's directory, else
    DEFAULT_LOCAL_MAX_CONTEXT.
    """
    directories = {}
    for field, name in (("model", model), ("tokenizer", tokenizer)):
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest(f"{field} {name!r} is empty", field=field)
        directory = local_model_dir(name.strip(), model_dirs)
        if directory is None:
            raise InvalidRequest(f"{field} {name!r} is not a checkpoint directory under KRONOS_MODEL_DIRS (with a "
                                 "separate tokenizer, model and tokenizer each name one such directory)", field=field)
        if not (directory / "config.json").is_file():
            raise InvalidRequest(f"{field} {name!r} is a directory without config.json (a checkpoint directory holds "
                                 "config.json and model.safetensors)", field=field)
        directories[field] = directory
    max_context = DEFAULT_LOCAL_MAX_CONTEXT
    manifest = directories["model"] / LOCAL_MANIFEST
    if manifest.is_file():
        max_context = int(json.loads(manifest.read_text(encoding="utf-8")).get("max_context", max_context))
    return ModelSpec(name=model.strip(), source="local", model_path=str(directories["model"]),
                     tokenizer_path=str(directories["tokenizer"]), max_context=max_context)


def save_local_model(directory: str | Path, model: Any, tokenizer: Any, *, max_context: int | None = None) -> Path:
    """Write `model/` and `tokenizer/` (hub layout) under `directory`; `resolve_model` reads it back."""
    directory = Path(directory)
    model.save_pretrained(directory / LOCAL_MODEL_SUBDIR)
    tokenizer.save_pretrained(directory / LOCAL_TOKENIZER_SUBDIR)
    if max_context is not None:
        (directory / LOCAL_MANIFEST).write_text(json.dumps({"max_context": int(max_context)}) + "\n", encoding="utf-8")
    return directory
