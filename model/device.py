"""Torch device resolution: the only module in the project that probes ``torch.cuda`` or MPS.

``resolve_device(spec)`` turns a device spec into a ``torch.device`` plus a warning string (or
``None``). The warning is data, not a log line, so a worker can store the exact text in job
metadata. Accepted specs (trimmed, case-insensitive; ``None`` means ``auto``):

=========  ===================================================================================
``auto``   ``cuda:0`` if CUDA is available, else ``mps`` if available, else ``cpu``; no warning.
``cpu``    always ``cpu``.
``cuda``   ``cuda:0``; CUDA unavailable -> ``cpu`` + ``CUDA_UNAVAILABLE_WARNING``.
``cuda:N`` ``cuda:N``; CUDA unavailable -> ``cpu`` + ``CUDA_UNAVAILABLE_WARNING``; ``N`` not below
           the visible device count -> ``cpu`` + ``CUDA_INDEX_WARNING``. We deliberately do not
           substitute ``cuda:0``: that device may belong to another worker, and a silent swap would
           make the recorded device wrong.
``mps``    ``mps``; unavailable -> ``cpu`` + ``MPS_UNAVAILABLE_WARNING``.
=========  ===================================================================================

Anything else raises ``ValueError`` listing the accepted forms.

Why ``PYTORCH_NVML_BASED_CUDA_CHECK``: ``torch.cuda.is_available()`` normally initialises the CUDA
driver in the calling process. A parent that initialises CUDA and then forks (Celery's prefork pool)
hands its children an unusable CUDA context ("Cannot re-initialize CUDA in forked subprocess"). With
this variable set, torch answers ``is_available()`` and ``device_count()`` through NVML without
initialising CUDA, so probing in a parent is safe. ``device_info`` on a CUDA device does initialise
CUDA (it reads the device properties); call it after the fork.
"""

from __future__ import annotations

import logging
import os
import platform
import re

import torch

logger = logging.getLogger(__name__)

ACCEPTED_DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"

# Fixed warning texts; ``{spec}`` is the normalised requested spec, e.g. "cuda:1".
CUDA_UNAVAILABLE_WARNING = (
    "requested device '{spec}' is not available (torch.cuda.is_available() is False); falling back to cpu"
)
CUDA_INDEX_WARNING = (
    "requested device '{spec}' is not available (CUDA device index {index} but only {count} CUDA "
    "device(s) visible); falling back to cpu"
)
MPS_UNAVAILABLE_WARNING = (
    "requested device '{spec}' is not available (torch.backends.mps.is_available() is False); "
    "falling back to cpu"
)

_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:(\d+)|mps)$")
_CPU = torch.device("cpu")


def _cuda_available() -> bool:
    # Must be set before the first is_available() call to avoid initialising CUDA (module docstring).
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    return bool(torch.cuda.is_available())


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _normalise(spec: str | torch.device | None) -> tuple[str, int | None]:
    """Return the normalised spec string and the CUDA index it names (if any)."""
    if spec is None:
        return "auto", None
    if isinstance(spec, torch.device):
        text = str(spec)
    elif isinstance(spec, str):
        text = spec.strip().lower()
    else:
        raise ValueError(f"device must be a string or torch.device ({ACCEPTED_DEVICE_FORMS}), got {spec!r}")
    match = _SPEC.match(text)
    if not match:
        raise ValueError(f"device {spec!r} is not one of {ACCEPTED_DEVICE_FORMS}")
    return text, None if match.group(2) is None else int(match.group(2))


def resolve_device(spec: str | torch.device | None = "auto") -> tuple[torch.device, str | None]:
    """Resolve a device spec to the device to run on.

    Parameters
    ----------
    spec : str, torch.device or None
        One of ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (trimmed, case-insensitive), or a
        ``torch.device`` of type cpu/cuda/mps. ``None`` means ``auto``.

    Returns
    -------
    device : torch.device
        ``cuda`` is returned with an explicit index (``cuda:0``).
    warning : str or None
        The fallback text (one of the module's ``*_WARNING`` constants, formatted) when the
        requested device is unavailable and ``cpu`` was chosen instead.

    Raises
    ------
    ValueError
        The spec is not one of the accepted forms.
    """
    text, index = _normalise(spec)
    if text == "cpu":
        return _CPU, None
    if text == "auto":
        if _cuda_available():
            return torch.device("cuda", 0), None
        if _mps_available():
            return torch.device("mps"), None
        return _CPU, None
    if text == "mps":
        if _mps_available():
            return torch.device("mps"), None
        return _fallback(MPS_UNAVAILABLE_WARNING.format(spec=text))
    # cuda or cuda:N
    if not _cuda_available():
        return _fallback(CUDA_UNAVAILABLE_WARNING.format(spec=text))
    index = 0 if index is None else index
    count = torch.cuda.device_count()
    if index >= count:
        return _fallback(CUDA_INDEX_WARNING.format(spec=text, index=index, count=count))
    return torch.device("cuda", index), None


def _fallback(warning: str) -> tuple[torch.device, str]:
    logger.warning(warning)
    return _CPU, warning


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _cpu_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def device_info(device: str | torch.device) -> dict[str, object]:
    """Describe a (resolved) device for job and worker metadata.

    Parameters
    ----------
    device : str or torch.device
        Usually the first value returned by ``resolve_device``. Not resolved again.

    Returns
    -------
    dict
        ``type`` ("cpu" | "cuda" | "mps"), ``index`` (int or None), ``name``, ``total_memory``
        (bytes or None; physical RAM for cpu), ``compute_capability`` (e.g. "9.0", CUDA only),
        ``torch_version``, ``cuda_version`` (``torch.version.cuda``, None on CPU-only builds).
    """
    device = torch.device(device)
    info: dict[str, object] = {
        "type": device.type,
        "index": device.index,
        "name": None,
        "total_memory": None,
        "compute_capability": None,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
    }
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        props = torch.cuda.get_device_properties(index)
        info.update(
            index=index,
            name=torch.cuda.get_device_name(index),
            total_memory=int(props.total_memory),
            compute_capability=f"{props.major}.{props.minor}",
        )
    elif device.type == "mps":
        info["name"] = "Apple MPS"
    else:
        info.update(name=_cpu_name(), total_memory=_cpu_memory())
    return info


class DeviceName(str):
    """A resolved device as upstream's ``KronosPredictor.device`` exposes it: the plain string
    (``"cpu"``, ``"cuda:0"``, ``"mps"``), so ``predictor.device == "cpu"`` holds, which also has
    ``torch.device``'s ``type`` and ``index`` and compares equal to the ``torch.device`` it names.
    Torch accepts it wherever a device string goes (``.to(...)``, ``device=...``)."""

    def __new__(cls, device: str | torch.device) -> "DeviceName":
        resolved = torch.device(device)
        obj = super().__new__(cls, str(resolved))
        obj._device = resolved
        return obj

    @property
    def type(self) -> str:
        return self._device.type

    @property
    def index(self) -> int | None:
        return self._device.index

    def as_torch(self) -> torch.device:
        """The ``torch.device``."""
        return self._device

    def __eq__(self, other) -> bool:
        if isinstance(other, torch.device):
            return self._device == other
        return str.__eq__(self, other)

    def __ne__(self, other) -> bool:
        return not self == other

    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return repr(str(self))
