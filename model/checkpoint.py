"""Checkpoint save/load in the Hugging Face hub layout, shared by the tokenizer and the predictor.

A checkpoint directory (or hub repository) holds three files:

* ``config.json`` — the serialised fields of the model's config dataclass (sorted keys, indent 2);
* ``model.safetensors`` — the full ``state_dict`` (persistent buffers included), float32;
* ``README.md`` — a short model card (written on save, never read).

``save_pretrained`` and ``from_pretrained`` are mirror images. Loading differs from upstream's hub
mixin on purpose (spec §2.3):

* safetensors only — a repository that only has ``pytorch_model.bin`` is refused, because unpickling
  a downloaded file can run arbitrary code;
* strict on parameter keys, so a config that does not match the weights fails loudly instead of
  leaving randomly initialised layers (upstream uses ``strict=False``);
* tolerant of the derived buffers ``*.rotary.inv_freq``, ``*bsq.basis`` and ``*bsq.group_basis``,
  which some copies of the checkpoints carry and others do not (they are recomputed by the
  constructor anyway).

Exceptions::

    OSError
     └── CheckpointError              any failure to find, read or apply a checkpoint
          ├── CheckpointNotFoundError the directory / repository / file cannot be obtained
          └── CheckpointMismatchError config.json or the weights do not match the model class
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_WEIGHTS_NAME = "pytorch_model.bin"
MODEL_CARD_NAME = "README.md"

# Buffers derived from the config; their presence in a file varies between copies of the checkpoints.
TOLERATED_BUFFER_SUFFIXES = ("rotary.inv_freq", "bsq.basis", "bsq.group_basis")

_TRUTHY = {"1", "true", "yes", "on"}
_MISSING = object()


class CheckpointError(OSError):
    """Raised when a checkpoint cannot be found, read, or applied to a model."""


class CheckpointNotFoundError(CheckpointError):
    """Raised when a local directory, hub repository, revision or file cannot be obtained."""


class CheckpointMismatchError(CheckpointError):
    """Raised when ``config.json`` or the weights do not match the model class (keys or shapes)."""


# ---------------------------------------------------------------------------------------------------
# helpers


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 digest of a file, read in chunks so big checkpoints stay cheap."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_to_dict(config: Any) -> dict[str, Any]:
    """Serialised fields of a config dataclass (fields with ``metadata={"serialize": False}`` skipped)."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.metadata.get("serialize", True)
    }


def config_from_dict(config_class: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build ``config_class`` from a dict, naming any unknown or missing key.

    Unknown keys are an error (they usually mean the file belongs to another model class). A
    serialised field without a default must be present; fields with defaults may be absent.
    """
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CheckpointMismatchError(
            f"{source}: unknown key(s) {unknown} for {config_class.__name__}; "
            f"expected keys are {sorted(n for n, f in fields.items() if f.metadata.get('serialize', True))}"
        )
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise CheckpointMismatchError(f"{source}: missing key(s) {missing} for {config_class.__name__}")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as exc:
        raise CheckpointMismatchError(f"{source}: invalid {config_class.__name__}: {exc}") from exc


def atomic_write(directory: Path, name: str, write: Callable[[str], None]) -> None:
    """Write ``directory/name`` through a temp file in the same directory, then ``os.replace``.

    A reader (or a crash) never sees a half-written file, and ``os.replace`` is atomic because the
    temp file is on the same file system.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _env_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it per call so tests and workers
    # that set it later are honoured too.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def _is_tolerated_buffer(key: str) -> bool:
    return key.endswith(TOLERATED_BUFFER_SUFFIXES)


def _looks_like_local_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.path.isabs(name)


# ---------------------------------------------------------------------------------------------------
# resolving files


def _resolve_files(
    name_or_dir: str, *, revision, cache_dir, force_download, local_files_only, token
) -> tuple[Path, Path, str | None]:
    """Return local paths of (config.json, model.safetensors) and the resolved commit (hub only)."""
    local = Path(os.path.expanduser(str(name_or_dir)))
    if local.is_dir():
        config_path, weights_path = local / CONFIG_NAME, local / WEIGHTS_NAME
        if not config_path.is_file():
            raise CheckpointNotFoundError(f"{local}: no {CONFIG_NAME} in this checkpoint directory")
        if not weights_path.is_file():
            if (local / PICKLE_WEIGHTS_NAME).is_file():
                raise CheckpointNotFoundError(
                    f"{local}: only {PICKLE_WEIGHTS_NAME} found; this loader reads {WEIGHTS_NAME} only "
                    "(pickle files can execute code when loaded). Convert it to safetensors first."
                )
            raise CheckpointNotFoundError(f"{local}: no {WEIGHTS_NAME} in this checkpoint directory")
        return config_path, weights_path, None
    if _looks_like_local_path(str(name_or_dir)):
        raise CheckpointNotFoundError(f"checkpoint directory {str(name_or_dir)!r} does not exist")
    return _download(
        str(name_or_dir),
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        local_files_only=local_files_only,
        token=token,
    )


def _download(repo_id, *, revision, cache_dir, force_download, local_files_only, token):
    # Imported lazily: huggingface_hub is only needed for hub ids, not for local directories.
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hub_errors

    offline = bool(local_files_only) or _env_offline()
    where = f"{repo_id!r} at revision {revision or 'main'!r}"
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(
                Path(
                    hf_hub_download(
                        repo_id,
                        filename,
                        revision=revision,
                        cache_dir=cache_dir,
                        force_download=force_download,
                        local_files_only=offline,
                        token=token,
                    )
                )
            )
        except hub_errors.LocalEntryNotFoundError as exc:
            # Raised both when offline mode is on and when the hub cannot be reached.
            mode = "offline mode is on (HF_HUB_OFFLINE / local_files_only)" if offline else (
                "the hub could not be reached"
            )
            raise CheckpointNotFoundError(
                f"cannot load {filename} of {where}: {mode} and the file is not in the cache "
                f"(cache_dir={cache_dir or 'default HF cache'}). Download it once with network access "
                "(unset HF_HUB_OFFLINE), point cache_dir at a cache that has it, or pass a local "
                "directory containing config.json and model.safetensors."
            ) from exc
        except hub_errors.RevisionNotFoundError as exc:
            raise CheckpointNotFoundError(f"revision {revision!r} not found in {repo_id!r}") from exc
        except hub_errors.EntryNotFoundError as exc:
            hint = (
                f" This loader reads {WEIGHTS_NAME} only; pickle weights ({PICKLE_WEIGHTS_NAME}) are refused."
                if filename == WEIGHTS_NAME
                else ""
            )
            raise CheckpointNotFoundError(f"{filename} not found in {where}.{hint}") from exc
        except hub_errors.RepositoryNotFoundError as exc:
            raise CheckpointNotFoundError(
                f"hub repository {repo_id!r} not found (or private: pass token=...)"
            ) from exc
        except hub_errors.HFValidationError as exc:
            raise CheckpointNotFoundError(
                f"{repo_id!r} is neither an existing local directory nor a valid hub repo id: {exc}"
            ) from exc
        except hub_errors.HfHubHTTPError as exc:
            raise CheckpointNotFoundError(f"cannot download {filename} of {where}: {exc}") from exc
    # Hub cache layout: .../snapshots/<commit>/<filename>; record the commit that was really used.
    commit = paths[1].parent.name if paths[1].parent.parent.name == "snapshots" else None
    return paths[0], paths[1], commit


# ---------------------------------------------------------------------------------------------------
# applying weights


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``: strict on parameters, tolerant of derived buffers."""
    expected = model.state_dict()
    param_names = {name for name, _ in model.named_parameters()}
    missing = [k for k in expected if k not in state and not _is_tolerated_buffer(k)]
    unexpected = [k for k in state if k not in expected and not _is_tolerated_buffer(k)]
    if missing or unexpected:
        kinds = "parameter" if all(k in param_names for k in missing) else "parameter/buffer"
        raise CheckpointMismatchError(
            f"{source}: weights do not match {type(model).__name__} built from its config.json "
            f"(missing {kinds} keys: {missing[:20]}{' …' if len(missing) > 20 else ''}; "
            f"unexpected keys: {unexpected[:20]}{' …' if len(unexpected) > 20 else ''}). "
            "The config probably does not match the weights (wrong model class, layer count or size)."
        )
    for key, tensor in state.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointMismatchError(
                f"{source}: shape mismatch for {key}: checkpoint has {tuple(tensor.shape)}, "
                f"model expects {tuple(expected[key].shape)} (config does not match the weights)"
            )
    usable = {k: v for k, v in state.items() if k in expected}
    skipped = sorted(set(expected) - set(usable))
    if skipped:
        logger.debug("%s: keeping recomputed buffers %s", source, skipped)
    model.load_state_dict(usable, strict=False)


# ---------------------------------------------------------------------------------------------------
# the mixin


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` configured by one dataclass.

    A subclass defines ``config_class`` (a dataclass whose serialised fields are exactly the
    ``config.json`` keys), stores its config as ``self.config`` and accepts
    ``__init__(self, *args, **kwargs)``; ``_build_config`` turns upstream-style positional/keyword
    arguments into the dataclass. After ``from_pretrained`` the instance records its origin in
    ``name_or_path``, ``revision``, ``commit_hash`` and ``checksum`` (sha256 of the weights file).
    """

    config_class: type = None  # set by the subclass
    name_or_path: str | None = None
    revision: str | None = None
    commit_hash: str | None = None
    checksum: str | None = None

    @classmethod
    def _build_config(cls, args: tuple = (), kwargs: dict[str, Any] | None = None) -> Any:
        """The config from ``__init__(*args, **kwargs)``: one config (dataclass or dict, positional or
        ``config=``), or upstream's constructor arguments, positional in upstream's order and/or by
        keyword (not both forms)."""
        kwargs = dict(kwargs or {})
        config = kwargs.pop("config", None)
        if len(args) == 1 and config is None and isinstance(args[0], (cls.config_class, dict)):
            config, args = args[0], ()
        if args:
            names = [f.name for f in dataclasses.fields(cls.config_class) if f.metadata.get("serialize", True)]
            if len(args) > len(names):
                raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional arguments "
                                f"({', '.join(names)}), got {len(args)}")
            twice = sorted(set(names[:len(args)]) & set(kwargs))
            if twice:
                raise TypeError(f"{cls.__name__}() got multiple values for {twice}")
            kwargs.update(zip(names, args))
        if config is not None and kwargs:
            raise TypeError(
                f"{cls.__name__}: pass either config or keyword hyper-parameters, not both "
                f"(got config and {sorted(kwargs)})"
            )
        if config is None:
            return cls.config_class(**kwargs)
        if isinstance(config, dict):
            return config_from_dict(cls.config_class, config, source=f"{cls.__name__} config")
        if not isinstance(config, cls.config_class):
            raise TypeError(
                f"{cls.__name__}: config must be a {cls.config_class.__name__}, got {type(config).__name__}"
            )
        return config

    def checkpoint_metadata(self) -> dict[str, str | None]:
        """Where the weights came from, for job metadata."""
        return {
            "name_or_path": self.name_or_path,
            "revision": self.revision,
            "commit_hash": self.commit_hash,
            "checksum": self.checksum,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, *, config: Any = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict[str, Any] | None = None,
                        **push_to_hub_kwargs) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` atomically.

        Parameters
        ----------
        save_directory : path
            Created if needed. Existing files of the same names are replaced atomically.
        config : dict or config dataclass, optional
            Upstream's hub-mixin keyword. ``config.json`` always describes this model's architecture,
            so a config that disagrees with it is refused (``ValueError`` naming the keys) rather than
            written next to weights it does not fit.
        repo_id, push_to_hub, **push_to_hub_kwargs
            With ``push_to_hub=True`` also upload the directory's files with ``push_to_hub``
            (``repo_id`` defaults to the directory's name).
        model_card_kwargs : dict, optional
            Accepted for signature compatibility; the model card is always the one written here.

        Returns
        -------
        Path
            The directory.
        """
        directory = Path(save_directory)
        self._check_config_argument(config)
        directory.mkdir(parents=True, exist_ok=True)
        config = config_to_dict(self.config)
        # safetensors needs contiguous CPU tensors with no shared storage.
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}

        def write_config(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(config, fh, indent=2, sort_keys=True)
                fh.write("\n")

        def write_card(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(_model_card(type(self).__name__, config))

        atomic_write(directory, WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        atomic_write(directory, CONFIG_NAME, write_config)
        atomic_write(directory, MODEL_CARD_NAME, write_card)
        logger.info("saved %s to %s", type(self).__name__, directory)
        if push_to_hub:
            self.push_to_hub(repo_id or directory.name, **push_to_hub_kwargs)
        return directory

    def _check_config_argument(self, config: Any) -> None:
        if config is None:
            return
        given = config_to_dict(config) if dataclasses.is_dataclass(config) else config
        if not isinstance(given, dict):
            raise TypeError(f"config must be a dict or a {self.config_class.__name__}, got {type(config).__name__}")
        ours = config_to_dict(self.config)
        differ = sorted(k for k in set(given) | set(ours) if given.get(k, _MISSING) != ours.get(k, _MISSING))
        if differ:
            raise ValueError(
                f"config disagrees with this {type(self).__name__}'s architecture on {differ}; config.json is "
                f"written from the model itself (model.config), so pass config=None or build the model with "
                f"that configuration"
            )

    def push_to_hub(self, repo_id: str, *, config: Any = None, commit_message: str = "Push model using huggingface_hub.",
                    private: bool | None = None, token: str | None = None, branch: str | None = None,
                    create_pr: bool | None = None, allow_patterns=None, ignore_patterns=None, delete_patterns=None,
                    model_card_kwargs: dict[str, Any] | None = None) -> str:
        """Save to a temporary directory and upload it as one commit to the hub repository ``repo_id``.

        Same keywords as ``huggingface_hub.ModelHubMixin.push_to_hub``; the repository is created if
        needed. Returns the commit URL.

        Raises
        ------
        CheckpointError
            The hub could not be reached or refused the upload (the message names ``repo_id``).
        """
        from huggingface_hub import HfApi
        from huggingface_hub import errors as hub_errors
        import httpx

        self._check_config_argument(config)
        api = HfApi(token=token)
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            with tempfile.TemporaryDirectory() as tmp:
                self.save_pretrained(tmp)
                info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=tmp,
                                         commit_message=commit_message, revision=branch, create_pr=create_pr,
                                         allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                         delete_patterns=delete_patterns)
        except (hub_errors.HfHubHTTPError, httpx.HTTPError, OSError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"cannot push {type(self).__name__} to hub repository {repo_id!r} "
                                  f"at {api.endpoint}: {exc}") from exc
        return str(getattr(info, "commit_url", info))

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        map_location: str | torch.device = "cpu",
        **config_overrides: Any,
    ):
        """Load a model from a local directory or a hub repository (safetensors only).

        Parameters
        ----------
        name_or_dir : str or path
            A directory holding ``config.json`` + ``model.safetensors``, or a hub id such as
            ``"NeoQuasar/Kronos-small"``.
        revision, cache_dir, force_download, token
            Passed to ``huggingface_hub.hf_hub_download`` (hub ids only).
        local_files_only : bool, optional
            Never touch the network. ``None`` means "only if ``HF_HUB_OFFLINE`` is set".
        map_location : str or torch.device
            Device the weights are loaded onto; the model is moved there.
        **config_overrides
            Replace ``config.json`` values (or set non-serialised config fields).

        Returns
        -------
        The model in eval mode, with ``name_or_path``, ``revision``, ``commit_hash`` and
        ``checksum`` set.

        Raises
        ------
        CheckpointNotFoundError
            The directory, repository, revision or a file is missing, or the hub is unreachable /
            offline and the files are not cached.
        CheckpointMismatchError
            ``config.json`` has unknown or missing keys, or the weights do not fit the config.
        """
        config_path, weights_path, commit = _resolve_files(
            name_or_dir,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        source = str(name_or_dir) + (f"@{revision}" if revision else "")
        try:
            with open(config_path, encoding="utf-8") as fh:
                values = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{source}: cannot read {CONFIG_NAME}: {exc}") from exc
        if not isinstance(values, dict):
            raise CheckpointMismatchError(f"{source}: {CONFIG_NAME} must hold a JSON object")
        values.update(config_overrides)
        config = config_from_dict(cls.config_class, values, source=f"{source} {CONFIG_NAME}")

        model = cls(config)
        try:
            state = load_file(str(weights_path), device=str(torch.device(map_location)))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{source}: cannot read {WEIGHTS_NAME}: {exc}") from exc
        model.to(map_location)
        _load_weights(model, state, source)
        model.eval()

        model.name_or_path = str(name_or_dir)
        model.revision = revision
        model.commit_hash = commit
        model.checksum = file_sha256(weights_path)
        logger.info("loaded %s from %s (sha256 %s)", cls.__name__, source, model.checksum[:12])
        return model


def _model_card(class_name: str, config: dict[str, Any]) -> str:
    lines = [
        "---",
        "tags:",
        "- model_hub_mixin",
        "- pytorch_model_hub_mixin",
        "- kronos",
        "---",
        "",
        f"# {class_name}",
        "",
        "Saved by kronos-jobs `model.checkpoint.PretrainedMixin.save_pretrained`.",
        f"Load with `{class_name}.from_pretrained(<this directory>)`.",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def config_property(field: str, doc: str = "") -> property:
    """A read-only attribute that reads ``self.config.<field>`` (upstream stores these on the module)."""

    def get(self):
        return getattr(self.config, field)

    return property(get, doc=doc or f"``config.{field}`` (read-only; set it through the config).")
