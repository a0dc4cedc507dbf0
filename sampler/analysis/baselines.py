"""The forecasters' baselines beside ``sampler backtest``: statsmodels and statsforecast, plug-in MLE.

Every baseline gives a Gaussian predictive (mean, sd) per window, sequence, step and emission, on
the raw scale, scored like ours (``backtest.Forecasts.gaussian``: CRPS in closed form).

* statsmodels ``UnobservedComponents``: local level and local linear trend (univariate); for a
  structural config also ``sm_structural``, the same components as ours (``uc_components``; its
  damped trend is statsmodels' undamped one: UC has none); ``DynamicFactor`` (one AR(1) factor, on
  the window's standardised data) for multivariate data.
* statsforecast ``AutoETS`` and ``AutoARIMA`` with the season length of the config's seasonal
  component (or ``--season-length``): univariate series, so each emission on its own.  They take no
  missing values: leading NaN rows are dropped and inner gaps filled by linear interpolation.  Their
  sd is (upper 80% limit - mean) / z_0.9 (both are Gaussian predictives).

Imports of statsmodels and statsforecast happen in the functions (seconds each; only backtests need them).
"""
from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Optional

import numpy as np
from scipy import stats

SM_UNIVARIATE = {"sm_local_level": {"level": "llevel"}, "sm_local_linear_trend": {"level": "lltrend"}}
SM_MULTIVARIATE = {"sm_dynamic_factor": None}
SF_MODELS = ("sf_auto_ets", "sf_auto_arima")
#: fits done in this process (a process pool costs more than it saves below this).
SERIAL_TASKS = 64


def uc_components(components) -> Optional[dict]:
    """``UnobservedComponents`` keywords for our components (``ComponentConfig`` list); None when
    there are none or a regression (its future inputs are not passed to the baselines)."""
    if not components or any(c.kind == "regression" for c in components):
        return None
    kw: dict = {"level": "ntrend"}
    trend = {"level": "llevel", "local_linear_trend": "lltrend", "damped_trend": "lltrend"}
    for c in components:
        if c.kind in trend:
            kw["level"] = trend[c.kind]
        elif c.kind == "seasonal" and c.harmonics:
            kw.setdefault("freq_seasonal", []).append({"period": c.period, "harmonics": c.harmonics})
        elif c.kind == "seasonal":
            kw["seasonal"] = c.period
        elif c.kind == "ar":
            kw["autoregressive"] = c.order
    return kw


def season_length(components) -> int:
    """The period of the first seasonal component, else 1."""
    return next((c.period for c in components or () if c.kind == "seasonal"), 1)


def _sm_fit_forecast(uc: Optional[dict], y: np.ndarray, horizon: int) -> tuple:
    """Fit one statsmodels model by MLE on y (T, D) (NaN = missing): ``UnobservedComponents(**uc)``,
    or ``DynamicFactor`` when ``uc`` is None -> (mean (H, D), std (H, D), error).

    ``error`` is None, or a one-line description of the failure (then mean and std are NaN)."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning
    nan = np.full((horizon, y.shape[1]), np.nan)
    y = y[np.argmax(~np.isnan(y).all(1)):]     # drop leading all-missing rows
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if uc is not None:
                res = sm.tsa.UnobservedComponents(y[:, 0], **uc).fit(disp=False)
                center, scale = 0.0, 1.0
            else:
                center, scale = np.nanmean(y, 0), np.nanstd(y, 0)
                scale = np.where(scale > 0, scale, 1.0)
                res = sm.tsa.DynamicFactor((y - center) / scale, k_factors=1, factor_order=1).fit(disp=False)
            fc = res.get_forecast(horizon)
            mean = np.asarray(fc.predicted_mean).reshape(horizon, -1) * scale + center
            std = np.asarray(fc.se_mean).reshape(horizon, -1) * scale
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            return nan, nan, "non-finite or zero forecast variance"
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return mean, std, None if converged else "converged=False (kept)"
    except Exception as err:  # noqa: BLE001 - any fit failure is recorded, not raised
        return nan, nan, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _sm_task(task: tuple) -> tuple:
    return _sm_fit_forecast(*task)


def statsmodels_forecasts(emissions: np.ndarray, horizon: int, models: dict, workers: int) -> tuple[dict, list]:
    """Every model (name -> UC keywords, or None for DynamicFactor) on every window and sequence.

    Args:
        emissions: (W, M, L, D) raw windows, NaN-padded in front.

    Returns:
        ({name: (mean, std) each (W, M, H, D)}, failures: [(window, sequence, name, error)]).
    """
    W, M, _, D = emissions.shape
    tasks = [(uc, emissions[w, m], horizon) for uc in models.values() for w in range(W) for m in range(M)]
    if workers == 1 or len(tasks) <= SERIAL_TASKS:
        results = [_sm_task(t) for t in tasks]
    else:  # spawn: no fork of a process that may hold JAX or Ray threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_sm_task, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
    out, failures = {}, []
    it = iter(results)
    for name in models:
        mean, std = np.empty((W, M, horizon, D)), np.empty((W, M, horizon, D))
        for w in range(W):
            for m in range(M):
                mean[w, m], std[w, m], err = next(it)
                if err is not None:
                    failures.append((w, m, name, err))
        out[name] = (mean, std)
    return out, failures


def _filled(y: np.ndarray) -> np.ndarray:
    """y (L,) without its leading NaN, inner NaN linearly interpolated (statsforecast takes none)."""
    y = y[np.argmax(np.isfinite(y)):]
    gaps = np.isnan(y)
    if gaps.any():
        t = np.arange(len(y))
        y = y.copy()
        y[gaps] = np.interp(t[gaps], t[~gaps], y[~gaps])
    return y


def statsforecast_forecasts(emissions: np.ndarray, horizon: int, season: int, workers: int) -> dict:
    """AutoETS and AutoARIMA (season length ``season``) on every window, sequence and emission.

    Returns {name: (mean, std) each (W, M, H, D)} (``SF_MODELS`` names)."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA, AutoETS
    W, M, _, D = emissions.shape
    frames = []
    for w in range(W):
        for m in range(M):
            for d in range(D):
                y = _filled(emissions[w, m, :, d])
                frames.append(pd.DataFrame({"unique_id": w * M * D + m * D + d, "ds": np.arange(len(y)), "y": y}))
    sf = StatsForecast(models=[AutoETS(season_length=season), AutoARIMA(season_length=season)], freq=1,
                       n_jobs=workers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = sf.forecast(h=horizon, df=pd.concat(frames, ignore_index=True), level=[80]).sort_values(["unique_id", "ds"])
    z = stats.norm.ppf(0.9)
    out = {}
    for name, column in zip(SF_MODELS, ("AutoETS", "AutoARIMA")):
        mean = fc[column].to_numpy().reshape(W, M, D, horizon)
        std = (fc[f"{column}-hi-80"].to_numpy().reshape(W, M, D, horizon) - mean) / z
        out[name] = tuple(np.moveaxis(x, 3, 2) for x in (mean, std))
    return out
