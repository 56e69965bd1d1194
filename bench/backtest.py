"""Benchmark: a batched backtest against the plain way, one `predict` per origin, in the same run.

What is measured
    The forecasting of a backtest three ways on the same contexts (built once, as the job builds
    them: `jobs/backtest.py` `contexts_for`, the bars at or before each origin):
      batched   what a backtest job does: every (symbol, origin, repeat) context of a lookback through
                `KronosPredictor.predict_batch`, --batch contexts per call (KRONOS_MAX_BATCH_SIZE);
      loop      our predictor called once per origin (`predict`), as a hand-written study does;
      oracle    the upstream-style full-recompute forecaster (kronos_jobs/testing/oracle.py) called
                once per origin. It is slow, so it runs on the first --oracle-forecasts contexts
                and its seconds per forecast are scaled to the whole backtest (marked "~").
    Seconds, forecasts per second (a forecast = one context x one repeat; "scored" counts each
    sub-horizon read off the same path, as the study does), peak memory (process RSS above the
    start, a lower bound; see bench/predict.py `PeakMemory`) and the ratios batched/loop and
    batched/oracle. Then greedy decoding (top_k=1) of --check contexts both ways: the batched and
    per-origin forecasts must agree (same tokens; float32 rounding of the decoder may differ in the
    last bit), and the oracle's too. The scoring time (metrics table with baselines) of the batched
    run is printed apart. The header names the CPU model and the load average.

Settings
    study  the shape of a published user study: 1,000 daily bars of one symbol, 100 origins 5 bars
           apart, lookbacks 250 and 280, horizon 5 read as horizons 2/3/5, 3 repeats of seeded
           sampling (1,800 scored forecasts), Kronos-mini architecture with random weights.
    wide   50 symbols x 20 origins x horizon 48, Kronos-small architecture with random weights,
           lookback --wide-lookback (default 256).

How to run
    python bench/backtest.py                    # both settings
    python bench/backtest.py --settings study --oracle-forecasts 6
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench.predict import PeakMemory  # noqa: E402
from kronos_jobs.jobs.backtest import contexts_for, predict_contexts, prepare_series, score  # noqa: E402
from kronos_jobs.jobs.backtest import _baseline_rows, _model_rows  # noqa: E402
from kronos_jobs.jobs.backtest_submit import BacktestParams  # noqa: E402
from kronos_jobs.testing.oracle import oracle_predict_batch  # noqa: E402
from kronos_jobs.testing.factories import make_bars  # noqa: E402
from model.kernels import cpu_model  # noqa: E402
from model.predictor import KronosPredictor  # noqa: E402
from model.tokenizer import TOKENIZER_CONFIGS, KronosTokenizer  # noqa: E402
from model.transformer import KRONOS_CONFIGS, Kronos  # noqa: E402

SETTINGS = {
    "study": dict(arch="mini", tokenizer="2k", max_context=2048, symbols=1, bars=1000, freq="1D", n_windows=100,
                  step_size=5, lookbacks=[250, 280], horizon=5, horizons=[2, 3, 5], repeats=3),
    "wide": dict(arch="small", tokenizer="base", max_context=512, symbols=50, bars=None, freq="1h", n_windows=20,
                 step_size=48, lookbacks=None, horizon=48, horizons=[48], repeats=1),
}


def predictor_for(setting: dict, batch: int) -> KronosPredictor:
    torch.manual_seed(0)
    model = Kronos(KRONOS_CONFIGS[setting["arch"]]).eval()
    tokenizer = KronosTokenizer(TOKENIZER_CONFIGS[setting["tokenizer"]]).eval()
    return KronosPredictor(model, tokenizer, device="cpu", max_context=setting["max_context"], max_batch_size=batch)


def contexts(setting: dict, params: BacktestParams):
    n_bars = setting["bars"] or (max(params.lookbacks) + params.horizon + (params.n_windows - 1) * params.step_size)
    bars = make_bars({f"S{i:02d}": n_bars for i in range(setting["symbols"])}, freq=setting["freq"],
                     start="2020-01-01")
    series = prepare_series(bars, params)
    items = {lb: [(s, int(o), contexts_for(s, int(o), lb, params.horizon)) for s in series for o in s.origins]
             for lb in params.lookbacks}
    return series, items


def run_batched(predictor, items, params, batch, seed=7):
    outputs = {}
    for lookback, chunk_items in items.items():
        for repeat in range(params.repeats):
            for start in range(0, len(chunk_items), batch):
                chunk = chunk_items[start:start + batch]
                outputs[(lookback, repeat, start)] = (chunk, predict_contexts(predictor, [c[2] for c in chunk], params,
                                                                              seed + repeat + params.repeats * start))
    return outputs


def run_loop(predictor, items, params, seed=7, limit=None):
    s, out, n = params.sampling, [], 0
    for lookback, chunk_items in items.items():
        for repeat in range(params.repeats):
            for _, _, item in chunk_items:
                if limit is not None and n >= limit:
                    return out
                out.append(predictor.predict(item.context, item.x_timestamp, item.y_timestamp, params.horizon,
                                             T=s.temperature, top_k=s.top_k, top_p=s.top_p, sample_count=s.sample_count,
                                             seed=seed + repeat))
                n += 1
    return out


def run_oracle(predictor, items, params, limit, seed=7):
    s, out = params.sampling, []
    flat = [item for chunk_items in items.values() for _, _, item in chunk_items][:limit]
    for item in flat:
        out.append(oracle_predict_batch(predictor.tokenizer, predictor.model, [item.context], [item.x_timestamp],
                                        [item.y_timestamp], params.horizon, max_context=predictor.max_context,
                                        T=s.temperature, top_k=s.top_k, top_p=s.top_p, sample_count=s.sample_count,
                                        seed=seed)[0])
    return out


def timed(fn):
    """(result, wall seconds, peak MiB); the process CPU seconds of the last call are in `timed.cpu`."""
    with PeakMemory(torch.device("cpu")) as memory:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        seconds = time.perf_counter() - t0
    timed.cpu = time.process_time() - c0
    return out, seconds, memory.peak_mib


def bench(name: str, args) -> dict:
    setting = dict(SETTINGS[name])
    if name == "wide":
        setting["lookbacks"] = [args.wide_lookback]
    params = BacktestParams.from_value({
        "models": ["random"], "lookbacks": setting["lookbacks"], "horizon": setting["horizon"],
        "horizons": setting["horizons"], "n_windows": setting["n_windows"], "step_size": setting["step_size"],
        "repeats": setting["repeats"], "sampling": {"temperature": 1.0, "top_p": 0.9, "sample_count": 1, "seed": 7}})
    predictor = predictor_for(setting, args.batch)
    series, items = contexts(setting, params)
    forecasts = sum(len(v) for v in items.values()) * params.repeats
    scored = forecasts * len(params.report_horizons)
    print(f"\n[{name}] {setting['arch']} architecture, random weights, {setting['symbols']} symbol(s) x "
          f"{params.n_windows} origins x lookbacks {params.lookbacks} x {params.repeats} repeat(s), horizon "
          f"{params.horizon} (reported {params.report_horizons}): {forecasts} forecasts, {scored} scored", flush=True)

    batched, batched_s, batched_mib = timed(lambda: run_batched(predictor, items, params, args.batch))
    batched_cpu = timed.cpu
    print(f"  batched done in {batched_s:.1f} s", flush=True)
    t0 = time.perf_counter()
    rows = pd.concat([_baseline_rows(series, params)] + [
        _model_rows("random", lb, repeat, chunk, outs, params) for (lb, repeat, _), (chunk, outs) in batched.items()],
        ignore_index=True)
    score(rows, series, params)
    scoring_s = time.perf_counter() - t0
    loop_n = forecasts if args.loop_forecasts is None else min(forecasts, args.loop_forecasts)
    _, loop_s, loop_mib = timed(lambda: run_loop(predictor, items, params, limit=loop_n))
    loop_total, loop_cpu = loop_s * forecasts / loop_n, timed.cpu * forecasts / loop_n
    print(f"  loop done in {loop_s:.1f} s ({loop_n} forecasts)", flush=True)
    oracle_n = min(forecasts, args.oracle_forecasts)
    _, oracle_s, oracle_mib = timed(lambda: run_oracle(predictor, items, params, oracle_n))
    oracle_total, oracle_cpu = oracle_s * forecasts / oracle_n, timed.cpu * forecasts / oracle_n

    def line(label, seconds, mib, measured):
        mark = "" if measured == forecasts else "~"
        return (f"  {label:<8} {mark}{seconds:9.2f} s  {mark}{forecasts / seconds:9.1f} forecasts/s  "
                f"{mark}{scored / seconds:9.1f} scored/s  peak {mib:7.1f} MiB"
                + ("" if measured == forecasts else f"  ({measured} of {forecasts} forecasts timed, scaled)"))

    print(line("batched", batched_s, batched_mib, forecasts))
    print(line("loop", loop_total, loop_mib, loop_n))
    print(line("oracle", oracle_total, oracle_mib, oracle_n))
    print(f"  batched is {loop_total / batched_s:.1f}x the per-origin loop and {oracle_total / batched_s:.1f}x the "
          f"oracle loop; in process CPU seconds (steadier on a shared machine) {loop_cpu / batched_cpu:.1f}x and "
          f"{oracle_cpu / batched_cpu:.1f}x; scoring (baselines + metrics) {scoring_s:.2f} s")

    # Greedy identity on the first --check contexts of the first lookback.
    greedy = BacktestParams.from_value({**params.to_json(), "repeats": 1,
                                        "sampling": {"top_k": 1, "top_p": 1.0, "sample_count": 1, "seed": 1}})
    first = {params.lookbacks[0]: items[params.lookbacks[0]][:args.check]}
    together = [o for chunk, outs in run_batched(predictor, first, greedy, args.batch).values() for o in outs]
    alone = run_loop(predictor, first, greedy)
    oracle = run_oracle(predictor, first, greedy, args.check)
    diff_loop = max(float(np.max(np.abs(a.to_numpy() - b.to_numpy()) / (np.abs(b.to_numpy()) + 1e-9)))
                    for a, b in zip(together, alone))
    diff_oracle = max(float(np.max(np.abs(a.to_numpy() - b.to_numpy()) / (np.abs(b.to_numpy()) + 1e-9)))
                      for a, b in zip(together, oracle))
    print(f"  greedy, {len(together)} contexts: max relative difference batched vs loop {diff_loop:.1e}, "
          f"vs oracle {diff_oracle:.1e}")
    return {"setting": name, "forecasts": forecasts, "scored": scored, "batched_s": round(batched_s, 3),
            "loop_s": round(loop_total, 3), "loop_timed": loop_n, "oracle_s": round(oracle_total, 3),
            "oracle_timed": oracle_n, "batched_peak_mib": round(batched_mib, 1), "loop_peak_mib": round(loop_mib, 1),
            "oracle_peak_mib": round(oracle_mib, 1), "vs_loop": round(loop_total / batched_s, 2),
            "vs_oracle": round(oracle_total / batched_s, 2), "cpu_vs_loop": round(loop_cpu / batched_cpu, 2),
            "cpu_vs_oracle": round(oracle_cpu / batched_cpu, 2), "scoring_s": round(scoring_s, 3),
            "greedy_rel_diff_loop": diff_loop, "greedy_rel_diff_oracle": diff_oracle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="study,wide")
    parser.add_argument("--batch", type=int, default=64, help="Contexts per predict_batch call (KRONOS_MAX_BATCH_SIZE).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--oracle-forecasts", type=int, default=10, help="Forecasts the oracle loop times.")
    parser.add_argument("--loop-forecasts", type=int, default=None, help="Forecasts the per-origin loop times (default all).")
    parser.add_argument("--check", type=int, default=8, help="Contexts of the greedy identity check.")
    parser.add_argument("--wide-lookback", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"bench/backtest.py: {cpu_model()}, {args.threads} torch threads, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    results = [bench(name, args) for name in args.settings.split(",")]
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(json.dumps({"bench": "backtest", "cpu": cpu_model(), "loadavg": os.getloadavg(), "results": results}))


if __name__ == "__main__":
    main()
