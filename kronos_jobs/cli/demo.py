"""`kronos-jobs demo`: the main job end to end, over HTTP.

Synthetic bars for a dozen symbols, a forecast job submitted to the API (whose processes it starts
itself through the launcher when none answers), a progress bar, a summary table, the result as
Parquet and a chart PNG (kronos_jobs/cli/demo_report.py).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from kronos_jobs.cli.demo_report import model_label, summary_text, write_chart, write_labelled_parquet
from kronos_jobs.cli.sample_data import sample_bars, session_timestamps
from kronos_jobs.core.errors import ModelUnavailable
from kronos_jobs.core.names import JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.runtime.launcher import (
    INTERRUPT_STOP_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    Stack,
    StopRequested,
    api_is_up,
    raise_stop,
    upgrade_database,
)


@dataclass
class DemoOptions:
    model: str | None = None  # default: settings.default_model (kronos-small, from the hub)
    symbols: int = 12
    lookback: int = 400
    pred_len: int = 48
    freq: str = "5min"
    device: str = "auto"
    seed: int = 7
    timeout: float = 1800.0  # seconds to wait for the job
    out_dir: Path | None = None  # default: <data_dir>/demo


def demo_request(bars, *, model: str, options: DemoOptions) -> dict:
    """The JSON body of POST /v1/jobs/forecast for the sample bars (future timestamps in session)."""
    series = []
    for symbol, frame in bars.groupby("symbol", sort=True):
        future = session_timestamps(options.pred_len, freq=options.freq, start_after=frame["timestamp"].iloc[-1])
        series.append({
            "symbol": symbol, "freq": options.freq,
            "bars": [
                {"timestamp": row.timestamp.isoformat(), "open": row.open, "high": row.high, "low": row.low,
                 "close": row.close, "volume": row.volume, "amount": row.amount}
                for row in frame.itertuples(index=False)
            ],
            "future_timestamps": [t.isoformat() for t in future],
        })
    return {"model": model, "device": options.device, "lookback": options.lookback,
            "pred_len": options.pred_len, "sampling": {"seed": options.seed}, "series": series}


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    fields = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in error.get("details") or [])
    return f"HTTP {response.status_code} {error.get('code')}: {error.get('message')}" + (f" ({fields})" if fields else "")


def follow_job(client: httpx.Client, job: dict, *, stack: Stack | None, timeout: float) -> dict:
    """Poll the job with a progress bar until it is terminal; RuntimeError on timeout or a dead process."""
    deadline = time.monotonic() + timeout
    with tqdm(total=max(1, job["progress"]["total"]), unit="series", desc="forecast", dynamic_ncols=True) as bar:
        while True:
            bar.total = max(1, job["progress"]["total"])
            bar.n = job["progress"]["done"]
            bar.set_postfix_str(job["state"])
            if JobState(job["state"]).is_terminal:
                return job
            if stack is not None and (child := stack.dead()) is not None:
                raise RuntimeError(f"{child.name} exited with code {child.returncode} while the job was {job['state']}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job['id']} is still {job['state']} after {timeout:.0f} s")
            time.sleep(0.5)
            response = client.get(f"/v1/jobs/{job['id']}")
            response.raise_for_status()
            job = response.json()


def _explain_failure(job: dict, model: str) -> None:
    error = job.get("error") or {}
    print(f"\ndemo: job {job['id']} {job['state']}: {error.get('code')}: {error.get('message')}", file=sys.stderr)
    if error.get("code") == ModelUnavailable.code and not model.startswith("random:"):
        print(
            f"\ndemo: model {model!r} could not be loaded; the Hugging Face hub is probably unreachable from here.\n"
            "      Try the whole pipeline offline with random weights (outputs are labelled as such):\n"
            "          ./scripts/demo.sh --model random:small\n"
            "      or use a local checkpoint directory holding model/ and tokenizer/ in hub layout,\n"
            "      placed under KRONOS_MODEL_DIRS (default <KRONOS_DATA_DIR>/models):\n"
            "          ./scripts/demo.sh --model kronos-small-offline\n"
            "      (see 'Models' in the README for how to fetch one on a connected machine).",
            file=sys.stderr,
        )


def demo(settings: Settings, options: DemoOptions, *, env: Mapping[str, str] | None = None) -> int:
    """Run the demo forecast through the API; start the API, a worker and beat first if none answers."""
    model = options.model or settings.default_model
    out_dir = Path(options.out_dir or settings.data_dir / "demo").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    bars = sample_bars(options.symbols, options.lookback, freq=options.freq)
    bars.to_parquet(out_dir / "input.parquet", index=False)
    print(f"demo: {options.symbols} synthetic symbols x {options.lookback} {options.freq} bars "
          f"-> {out_dir / 'input.parquet'}; model {model_label(model)}", flush=True)

    url = settings.effective_api_url
    stack, log, job_id, stop_timeout = None, None, None, STOP_TIMEOUT_SECONDS
    previous = signal.signal(signal.SIGTERM, raise_stop)
    try:
        if not api_is_up(url):
            log = open(out_dir / "services.log", "w", encoding="utf-8")
            print(f"demo: no API at {url}; starting the API, a CPU worker and beat "
                  f"(log: {out_dir / 'services.log'})", flush=True)
            upgrade_database(settings)
            stack = Stack(settings, env=dict(env if env is not None else os.environ), log=log)
            stack.start()
            stack.wait_until_ready()
            stack.wait_for_worker()
        else:
            print(f"demo: using the API already running at {url}", flush=True)

        with httpx.Client(base_url=url, timeout=120.0, headers=settings.api_auth_headers) as client:
            response = client.post("/v1/jobs/forecast", json=demo_request(bars, model=model, options=options))
            if response.status_code != 202:
                print(f"demo: the API refused the job: {_error_text(response)}", file=sys.stderr)
                return 2
            job = response.json()
            job_id = job["id"]
            print(f"demo: job {job['id']} queued on {job['queue']} ({job['routing_reason']})", flush=True)
            job = follow_job(client, job, stack=stack, timeout=options.timeout)
            if job["state"] not in ("succeeded", "partially_succeeded"):
                _explain_failure(job, model)
                return 1
            result = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "parquet"})
            result.raise_for_status()

        forecast = write_labelled_parquet(result.content, out_dir / "forecast.parquet", job=job)
        chart = write_chart(out_dir / "forecast.png", bars, forecast, model)
        print()
        print(summary_text(job, bars, forecast, options.pred_len))
        print(f"\ndemo: forecast rows -> {out_dir / 'forecast.parquet'} ({len(forecast)} rows)")
        print(f"demo: chart         -> {chart}")
        return 0
    except (StopRequested, KeyboardInterrupt):
        print("\ndemo: interrupted", file=sys.stderr)
        if job_id is not None:
            _cancel_quietly(url, job_id, settings.api_auth_headers)
        # The demo's own processes hold nothing worth waiting for: don't sit out a warm shutdown.
        stop_timeout = INTERRUPT_STOP_TIMEOUT_SECONDS
        return 130
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"\ndemo: {exc}", file=sys.stderr)
        if log is not None:
            print(f"demo: last lines of {log.name}:\n{_tail(Path(log.name))}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stack is not None:
            print("demo: stopping the processes it started", flush=True)
            stack.stop(timeout=stop_timeout)
        if log is not None:
            log.close()


def _cancel_quietly(url: str, job_id: str, headers: dict[str, str]) -> None:
    """Cancel the demo's job so a later `up` on the same data dir does not run it again."""
    try:
        response = httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=headers, timeout=5.0)
        if response.status_code == 200:
            print(f"demo: cancel requested for job {job_id}", file=sys.stderr)
    except httpx.HTTPError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
