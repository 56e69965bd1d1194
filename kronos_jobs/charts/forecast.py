"""A forecast job's chart: recent history as candlesticks, the forecast close and its quantile band.

Drawn by mplfinance from the rows the job stored (its input bars and its result rows), so the
chart says exactly what the API serves. Bars are placed by position, not clock time (sessions have
overnight and lunch gaps); tick labels carry the wall-clock time in the zone named on the x axis.
The title names the model and checkpoint, and says "random weights" where that is true.
"""

from __future__ import annotations

import io
import textwrap
from enum import Enum

import pandas as pd

from kronos_jobs.core.names import quantile_column

HISTORY_BARS = 120  # history drawn left of the forecast
FORECAST_COLOR, BAND_COLOR = "#c0392b", "#e6a5a0"


class ChartFormat(str, Enum):
    PNG = "png"
    SVG = "svg"


CHART_FORMATS = {ChartFormat.PNG: "image/png", ChartFormat.SVG: "image/svg+xml"}


def _band_levels(forecast: pd.DataFrame) -> tuple[float, float] | None:
    """The widest pair of close quantiles (lowest, highest level), or None without two levels."""
    levels = sorted(float(c[1:].split("_", 1)[0]) for c in forecast.columns
                    if c.startswith("q") and c.endswith("_close") and forecast[c].notna().any())
    return (levels[0], levels[-1]) if len(levels) >= 2 else None


def forecast_chart(history: pd.DataFrame, forecast: pd.DataFrame, *, symbol: str, title: str,
                   timezone: str = "UTC", fmt: ChartFormat | str = ChartFormat.PNG,
                   history_bars: int = HISTORY_BARS) -> bytes:
    """One symbol's chart as PNG or SVG bytes.

    `history` and `forecast` are long frames (symbol, timestamp, open, high, low, close, ...; the
    forecast may carry q<level>_close columns); timestamps tz-aware UTC, shown in `timezone`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplfinance as mpf

    fmt = ChartFormat(fmt)
    past = history[history["symbol"] == symbol].sort_values("timestamp").tail(history_bars)
    ahead = forecast[forecast["symbol"] == symbol].sort_values("timestamp")
    if ahead.empty:
        raise ValueError(f"no forecast rows for symbol {symbol!r}")
    stamps = pd.to_datetime(pd.concat([past["timestamp"], ahead["timestamp"]]), utc=True).dt.tz_convert(timezone)
    index = pd.DatetimeIndex(stamps.dt.tz_localize(None))  # mplfinance wants naive; labels come from `stamps`
    n_past = len(past)
    frame = pd.DataFrame({c: list(past[c]) + [float("nan")] * len(ahead) for c in ("open", "high", "low", "close")},
                         index=index)
    # The forecast line starts at the last close so it joins the history.
    line = [float("nan")] * max(0, n_past - 1) + ([float(past["close"].iloc[-1])] if n_past else []) + list(ahead["close"])
    plots = [mpf.make_addplot(line, color=FORECAST_COLOR, width=1.4, label="forecast close")]
    fill = None
    band = _band_levels(ahead)
    if band is not None:
        low, high = (list(ahead[quantile_column(level, "close")]) for level in band)
        fill = dict(y1=[float("nan")] * n_past + low, y2=[float("nan")] * n_past + high, color=BAND_COLOR, alpha=0.45,
                    label=f"close q{band[0]:g}-q{band[1]:g}")
    fig, axes = mpf.plot(frame, type="candle", style="yahoo", addplot=plots, returnfig=True, figsize=(10, 5.2),
                         datetime_format="%m-%d %H:%M", xrotation=20, ylabel="price", tight_layout=False,
                         warn_too_much_data=10_000, **({"fill_between": fill} if fill else {}))
    ax = axes[0]
    if n_past:
        ax.axvline(n_past - 1, color="grey", ls=":", lw=0.9)
    ax.set_xlabel(f"time ({timezone})")
    ax.legend(loc="upper left", fontsize=8)
    # Wrapped, so a long model path cannot widen the figure (and shrink the plot) under bbox "tight".
    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=11,
                 color=FORECAST_COLOR if "random weights" in title.lower() else "black")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt.value, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def chart_title(symbol: str, provenance: dict[str, str | None], state: str) -> str:
    """`AAA forecast - model kronos-small (NeoQuasar/Kronos-small@901c...)`, plus the random-weights note."""
    model = provenance.get("model") or "?"
    checkpoint = provenance.get("checkpoint")
    text = f"{symbol} forecast - model {model}"
    # A local directory's checkpoint lies inside the directory the model names: said once is enough.
    if checkpoint and checkpoint != provenance.get("label") and not checkpoint.startswith(model):
        text += f" ({checkpoint})"
    if provenance.get("label"):
        text += f" - {provenance['label'].upper()}"
    if state != "succeeded":
        text += f" [{state}]"
    return text


def chart_timezone(params: dict | None) -> str:
    """The zone a job's bars are shown in: its calendar's `timezone` (flat or `default`), else UTC."""
    calendar = (params or {}).get("calendar") or {}
    zone = calendar.get("timezone") or (calendar.get("default") or {}).get("timezone")
    return zone if isinstance(zone, str) and zone else "UTC"
