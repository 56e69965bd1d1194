"""Device-spec checks that need no torch import (the API and settings must not import torch)."""

from __future__ import annotations

import re

DEVICE_SPEC_FORMS = "auto, cpu, cuda, cuda:N, mps"
_DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def check_device_spec(value: str) -> str:
    """Normalise a worker device spec (trimmed, lower case) or raise ValueError naming the forms."""
    spec = str(value).strip().lower()
    if not _DEVICE_SPEC.match(spec):
        raise ValueError(f"device {value!r} is not one of {DEVICE_SPEC_FORMS}")
    return spec
