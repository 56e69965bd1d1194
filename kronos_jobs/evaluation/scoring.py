"""Live scoring: every forecast bar of a schedule run (or of a forecast job submitted with
`score: true`) is scored once the realized bar for its timestamp reaches the series store.

`score_new_forecasts` is the beat task's work (runtime/tasks.py `score_forecasts`): incremental (it
only looks at forecast bars without a score whose bar exists now, so a horizon is scored as far as
bars exist and the rest on a later tick) and idempotent (a score is keyed by job, symbol and step;
a second run or a racing beat inserts nothing twice). Persistence, the baseline every score is set
against, is the last close the forecast saw: the latest bar of the symbol in the job's input.

`rolling_scores` turns scored bars into the table `GET /v1/scores` returns.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session
from utilsforecast import losses

from kronos_jobs.core.errors import NotFound
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import scores as score_crud
from kronos_jobs.db.models import utcnow

logger = logging.getLogger(__name__)

SCORE_BATCH = 50_000  # forecast bars scored per pass; the next tick takes the rest
ID = "_group"


def score_new_forecasts(session: Session, *, limit: int = SCORE_BATCH) -> int:
    """Score the forecast bars whose realized bars arrived; returns how many this call found unscored
    (a beat racing this one may have inserted some of them first: those are skipped, not doubled)."""
    pending = score_crud.unscored_with_bars(session, limit=limit)
    if pending.empty:
        return 0
    last_close: dict[tuple[str, str], float] = {}
    for job_id in pending["job_id"].unique():
        try:
            bars, _ = result_crud.load_job_input(session, job_id=job_id)
        except NotFound:  # retention deleted the input (KRONOS_RETAIN_INPUTS_DAYS): no persistence to score against
            logger.warning("live scoring: job %s has no stored input any more; its forecasts stay unscored", job_id)
            continue
        latest = bars.sort_values("timestamp").groupby(bars["symbol"].astype(str)).tail(1)
        last_close.update({(job_id, str(s)): float(c) for s, c in zip(latest["symbol"], latest["close"])})
    now = utcnow()
    records = []
    for row in pending.itertuples(index=False):
        naive = last_close.get((row.job_id, row.symbol))
        if naive is None:
            continue
        records.append({"job_id": row.job_id, "symbol": row.symbol, "step": int(row.step), "tenant_id": row.tenant_id,
                        "schedule_id": row.schedule_id, "model": row.model,
                        "timestamp": pd.Timestamp(row.timestamp).to_pydatetime(), "forecast": float(row.forecast),
                        "actual": float(row.actual), "naive": naive, "scored_at": now})
    score_crud.insert_scores(session, records=records)
    logger.info("live scoring: %d forecast bar(s) of %d job(s) scored", len(records), pending["job_id"].nunique())
    return len(records)


def rolling_scores(scores: pd.DataFrame, *, by_symbol: bool = False) -> pd.DataFrame:
    """One row per schedule x model (x symbol): n, first/last timestamp, the model's MAE, RMSE and
    sMAPE (utilsforecast), persistence's MAE and RMSE on the same bars, skill = 1 - MAE/MAE_naive,
    and the directional accuracy of the model's move from the last close."""
    keys = ["schedule_id", "model", *(["symbol"] if by_symbol else [])]
    columns = [*keys, "n", "first_timestamp", "last_timestamp", "mae", "rmse", "smape", "mae_naive", "rmse_naive",
               "skill", "directional_accuracy"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    frame = scores.assign(schedule_id=scores["schedule_id"].fillna(""))
    frame[ID] = frame.groupby(keys, sort=False).ngroup()
    grouped = frame.groupby(ID, sort=False)
    table = grouped[keys].first()
    table["n"] = grouped.size()
    table["first_timestamp"] = grouped["timestamp"].min()
    table["last_timestamp"] = grouped["timestamp"].max()
    both = ["forecast", "naive"]
    mae = losses.mae(frame, both, id_col=ID, target_col="actual").set_index(ID)
    rmse = losses.rmse(frame, both, id_col=ID, target_col="actual").set_index(ID)
    table["mae"], table["mae_naive"] = mae["forecast"], mae["naive"]
    table["rmse"], table["rmse_naive"] = rmse["forecast"], rmse["naive"]
    table["smape"] = losses.smape(frame, ["forecast"], id_col=ID, target_col="actual").set_index(ID)["forecast"]
    table["skill"] = np.where(table["mae_naive"] > 0, 1.0 - table["mae"] / table["mae_naive"].replace(0, np.nan), np.nan)
    same = np.sign(frame["forecast"] - frame["naive"]) == np.sign(frame["actual"] - frame["naive"])
    table["directional_accuracy"] = same.groupby(frame[ID]).mean()
    table["schedule_id"] = table["schedule_id"].replace("", None)
    return table.reset_index(drop=True)[columns]
