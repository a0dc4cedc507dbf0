"""Rolling-origin backtests: one dataset per (series, forecast origin), scored forecasts, statsmodels beside.

For each series i (a dataset of the data file, with all its sequences) whose last observed step is
L_i, the origins are o = L_i - H - K + 1, ..., L_i - H (step 1), so that every held-out window
o+1..o+H lies inside the observed range.  The data up to and including o is one dataset of a new
``.npz`` (``DIR/windows.npz``, right-aligned: shorter windows get leading NaN rows, i.e. skipped
updates before their first step), sampled in one run (``DIR/run``, the normal engine: Ray, resume).
With ``data.standardize`` each window is standardised on its own data only (no look-ahead).

Our forecast of a window: for every posterior draw (chains pooled, at most ``MAX_DRAWS`` evenly
spaced), the Kalman filter to the origin and the H-step predictive moments (``sampler.core.predictive.compiled_forecast``), one Gaussian predictive draw from each:
the posterior predictive sample.  Point forecast = its mean; central intervals = its quantiles;
CRPS = E|X - y| - E|X - X'|/2 of the sample (exact for the sample's empirical law).

The baselines (``sampler.analysis.baselines``: statsmodels' UnobservedComponents / DynamicFactor and
statsforecast's AutoETS / AutoARIMA; plug-in MLE, Gaussian predictive, CRPS in closed form).  A
statsmodels fit that raises or forecasts non-finite values is recorded in ``failures``; every method
is scored on the points where all methods have a forecast.

Output: ``DIR/backtest.json`` (atomic) and ``DIR/plots/backtest_scores.png``, ``backtest_series.png``.
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import zarr
from scipy import stats

from sampler.analysis import baselines
from sampler.analysis.plots import save_figure
from sampler.analysis.scores import LEVELS, crps_gaussian, crps_sample, summarize
from sampler.core.leaves import store_name
from sampler.core.predictive import compiled_forecast
from sampler.errors import UserError
from sampler.execution import driver
from sampler.execution.runner import RunContext
from sampler.storage import data as data_mod
from sampler.storage.config import Config, DataConfig
from sampler.storage.files import atomic_write
from sampler.storage.rundir import BacktestDir

#: posterior draws per window used for the predictive sample (evenly spaced over the stored ones).
MAX_DRAWS = 1000
#: windows per compiled forecast pass.
BLOCK = 32
OURS = "sampler"


@dataclass
class Forecasts:
    """One method's forecasts of every window: each (W, M, H, D); lower/upper (len(LEVELS), W, M, H, D)."""
    point: np.ndarray
    crps: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def gaussian(cls, mean: np.ndarray, std: np.ndarray, y: np.ndarray) -> "Forecasts":
        z = stats.norm.ppf(0.5 + np.asarray(LEVELS) / 2).reshape((-1,) + (1,) * mean.ndim)
        return cls(mean, crps_gaussian(mean, std, y), mean - z * std, mean + z * std)

    @classmethod
    def sample(cls, samples: np.ndarray, y: np.ndarray) -> "Forecasts":
        """samples: (K, W, M, H, D)."""
        probs = np.concatenate([0.5 - np.asarray(LEVELS) / 2, 0.5 + np.asarray(LEVELS) / 2])
        q = np.quantile(samples, probs, axis=0)
        return cls(samples.mean(0), crps_sample(samples, y), q[:len(LEVELS)], q[len(LEVELS):])


# --- the windows -------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The backtest's windows: window w = (series w // K, origin w % K).

    emissions: (W, M, L, D) right-aligned data up to each origin (raw scale), NaN-padded in front.
    inputs: (W, M, L, U) or None (zero-padded).  future_inputs: (W, M, H, U).
    truth: (W, M, H, D) held-out values (NaN = not observed).  origins: (N, K) time index of each origin.
    labels: (N,) series names.  times: (T,) time values of the data.
    """
    emissions: np.ndarray
    inputs: Optional[np.ndarray]
    future_inputs: np.ndarray
    truth: np.ndarray
    origins: np.ndarray
    labels: np.ndarray
    times: np.ndarray
    init_values: dict


def plan(ds: data_mod.Datasets, horizon: int, origins: int, min_length: int, where: str) -> Plan:
    """Windows of every series of ``ds`` (raw, unstandardised data).  Raises ``UserError`` when a series
    is too short for ``origins`` origins of ``horizon`` steps with ``min_length`` observed steps."""
    y = ds.emissions
    N, M, T, D = y.shape
    labels = ds.labels if ds.labels is not None else np.arange(N)
    times = ds.times if ds.times is not None else np.arange(T)
    observed = ~np.isnan(y).all(-1)                        # (N, M, T)
    last = T - 1 - np.argmax(observed.any(1)[:, ::-1], axis=1)   # (N,) last step with any observation
    org = last[:, None] - horizon - np.arange(origins - 1, -1, -1)[None]  # (N, K), increasing
    for i in range(N):
        counts = np.array([[observed[i, m, :o + 1].sum() for m in range(M)] for o in org[i]])  # (K, M)
        if org[i, 0] < 0 or (counts.max(1) == 0).any() or ((counts > 0) & (counts < min_length)).any():
            raise UserError(f"{where}: series {_json_label(labels[i])!r}: too short for {origins} origins of "
                            f"horizon {horizon} (last observation at {_json_label(times[last[i]])!r}; each window needs "
                            f"data.min_length = {min_length} observed steps)")
    L = int(org.max()) + 1
    W = N * origins
    U = 0 if ds.inputs is None else ds.inputs.shape[-1]
    em = np.full((W, M, L, D), np.nan)
    inp = None if ds.inputs is None else np.zeros((W, M, L, U))
    fut = np.zeros((W, M, horizon, U))
    truth = np.full((W, M, horizon, D), np.nan)
    for i in range(N):
        for k, o in enumerate(org[i]):
            w = i * origins + k
            em[w, :, L - o - 1:] = y[i, :, :o + 1]
            truth[w] = y[i, :, o + 1:o + 1 + horizon]
            if inp is not None:
                inp[w, :, L - o - 1:] = ds.inputs[i, :, :o + 1]
                fut[w] = ds.inputs[i, :, o + 1:o + 1 + horizon]
    init = {leaf: np.repeat(v, origins, axis=0) for leaf, v in ds.init_values.items()}
    return Plan(em, inp, fut, truth, org, np.asarray(labels), np.asarray(times), init)


def _write_windows(path: Path, p: Plan, has_sequences: bool) -> None:
    """``DIR/windows.npz`` (kept when it already holds the same arrays, so that a re-run resumes)."""
    arrays = {"emissions": p.emissions if has_sequences else p.emissions[:, 0]}
    if p.inputs is not None:
        arrays["inputs"] = p.inputs if has_sequences else p.inputs[:, 0]
    arrays.update({f"init_{store_name(leaf)}": v for leaf, v in p.init_values.items()})
    if path.exists():
        with np.load(path) as old:
            if set(old.files) == set(arrays) and all(np.array_equal(old[k], v, equal_nan=True)
                                                     for k, v in arrays.items()):
                return
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


# --- our forecasts -----------------------------------------------------------------------------------------
def predictive_samples(ctx: RunContext, future_inputs: np.ndarray, seed: int) -> np.ndarray:
    """One predictive draw per posterior draw of the windows' run, on the data scale: (K, W, M, H, D)."""
    data = ctx.data
    W, M, L, D = data.emissions.shape
    inputs = data.inputs if data.inputs is not None else np.zeros((W, M, L, 0))
    posterior = zarr.open_group(str(ctx.run_dir.store), mode="r")["posterior"]
    names = list(ctx.model.variables)
    C, S = posterior[names[0]].shape[:2]
    keep = np.unique(np.linspace(0, C * S - 1, min(MAX_DRAWS, C * S)).round().astype(int))
    fn = compiled_forecast(ctx.model)
    rng = np.random.default_rng(seed)
    out = np.empty((len(keep), W, M, future_inputs.shape[2], D))
    for a in range(0, W, BLOCK):
        b = min(a + BLOCK, W)
        pad = np.minimum(np.arange(a, a + BLOCK), b - 1)  # fixed block shape: one compilation
        values = {}
        for name in names:
            v = posterior[name][:, :, a:b]
            v = v.reshape((C * S,) + v.shape[2:])[keep]
            values[name] = v[:, pad - a]
        mean, var = (np.asarray(x)[:, :b - a] for x in
                     fn(values, data.emissions[pad], inputs[pad], future_inputs[pad]))
        draw = mean + np.sqrt(var) * rng.standard_normal(mean.shape)
        out[:, a:b] = np.moveaxis(data_mod.to_data_scale(
            np.moveaxis(draw, 0, 1), None if data.center is None else data.center[a:b],
            None if data.scale is None else data.scale[a:b]), 1, 0)
    return out


# --- the command -------------------------------------------------------------------------------------------
def _json_label(x):
    return x.item() if isinstance(x, np.generic) else (x if isinstance(x, (int, float)) else str(x))


def _baselines(cfg: Config, p: Plan, horizon: int, season: Optional[int], seconds: dict) -> tuple[dict, list]:
    """statsmodels' and statsforecast's forecasts of every window (``baselines``), as ``Forecasts``,
    and the statsmodels failures ({series, origin, sequence, model, error})."""
    workers = max(1, os.cpu_count() or 1)
    t0 = time.perf_counter()
    univariate = cfg.model.emission_dim == 1
    models = dict(baselines.SM_UNIVARIATE if univariate else baselines.SM_MULTIVARIATE)
    uc = baselines.uc_components(cfg.model.components)
    if univariate and uc is not None and uc not in models.values():
        models["sm_structural"] = uc
    sm_out, raw = baselines.statsmodels_forecasts(p.emissions, horizon, models, workers)
    K = p.origins.shape[1]
    failures = [{"series": _json_label(p.labels[w // K]), "origin": _json_label(p.times[p.origins[w // K, w % K]]),
                 "sequence": m, "model": name, "error": err} for w, m, name, err in raw]
    seconds["statsmodels"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    season = season or baselines.season_length(cfg.model.components)
    sf_out = baselines.statsforecast_forecasts(p.emissions, horizon, season, workers)
    seconds["statsforecast"] = round(time.perf_counter() - t0, 1)
    forecasts = {name: Forecasts.gaussian(mean, std, p.truth) for name, (mean, std) in {**sm_out, **sf_out}.items()}
    return forecasts, failures


def backtest(cfg: Config, *, horizon: int, origins: int, statsmodels: bool = True,
             workers: Optional[int] = None, address: Optional[str] = None,
             season_length: Optional[int] = None) -> dict:
    """Rolling-origin backtest of ``cfg``'s data into ``cfg.run.dir`` (module docstring); with
    ``statsmodels``, the baselines (statsmodels and statsforecast; statsforecast's season length
    ``season_length``, default the seasonal component's period or 1) beside ours.

    Returns the report written to ``DIR/backtest.json``: {"horizon", "origins", "series", "windows",
    "methods", "overall": {method: scores}, "by_horizon": {method: [scores per step]},
    "by_series": {label: {method: scores}}, "failures", "seconds", "machine", "run_dir", "plots"},
    scores = {"n", "rmse", "mae", "crps", "cov50", "cov80", "cov90", "cov95"}.
    """
    start = time.perf_counter()
    if horizon < 1 or origins < 1:
        raise UserError(f"--horizon {horizon} / --origins {origins}: both must be at least 1")
    bd = BacktestDir(cfg.run.dir)
    bd.check_usable()
    raw_cfg = cfg.model_copy(deep=True)
    raw_cfg.data.standardize = False
    raw = data_mod.load(raw_cfg)
    p = plan(raw, horizon, origins, cfg.data.min_length, cfg.data.path)

    inner = cfg.model_copy(deep=True)
    inner.data = DataConfig(path=str(bd.windows), min_length=cfg.data.min_length,
                            standardize=cfg.data.standardize, scale_by=cfg.data.scale_by)
    inner.run.dir = str(bd.run.path)
    bd.path.mkdir(parents=True, exist_ok=True)
    _write_windows(bd.windows, p, raw.has_sequences)
    seconds = {}

    forecasts, failures = _baselines(cfg, p, horizon, season_length, seconds) if statsmodels else ({}, [])

    t0 = time.perf_counter()
    driver.execute(inner, workers=workers, address=address, progress=True)
    seconds["sampling"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    ctx = RunContext(inner, bd.run.path)
    samples = predictive_samples(ctx, p.future_inputs, cfg.sampler.seed)
    forecasts = {OURS: Forecasts.sample(samples, p.truth), **forecasts}
    seconds["forecast_and_score"] = round(time.perf_counter() - t0, 1)

    report = score(p, forecasts, horizon, origins)
    report.update({"failures": failures, "run_dir": str(bd.path), "draws_per_window": int(samples.shape[0]),
                   "config": {"state_dim": cfg.model.state_dim, "emission_dim": cfg.model.emission_dim,
                              "standardize": cfg.data.standardize, "scale_by": cfg.data.scale_by,
                              "algorithm": cfg.resolved_algorithm(), "num_chains": cfg.sampler.num_chains,
                              "num_warmup": cfg.sampler.num_warmup, "num_draws": cfg.sampler.num_draws}})
    report["plots"] = [str(x) for x in _plots(bd.plots, p, forecasts, report, samples)]
    seconds["total"] = round(time.perf_counter() - start, 1)
    report["seconds"] = seconds
    report["machine"] = f"{os.cpu_count()} CPU cores"
    atomic_write(bd.report, json.dumps(report, indent=1))
    return report


def score(p: Plan, forecasts: dict[str, Forecasts], horizon: int, origins: int) -> dict:
    """Overall, per-horizon and per-series scores of each method, on the held-out entries that every
    method forecast (finite point forecast)."""
    mask = ~np.isnan(p.truth)
    for f in forecasts.values():
        mask &= np.isfinite(f.point)
    N = len(p.labels)

    def scores(f: Forecasts, sel) -> dict:
        return summarize(f.point[sel], f.crps[sel], f.lower[(slice(None),) + sel],
                         f.upper[(slice(None),) + sel], p.truth[sel], mask[sel])

    everything = (slice(None),)
    steps = [(slice(None), slice(None), h) for h in range(horizon)]
    series = [(slice(i * origins, (i + 1) * origins),) for i in range(N)]
    return {
        "horizon": horizon, "origins": origins, "series": N, "windows": int(p.truth.shape[0]),
        "origin_times": {_json_label(p.labels[i]): [_json_label(p.times[o]) for o in p.origins[i]]
                         for i in range(N)},
        "methods": list(forecasts),
        "overall": {name: scores(f, everything) for name, f in forecasts.items()},
        "by_horizon": {name: [scores(f, s) for s in steps] for name, f in forecasts.items()},
        "by_series": {_json_label(p.labels[i]): {name: scores(f, series[i]) for name, f in forecasts.items()}
                      for i in range(N)},
    }


def _plots(plot_dir: Path, p: Plan, forecasts: dict[str, Forecasts], report: dict,
           samples: np.ndarray) -> list[Path]:
    """``backtest_scores.png`` (CRPS by horizon; coverage against nominal) and ``backtest_series.png``
    (up to four series at their last origin: history, held-out values, our median and 50/90% bands,
    statsmodels' forecasts)."""
    H = report["horizon"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in forecasts:
        a1.plot(np.arange(1, H + 1), [s.get("crps", np.nan) for s in report["by_horizon"][name]], "o-", label=name)
        a2.plot(LEVELS, [report["overall"][name].get(f"cov{int(round(100 * lv))}", np.nan) for lv in LEVELS],
                "o-", label=name)
    a1.set(xlabel="horizon (steps)", ylabel="mean CRPS", title="CRPS by horizon (lower is better)")
    a2.plot([0.45, 1], [0.45, 1], "k:", lw=1)
    a2.set(xlabel="nominal coverage", ylabel="empirical coverage", title="central interval coverage")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    paths = [save_figure(fig, plot_dir / "backtest_scores.png")]

    K = report["origins"]
    n_show = min(4, len(p.labels))
    fig, axes = plt.subplots(n_show, 1, figsize=(9, 2.4 * n_show), squeeze=False)
    for r, i in enumerate(np.linspace(0, len(p.labels) - 1, n_show).round().astype(int)):
        ax, w, o = axes[r, 0], i * K + K - 1, p.origins[i, -1]
        L = p.emissions.shape[2]
        t_hist = p.times[o + 1 - L:o + 1] if o + 1 >= L else p.times[:o + 1]
        hist = p.emissions[w, 0, L - len(t_hist):, 0]
        t_fc = p.times[o + 1:o + 1 + H]
        h = len(t_fc)
        ax.plot(t_hist, hist, "k.-", ms=3, lw=1, label="history")
        ax.plot(t_fc, p.truth[w, 0, :h, 0], "ko", ms=4, mfc="none", label="held out")
        qs = np.quantile(samples[:, w, 0, :h, 0], [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
        ax.fill_between(t_fc, qs[0], qs[4], alpha=0.2, color="C0", label=f"{OURS} 90%")
        ax.fill_between(t_fc, qs[1], qs[3], alpha=0.35, color="C0", label=f"{OURS} 50%")
        ax.plot(t_fc, qs[2], "C0-", label=f"{OURS} median")
        for j, name in enumerate(m for m in forecasts if m != OURS):
            f = forecasts[name]
            ax.errorbar(t_fc, f.point[w, 0, :h, 0], yerr=[f.point[w, 0, :h, 0] - f.lower[2, w, 0, :h, 0],
                        f.upper[2, w, 0, :h, 0] - f.point[w, 0, :h, 0]], fmt="x", color=f"C{j + 1}",
                        capsize=2, lw=0.8, label=f"{name} 90%")
        ax.set_title(f"series {p.labels[i]!s}, origin {p.times[o]!s}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=3)
    paths.append(save_figure(fig, plot_dir / "backtest_series.png"))
    return paths


def format_report(report: dict) -> str:
    """The overall scores of each method as a text table, with per-horizon CRPS, failures and paths."""
    cols = ("n", "rmse", "mae", "crps", "cov50", "cov80", "cov90", "cov95")
    lines = [f"rolling-origin backtest: {report['series']} series x {report['origins']} origins = "
             f"{report['windows']} windows, horizon {report['horizon']}",
             f"{'method':<24}" + "".join(f"{c:>9}" for c in cols)]
    for name in report["methods"]:
        s = report["overall"][name]
        lines.append(f"{name:<24}" + "".join(
            f"{s[c]:>9d}" if c == "n" else f"{s.get(c, float('nan')):>9.4f}" for c in cols))
    lines.append("CRPS by horizon: " + "; ".join(
        f"{name}: " + " ".join(f"{s.get('crps', float('nan')):.4f}" for s in report["by_horizon"][name])
        for name in report["methods"]))
    if report["failures"]:
        hard = [f for f in report["failures"] if not f["error"].startswith("converged=False")]
        lines.append(f"statsmodels: {len(hard)} failed fits, {len(report['failures']) - len(hard)} "
                     f"not converged (kept); see failures in backtest.json")
    lines.append(f"report: {BacktestDir(report['run_dir']).report}; plots: {', '.join(report['plots'])}")
    lines.append(f"seconds: {report['seconds']}")
    return "\n".join(lines)
