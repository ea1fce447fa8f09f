"""bench/eot.py's method without models: the split, the sweep's firing rule, the metrics and
the fitted model, on small made-up decision points whose answers are known."""

from __future__ import annotations

import numpy as np

from bench.eot import TGRID, Points, Sweep, first_crossing, fit, operating_points, pareto, silence_only
from bench.eot_data import split_of
from services.server.eot_model import FEATURES, EndOfTurnModel, EotCues, vector


def made_up_points(probs: list[float], ends: list[bool], durs: list[float | None]) -> tuple[Points, np.ndarray]:
    rows = [{"speaker": "s", "end": e, "dur": d, "lm": p, "sound": None, "text": "", "sounds": {}} for p, e, d in
            zip(probs, ends, durs, strict=True)]
    end = np.array(ends)
    dur = np.array([np.inf if d is None else d for d in durs])
    ready = np.full(len(rows), 0.15)
    points = Points(rows, end, dur, ~end & (dur >= 0.2) & (dur <= 5.0), ready, ready)
    return points, np.repeat(np.array(probs)[:, None], len(TGRID), axis=1)


def test_split_is_by_speaker_and_fixed() -> None:
    split = split_of(["c", "a", "f", "b", "e", "d", "a"])
    assert [s for s, v in sorted(split.items()) if v == "heldout"] == ["e", "f"]  # the last third of the sorted ids
    assert split_of(["x"]) == {"x": "heldout"}


def test_a_perfect_cue_reaches_no_cut_offs_at_the_shortest_delay() -> None:
    p, prob = made_up_points([0.9, 0.9, 0.1, 0.1], [True, True, False, False], [None, None, 0.6, 1.5])
    ops = operating_points(first_crossing(prob, p.ready_text, "perfect"), p)
    assert ops["lat5"] is not None and abs(ops["lat5"][0] - 0.2) < 1e-9  # fires at its smallest action delay, 0.2 s
    assert ops["cut300"] is not None and ops["cut300"][0] == 0.0


def test_silence_only_cuts_off_every_hold_longer_than_its_wait() -> None:
    p, _ = made_up_points([0.5] * 4, [True, False, False, False], [None, 0.3, 0.7, 2.0])
    sw = silence_only(p)
    cut, lat, _ = sw.metrics(p)
    i = [k for k, (t,) in enumerate(sw.params) if abs(t - 0.5) < 1e-9][0]
    assert abs(cut[i] - 2 / 3) < 1e-9 and abs(lat[i] - 0.5) < 1e-9  # it answers inside the 0.7 and 2.0 s holds, not the 0.3
    front = pareto(cut, lat)
    assert all(a[0] <= b[0] and a[1] > b[1] for a, b in zip(front, front[1:], strict=False))  # latency up, cut-offs down


def test_sweep_metrics_count_a_fire_before_the_speaker_went_on() -> None:
    p, _ = made_up_points([0.5, 0.5], [True, False], [None, 1.0])
    sw = Sweep("fixed", [(0.9,), (1.1,)], np.array([[0.9, 0.9], [1.1, 1.1]]))
    cut, lat, _ = sw.metrics(p)
    assert list(cut) == [1.0, 0.0] and list(lat) == [0.9, 1.1]


def test_fitted_model_learns_the_sign_of_a_cue_and_applies_it() -> None:
    rng = np.random.default_rng(0)
    lm = np.concatenate([rng.uniform(0.6, 0.99, 200), rng.uniform(0.01, 0.4, 200)])
    y = np.concatenate([np.ones(200), np.zeros(200)])
    X = np.array([vector(EotCues("a b c.", float(p), None, 2.0), 300) for p in lm], dtype=float)  # None -> NaN
    params = fit(X, y) | {"threshold": 0.5, "action_delay_ms": 200, "timeout_ms": 2000}
    assert params["weights"][FEATURES.index("lm_logit")] > 0
    model = EndOfTurnModel(params)
    assert model.p_end(EotCues("a b c.", 0.95, None, 2.0), 300) > 0.5 > model.p_end(EotCues("a b c.", 0.05, None, 2.0), 300)
    assert model.wait_ms(EotCues("a b c.", 0.05, None, 2.0)) == 2000  # never sure enough: the timeout
