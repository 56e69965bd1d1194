"""Uploads are parsed in a process pool with a time limit; a full queue answers 503 at once."""

from __future__ import annotations

import asyncio
import time

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.parsing_pool import ParsingPool
from kronos_jobs.core.errors import InvalidRequest, Unavailable
from kronos_jobs.inputs.parsing import parse_upload


def csv(n: int) -> bytes:
    stamps = pd.date_range("2024-06-18T09:00:00Z", periods=n, freq="1h")
    return ("symbol,timestamp,open,high,low,close\n"
            + "".join(f"AAA,{t.isoformat()},10,10.5,9.5,10.2\n" for t in stamps)).encode()


def parse_forever(data: bytes, **kwargs):
    """A parser that never finishes (runs in the pool's process)."""
    time.sleep(3600)


def test_a_parse_past_its_time_limit_is_killed_and_named(settings):
    pool = ParsingPool(settings.model_copy(update={"upload_parse_seconds": 0.5}), parser=parse_forever)
    try:
        with pytest.raises(InvalidRequest) as caught:
            asyncio.run(pool.parse_upload(csv(5), filename="a.csv", content_type="text/csv", freq=None))
        assert caught.value.field == "file" and "KRONOS_UPLOAD_PARSE_SECONDS" in caught.value.message
        # The killed process was replaced: the pool parses the next upload.
        pool.parser = parse_upload
        assert asyncio.run(pool.parse_upload(csv(5), filename="a.csv", content_type="text/csv", freq=None)).symbols == ["AAA"]
    finally:
        pool.close()


def test_uploads_are_parsed_off_the_request_threads(settings):
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/jobs/forecast", files={"file": ("a.csv", csv(20), "text/csv")},
                               data={"request": '{"model": "random:mini", "pred_len": 3}'})
        assert response.status_code == 202, response.text
        assert client.app.state.parsing_pool._pool is not None  # the pool did the parsing


def test_the_pool_parses_in_another_process_and_returns_the_bars(settings):
    pool = ParsingPool(settings)
    try:
        parsed = asyncio.run(pool.parse_upload(csv(5), filename="a.csv", content_type="text/csv", freq="1h"))
    finally:
        pool.close()
    assert parsed.symbols == ["AAA"] and len(parsed.bars) == 5 and parsed.freqs == {"AAA": "1h"}


def test_a_full_queue_answers_unavailable_at_once(settings):
    pool = ParsingPool(settings.model_copy(update={"upload_parse_queue": 1}))

    async def two_at_once():
        first = asyncio.ensure_future(pool.parse_upload(csv(50), filename="a.csv", content_type="text/csv", freq=None))
        await asyncio.sleep(0)  # the first one is waiting on the pool now
        with pytest.raises(Unavailable):
            await pool.parse_upload(csv(5), filename="b.csv", content_type="text/csv", freq=None)
        return await first

    try:
        assert len(asyncio.run(two_at_once()).bars) == 50
    finally:
        pool.close()
