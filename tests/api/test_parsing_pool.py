"""Uploads are parsed in a process pool with a time limit; a full queue answers 503 at once."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.parsing_pool import ParsingPool
from kronos_jobs.core.errors import Unavailable


def csv(n: int) -> bytes:
    stamps = pd.date_range("2024-06-18T09:00:00Z", periods=n, freq="1h")
    return ("symbol,timestamp,open,high,low,close\n"
            + "".join(f"AAA,{t.isoformat()},10,10.5,9.5,10.2\n" for t in stamps)).encode()


def test_a_parse_past_its_time_limit_is_killed_and_named(settings):
    slow = settings.model_copy(update={"upload_parse_seconds": 1e-4})
    with TestClient(create_app(slow)) as client:
        response = client.post("/v1/jobs/forecast", files={"file": ("a.csv", csv(2000), "text/csv")},
                               data={"request": '{"model": "random:mini", "pred_len": 3}'})
        assert response.status_code == 422
        detail = response.json()["error"]["details"][0]
        assert detail["field"] == "file" and "KRONOS_UPLOAD_PARSE_SECONDS" in detail["message"]
        assert client.get("/healthz").status_code == 200


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
