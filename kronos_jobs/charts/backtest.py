"""A backtest job's chart, from its stored metrics table and per-origin rows (matplotlib Agg).

Three panels: skill vs the naive forecast by horizon step (one line per model x lookback, baselines
included), interval coverage vs its nominal level (pooled over the longest horizon), and forecast vs
truth for one origin of one symbol (the latest origin, so the panel shows the most recent test).
"""

from __future__ import annotations

import io
import textwrap

import pandas as pd

from kronos_jobs.charts.forecast import FORECAST_COLOR, ChartFormat


def _coverage(metrics: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(label, nominal, observed) per coverage_<lo>_<hi> column, pooled over the longest horizon, first model."""
    pooled = metrics[metrics["step"].isna() & (metrics["kind"] == "model")]
    if pooled.empty:
        return []
    row = pooled.sort_values("horizon").iloc[-1]
    out = []
    for column in (c for c in metrics.columns if c.startswith("coverage_")):
        lo, hi = (float(v) for v in column.removeprefix("coverage_").split("_"))
        if pd.notna(row[column]):
            out.append((f"q{lo:g}-q{hi:g}", hi - lo, float(row[column])))
    return out


def backtest_chart(metrics: pd.DataFrame, rows: pd.DataFrame, *, symbol: str, title: str,
                   fmt: ChartFormat | str = ChartFormat.PNG) -> bytes:
    """PNG or SVG bytes of the three panels; `rows` are the job's per-origin rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = ChartFormat(fmt)
    fig, (skill_ax, cover_ax, origin_ax) = plt.subplots(1, 3, figsize=(15, 4.6))
    steps = metrics[metrics["step"].notna()]
    for (model, kind, lookback), group in steps.groupby(["model", "kind", "lookback"], sort=False):
        style = "-" if kind == "model" else ":"
        skill_ax.plot(group["step"].astype(int), group["skill"], style, marker="o", ms=3,
                      label=f"{model} (lookback {lookback})")
    skill_ax.axhline(0, color="grey", lw=0.8)
    skill_ax.set(title="skill vs naive by horizon step", xlabel="horizon step (bars ahead)",
                 ylabel="skill = 1 - MAE / MAE(naive)")
    skill_ax.legend(fontsize=7)

    coverage = _coverage(metrics)
    if coverage:
        labels = [c[0] for c in coverage]
        x = range(len(coverage))
        cover_ax.bar([i - 0.2 for i in x], [c[1] for c in coverage], width=0.4, color="#bbbbbb", label="nominal")
        cover_ax.bar([i + 0.2 for i in x], [c[2] for c in coverage], width=0.4, color=FORECAST_COLOR, label="observed")
        cover_ax.set_xticks(list(x), labels)
        cover_ax.legend(fontsize=7)
    else:
        cover_ax.text(0.5, 0.5, "no quantile bands\n(sampled runs with quantiles only)", ha="center", va="center",
                      transform=cover_ax.transAxes)
    cover_ax.set(title="interval coverage vs nominal", xlabel="central interval", ylabel="share of actuals inside",
                 ylim=(0, 1))

    mine = rows[(rows["symbol"] == symbol) & (rows["kind"] == "model")] if "kind" in rows.columns else rows[rows["symbol"] == symbol]
    if not mine.empty:
        origin = mine["origin"].max()
        one = mine[mine["origin"] == origin].groupby("step", as_index=False)[["close", "actual_close"]].mean()
        origin_ax.plot(one["step"], one["actual_close"], color="#1f4e79", marker="o", ms=3, label="actual close")
        origin_ax.plot(one["step"], one["close"], color=FORECAST_COLOR, marker="o", ms=3, label="forecast close")
        origin_ax.legend(fontsize=7)
        when = pd.Timestamp(origin).tz_convert("UTC").strftime("%Y-%m-%d %H:%M")
        origin_ax.set_title(f"{symbol}: forecast vs truth from origin {when} UTC", fontsize=10)
    origin_ax.set(xlabel="horizon step (bars after the origin)", ylabel="close")
    fig.suptitle("\n".join(textwrap.wrap(title, 120)), fontsize=11,
                 color=FORECAST_COLOR if "random weights" in title.lower() else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt.value, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
