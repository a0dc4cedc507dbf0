"""Backtest scores on hand-computed cases, the rolling-origin windows, and a small end-to-end backtest."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from helpers import write_config
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
    import warnings

    import statsmodels.api as sm
    from PIL import Image
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
    bt = tmp_path / "bt"
    on_disk = json.loads((bt / "backtest.json").read_text())
    assert on_disk["overall"] == report["overall"]
    methods = ["sampler", "sm_local_level", "sm_local_linear_trend", "sf_auto_ets", "sf_auto_arima"]
    assert on_disk["methods"] == methods
    # the data as a (time, series) table: no series has t = 7, so the time axis is the 23 times present
    # (steps 0..22); every series' last step is 22 (t = 23), so the origins are steps 22 - 2 - 1 and 22 - 2
    table = pd.DataFrame(rows).pivot(index="t", columns="id", values="y")[["s0", "s1", "s2"]]
    assert list(table.index) == [t for t in range(24) if t != 7]
    y = table.to_numpy()
    origins = (19, 20)
    assert (on_disk["series"], on_disk["windows"], on_disk["horizon"], on_disk["origins"]) == (3, 6, 2, 2)
    assert on_disk["origin_times"] == {f"s{i}": [20, 21] for i in range(3)}
    # DIR/windows.npz: window 2 i + k is series i up to origin k (raw scale), right-aligned to the
    # longest window (21 steps) with leading NaN
    with np.load(bt / "windows.npz") as f:
        windows = f["emissions"]
    assert windows.shape == (6, 21, 1)
    for i in range(3):
        for k, o in enumerate(origins):
            np.testing.assert_array_equal(windows[2 * i + k, :, 0], np.r_[np.full(20 - o, np.nan), y[:o + 1, i]])
    # the held-out values (series, origin, step): the two steps after each origin, all observed
    truth = np.array([[y[o + 1:o + 3, i] for o in origins] for i in range(3)])
    n = int(np.isfinite(truth).sum())
    assert n == 12
    keys = ("mae", "crps", "cov50", "cov80", "cov90", "cov95")
    for name in methods:
        s = on_disk["overall"][name]
        assert s["n"] == n
        by_h = on_disk["by_horizon"][name]
        assert set(on_disk["by_series"]) == {"s0", "s1", "s2"}
        by_s = [on_disk["by_series"][f"s{i}"][name] for i in range(3)]
        assert [h["n"] for h in by_h] == [6, 6] and [b["n"] for b in by_s] == [4, 4, 4]
        # the per-horizon and per-series scores are means over a partition of the same points: their
        # n-weighted means (root mean square for RMSE) give back the overall scores
        for parts in (by_h, by_s):
            w = np.array([part["n"] for part in parts], float)
            for key in keys:
                assert s[key] == pytest.approx(np.dot(w, [part[key] for part in parts]) / w.sum(), rel=1e-12)
            assert s["rmse"] == pytest.approx(np.sqrt(np.dot(w, [part["rmse"] ** 2 for part in parts]) / w.sum()),
                                              rel=1e-12)
        # coverage: a count out of n, and the central intervals are nested
        for c in (50, 80, 90, 95):
            assert 0 <= s[f"cov{c}"] <= 1 and s[f"cov{c}"] * n == pytest.approx(round(s[f"cov{c}"] * n), abs=1e-9)
        assert s["cov50"] <= s["cov80"] <= s["cov90"] <= s["cov95"]
        assert s["mae"] <= s["rmse"]
    # statsmodels' scores recomputed here: the same MLE fits on each window's data (the backtest drops
    # the leading NaN padding), the Gaussian scores written out (closed-form CRPS, z-quantile intervals)
    for name, trend in (("sm_local_level", "llevel"), ("sm_local_linear_trend", "lltrend")):
        mu, sd = np.empty_like(truth), np.empty_like(truth)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(3):
                for k, o in enumerate(origins):
                    fc = sm.tsa.UnobservedComponents(y[:o + 1, i], level=trend).fit(disp=False).get_forecast(2)
                    mu[i, k], sd[i, k] = fc.predicted_mean, fc.se_mean
        z = (truth - mu) / sd
        crps = sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
        want = {"n": n, "rmse": np.sqrt(np.mean((mu - truth) ** 2)), "mae": np.mean(np.abs(mu - truth)),
                "crps": crps.mean(), **{f"cov{c}": np.mean(np.abs(z) <= stats.norm.ppf(0.5 + c / 200))
                                        for c in (50, 80, 90, 95)}}
        assert on_disk["overall"][name] == pytest.approx(want, rel=1e-8), name
    # statsforecast's: the same AutoETS / AutoARIMA fits, sd from the 80% limit
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS
    frames = [pd.DataFrame({"unique_id": f"{i}-{k}", "ds": np.arange(o + 1), "y": y[:o + 1, i]})
              for i in range(3) for k, o in enumerate(origins)]
    fc = StatsForecast(models=[AutoETS(), AutoARIMA()], freq=1).forecast(h=2, df=pd.concat(frames), level=[80])
    for name, column in (("sf_auto_ets", "AutoETS"), ("sf_auto_arima", "AutoARIMA")):
        mu = fc[column].to_numpy().reshape(truth.shape)
        sd = (fc[f"{column}-hi-80"].to_numpy().reshape(truth.shape) - mu) / stats.norm.ppf(0.9)
        z = (truth - mu) / sd
        crps = sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))
        assert on_disk["overall"][name]["crps"] == pytest.approx(crps.mean(), rel=1e-8), name
        assert on_disk["overall"][name]["mae"] == pytest.approx(np.mean(np.abs(mu - truth)), rel=1e-8), name
    # our forecasts against two trivial Gaussian references on the same points, scored with crps_gaussian:
    # climatology (each window's mean and sd) and the naive random walk (last value, sd of the window's
    # steps x sqrt(h))
    clim_mu = np.array([[np.mean(y[:o + 1, i])] * 2 for i in range(3) for o in origins]).reshape(truth.shape)
    clim_sd = np.array([[np.std(y[:o + 1, i])] * 2 for i in range(3) for o in origins]).reshape(truth.shape)
    step_sd = np.array([np.std(np.diff(y[:o + 1, i])) for i in range(3) for o in origins]).reshape(3, 2, 1)
    last = np.array([y[o, i] for i in range(3) for o in origins]).reshape(3, 2, 1)
    rw_crps = float(scores.crps_gaussian(last, step_sd * np.sqrt([1, 2]), truth).mean())
    clim_crps = float(scores.crps_gaussian(clim_mu, clim_sd, truth).mean())
    ours = on_disk["overall"]["sampler"]["crps"]
    # (measured: ours 0.550, random walk 0.556, climatology 1.051, statsmodels local level 0.636.)  The
    # series are random walks plus noise, so a forecast that uses the state at the origin beats the
    # window's climatology clearly, and a correct local-level posterior predictive is about as good as
    # the naive random walk and the plug-in local level; a wrong origin, window or un-standardisation
    # would be far off either.  The 25% margins leave room for other platforms' floating point.
    assert ours < 0.75 * clim_crps
    assert ours < 1.25 * rw_crps and ours < 1.25 * on_disk["overall"]["sm_local_level"]["crps"]
    # the figures (no bbox cropping: figure size x dpi 110)
    sizes = {"backtest_scores.png": (11 * 110, 4 * 110), "backtest_series.png": (9 * 110, round(2.4 * 3 * 110))}
    assert [Path(p).name for p in on_disk["plots"]] == list(sizes)
    for name, size in sizes.items():
        with Image.open(bt / "plots" / name) as im:
            assert im.format == "PNG" and im.size == size, name
    # the text table shows the stored overall scores of every method
    table = backtest.format_report(on_disk).splitlines()
    for name in methods:
        s = on_disk["overall"][name]
        assert f"{name:<24}{s['n']:>9d}" + "".join(f"{s[c]:>9.4f}" for c in ("rmse",) + keys) in table, name
