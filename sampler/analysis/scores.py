"""Forecast and interval scores shared by the backtest and the calibration study."""
from __future__ import annotations

import numpy as np
from scipy import stats

#: central interval levels scored everywhere (coverage of the 50/80/90/95% intervals).
LEVELS = (0.5, 0.8, 0.9, 0.95)


def crps_sample(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of the empirical law of ``samples`` (K, ...) at ``y`` (...): E|X - y| - E|X - X'| / 2.

    E|X - X'| over all K^2 ordered pairs of the sample, from the sorted sample:
    (2 / K^2) sum_i (2i - K - 1) x_(i), i = 1..K.
    """
    x = np.sort(samples, axis=0)
    k = x.shape[0]
    weights = (2 * np.arange(1, k + 1) - k - 1).reshape((k,) + (1,) * (x.ndim - 1))
    return np.mean(np.abs(x - y), axis=0) - np.sum(weights * x, axis=0) / k ** 2


def crps_gaussian(mean: np.ndarray, std: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of N(mean, std^2) at y (Gneiting & Raftery 2007): std [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]."""
    z = (y - mean) / std
    return std * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))


def summarize(point: np.ndarray, crps: np.ndarray, lower: np.ndarray, upper: np.ndarray, y: np.ndarray,
              mask: np.ndarray) -> dict:
    """RMSE, MAE, mean CRPS and interval coverage over the entries where ``mask`` is true.

    Args:
        point, crps, y, mask: same shape (...).  lower, upper: (len(LEVELS), ...) central interval bounds.
    """
    n = int(mask.sum())
    if n == 0:
        return {"n": 0}
    err = (point - y)[mask]
    inside = ((lower <= y) & (y <= upper))[:, mask]
    out = {"n": n, "rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
           "crps": float(np.mean(crps[mask]))}
    out.update({f"cov{int(round(100 * lv))}": float(np.mean(inside[j])) for j, lv in enumerate(LEVELS)})
    return out
