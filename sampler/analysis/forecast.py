"""``sampler forecast``: posterior smoothing and forecasting of every dataset, from the run's store.

The per-draw maths is ``sampler.core.predictive``; this module reads the draws block by block (only
one store chunk column, all leaves of ``checkpoint_every`` draws x one shard or less, is in memory at
a time), feeds them through its compiled pass and merges the law-of-total-variance moments.

The result is group ``forecast`` of ``DIR/samples.zarr``: ``smooth_mean``, ``smooth_std``
(dataset, [sequence,] time, emission) and ``forecast_mean``, ``forecast_std``
(dataset, [sequence,] horizon, emission); it is written beside the store and swapped in by rename.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import jax
import numpy as np
import zarr

from sampler.analysis import plots
from sampler.core.predictive import Moments, compiled_pass
from sampler.errors import UserError
from sampler.execution.runner import RunContext
from sampler.storage.data import to_data_scale
from sampler.storage.location import remove_tree
from sampler.storage.rundir import RunDir

GROUP = "forecast"
#: bytes of posterior draws read from the store at once (a whole store chunk column when it fits).
READ_BYTES = 256 * 2 ** 20
#: bytes of per-draw results held by one compiled pass (sets the number of (draw, dataset) pairs).
PASS_BYTES = 128 * 2 ** 20


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


def _blocks(total: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def _read_layout(posterior: zarr.Group, names: list[str], num_datasets: int, draws: int) -> tuple[int, int]:
    """(datasets, draws) per read: the store's chunk, halved (draws first) until it fits READ_BYTES."""
    chains, draw_chunk, ds_chunk = posterior[names[0]].chunks[:3]
    per_draw_dataset = 8 * chains * sum(int(np.prod(posterior[n].shape[3:])) for n in names)
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
def _check_arguments(horizon: int, burn_in: int, thin: int) -> None:
    if horizon < 1:
        raise UserError(f"--horizon {horizon}: must be at least 1")
    if burn_in < 0 or thin < 1:
        raise UserError(f"--burn-in {burn_in} / --thin {thin}: need burn-in >= 0 and thin >= 1")


def _check_plot(plot, num_datasets: int) -> None:
    for i in plot or []:
        if not 0 <= i < num_datasets:
            raise UserError(f"--plot {i}: no such dataset (the run has datasets 0..{num_datasets - 1})")


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
    start = time.perf_counter()
    _check_arguments(horizon, burn_in, thin)
    ctx = RunContext.from_run_dir(run_dir)
    rd, data = ctx.run_dir, ctx.data
    N, M, T, D = data.emissions.shape
    _check_plot(plot, N)
    future = _future_inputs(ctx, horizon)
    available = rd.draws_available()
    if available <= burn_in:
        raise UserError(f"{rd.path}: {available} draws stored per chain so far; nothing left after "
                        f"--burn-in {burn_in}")
    inputs = data.inputs if data.inputs is not None else np.zeros((N, M, T, 0))
    posterior = zarr.open_group(str(rd.store), mode="r")["posterior"]
    names = list(ctx.model.variables)
    chains = posterior[names[0]].shape[0]
    keep = np.arange(burn_in, available, thin)
    ds_read, draw_read = _read_layout(posterior, names, N, available)
    batch = max_batch or max(1, PASS_BYTES // (8 * M * (T + horizon) * D * 8))  # results + temporaries
    n_pass = min(ds_read, batch)
    per_pass = max(1, min(batch // n_pass, chains * len(keep)))
    passes = _Passes(compiled_pass(ctx.model), n_pass, per_pass, ctx.dtype)
    names_of_components = ctx.model.component_names
    # its results are K (components) times larger per draw: K times fewer draws per pass
    component_passes = (_Passes(compiled_pass(ctx.model, components=True), n_pass,
                                max(1, per_pass // len(names_of_components)), ctx.dtype)
                        if names_of_components else None)
    attrs = {"horizon": horizon, "burn_in": burn_in, "thin": thin, "chains": chains,
             "draws_per_chain": len(keep), "draws_available": available,
             "combined_by": "law of total variance over posterior draws"}
    # built beside the store and renamed into place; on an object store built locally and uploaded
    name = f"{GROUP}.tmp-{uuid.uuid4().hex}"
    tmp = Path(tempfile.mkdtemp(prefix="sampler-")) / name if rd.is_remote else rd.scratch(name)
    try:
        arrays = _create_group(tmp, N, M, T, D, horizon, ds_read, data.has_sequences, attrs, names_of_components)
        for a, b in _blocks(N, ds_read):
            moments = parts = Moments(0, None, None, None)
            for r0, r1 in _blocks(available, draw_read):
                sel = keep[(keep >= r0) & (keep < r1)] - r0
                if sel.size:
                    values = {name: posterior[name][:, r0:r1, a:b][:, sel] for name in names}
                    block = [x[a:b] for x in (data.emissions, inputs, future)]
                    moments = moments.merge(passes.run(values, block))
                    if component_passes:
                        parts = parts.merge(component_passes.run(values, block))
            _write_moments(arrays, moments, data, a, b, T, horizon)
            if component_passes:
                _write_components(arrays, parts, data, a, b)
        _swap_in(tmp, rd)
    finally:
        shutil.rmtree(tmp.parent if rd.is_remote else tmp, ignore_errors=True)
    written = plots.plot_run(rd.path, plot or [], ctx)
    return {"store": str(rd.store), "group": GROUP, "datasets": N, "sequences": M, "chains": chains,
            "draws_per_chain": int(len(keep)), "draws": int(len(keep) * chains), "horizon": horizon,
            "burn_in": burn_in, "thin": thin, "plots": [str(p) for p in written],
            "seconds": round(time.perf_counter() - start, 2)}


def _write_moments(arrays: dict, moments: Moments, data, a: int, b: int, T: int, horizon: int) -> None:
    """Datasets [a, b) of the group: the merged moments, on the data's own scale."""
    std = moments.std()
    for name, part in (("smooth", slice(0, T)), ("forecast", slice(T, T + horizon))):
        for stat, value in (("mean", moments.mean), ("std", std)):
            v = value[:, :, part]
            if data.scale is not None:  # [data] standardize: back to the data's own scale
                v = to_data_scale(v, data.center[a:b], data.scale[a:b], spread=stat == "std")
            arrays[f"{name}_{stat}"][a:b] = v if data.has_sequences else v[:, 0]


@dataclass
class _Passes:
    """Feeds one read block of draws through the compiled pass in fixed-shape pieces (padded)."""
    fn: object
    datasets: int   # datasets per pass
    draws: int      # (chain, draw) samples per pass
    dtype: type

    def run(self, values: Mapping[str, np.ndarray], data: list[np.ndarray]) -> Moments:
        """values: posterior variable -> (C, k, n, ...) draws; data: emissions, inputs, future inputs
        (n, M, ...).

        Returns the moments over all C * k draws, arrays (n, M, T + H, D)."""
        values = {name: v.reshape((v.shape[0] * v.shape[1],) + v.shape[2:]).astype(self.dtype)
                  for name, v in values.items()}
        K = next(iter(values.values())).shape[0]
        parts = []
        for p0, p1 in _blocks(data[0].shape[0], self.datasets):
            ys, us, fs = (_pad(x[p0:p1].astype(self.dtype), self.datasets) for x in data)
            acc = Moments(0, None, None, None)
            for k0, k1 in _blocks(K, self.draws):
                block = {name: _pad(_pad(v[k0:k1, p0:p1], self.datasets, 1), self.draws)
                         for name, v in values.items()}
                weights = (np.arange(self.draws) < k1 - k0).astype(self.dtype)
                res = jax.tree.map(np.asarray, self.fn(block, ys, us, fs, weights))
                n = p1 - p0
                acc = acc.merge(Moments(float(res.count), res.mean[:n], res.m2[:n], res.mean_var[:n]))
            parts.append(acc)
        return Moments(parts[0].count, *(np.concatenate([getattr(m, f) for m in parts])
                                         for f in ("mean", "m2", "mean_var")))


def _write_components(arrays: dict, moments: Moments, data, a: int, b: int) -> None:
    """Datasets [a, b) of ``component_mean`` / ``component_std`` (moments (n, M, T, K, D)) on the
    data's scale: the standardisation's centre goes with the first component, so that the
    components still sum to ``smooth_mean``."""
    mean, std = moments.mean, moments.std()
    if data.scale is not None:
        scale = data.scale[a:b][:, None, None, None, :]
        mean, std = mean * scale, std * scale
        mean[:, :, :, 0] += data.center[a:b][:, None, None, :]
    arrays["component_mean"][a:b] = mean if data.has_sequences else mean[:, 0]
    arrays["component_std"][a:b] = std if data.has_sequences else std[:, 0]


def _create_group(path: Path, N: int, M: int, T: int, D: int, horizon: int, chunk: int,
                  has_sequences: bool, attrs: dict, components: tuple[str, ...] = ()) -> dict:
    """The (empty, NaN-filled) ``forecast`` group as a standalone zarr group at ``path``; with
    structural ``components`` (their names), also ``component_mean`` / ``component_std`` and the
    ``component`` coordinate."""
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
    if components:
        shape = ((N, M) if has_sequences else (N,)) + (T, len(components), D)
        for stat in ("mean", "std"):
            arrays[f"component_{stat}"] = out.create_array(
                f"component_{stat}", shape=shape, chunks=(chunk,) + shape[1:], dtype="float64",
                fill_value=np.nan, dimension_names=("dataset",) + seq + ("time", "component", "emission"))
        coord = out.create_array("component", shape=(len(components),), dtype=str, dimension_names=("component",))
        coord[:] = np.array(components)
    return arrays


def _swap_in(new: Path, run_dir: RunDir) -> None:
    """Replace the store's group directory by ``new`` (renames on one filesystem), then re-consolidate
    the store's metadata, under the group's lock so that two forecasts do not interleave.  On an object
    store the old group is deleted and the new one uploaded: a forecast interrupted in between leaves
    no group (run it again), never a mixed one."""
    target = run_dir.store / GROUP
    with run_dir.group_lock(GROUP):
        if run_dir.is_remote:
            remove_tree(target)
            target.fs.put(str(new), target.path, recursive=True)
        else:
            old = run_dir.scratch(f"{GROUP}.old-{uuid.uuid4().hex}")
            if target.exists():
                os.rename(target, old)
            os.rename(new, target)
        with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": xarray uses it
            warnings.simplefilter("ignore", category=UserWarning)
            zarr.consolidate_metadata(str(run_dir.store))
        if not run_dir.is_remote:
            shutil.rmtree(old, ignore_errors=True)
