"""Forecasts as a table in statsforecast's layout (``sampler.forecast_frame``).

One row per (series, forecast step): ``unique_id``, ``ds``, ``sampler`` (the posterior predictive
mean) and, per level, ``sampler-lo-<level>`` / ``sampler-hi-<level>``, in statsforecast's column order
(lower limits from the widest level in, then upper limits), on the data scale, so the frame drops
into utilsforecast's evaluation or a statsforecast ``cross_validation`` comparison.  The limits are
``mean -+ z sd`` of the law-of-total-variance moments in group ``forecast`` (Gaussian, as
statsforecast's own for ETS and ARIMA).

``unique_id`` is the dataset's label (the data's ``dataset`` column; its index for an ``.npz``), with
``/<emission>`` appended when there are several emissions and ``/<sequence>`` for several sequences.
``ds`` continues the time axis: datetimes (or strings that parse as dates) by the inferred frequency
(else the median step), numbers by the median step, and step indices T, T + 1, ... otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import zarr
from scipy import stats

from sampler.errors import UserError
from sampler.execution.runner import RunContext

MODEL = "sampler"


def _future_times(times, T: int, horizon: int) -> np.ndarray:
    if times is None:
        return np.arange(T, T + horizon)
    times = np.asarray(times)
    if times.dtype == object:  # a CSV's dates are strings: times if they all parse as such
        try:
            times = pd.to_datetime(times).to_numpy()
        except (ValueError, TypeError):
            return np.arange(T, T + horizon)
    if np.issubdtype(times.dtype, np.datetime64):
        index = pd.DatetimeIndex(times)
        freq = pd.infer_freq(index) if len(index) >= 3 else None
        if freq is not None:
            return pd.date_range(index[-1], periods=horizon + 1, freq=freq)[1:].to_numpy()
        step = np.median(np.diff(times))
    elif np.issubdtype(times.dtype, np.number):
        step = np.median(np.diff(times)) if len(times) > 1 else 1
    else:
        return np.arange(T, T + horizon)
    return times[-1] + step * np.arange(1, horizon + 1)


def forecast_frame(run_dir, levels: Sequence[int] = (80, 95)) -> pd.DataFrame:
    """The forecasts of a run (after ``sampler forecast``) as a statsforecast-style DataFrame."""
    for level in levels:
        if not 0 < level < 100:
            raise UserError(f"levels: {level} is not a percentage in (0, 100)")
    ctx = RunContext.from_run_dir(Path(run_dir))
    root = zarr.open_group(str(ctx.run_dir.store), mode="r")
    if "forecast" not in root:
        raise UserError(f"{ctx.run_dir.path}: no forecast yet; run `sampler forecast {ctx.run_dir.path}` first")
    fc, data = root["forecast"], ctx.data
    mean, std = fc["forecast_mean"][:], fc["forecast_std"][:]
    if not data.has_sequences:
        mean, std = mean[:, None], std[:, None]
    N, M, H, D = mean.shape
    labels = data.labels if data.labels is not None else np.arange(N)
    emissions = ctx.cfg.data.emissions or [str(d) for d in range(D)]
    ds = _future_times(data.times, data.emissions.shape[2], H)
    frames = []
    for i in range(N):
        for m in range(M):
            for d in range(D):
                uid = str(labels[i]) + (f"/{m}" if M > 1 else "") + (f"/{emissions[d]}" if D > 1 else "")
                cols = {"unique_id": uid, "ds": ds, MODEL: mean[i, m, :, d]}
                for level in sorted(levels, reverse=True):
                    cols[f"{MODEL}-lo-{level}"] = mean[i, m, :, d] - stats.norm.ppf(0.5 + level / 200) * std[i, m, :, d]
                for level in sorted(levels):
                    cols[f"{MODEL}-hi-{level}"] = mean[i, m, :, d] + stats.norm.ppf(0.5 + level / 200) * std[i, m, :, d]
                frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)
