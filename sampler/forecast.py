"""Posterior smoothing and forecasting of emissions, combined over draws, from the run's store.

For every posterior draw (constrained parameters) and every sequence of a dataset: the Kalman filter
(``sampler.kalman.kalman_filter``, so NaN entries are missing), an RTS backward pass, and a
``horizon``-step forecast from the last filtered state, each mapped to emission space
(mean ``H x + d + D u``, variance ``diag(H P H^T + R)``) as dynamax's ``posterior_predictive`` and
``forecast`` do in the seed notebook.  The draws are combined per dataset by the law of total variance,
``mean = E[mean_i]``, ``var = E[var_i] + Var[mean_i]``, accumulated block by block with Chan's merge of
block means and sums of squared deviations, so that only one store chunk column (all leaves of
``checkpoint_every`` draws x one shard, or less) is in memory at a time.

The result is group ``forecast`` of ``DIR/samples.zarr``: ``smooth_mean``, ``smooth_std``
(dataset, [sequence,] time, emission) and ``forecast_mean``, ``forecast_std``
(dataset, [sequence,] horizon, emission); it is written beside the store and swapped in by rename.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import zarr
from dynamax.linear_gaussian_ssm import (ParamsLGSSM, ParamsLGSSMDynamics, ParamsLGSSMEmissions,
                                         ParamsLGSSMInitial)

from sampler.errors import UserError
from sampler.data import to_data_scale
from sampler.kalman import kalman_filter, predict, small_cholesky, small_solve_lower
from sampler.model import LEAVES, store_name

GROUP = "forecast"
#: bytes of posterior draws read from the store at once (a whole store chunk column when it fits).
READ_BYTES = 256 * 2 ** 20
#: bytes of per-draw results held by one compiled pass (sets the number of (draw, dataset) pairs).
PASS_BYTES = 128 * 2 ** 20


# --- per-draw math (pure JAX) ------------------------------------------------------------------------
def params_from_leaves(values: Mapping[str, jax.Array]) -> ParamsLGSSM:
    """dynamax ``ParamsLGSSM`` from dotted leaf name -> value (every leaf of ``LEAVES``)."""
    v = values
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=v["initial.mean"], cov=v["initial.cov"]),
        dynamics=ParamsLGSSMDynamics(weights=v["dynamics.weights"], bias=v["dynamics.bias"],
                                     input_weights=v["dynamics.input_weights"], cov=v["dynamics.cov"]),
        emissions=ParamsLGSSMEmissions(weights=v["emissions.weights"], bias=v["emissions.bias"],
                                       input_weights=v["emissions.input_weights"], cov=v["emissions.cov"]))


def rts_smoother(filtered_means, filtered_covs, params: ParamsLGSSM, inputs):
    """Rauch-Tung-Striebel backward pass (dynamax's ``lgssm_smoother`` conventions).

    Args:
        filtered_means: (T, S).  filtered_covs: (T, S, S).  inputs: (T, U); the transition into
            step t+1 uses ``inputs[t+1]``.

    Returns:
        smoothed means (T, S) and covariances (T, S, S).
    """
    eye = jnp.eye(filtered_means.shape[-1], dtype=filtered_means.dtype)

    def step(carry, xs):
        m_next, P_next = carry
        m, P, u_next = xs
        m_pred, P_pred = predict(m, P, params, u_next)
        L_inv = small_solve_lower(small_cholesky(P_pred), eye)  # unrolled for small S: no LAPACK call per draw
        G = P @ params.dynamics.weights.T @ (L_inv.T @ L_inv)  # P F^T P_pred^-1
        m_s = m + G @ (m_next - m_pred)
        P_s = P + G @ (P_next - P_pred) @ G.T
        P_s = 0.5 * (P_s + P_s.T)
        return (m_s, P_s), (m_s, P_s)

    last = (filtered_means[-1], filtered_covs[-1])
    _, (means, covs) = jax.lax.scan(step, last, (filtered_means[:-1], filtered_covs[:-1], inputs[1:]),
                                    reverse=True)
    return (jnp.concatenate([means, last[0][None]]), jnp.concatenate([covs, last[1][None]]))


def forecast_states(mean, cov, params: ParamsLGSSM, future_inputs):
    """Predictive state moments of the steps after the last one.

    Args:
        mean: (S,) and cov: (S, S), the filtered state at the last observed step.
        future_inputs: (H, U), the inputs of forecast steps 1..H.

    Returns:
        means (H, S) and covariances (H, S, S).
    """
    def step(carry, u):
        m, P = predict(*carry, params, u)
        return (m, P), (m, P)

    _, out = jax.lax.scan(step, (mean, cov), future_inputs)
    return out


def emission_moments(means, covs, params: ParamsLGSSM, inputs):
    """State moments (N, S), (N, S, S) and inputs (N, U) -> emission mean and variance, each (N, D)."""
    H, d, Dw, R = (params.emissions.weights, params.emissions.bias, params.emissions.input_weights,
                   params.emissions.cov)
    mean = means @ H.T + d + inputs @ Dw.T
    var = jnp.einsum("ds,nsr,dr->nd", H, covs, H) + jnp.diagonal(R)
    return mean, var


def smooth_and_forecast(params: ParamsLGSSM, emissions, inputs, future_inputs, *,
                        form: str = "auto", partial_missing: bool = True):
    """Smoothed and forecast emission moments of one sequence under one parameter draw.

    Args:
        emissions: (T, D), NaN = missing.  inputs: (T, U).  future_inputs: (H, U).
        form, partial_missing: passed to ``sampler.kalman.kalman_filter``.

    Returns:
        mean (T + H, D) and variance (T + H, D): smoothed for the first T steps, forecast after.
    """
    _, fm, fP = kalman_filter(params, emissions, inputs, form=form, partial_missing=partial_missing)
    sm, sP = rts_smoother(fm, fP, params, inputs)
    xm, xP = forecast_states(fm[-1], fP[-1], params, future_inputs)
    s_mean, s_var = emission_moments(sm, sP, params, inputs)
    f_mean, f_var = emission_moments(xm, xP, params, future_inputs)
    return jnp.concatenate([s_mean, f_mean]), jnp.concatenate([s_var, f_var])


@dataclass
class Moments:
    """Running law-of-total-variance statistics: count, mean of means, M2 of means, mean of variances."""
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    mean_var: np.ndarray

    def merge(self, other: "Moments") -> "Moments":
        """Chan et al.'s pairwise update (numerically stable for any block sizes)."""
        if self.count == 0:
            return other
        n = self.count + other.count
        frac = other.count / n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * frac, self.m2 + other.m2 + delta ** 2 * self.count * frac,
                       self.mean_var + (other.mean_var - self.mean_var) * frac)

    def std(self) -> np.ndarray:
        """sqrt(E[var] + Var[mean]) with the population variance of the means (as the seed's jnp.var)."""
        return np.sqrt(self.mean_var + self.m2 / self.count)


jax.tree_util.register_dataclass(Moments, data_fields=["count", "mean", "m2", "mean_var"], meta_fields=[])


def pass_moments(leaves: Mapping[str, jax.Array], emissions, inputs, future_inputs, weights, *,
                 form: str = "auto", partial_missing: bool = True):
    """Weighted moments over a block of K draws of n datasets (one compiled pass).

    Args:
        leaves: dotted leaf -> (K, n, *leaf_shape) constrained draws.
        emissions: (n, M, T, D).  inputs: (n, M, T, U).  future_inputs: (n, M, H, U).
        weights: (K,) 1 for a draw to count, 0 for padding.

    Returns:
        ``Moments`` with count () and mean, m2, mean_var each (n, M, T + H, D): the weighted mean of
        the per-draw means, the weighted sum of their squared deviations, the mean per-draw variance.
    """
    one = partial(smooth_and_forecast, form=form, partial_missing=partial_missing)
    per_dataset = jax.vmap(one, in_axes=(None, 0, 0, 0))                 # sequences
    per_draw = jax.vmap(per_dataset, in_axes=(0, 0, 0, 0))               # datasets
    batched = jax.vmap(per_draw, in_axes=(0, None, None, None))          # draws
    mean, var = batched(params_from_leaves(leaves), emissions, inputs, future_inputs)  # (K, n, M, T+H, D)
    w = weights.astype(mean.dtype)
    count = jnp.sum(w)
    wx = w[:, None, None, None, None]
    mu = jnp.sum(wx * mean, axis=0) / count
    m2 = jnp.sum(wx * (mean - mu) ** 2, axis=0)
    return Moments(count, mu, m2, jnp.sum(wx * var, axis=0) / count)


@lru_cache(maxsize=None)
def _compiled_pass(form: str, partial_missing: bool):
    return jax.jit(partial(pass_moments, form=form, partial_missing=partial_missing))


# --- inputs from the run dir --------------------------------------------------------------------------
def _future_inputs(ctx, horizon: int) -> np.ndarray:
    """(N, M, horizon, U) future inputs from the data file (zeros of width 0 when the model has none)."""
    data = ctx.data
    n, m = data.emissions.shape[:2]
    U = ctx.cfg.model.input_dim
    if U == 0:
        return np.zeros((n, m, horizon, 0))
    path = Path(ctx.cfg.data.path)
    with np.load(path, allow_pickle=False) as npz:
        if "future_inputs" not in npz.files:
            raise UserError(f"{path}: model.input_dim = {U} but the file has no 'future_inputs' array "
                            f"(the inputs of the {horizon} forecast steps)")
        fut = np.asarray(npz["future_inputs"], dtype=np.float64)
    given = fut.shape
    if not data.has_sequences and fut.ndim == 3:
        fut = fut[:, None]
    if fut.ndim != 4 or fut.shape[:2] != (n, m) or fut.shape[3] != U:
        expected = f"({n}, {m}, H, {U})" if data.has_sequences else f"({n}, H, {U})"
        raise UserError(f"{path}: future_inputs has shape {given}; expected {expected} with H >= "
                        f"--horizon {horizon}")
    if fut.shape[2] < horizon:
        raise UserError(f"{path}: future_inputs covers {fut.shape[2]} steps but --horizon is {horizon}")
    if not np.isfinite(fut[:, :, :horizon]).all():
        raise UserError(f"{path}: future_inputs must be finite (NaN or inf found)")
    return fut[:, :, :horizon]


def _draws_available(run_dir: Path) -> int:
    """Draws stored for every dataset: the minimum over shards of draws checkpointed (hence written)."""
    from sampler import driver
    return min(p["draws_done"] for p in driver.shard_progress(run_dir))


def _blocks(total: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def _read_layout(posterior: zarr.Group, num_datasets: int, draws: int) -> tuple[int, int]:
    """(datasets, draws) per read: the store's chunk, halved (draws first) until it fits READ_BYTES."""
    first = posterior[store_name(LEAVES[0])]
    chains, draw_chunk, ds_chunk = first.chunks[:3]
    per_draw_dataset = 8 * chains * sum(int(np.prod(posterior[store_name(l)].shape[3:])) for l in LEAVES)
    d, k = min(ds_chunk, num_datasets), min(draw_chunk, draws)
    while d * k * per_draw_dataset > READ_BYTES and (k > 1 or d > 1):
        if k > 1:
            k = (k + 1) // 2
        else:
            d = (d + 1) // 2
    return d, k


def _pad(x: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    """Pad ``axis`` to ``size`` by repeating the last entry (finite values, masked out or discarded)."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    last = np.take(x, [-1], axis=axis)
    return np.concatenate([x, np.repeat(last, extra, axis=axis)], axis=axis)


# --- the run-level computation -----------------------------------------------------------------------
def forecast_run(run_dir: Path, *, horizon: int = 50, burn_in: int = 0, thin: int = 1,
                 plot: Optional[list[int]] = None, max_batch: Optional[int] = None) -> dict:
    """Smooth and forecast every dataset of a run (possibly still sampling); write group ``forecast``.

    Args:
        run_dir: the run directory.
        horizon: forecast steps after the last observation.
        burn_in: leading stored draws (per chain) to drop.  thin: keep every ``thin``-th draw after that.
        plot: dataset indices whose forecast and log-probability figures go to ``DIR/plots/``
            (the diagnostics overview across datasets is always written).
        max_batch: (draw, dataset) pairs per compiled pass; default from ``PASS_BYTES``.

    Returns:
        {"store", "group", "datasets", "sequences", "chains", "draws_per_chain", "draws",
         "horizon", "burn_in", "thin", "plots", "seconds"}.

    Raises:
        UserError: bad arguments, no draws left after burn-in, missing or mis-shaped future inputs.
    """
    from sampler.runner import STORE, RunContext
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if horizon < 1:
        raise UserError(f"--horizon {horizon}: must be at least 1")
    if burn_in < 0 or thin < 1:
        raise UserError(f"--burn-in {burn_in} / --thin {thin}: need burn-in >= 0 and thin >= 1")
    ctx = RunContext.from_run_dir(run_dir)
    data = ctx.data
    N, M, T, D = data.emissions.shape
    for i in plot or []:
        if not 0 <= i < N:
            raise UserError(f"--plot {i}: no such dataset (the run has datasets 0..{N - 1})")
    future = _future_inputs(ctx, horizon)
    available = _draws_available(run_dir)
    if available <= burn_in:
        raise UserError(f"{run_dir}: {available} draws stored per chain so far; nothing left after "
                        f"--burn-in {burn_in}")
    inputs = data.inputs if data.inputs is not None else np.zeros((N, M, T, 0))

    store_path = run_dir / STORE
    posterior = zarr.open_group(str(store_path), mode="r")["posterior"]
    chains = posterior[store_name(LEAVES[0])].shape[0]
    keep = np.arange(burn_in, available, thin)
    ds_read, draw_read = _read_layout(posterior, N, available)
    batch = max_batch or max(1, PASS_BYTES // (8 * M * (T + horizon) * D * 8))  # results + temporaries
    n_pass = min(ds_read, batch)
    form = ctx.model.kalman_form if ctx.model.kalman_form in ("information", "covariance") else "auto"
    dtype = np.float64 if ctx.cfg.sampler.dtype == "float64" else np.float32
    passes = _Passes(_compiled_pass(form, ctx.model.partial_missing), n_pass,
                     max(1, min(batch // n_pass, chains * len(keep))), dtype)
    data_arrays = (data.emissions, inputs, future)

    tmp = run_dir / f".{GROUP}.tmp-{uuid.uuid4().hex}"
    try:
        arrays = _create_group(tmp, N, M, T, D, horizon, ds_read, data.has_sequences,
                               {"horizon": horizon, "burn_in": burn_in, "thin": thin, "chains": chains,
                                "draws_per_chain": len(keep), "draws_available": available,
                                "combined_by": "law of total variance over posterior draws"})
        for a, b in _blocks(N, ds_read):
            moments = Moments(0, None, None, None)
            for r0, r1 in _blocks(available, draw_read):
                sel = keep[(keep >= r0) & (keep < r1)] - r0
                if sel.size:
                    leaves = {leaf: posterior[store_name(leaf)][:, r0:r1, a:b][:, sel] for leaf in LEAVES}
                    moments = moments.merge(passes.run(leaves, [x[a:b] for x in data_arrays]))
            std = moments.std()
            for name, part in (("smooth", slice(0, T)), ("forecast", slice(T, T + horizon))):
                for stat, value in (("mean", moments.mean), ("std", std)):
                    v = value[:, :, part]
                    if data.scale is not None:  # [data] standardize: back to the data's own scale
                        v = to_data_scale(v, data.center[a:b], data.scale[a:b], spread=stat == "std")
                    arrays[f"{name}_{stat}"][a:b] = v if data.has_sequences else v[:, 0]
        _swap_in(tmp, store_path / GROUP, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    from sampler import plots
    written = plots.plot_run(run_dir, plot or [], ctx)
    return {"store": str(store_path), "group": GROUP, "datasets": N, "sequences": M, "chains": chains,
            "draws_per_chain": int(len(keep)), "draws": int(len(keep) * chains), "horizon": horizon,
            "burn_in": burn_in, "thin": thin, "plots": [str(p) for p in written],
            "seconds": round(time.perf_counter() - start, 2)}


@dataclass
class _Passes:
    """Feeds one read block of draws through the compiled pass in fixed-shape pieces (padded)."""
    fn: object
    datasets: int   # datasets per pass
    draws: int      # (chain, draw) samples per pass
    dtype: type

    def run(self, leaves: Mapping[str, np.ndarray], data: list[np.ndarray]) -> Moments:
        """leaves: dotted leaf -> (C, k, n, ...) draws; data: emissions, inputs, future inputs (n, M, ...).

        Returns the moments over all C * k draws, arrays (n, M, T + H, D)."""
        leaves = {leaf: v.reshape((v.shape[0] * v.shape[1],) + v.shape[2:]).astype(self.dtype)
                  for leaf, v in leaves.items()}
        K = leaves[LEAVES[0]].shape[0]
        parts = []
        for p0, p1 in _blocks(data[0].shape[0], self.datasets):
            ys, us, fs = (_pad(x[p0:p1].astype(self.dtype), self.datasets) for x in data)
            acc = Moments(0, None, None, None)
            for k0, k1 in _blocks(K, self.draws):
                block = {leaf: _pad(_pad(v[k0:k1, p0:p1], self.datasets, 1), self.draws)
                         for leaf, v in leaves.items()}
                weights = (np.arange(self.draws) < k1 - k0).astype(self.dtype)
                res = jax.tree.map(np.asarray, self.fn(block, ys, us, fs, weights))
                n = p1 - p0
                acc = acc.merge(Moments(float(res.count), res.mean[:n], res.m2[:n], res.mean_var[:n]))
            parts.append(acc)
        return Moments(parts[0].count, *(np.concatenate([getattr(m, f) for m in parts])
                                         for f in ("mean", "m2", "mean_var")))


def _create_group(path: Path, N: int, M: int, T: int, D: int, horizon: int, chunk: int,
                  has_sequences: bool, attrs: dict) -> dict:
    """The (empty, NaN-filled) ``forecast`` group as a standalone zarr group at ``path``."""
    out = zarr.open_group(str(path), mode="w", zarr_format=3)
    out.attrs.update(attrs)
    seq = ("sequence",) if has_sequences else ()
    arrays = {}
    for name, steps, dim in (("smooth", T, "time"), ("forecast", horizon, "horizon")):
        shape = (N, M, steps, D) if has_sequences else (N, steps, D)
        for stat in ("mean", "std"):
            arrays[f"{name}_{stat}"] = out.create_array(
                f"{name}_{stat}", shape=shape, chunks=(chunk,) + shape[1:], dtype="float64",
                fill_value=np.nan, dimension_names=("dataset",) + seq + (dim, "emission"))
    return arrays


def _swap_in(new: Path, target: Path, run_dir: Path) -> None:
    """Replace the group directory ``target`` by ``new`` (renames on one filesystem), then re-consolidate
    the store's metadata.  Serialised by a lock file so that two forecasts do not interleave."""
    store = target.parent
    with open(run_dir / f".{GROUP}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = run_dir / f".{GROUP}.old-{uuid.uuid4().hex}"
        if target.exists():
            os.rename(target, old)
        os.rename(new, target)
        with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": xarray uses it
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(str(store))
        shutil.rmtree(old, ignore_errors=True)
