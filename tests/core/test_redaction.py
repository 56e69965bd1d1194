"""Redaction: URL passwords (with `/`, `:` or `?` in them), API tokens and configured secrets
become *** in text and in every log record, tracebacks included."""

from __future__ import annotations

import logging

import pytest

from kronos_jobs.core import redaction
from kronos_jobs.core.redaction import redact, url_password
from kronos_jobs.core.settings import Settings


@pytest.mark.parametrize("url, expected", [
    ("postgresql+psycopg://kronos:change/me@postgres:5432/kronos", "postgresql+psycopg://kronos:***@postgres:5432/kronos"),
    ("postgresql+psycopg://kronos:a/b:c?d@db/k?options=x", "postgresql+psycopg://kronos:***@db/k?options=x"),
    ("redis://:s3cr%2Fet@redis:6379/0", "redis://:***@redis:6379/0"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    ("sqlite:////data/kronos.db", "sqlite:////data/kronos.db"),
])
def test_url_passwords_are_masked(url, expected):
    assert redact(url) == expected
    assert redact(f"connecting to {url} failed") == f"connecting to {expected} failed"


def test_url_password_reads_the_whole_password():
    assert url_password("postgresql+psycopg://kronos:a/b:c@db/k") == "a/b:c"
    assert url_password("redis://redis:6379/0") is None


def test_tokens_and_keyword_passwords_are_masked():
    assert redact("key kj_0123456789ab_" + "Z" * 43 + " used") == "key kj_*** used"
    assert redact("conninfo host=db password=hunter2 user=k") == "conninfo host=db password=*** user=k"


def test_installed_settings_secrets_are_masked_in_log_records_and_tracebacks(caplog):
    settings = Settings(database_url="postgresql+psycopg://kronos:pa/ss-W0RD@db:5432/k",
                        broker_url="redis://:br%2Fok3r-pw@redis:6379/0", api_key="kj_aaaaaaaaaaaa_client-key-secret")
    redaction.install(settings)
    logger = logging.getLogger("kronos_jobs.test_redaction")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("driver said: %s", "authentication failed for password 'pa/ss-W0RD'")
        logger.info("broker password %s, decoded %s", "br%2Fok3r-pw", "br/ok3r-pw")
        logger.info("client key %s", "kj_aaaaaaaaaaaa_client-key-secret")
        try:
            raise RuntimeError("cannot reach postgresql+psycopg://kronos:pa/ss-W0RD@db:5432/k")
        except RuntimeError:
            logger.exception("boom")
    text = caplog.text + "".join(record.exc_text or "" for record in caplog.records)
    for secret in ("pa/ss-W0RD", "br%2Fok3r-pw", "br/ok3r-pw", "client-key-secret"):
        assert secret not in text, secret
    assert text.count("***") >= 5 and "RuntimeError" in text
