"""Backtest scores on hand-computed cases, the rolling-origin windows, and a small end-to-end backtest."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from conftest import write_config
from sampler.analysis import backtest, scores
from sampler.errors import UserError
from sampler.storage import config, data


def test_crps_sample_hand_computed():
    # sample {0, 1, 3}, y = 1: E|X - y| = (1 + 0 + 2) / 3 = 1; E|X - X'| = 2 (1 + 3 + 2) / 9 = 4/3
    assert scores.crps_sample(np.array([3.0, 0.0, 1.0]), np.array(1.0)) == pytest.approx(1 - 2 / 3)
    # a one-point sample is the absolute error
    assert scores.crps_sample(np.array([[2.5]]), np.array([1.0]))[0] == pytest.approx(1.5)


def test_crps_gaussian_equals_the_integral_and_a_large_sample():
    mu, sd, y = 0.5, 2.0, 1.3
    integral = sum(integrate.quad(lambda x: (stats.norm.cdf(x, mu, sd) - (x >= y)) ** 2, a, b)[0]
                   for a, b in ((-np.inf, y), (y, np.inf)))
    assert scores.crps_gaussian(mu, sd, y) == pytest.approx(integral, rel=1e-7)
    draws = np.random.default_rng(0).normal(mu, sd, 200_000)
    assert scores.crps_sample(draws, np.array(y)) == pytest.approx(integral, rel=1e-2)


def test_coverage_and_errors_hand_computed():
    y = np.array([0.0, 1.0, 2.0, np.nan])
    point = np.array([0.5, 1.0, 4.0, 9.0])
    lower = np.array([[-1.0, 0.5, 2.5, 0.0]] * 4)    # 4 levels; y inside for entries 0 and 1 only
    upper = np.array([[1.0, 1.5, 3.5, 0.0]] * 4)
    lower[3, 2] = 1.0                                 # the 95% interval also covers entry 2
    s = scores.summarize(point, np.array([0.1, 0.2, 0.6, 5.0]), lower, upper, y, ~np.isnan(y))
    assert s["n"] == 3
    assert s["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 4) / 3))
    assert s["mae"] == pytest.approx(2.5 / 3)
    assert s["crps"] == pytest.approx(0.3)
    assert (s["cov50"], s["cov80"], s["cov90"]) == pytest.approx((2 / 3,) * 3)
    assert s["cov95"] == pytest.approx(1.0)
    g = backtest.Forecasts.gaussian(np.zeros(1), np.ones(1), np.zeros(1))  # N(0, 1): 95% is +-1.96
    assert g.upper[-1, 0] == pytest.approx(1.959964, abs=1e-6) and g.lower[0, 0] == pytest.approx(-0.674490, abs=1e-6)


def test_plan_windows_are_right_aligned_with_their_truth():
    y = np.arange(2 * 8, dtype=float).reshape(2, 1, 8, 1)
    y[1, 0, 6:] = np.nan                       # series 1 ends two steps early
    ds = data.Datasets(y, None, labels=np.array(["a", "b"]), times=np.arange(1990, 1998))
    p = backtest.plan(ds, horizon=2, origins=2, min_length=1, where="x")
    np.testing.assert_array_equal(p.origins, [[4, 5], [2, 3]])
    assert p.emissions.shape == (4, 1, 6, 1)
    np.testing.assert_array_equal(p.emissions[1, 0, :, 0], np.arange(6))            # a, origin 1995
    np.testing.assert_array_equal(p.emissions[2, 0, :, 0], [np.nan] * 3 + [8, 9, 10])  # b, origin 1992
    np.testing.assert_array_equal(p.truth[:, 0, :, 0], [[5, 6], [6, 7], [11, 12], [12, 13]])
    with pytest.raises(UserError, match=r"series 'b': too short"):
        backtest.plan(ds, horizon=2, origins=4, min_length=2, where="x")


@pytest.mark.slow  # keeps the default run well under 15 minutes on 2 cores
def test_small_backtest_with_statsmodels_end_to_end(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(3):
        level = 10 * i + np.cumsum(rng.normal(0, 0.5, 24))
        rows += [{"id": f"s{i}", "t": t, "y": v} for t, v in enumerate(level + rng.normal(0, 0.3, 24))
                 if t != 7]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    path = write_config(tmp_path / "c.toml", "d.csv", emission_dim=1)
    path.write_text(path.read_text().replace('path = "d.csv"', 'path = "d.csv"\ndataset = "id"\ntime = "t"\n'
                                                                'standardize = true'))
    cfg = config.load(path, [f'run.dir="{tmp_path / "bt"}"'])
    report = backtest.backtest(cfg, horizon=2, origins=2, statsmodels=True, workers=0)
    on_disk = json.loads((tmp_path / "bt" / "backtest.json").read_text())
    assert on_disk["overall"] == report["overall"]
    assert on_disk["methods"] == ["sampler", "sm_local_level", "sm_local_linear_trend"]
    for name in on_disk["methods"]:
        s = on_disk["overall"][name]
        assert s["n"] == 3 * 2 * 2                     # series x origins x horizon, all observed
        assert 0 < s["crps"] < 5 and 0 < s["mae"] < 5 and all(0 <= s[f"cov{c}"] <= 1 for c in (50, 80, 90, 95))
        assert s["cov50"] <= s["cov80"] <= s["cov90"] <= s["cov95"]
    assert set(on_disk["by_series"]) == {"s0", "s1", "s2"} and len(on_disk["by_horizon"]["sampler"]) == 2
    assert all((tmp_path / "bt" / "plots" / f).stat().st_size > 0
               for f in ("backtest_scores.png", "backtest_series.png"))
    table = backtest.format_report(on_disk)
    assert "sm_local_linear_trend" in table and "cov95" in table
