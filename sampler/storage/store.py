"""The run's Zarr v3 store in ArviZ layout, created at full size and filled block by block.

Groups ``posterior`` (one array per dynamax leaf), ``sample_stats`` and ``observed_data``; dims
``(chain, draw, dataset, ...)``.  Chunks are ``(num_chains, checkpoint_every, shard_size, ...)`` so a
block of draws of one shard is a set of whole chunks: writers never share a chunk and re-writing a
block after a resume is idempotent.  Unwritten draws read as NaN.
"""
from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from sampler.core.models import AnyModel
from sampler.errors import naming_path

STATS = {  # name -> dtype
    "lp": "float64", "acceptance_rate": "float64", "diverging": "bool",
    "step_size": "float64", "n_steps": "int32", "energy": "float64",
}
_FILL = {"float64": np.nan, "float32": np.nan, "bool": False, "int32": -1}


#: zstd at level 1: posterior draws compress as well as at zarr's default level 3 (the symmetric
#: covariance leaves repeat half their values) in about half the time (docs/performance.md).
_COMPRESSOR = ZstdCodec(level=1)


def _create(group, name, shape, chunks, dtype, dims):
    return group.create_array(
        name, shape=shape, chunks=tuple(max(1, c) for c in chunks), dtype=dtype,
        fill_value=_FILL[dtype], dimension_names=dims, compressors=_COMPRESSOR, overwrite=True)


def create(path: Path, model: AnyModel, *, num_chains: int, num_draws: int, num_datasets: int,
           draws_per_chunk: int, datasets_per_chunk: int, emissions: np.ndarray, inputs,
           has_sequences: bool, attrs: Mapping, center=None, scale=None, labels=None) -> None:
    """Create the empty store with observed data written.  emissions: (N, M, T, D); with
    ``[data] standardize``, center and scale (N, D) go to ``observed_data`` beside the (scaled) data.
    ``labels`` (N,): the data file's dataset names, the root's ``dataset`` coordinate (every group
    inherits it in ``open_tree``: ``posterior.sel(dataset="nights_NSWMetro")``); None for an .npz."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update(dict(attrs))
    if labels is not None:
        labels = np.asarray(labels)
        labels = labels.astype(np.int64) if labels.dtype.kind in "iu" else labels.astype(str)
        coord = root.create_array("dataset", shape=labels.shape, chunks=labels.shape, dimension_names=("dataset",),
                                  dtype=labels.dtype if labels.dtype.kind == "i" else str, compressors=_COMPRESSOR)
        coord[...] = labels
    lead = (num_chains, num_draws, num_datasets)
    lead_chunks = (num_chains, draws_per_chunk, datasets_per_chunk)
    lead_dims = ("chain", "draw", "dataset")
    posterior = root.create_group("posterior")
    for name, (shape, dims) in model.variables.items():
        _create(posterior, name, lead + shape, lead_chunks + shape, "float64", lead_dims + dims)
    stats = root.create_group("sample_stats")
    for name, dtype in STATS.items():
        _create(stats, name, lead, lead_chunks, dtype, lead_dims)
    observed = root.create_group("observed_data")
    seq_dims = ("sequence",) if has_sequences else ()
    for name, arr, last in (("emissions", emissions, "emission"), ("inputs", inputs, "input")):
        if arr is None:
            continue
        arr = arr if has_sequences else arr[:, 0]
        a = _create(observed, name, arr.shape, (datasets_per_chunk,) + arr.shape[1:], "float64",
                    ("dataset",) + seq_dims + ("time", last))
        a[...] = arr
    for name, arr in (("emissions_center", center), ("emissions_scale", scale)):
        if arr is not None:
            a = _create(observed, name, arr.shape, (datasets_per_chunk, arr.shape[1]), "float64",
                        ("dataset", "emission"))
            a[...] = arr
    _consolidate(path)


def set_num_draws(path: Path, num_draws: int, config_toml: str) -> None:
    """Give every posterior and sample-stat array a draw axis of ``num_draws`` (extending a run: the
    draws written stay as they are, the new ones hold the fill value until sampled), record the
    config, and rewrite the consolidated metadata xarray reads.  Idempotent, so a run interrupted
    between these steps is completed by the next one."""
    root = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    for group in BlockWriter.GROUPS:
        for _, array in root[group].arrays():
            if array.shape[1] != num_draws:
                array.resize((array.shape[0], num_draws) + array.shape[2:])
    root.attrs["config"] = config_toml
    _consolidate(path)


def _consolidate(path: Path) -> None:
    with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": xarray uses it
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(str(path))


class BlockWriter:
    """Writes a shard's blocks of draws into an existing store, its arrays opened once per run.

    A block's chunks (one per array) are written concurrently on zarr's event loop: the small
    leaves compress and land beside the large covariance leaf, and each block pays one round trip
    to that loop instead of one per array.  ``write`` returns once every chunk is written.
    """

    GROUPS = ("posterior", "sample_stats")

    def __init__(self, path: Path):
        self._path = path
        root = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
        self._arrays = {(g, name): array.async_array for g in self.GROUPS for name, array in root[g].arrays()}

    def write(self, draw_start: int, dataset_start: int, params: Mapping[str, np.ndarray],
              stats: Mapping[str, np.ndarray]) -> None:
        """Write one block of draws of one shard.

        Args:
            params: store leaf name -> (C, K, n, *leaf_shape) constrained values.
            stats: sample-stat name -> (C, K, n).
        """
        writes = []
        for group, arrays in zip(self.GROUPS, (params, stats)):
            for name, value in arrays.items():
                if value.size == 0:
                    continue
                k, n = value.shape[1], value.shape[2]
                where = (slice(None), slice(draw_start, draw_start + k), slice(dataset_start, dataset_start + n))
                writes.append(self._arrays[group, name].setitem(where, value))
        with naming_path(self._path):  # zarr's OSError names no file: name the store
            sync(_all_or_first_error(writes))


async def _all_or_first_error(writes) -> None:
    """Await every write, then raise the first failure as it is: no write outlives the block, and the
    caller sees the store's own exception (not an ExceptionGroup)."""
    results = await asyncio.gather(*writes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def open_tree(path: Path) -> xr.DataTree:
    """The store as an ``xarray.DataTree``."""
    return xr.open_datatree(str(path), engine="zarr")
