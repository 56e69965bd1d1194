"""What the client's submit methods send: `priority` on every kind a person submits."""

from __future__ import annotations

import json

import httpx

from kronos_jobs.client import Client
from kronos_jobs.testing.factories import make_bars


def recording_client(seen: list[httpx.Request]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": f"job-{len(seen)}", "state": "queued"})

    http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    return Client(http=http, backoff=0.0)


def test_forecast_backtest_and_finetune_send_their_priority():
    seen: list[httpx.Request] = []
    client = recording_client(seen)
    client.forecast(symbols=["AAA"], priority=8)
    client.backtest(symbols=["AAA"], models=["random:mini"], priority=1)
    client.backtest(symbols=["AAA"], models=["random:mini"])
    client.finetune(make_bars({"AAA": 40}), priority=2)
    forecast, backtest, default = (json.loads(r.content) for r in seen[:3])
    assert (forecast["priority"], backtest["priority"]) == (8, 1)
    assert "priority" not in default  # the server's default for the kind
    assert b'"priority": 2' in seen[3].content  # in the upload's `request` field
