"""Secrets out of logs and output: URL passwords, KRONOS_API_KEY and API tokens become `***`.

`redact(text)` masks the password of every `scheme://user:password@` in a text; the password is
everything up to the `@` that ends the user part, so one holding `/`, `:` or `?` is masked whole
(urllib's urlsplit would end the host part at the first `/` and leave the rest of such a password
in plain sight). A password written with `@` must be percent-encoded in a URL anyway, as SQLAlchemy
and redis-py require. `install(settings)` also masks the configured secrets wherever they appear
literally (a driver may quote a password without its URL), in every log record of the process:
through the record factory, so loggers and handlers that libraries add later are covered too.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@\s]+)@")
_TOKEN = re.compile(r"\bkj_[0-9a-f]{12}_[A-Za-z0-9_\-]{20,}")
_KEYWORD = re.compile(r"(?i)\b(password|passwd|pwd)=(?!\*\*\*)[^\s&;,'\"]+")

_secrets: set[str] = set()


def url_password(url: str | None) -> str | None:
    """The password part of a URL, or None."""
    if not url:
        return None
    match = _URL_PASSWORD.search(url)
    return match["password"] if match else None


def redact(text: str) -> str:
    """`text` with URL passwords, API tokens and the installed secrets replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _TOKEN.sub(f"kj_{MASK}", text)
    text = _KEYWORD.sub(lambda m: f"{m.group(1)}={MASK}", text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def add_secrets(values: Iterable[str | None]) -> None:
    """Mask these values (and their percent-decoded forms) wherever they appear; short ones are ignored."""
    for value in values:
        if value and len(value) >= 4:
            _secrets.add(value)
            _secrets.add(unquote(value))


_installed = False


def install(settings) -> None:
    """Mask the settings' secrets in every log record this process makes from now on (idempotent)."""
    global _installed
    add_secrets([url_password(settings.database_url), url_password(settings.broker_url), settings.api_key])
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it for the handler to report
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(redacting_factory)
