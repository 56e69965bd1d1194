"""Upstream's regression test (spec §8): the published Kronos-small weights must give upstream's numbers.

Needs what this build machine cannot reach, so it runs only when both are provided:

* ``KRONOS_REGRESSION_DATA``: a folder with upstream's ``regression_input.csv``,
  ``regression_output_512.csv`` and ``regression_output_256.csv`` (upstream ``tests/data/``);
* the two checkpoints at the pinned revisions, from the Hugging Face cache or the hub
  (``HF_HUB_OFFLINE=1`` with a filled cache works), or as local folders named by
  ``KRONOS_REGRESSION_MODEL`` / ``KRONOS_REGRESSION_TOKENIZER``.

    KRONOS_REGRESSION_DATA=~/kronos/tests/data python -m pytest tests/model/test_upstream_regression.py

The sample selection (``DataFrame.sample(n=4, random_state=123)``) is checked everywhere, since the
MSE test is only as good as the rows it picks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.predictor import KronosPredictor

MODEL_ID, MODEL_REVISION = "NeoQuasar/Kronos-small", "901c26c1332695a2a8f243eb2f37243a37bea320"
TOKENIZER_ID, TOKENIZER_REVISION = "NeoQuasar/Kronos-Tokenizer-base", "0e0117387f39004a9016484a186a908917e22426"
FEATURES = ["open", "high", "low", "close", "volume", "amount"]
PRICES = ["open", "high", "low", "close"]
N_ROWS, MSE_PRED_LEN = 2500, 30
# Read at import: the root conftest clears KRONOS_* variables before each test.
DATA = os.environ.get("KRONOS_REGRESSION_DATA")
LOCAL_MODEL = os.environ.get("KRONOS_REGRESSION_MODEL")
LOCAL_TOKENIZER = os.environ.get("KRONOS_REGRESSION_TOKENIZER")


def mse_rows(ctx: int, n_rows: int = N_ROWS) -> list[int]:
    """Spec §8 test 2: 4 of the rows ``ctx .. n_rows - 31``, ``sample(n=4, random_state=123)``, sorted."""
    candidates = pd.DataFrame(index=pd.RangeIndex(ctx, n_rows - MSE_PRED_LEN))
    return sorted(candidates.sample(n=4, random_state=123).index.tolist())


@pytest.mark.parametrize("ctx, rows", [(512, [1402, 1717, 1772, 2155]), (256, [366, 484, 493, 1835])])
def test_mse_rows_are_the_ones_upstream_picks(ctx, rows):
    assert mse_rows(ctx) == rows


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    if not DATA:
        pytest.skip("set KRONOS_REGRESSION_DATA to upstream's tests/data folder (and provide the checkpoints)")
    df = pd.read_csv(Path(DATA).expanduser() / "regression_input.csv", parse_dates=["timestamps"])
    assert len(df) == N_ROWS and list(df.columns) == ["timestamps", *FEATURES]
    return df


@pytest.fixture(scope="module")
def predictor(bars) -> KronosPredictor:
    import torch

    torch.manual_seed(123)
    np.random.seed(123)
    return KronosPredictor.from_pretrained(
        LOCAL_MODEL or MODEL_ID, LOCAL_TOKENIZER or TOKENIZER_ID, device="cpu", max_context=512,
        revision=None if LOCAL_MODEL else MODEL_REVISION,
        tokenizer_revision=None if LOCAL_TOKENIZER else TOKENIZER_REVISION)


def forecast(predictor, bars, start: int, ctx: int, pred_len: int) -> pd.DataFrame:
    context = bars.iloc[start - ctx:start].reset_index(drop=True)
    future = bars["timestamps"].iloc[start:start + pred_len].reset_index(drop=True)
    return predictor.predict(context[FEATURES], context["timestamps"], future, pred_len=pred_len,
                             T=1.0, top_k=1, top_p=1.0, sample_count=1, verbose=False)


@pytest.mark.parametrize("ctx", [512, 256])
def test_exact_fixture(predictor, bars, ctx):
    want = pd.read_csv(Path(DATA).expanduser() / f"regression_output_{ctx}.csv")
    got = forecast(predictor, bars, ctx, ctx, 8)
    np.testing.assert_allclose(got[FEATURES].to_numpy(np.float32), want[FEATURES].to_numpy(np.float32),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("ctx, expected", [(512, 0.008979), (256, 0.003741)])
def test_mean_squared_error(predictor, bars, ctx, expected):
    errors = []
    for r in mse_rows(ctx):
        got = forecast(predictor, bars, r, ctx, MSE_PRED_LEN)[PRICES].to_numpy(np.float64)
        truth = bars[PRICES].iloc[r:r + MSE_PRED_LEN].to_numpy(np.float64)
        errors.append(float(np.mean((got - truth) ** 2)))
    assert abs(np.mean(errors) - expected) <= 1e-6, np.mean(errors)
