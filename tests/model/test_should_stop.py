"""``should_stop``: a decode stops within one step of the flag rising, and asking changes nothing."""

from __future__ import annotations

import pytest

from kronos_jobs.testing.tiny import assert_frames_equal, batch
from model import DecodeStopped, KronosPredictor


@pytest.fixture
def predictor(tiny_model, tiny_tokenizer):
    return KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=64, warm_up=False)


def test_the_decode_stops_at_the_step_after_the_flag_rises(predictor):
    dfs, xs, ys = batch([40, 40, 33], pred_len=12)
    asked = []

    def should_stop() -> bool:
        asked.append(len(asked) + 1)
        return len(asked) >= 3  # raised while the 4th step is due

    with pytest.raises(DecodeStopped, match="after 3 of 12"):
        predictor.predict_batch(dfs, xs, ys, pred_len=12, top_k=1, seed=0, should_stop=should_stop)
    assert asked == [1, 2, 3]  # asked before steps 2, 3, 4 and no further


def test_asking_and_never_stopping_changes_nothing(predictor):
    dfs, xs, ys = batch([40, 33], pred_len=8)
    asked = []
    plain = predictor.predict_batch(dfs, xs, ys, pred_len=8, top_k=1, seed=0)
    watched = predictor.predict_batch(dfs, xs, ys, pred_len=8, top_k=1, seed=0,
                                      should_stop=lambda: asked.append(1) or False)
    assert_frames_equal(watched, plain)
    assert len(asked) == 2 * 7  # two length groups, P - 1 checks each
