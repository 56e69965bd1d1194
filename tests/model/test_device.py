"""Every branch of model.device with mocked CUDA / MPS availability (no GPU needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from model import device as device_mod
from model.device import (
    CUDA_INDEX_WARNING,
    CUDA_UNAVAILABLE_WARNING,
    MPS_UNAVAILABLE_WARNING,
    device_info,
    resolve_device,
)


@pytest.fixture
def hardware(monkeypatch):
    """Set the mocked hardware: ``hardware(cuda=2, mps=False)`` means two CUDA devices."""

    def set_(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    set_()
    return set_


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(2, True, "cuda:0"), (1, False, "cuda:0"), (0, True, "mps"), (0, False, "cpu")],
)
@pytest.mark.parametrize("spec", ["auto", " AUTO ", None])
def test_auto_prefers_cuda_then_mps_then_cpu(hardware, spec, cuda, mps, expected):
    hardware(cuda=cuda, mps=mps)
    assert resolve_device(spec) == (torch.device(expected), None)


@pytest.mark.parametrize("spec", ["cpu", "CPU", "  cpu\n", torch.device("cpu")])
def test_cpu_is_always_cpu(hardware, spec):
    hardware(cuda=2, mps=True)
    assert resolve_device(spec) == (torch.device("cpu"), None)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("cuda", "cuda:0"), ("Cuda", "cuda:0"), ("cuda:1", "cuda:1"), (torch.device("cuda", 1), "cuda:1"),
     (torch.device("cuda"), "cuda:0")],
)
def test_cuda_available(hardware, spec, expected):
    hardware(cuda=2)
    assert resolve_device(spec) == (torch.device(expected), None)


@pytest.mark.parametrize(("spec", "shown"), [("cuda", "cuda"), (" CUDA:1 ", "cuda:1")])
def test_cuda_unavailable_falls_back_with_fixed_text(hardware, spec, shown):
    hardware(cuda=0, mps=True)
    device, warning = resolve_device(spec)
    assert device == torch.device("cpu")
    assert warning == CUDA_UNAVAILABLE_WARNING.format(spec=shown)
    assert warning == (
        f"requested device '{shown}' is not available (torch.cuda.is_available() is False); "
        "falling back to cpu"
    )


def test_cuda_index_beyond_count_falls_back_to_cpu_not_cuda0(hardware):
    hardware(cuda=2)
    device, warning = resolve_device("cuda:2")
    assert device == torch.device("cpu")
    assert warning == CUDA_INDEX_WARNING.format(spec="cuda:2", index=2, count=2)
    assert "index 2" in warning and "only 2 CUDA device(s)" in warning


def test_mps(hardware):
    hardware(mps=True)
    assert resolve_device("MPS") == (torch.device("mps"), None)
    hardware(mps=False)
    assert resolve_device("mps") == (torch.device("cpu"), MPS_UNAVAILABLE_WARNING.format(spec="mps"))


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cuda:x", "", "tpu", "cuda 1", 0,
                                  torch.device("meta")])
def test_invalid_spec_lists_accepted_forms(hardware, spec):
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N, mps"):
        resolve_device(spec)


def test_probe_sets_nvml_check_before_is_available(monkeypatch):
    # The variable must already be set when torch.cuda.is_available() runs (fork safety).
    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    seen = {}

    def fake_available():
        seen["env"] = device_mod.os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", fake_available)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    resolve_device("auto")
    assert seen["env"] == "1"


def test_device_info_cpu():
    info = device_info(torch.device("cpu"))
    assert set(info) == {"type", "index", "name", "total_memory", "compute_capability",
                         "torch_version", "cuda_version"}
    assert info["type"] == "cpu" and info["index"] is None and info["compute_capability"] is None
    assert isinstance(info["name"], str) and info["name"]
    assert info["torch_version"] == torch.__version__
    assert info["cuda_version"] == torch.version.cuda


def test_device_info_cuda_mocked(monkeypatch):
    props = SimpleNamespace(total_memory=80 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H100 #{i}")
    info = device_info("cuda:1")
    assert info["type"] == "cuda" and info["index"] == 1
    assert info["name"] == "NVIDIA H100 #1"
    assert info["total_memory"] == 80 * 2**30
    assert info["compute_capability"] == "9.0"
    assert device_info(torch.device("cuda"))["index"] == 0


def test_device_info_mps():
    info = device_info("mps")
    assert info["type"] == "mps" and info["total_memory"] is None and info["compute_capability"] is None
