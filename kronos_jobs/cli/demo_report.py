"""What `kronos-jobs demo` shows and writes: the summary table, the labelled Parquet, the chart.

Everything made with a `random:*` model carries the label "random weights": the summary header,
the chart title and the Parquet file's metadata, so a random forecast is never mistaken for one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from kronos_jobs.cli.sample_data import SESSION_TZ
from kronos_jobs.jobs.registry import RANDOM_PREFIX, RANDOM_WEIGHTS_LABEL

CHART_PANELS = 4  # symbols drawn; the table lists them all
CHART_HISTORY_BARS = 144  # history shown left of the forecast (3 days of 5-minute bars)


def model_label(model: str) -> str:
    """`random:small (random weights)` for random models, the name otherwise."""
    return f"{model} ({RANDOM_WEIGHTS_LABEL})" if model.startswith(RANDOM_PREFIX) else model


def write_labelled_parquet(content: bytes, path: Path, *, job: dict[str, Any]) -> pd.DataFrame:
    """Save the API's Parquet result with the job id, model and label in the file's metadata."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(content))
    extra = {
        b"kronos.job_id": job["id"].encode(),
        b"kronos.model": job["model"].encode(),
        b"kronos.label": model_label(job["model"]).encode(),
        b"kronos.metadata": json.dumps(job.get("metadata") or {}, default=str).encode(),
    }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.to_pandas()


def summary_frame(bars: pd.DataFrame, forecast: pd.DataFrame) -> pd.DataFrame:
    """Per symbol: last close, forecast close at the horizon, change in percent."""
    last = bars.sort_values("timestamp").groupby("symbol")["close"].last()
    horizon = forecast.sort_values("timestamp").groupby("symbol")["close"].last()
    frame = pd.DataFrame({"last_close": last, "forecast_close": horizon}).dropna()
    frame["change_pct"] = 100.0 * (frame["forecast_close"] / frame["last_close"] - 1.0)
    return frame


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f} s"


def summary_text(job: dict[str, Any], bars: pd.DataFrame, forecast: pd.DataFrame, pred_len: int) -> str:
    """The printed report: header, one line per symbol, then how and where the job ran."""
    meta = job.get("metadata") or {}
    timings = meta.get("timings") or {}
    frame = summary_frame(bars, forecast)
    title = f"Kronos demo forecast: {len(frame)} symbols, {pred_len} bars ahead, model {model_label(job['model'])}"
    lines = [title, "=" * len(title)]
    if job["model"].startswith(RANDOM_PREFIX):
        lines.append(f"NOTE: {RANDOM_WEIGHTS_LABEL} - these numbers exercise the pipeline; they are not a forecast.")
    lines.append(f"{'symbol':<12} {'last close':>12} {f'close +{pred_len}':>12} {'change %':>9}")
    for symbol, row in frame.iterrows():
        lines.append(f"{symbol:<12} {row.last_close:>12.2f} {row.forecast_close:>12.2f} {row.change_pct:>+9.2f}")
    for err in job.get("symbol_errors") or []:
        lines.append(f"{err.get('symbol', '?'):<12} failed: {err.get('message', '')}")
    device = meta.get("device_resolved") or meta.get("device") or "?"
    if meta.get("device_name"):
        device += f" ({meta['device_name']})"
    lines += [
        "",
        f"job       {job['id']}  state={job['state']}  queue={job.get('queue')}",
        f"routing   {job.get('routing_reason', '')}",
        f"device    requested {job.get('device', '?')}, resolved {device}"
        + (f"  WARNING: {meta['device_warning']}" if meta.get("device_warning") else ""),
        f"model     {model_label(job['model'])}"
        + (f"  revision {meta['model_revision']}" if meta.get("model_revision") else "")
        + (f"  checksum {meta['model_checksum']}" if meta.get("model_checksum") else ""),
        f"worker    {meta.get('worker_host', meta.get('hostname', '?'))} pid {meta.get('worker_pid', meta.get('pid', '?'))}"
        + (f", torch {meta['torch_version']}" if meta.get("torch_version") else ""),
        f"timings   model load {_seconds(timings.get('model_load_seconds'))}, "
        f"inference {_seconds(timings.get('inference_seconds'))}, "
        f"job {_seconds(timings.get('elapsed_seconds'))}",
    ]
    return "\n".join(lines)


def write_chart(path: Path, bars: pd.DataFrame, forecast: pd.DataFrame, model: str) -> Path:
    """History and forecast close for the first few symbols, one panel each (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    symbols = [s for s in bars["symbol"].unique() if s in set(forecast["symbol"])][:CHART_PANELS]
    cols = 2 if len(symbols) > 1 else 1
    rows = (len(symbols) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.4 * rows), squeeze=False)
    for ax, symbol in zip(axes.flat, symbols):
        past = bars[bars["symbol"] == symbol].sort_values("timestamp").tail(CHART_HISTORY_BARS)
        ahead = forecast[forecast["symbol"] == symbol].sort_values("timestamp")
        # Bar positions, not clock time: sessions have overnight and lunch gaps.
        x_past = range(len(past))
        x_ahead = range(len(past) - 1, len(past) + len(ahead))
        ax.plot(x_past, past["close"], color="#1f4e79", lw=1.1, label="history")
        ax.plot(x_ahead, [past["close"].iloc[-1], *ahead["close"]], color="#c0392b", lw=1.3, label="forecast")
        ax.axvline(len(past) - 1, color="grey", ls=":", lw=0.8)
        stamps = pd.concat([past["timestamp"], ahead["timestamp"]]).dt.tz_convert(SESSION_TZ)
        ticks = list(range(0, len(stamps), max(1, len(stamps) // 4)))
        ax.set_xticks(ticks, [stamps.iloc[i].strftime("%m-%d %H:%M") for i in ticks], fontsize=8)
        ax.set_title(symbol, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in list(axes.flat)[len(symbols):]:
        ax.set_visible(False)
    fig.suptitle(f"Kronos demo forecast - model {model_label(model)}", fontsize=12,
                 color="#c0392b" if model.startswith(RANDOM_PREFIX) else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
