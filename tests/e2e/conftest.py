"""The `stack` fixture of the end-to-end tests: one per test module, on each stack configured."""

from __future__ import annotations

import pytest

from tests.e2e.harness import running_stack


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis+postgresql", marks=pytest.mark.integration)])
def stack(request, tmp_path_factory):
    yield from running_stack(request.param, tmp_path_factory)
