"""The external-service rule of kronos_jobs/testing/services.py: skip when unconfigured, fail under CI=true or
when a configured service does not answer."""

from __future__ import annotations

import pytest

from kronos_jobs.testing.services import require_service

VAR = "KRONOS_TEST_EXAMPLE_URL"


def test_unset_skips_outside_ci(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_service(VAR)


def test_unset_fails_in_ci(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=VAR):
        require_service(VAR)


@pytest.mark.parametrize("url", ["postgresql+psycopg://nobody@127.0.0.1:1/none", "redis://127.0.0.1:1/0"])
def test_unreachable_fails(monkeypatch, url):
    monkeypatch.setenv(VAR, url)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.fail.Exception, match="does not answer"):
        require_service(VAR)
