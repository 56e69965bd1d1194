"""The artifact store: where fine-tune checkpoints, resumable training state and registered models
live, named by KRONOS_ARTIFACTS_URL — a local path or an object store URL (`s3://bucket/prefix`).

Why fsspec + s3fs rather than boto3: one small API (`put_file`, `get_file`, `find`, `rm`) over a
local folder and an object store, so the single-machine default and a fleet of hosts run the same
code; boto3 would need a second, local branch for every operation. s3fs talks to any
S3-compatible endpoint (MinIO, Ceph, R2) through KRONOS_S3_ENDPOINT_URL and takes credentials from
botocore's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, a profile, an
instance role). Nothing here logs or stores credentials: messages and rows name URLs only.

Layout under the store's root:

    <job id>/<phase>/training_state.pt, best_model/, val_loss_before.json   while a fine-tune runs
    <job id>/final/{model,tokenizer}/, kronos-jobs.json, kronos-artifact.json   the registered model

A fine-tune trains in a local working folder, `<KRONOS_ARTIFACTS_DIR>/<job id>/`. When the store is
that same folder (the default) nothing is copied. Otherwise the folder is a mirror: a phase's
files are uploaded each time the loop checkpoints, downloaded before training starts (so a job
given back or redelivered resumes on any host), and `final/` is uploaded with its manifest written
LAST: an upload cut short has no manifest, and the model is registered only after it.

A worker that needs a registered model from an object store fetches it once into
`<KRONOS_MODEL_CACHE_DIR>/<checksum>/`: downloaded into a temp folder beside it, each file's sha256
checked against the manifest and the weights' against the registry's checksum, then renamed into
place (atomic on one file system), so a half-fetched model is never loaded and later loads reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import fsspec
from fsspec.utils import get_protocol

from kronos_jobs.core.errors import ArtifactUnavailable
from kronos_jobs.core.settings import Settings

logger = logging.getLogger(__name__)
# botocore's DEBUG records print each request's headers, access key id included: never below INFO.
for _name in ("botocore", "aiobotocore", "s3fs"):
    logging.getLogger(_name).setLevel(max(logging.getLogger(_name).level, logging.INFO))

MANIFEST_NAME = "kronos-artifact.json"  # {"files": {"model/model.safetensors": "<sha256>", ...}}
MODEL_WEIGHTS = "model/model.safetensors"  # whose sha256 is the registry's `checksum` (model/checkpoint.py)
FINAL_DIR = "final"
LAST_UPLOADED = ("training_state.pt",)  # a phase's state goes up after the best_model/ it may point to
LOCAL_PROTOCOLS = frozenset({"file", "local"})
__all__ = ["ArtifactStore", "FinetuneArtifacts", "MANIFEST_NAME", "fetch_model", "is_remote_url", "remove_artifact"]


def is_remote_url(url: str | None) -> bool:
    """True for an object-store URL (s3://...), False for a local path or file:// URL."""
    return bool(url) and get_protocol(str(url)) not in LOCAL_PROTOCOLS


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> dict[str, str]:
    """Write `directory/kronos-artifact.json` listing every other file's sha256; returns the list."""
    files = {p.relative_to(directory).as_posix(): file_sha256(p) for p in sorted(directory.rglob("*"))
             if p.is_file() and p.name != MANIFEST_NAME}
    (directory / MANIFEST_NAME).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
    return files


class ArtifactStore:
    """A folder of the store, local or remote, addressed by URL."""

    def __init__(self, url: str, *, endpoint_url: str | None = None):
        self.url = str(url).rstrip("/") or str(url)
        self.endpoint_url = endpoint_url
        self.remote = is_remote_url(self.url)
        options = {}
        if self.remote and endpoint_url and get_protocol(self.url) in ("s3", "s3a"):
            options["client_kwargs"] = {"endpoint_url": endpoint_url}
        # Credentials are left to botocore's chain (environment, profile, role): never passed here.
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> "ArtifactStore":
        return cls(url or settings.effective_artifacts_url, endpoint_url=settings.s3_endpoint_url)

    def child(self, *parts: str) -> str:
        """The URL of `parts` below this folder."""
        if not self.remote:
            return str(Path(self.root).joinpath(*parts))
        return "/".join([self.url, *parts])

    def sub(self, *parts: str) -> "ArtifactStore":
        """The folder `parts` below this one (fsspec hands back the same cached file system)."""
        return ArtifactStore(self.child(*parts), endpoint_url=self.endpoint_url)

    def holds(self, directory: Path) -> bool:
        """True when this store is the local folder `directory` itself (nothing to mirror)."""
        return not self.remote and Path(self.root).resolve() == Path(directory).resolve()

    def _key(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def upload_tree(self, local_dir: Path, *, last: tuple[str, ...] = ()) -> int:
        """Copy every file under `local_dir` to the same relative keys here; names in `last` go up
        after the others (a manifest, a training state). Returns the number of files."""
        files = sorted((p for p in Path(local_dir).rglob("*") if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: (p.name in last, p.as_posix()))
        for path in files:
            self.fs.put_file(str(path), self._key(path.relative_to(local_dir).as_posix()))
        return len(files)

    def list_files(self) -> list[str]:
        """Relative keys of every object below this folder ([] when there is none)."""
        self.fs.invalidate_cache(self.root)  # another host may have written here since this process listed it
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        prefix = self.root.rstrip("/") + "/"
        return sorted(key[len(prefix):] for key in found if key.startswith(prefix))

    def download(self, relative: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(self._key(relative), str(target))

    def read_text(self, relative: str) -> str:
        return self.fs.cat_file(self._key(relative)).decode("utf-8")

    def remove(self) -> None:
        """Delete this folder and everything below it (no error when it is already gone)."""
        try:
            self.fs.rm(self.root, recursive=True)
        except FileNotFoundError:
            pass


# --- a fine-tune's files ----------------------------------------------------------------------------


class FinetuneArtifacts:
    """One fine-tune job's files: the local working folder, and its mirror when the store is elsewhere."""

    def __init__(self, settings: Settings, job_id: str):
        self.settings, self.job_id = settings, job_id
        self.work_dir = settings.effective_artifacts_dir / job_id
        self.store = ArtifactStore.from_settings(settings).sub(job_id)
        self.mirrored = not self.store.holds(self.work_dir)

    def restore(self, phases: tuple[str, ...] | list[str]) -> list[str]:
        """Download each phase's stored training state over the local one (another host may have
        trained further); returns the phases found. A no-op without a mirror."""
        if not self.mirrored:
            return []
        found = []
        for phase in phases:
            remote = self.store.sub(phase)
            keys = remote.list_files()
            if not keys:
                continue
            shutil.rmtree(self.work_dir / phase, ignore_errors=True)
            for key in keys:
                remote.download(key, self.work_dir / phase / key)
            found.append(phase)
            logger.info("job %s: fetched the %s phase's training state from %s", self.job_id, phase, remote.url)
        return found

    def checkpointed(self, phase_dir: Path) -> None:
        """The loop just wrote a checkpoint in `phase_dir`: upload the phase's files."""
        if self.mirrored:
            self.store.sub(phase_dir.name).upload_tree(phase_dir, last=LAST_UPLOADED)

    def publish(self, final_dir: Path) -> str:
        """Write the model's manifest and, with a mirror, upload `final/` (manifest last); returns
        the location to register: the store URL, or the local folder when the store is local."""
        write_manifest(final_dir)
        if not self.mirrored:
            return str(final_dir)
        self.store.sub(FINAL_DIR).upload_tree(final_dir, last=(MANIFEST_NAME,))
        logger.info("job %s: model uploaded to %s", self.job_id, self.store.child(FINAL_DIR))
        return self.store.child(FINAL_DIR)

    def discard_states(self, phases: tuple[str, ...] | list[str], *, checksum: str | None = None) -> None:
        """After registration: training states are no longer needed. With a mirror the local
        folder goes too; its final/ becomes this host's cached copy of the model."""
        for phase in phases:
            shutil.rmtree(self.work_dir / phase, ignore_errors=True)
        if not self.mirrored:
            return
        for phase in phases:
            self.store.sub(phase).remove()
        final = self.work_dir / FINAL_DIR
        if checksum and final.is_dir():
            cache = self.settings.effective_model_cache_dir
            cache.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(final, cache / checksum)
            except OSError:  # already cached, or another file system: fetched on first use instead
                pass
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def remove(self) -> None:
        """A cancelled or failed fine-tune: delete its files here and in the store."""
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.mirrored:
            self.store.remove()


# --- registered models --------------------------------------------------------------------------------


def _safe_relative(key: str) -> bool:
    path = PurePosixPath(key)
    return bool(key) and not path.is_absolute() and ".." not in path.parts


def fetch_model(settings: Settings, *, name: str, url: str, checksum: str | None) -> Path:
    """The local folder holding registered model `name` (stored at `url`), fetched and verified
    once per checksum (module docstring). Raises ArtifactUnavailable naming the model."""
    if not checksum:
        raise ArtifactUnavailable(f"model {name!r}: no checksum is registered for {url}, so a fetched copy cannot be verified")
    cache = settings.effective_model_cache_dir
    target = cache / checksum
    if (target / MANIFEST_NAME).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    store = ArtifactStore(url, endpoint_url=settings.s3_endpoint_url)
    temp = Path(tempfile.mkdtemp(prefix=f".fetch-{checksum[:12]}-", dir=cache))
    try:
        try:
            files = json.loads(store.read_text(MANIFEST_NAME))["files"]
        except FileNotFoundError:
            raise ArtifactUnavailable(f"model {name!r}: {store.child(MANIFEST_NAME)} is missing from the artifact store "
                                      "(deleted, or the upload never finished)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactUnavailable(f"model {name!r}: {store.child(MANIFEST_NAME)} is not a manifest ({exc})") from None
        if files.get(MODEL_WEIGHTS) != checksum:
            raise ArtifactUnavailable(f"model {name!r}: the stored manifest's weights sha256 {files.get(MODEL_WEIGHTS)} "
                                      f"differs from the registered {checksum}")
        for key, digest in files.items():
            if not _safe_relative(key):
                raise ArtifactUnavailable(f"model {name!r}: the manifest at {url} names an unsafe path {key!r}")
            try:
                store.download(key, temp / key)
            except FileNotFoundError:
                raise ArtifactUnavailable(f"model {name!r}: {store.child(key)} is missing from the artifact store") from None
            actual = file_sha256(temp / key)
            if actual != digest:
                raise ArtifactUnavailable(f"model {name!r}: {store.child(key)} is corrupt (sha256 {actual}, "
                                          f"manifest {digest})")
        (temp / MANIFEST_NAME).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
        try:
            os.rename(temp, target)
        except OSError:  # a concurrent fetch of the same checksum won the rename: use its copy
            if not (target / MANIFEST_NAME).is_file():
                raise
        logger.info("model %s fetched from %s into %s", name, url, target)
        return target
    except ArtifactUnavailable:
        raise
    except PermissionError as exc:
        raise ArtifactUnavailable(f"model {name!r}: access to {url} denied ({exc}); check the AWS credentials "
                                  "this worker runs with") from None
    except Exception as exc:  # endpoint down, bucket gone: a job error naming the model, not a crash
        raise ArtifactUnavailable(f"model {name!r}: cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def remove_artifact(settings: Settings, url: str) -> None:
    """Delete a registered model's files (retention of retired models), local or in the store."""
    ArtifactStore(url, endpoint_url=settings.s3_endpoint_url).remove()
