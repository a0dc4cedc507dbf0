"""Emission datasets from a data file (``.npz``, long-format table, or xarray file), validated
against the model, optionally standardised per dataset.

``.npz`` arrays:
* ``emissions``: (N, T, D) or (N, M, T, D); NaN = missing entry.
* ``inputs`` (when ``model.input_dim > 0``): same leading shape, last dim U.
* ``init_<leaf>`` (e.g. ``init_emissions_weights``): per dataset (N, *leaf_shape) or shared (*leaf_shape).
* ``true_<leaf>``: the true parameters, for simulation studies (same shapes).

Tables (``.csv``, ``.parquet``/``.pq``): one row per (dataset, [sequence,] time) with one column per
emission, or one row per (dataset, [sequence,] time, variable) with a value column; column names from
``[data]``.  xarray files (netCDF, Zarr): data variables over the named dims.  Both become
emissions (N, M, T, D) on the sorted union of the time values: a (dataset, sequence) without a row at
some time is NaN there (a missing observation: the filter skips that update), so ragged lengths and
gaps need no special handling.  Tables and xarray files carry emissions only (no inputs, init, truth).
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from sampler.config import Config, DataConfig
from sampler.errors import UserError
from sampler.model import LEAVES, RANDOM_DEFAULT, Model, store_name

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
XARRAY_SUFFIXES = {".nc", ".nc4", ".cdf", ".h5", ".netcdf", ".zarr"}


@dataclass
class Datasets:
    """All datasets of a run, in host memory.

    emissions: (N, M, T, D), standardised when ``data.standardize``.  inputs: (N, M, T, U) or None.
    init_values / true_values: dotted leaf -> (N, *leaf_shape).
    has_sequences: whether the data have a sequence axis (4-d emissions, or a sequence column/dim).
    labels: (N,) dataset names (tables, xarray files) or None.  times: (T,) time values or None.
    center, scale: (N, D) what was subtracted and divided by (``standardize``), else None.
    """
    emissions: np.ndarray
    inputs: Optional[np.ndarray]
    init_values: dict[str, np.ndarray] = field(default_factory=dict)
    true_values: dict[str, np.ndarray] = field(default_factory=dict)
    has_sequences: bool = False
    sha256: str = ""
    labels: Optional[np.ndarray] = None
    times: Optional[np.ndarray] = None
    center: Optional[np.ndarray] = None
    scale: Optional[np.ndarray] = None

    @property
    def num_datasets(self) -> int:
        return self.emissions.shape[0]

    @property
    def has_missing(self) -> bool:
        """Whether any emission entry is missing (NaN)."""
        return bool(np.isnan(self.emissions).any())

    @property
    def partial_missing(self) -> bool:
        """Whether some row is partly (not entirely) missing."""
        missing = np.isnan(self.emissions)
        return bool(np.any(missing.any(-1) & ~missing.all(-1)))


# --- standardisation -----------------------------------------------------------------------------------
def standardization(emissions: np.ndarray, scale_by: str = "std") -> tuple[np.ndarray, np.ndarray]:
    """Per dataset and emission: centre (the mean of the observed values) and scale.

    Args:
        emissions: (N, M, T, D), NaN = missing.
        scale_by: "std" (of the observed values) or "diff_std" (of the first differences along time,
            over pairs of consecutive observed steps).

    Returns:
        center (N, D) and scale (N, D); a scale that is 0 or undefined (one value) is 1.
    """
    n, _, _, d = emissions.shape
    flat = emissions.reshape(n, -1, d)
    spread = np.diff(emissions, axis=2).reshape(n, -1, d) if scale_by == "diff_std" else flat
    with warnings.catch_warnings():  # an all-missing slice warns; its scale becomes 1 below
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmean(flat, axis=1)
        scale = np.nanstd(spread, axis=1)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return center, scale


def to_data_scale(values: np.ndarray, center: Optional[np.ndarray], scale: Optional[np.ndarray], *,
                  spread: bool = False) -> np.ndarray:
    """Undo ``standardize`` on model-scale values of N datasets.

    Args:
        values: (N, ..., D) means, draws or quantiles (``spread=False``: ``x * scale + center``) or
            standard deviations (``spread=True``: ``x * scale``).
        center, scale: (N, D) from ``Datasets`` (None: nothing to undo, ``values`` is returned).
    """
    if scale is None:
        return values
    shape = (scale.shape[0],) + (1,) * (values.ndim - 2) + (scale.shape[1],)
    out = values * scale.reshape(shape)
    return out if spread else out + center.reshape(shape)


# --- tables and xarray files -----------------------------------------------------------------------------
@dataclass
class Panel:
    """Emissions read from a table or an xarray file: (N, M, T, D), labels (N,), times (T,)."""
    emissions: np.ndarray
    labels: np.ndarray
    times: np.ndarray
    has_sequences: bool


def _table_row(kind: str, i: int) -> str:
    """Where row ``i`` (0-based, data rows) is: the CSV line (header = line 1) or the Parquet row."""
    return f"line {i + 2}" if kind == "csv" else f"row {i}"


def _numeric(values, path: Path, kind: str, column: str, rows) -> np.ndarray:
    """A column as float64; the first non-numeric entry is a ``UserError`` naming its row."""
    import pandas as pd
    num = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy() & values.notna().to_numpy())
    if bad.size:
        i = bad[0]
        raise UserError(f"{path}: column {column!r}, {_table_row(kind, rows[i])}: non-numeric value "
                        f"{values.iloc[i]!r}")
    return num.to_numpy(dtype=np.float64)


def read_table(path: Path, data: DataConfig) -> Panel:
    """A long-format table -> ``Panel``.  Raises ``UserError`` for missing or unknown columns,
    duplicated keys, non-numeric values and missing keys, naming the file, column and row."""
    import pandas as pd
    kind = TABLE_SUFFIXES[path.suffix.lower()]
    try:
        df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise UserError(f"{path}: cannot read as {kind}: {str(err).splitlines()[0]}") from None
    keys = {"data.dataset": data.dataset, "data.time": data.time}
    if data.sequence:
        keys["data.sequence"] = data.sequence
    if data.variable:
        keys["data.variable"] = data.variable
        keys["data.value"] = data.value
    columns = [str(c) for c in df.columns]
    df.columns = columns
    for key, name in keys.items():
        if name not in columns:
            raise UserError(f"{path}: no column {name!r} ({key}); columns: {', '.join(columns)}")
    rows = np.arange(len(df))
    if len(df) == 0:
        raise UserError(f"{path}: the table has no rows")
    id_cols = [data.dataset] + ([data.sequence] if data.sequence else []) + [data.time]
    for name in id_cols + ([data.variable] if data.variable else []):
        missing = np.flatnonzero(df[name].isna().to_numpy())
        if missing.size:
            raise UserError(f"{path}: column {name!r}, {_table_row(kind, missing[0])}: empty key")

    if data.variable:  # one row per (dataset, [sequence,] time, variable)
        others = [c for c in columns if c not in keys.values()]
        if others:
            raise UserError(f"{path}: unknown column {others[0]!r} (the table has data.variable = "
                            f"{data.variable!r} and data.value = {data.value!r})")
        names = list(data.emissions) or [str(v) for v in pd.unique(df[data.variable])]
        variable = df[data.variable].astype(str)
        unknown = np.flatnonzero(~variable.isin(names).to_numpy())
        if unknown.size:
            i = unknown[0]
            raise UserError(f"{path}: column {data.variable!r}, {_table_row(kind, i)}: unknown emission "
                            f"{variable.iloc[i]!r} (data.emissions: {', '.join(names)})")
        emission_index = pd.Index(names).get_indexer(variable)
        values = _numeric(df[data.value], path, kind, data.value, rows)[:, None]
        dup_cols = id_cols + [data.variable]
    else:  # one row per (dataset, [sequence,] time), one column per emission
        names = list(data.emissions) or [c for c in columns if c not in id_cols]
        for name in names:
            if name not in columns:
                raise UserError(f"{path}: no column {name!r} (data.emissions); columns: {', '.join(columns)}")
        others = [c for c in columns if c not in id_cols and c not in names]
        if others:
            raise UserError(f"{path}: unknown column {others[0]!r} (not data.dataset, data.sequence, "
                            f"data.time or one of data.emissions)")
        emission_index = None
        values = np.stack([_numeric(df[c], path, kind, c, rows) for c in names], axis=1)
        dup_cols = id_cols
    dup = np.flatnonzero(df.duplicated(subset=dup_cols, keep=False).to_numpy())
    if dup.size:
        first = df.iloc[dup[0]][dup_cols]
        twin = dup[1:][(df.iloc[dup[1:]][dup_cols] == first).all(axis=1).to_numpy()][0]
        what = ", ".join(f"{c} {first[c]!r}" for c in dup_cols)
        raise UserError(f"{path}: duplicated rows for ({', '.join(dup_cols)}): {what} at "
                        f"{_table_row(kind, dup[0])} and {_table_row(kind, twin)}")
    if np.isinf(values).any():
        i, j = np.argwhere(np.isinf(values))[0]
        column = data.value if data.variable else names[j]
        raise UserError(f"{path}: column {column!r}, {_table_row(kind, i)}: infinite value")

    ds_codes, labels = pd.factorize(df[data.dataset], sort=False)
    t_codes, times = pd.factorize(df[data.time], sort=True)
    if data.sequence:
        seq_codes, _ = pd.factorize(df[data.sequence], sort=True)
    else:
        seq_codes = np.zeros(len(df), dtype=int)
    shape = (len(labels), int(seq_codes.max()) + 1, len(times), len(names))
    emissions = np.full(shape, np.nan)
    if emission_index is None:
        emissions[ds_codes, seq_codes, t_codes, :] = values
    else:
        emissions[ds_codes, seq_codes, t_codes, emission_index] = values[:, 0]
    return Panel(emissions, np.asarray(labels), np.asarray(times), bool(data.sequence))


def read_xarray(path: Path, data: DataConfig) -> Panel:
    """A netCDF file or Zarr store -> ``Panel``.

    The emissions are the data variables named by ``data.emissions`` (each over dims dataset,
    [sequence,] time), else the file's variable ``emissions``, else its only data variable; a single
    variable may carry the emission axis as dim ``data.variable`` (default ``emission``).
    """
    import xarray as xr
    try:
        if path.suffix.lower() == ".zarr" or path.is_dir():
            ds = xr.open_zarr(path, consolidated=None)
        else:
            ds = xr.open_dataset(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise UserError(f"{path}: cannot read as netCDF or Zarr: {str(err).splitlines()[0]}") from None
    emission_dim = data.variable or "emission"
    found = [str(v) for v in ds.data_vars]
    if data.emissions:
        for name in data.emissions:
            if name not in ds.data_vars:
                raise UserError(f"{path}: no data variable {name!r} (data.emissions); found: {', '.join(found)}")
        da = ds[list(data.emissions)].to_dataarray(emission_dim)
    elif "emissions" in ds.data_vars or len(found) == 1:
        da = ds["emissions" if "emissions" in ds.data_vars else found[0]]
        if emission_dim not in da.dims:
            da = da.expand_dims(emission_dim, axis=-1)
    else:
        raise UserError(f"{path}: several data variables ({', '.join(found)}) and none named 'emissions'; "
                        f"list the emission variables in data.emissions")
    dims = [data.dataset] + ([data.sequence] if data.sequence else []) + [data.time, emission_dim]
    for dim in da.dims:
        if dim not in dims:
            raise UserError(f"{path}: variable {da.name or 'emissions'!r} has unknown dim {dim!r} "
                            f"(expected {', '.join(dims)}: data.dataset, data.sequence, data.time, data.variable)")
    for key, dim in (("data.dataset", data.dataset), ("data.time", data.time)):
        if dim not in da.dims:
            raise UserError(f"{path}: no dim {dim!r} ({key}); dims: {', '.join(map(str, da.dims))}")
    if not np.issubdtype(da.dtype, np.number):
        raise UserError(f"{path}: emissions have non-numeric dtype {da.dtype}")
    if data.sequence and data.sequence not in da.dims:
        da = da.expand_dims(data.sequence)
    da = da.transpose(*dims).sortby(data.time)
    emissions = np.asarray(da.values, dtype=np.float64)
    if not data.sequence:
        emissions = emissions[:, None]
    return Panel(emissions, np.asarray(da[data.dataset].values), np.asarray(da[data.time].values),
                 bool(data.sequence))


def _digest(path: Path) -> str:
    """sha256 of the file, or of every file of a directory (a Zarr store) by relative path."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def _leaf_value(cfg_value, shape, where: str) -> np.ndarray:
    arr = np.asarray(cfg_value, dtype=np.float64)
    if arr.ndim == 0:
        if len(shape) == 2 and shape[0] == shape[1]:
            return float(arr) * np.eye(shape[0])
        return np.full(shape, float(arr))
    if arr.shape != tuple(shape):
        raise UserError(f"{where}: shape {arr.shape} does not match the leaf's shape {tuple(shape)}")
    return arr


def _per_dataset(arr: np.ndarray, shape, n: int, where: str) -> np.ndarray:
    shape = tuple(shape)
    if arr.shape == shape:
        return np.broadcast_to(arr, (n, *shape)).copy()
    if arr.shape == (n, *shape):
        return arr
    raise UserError(f"{where}: shape {arr.shape}; expected {shape} (shared) or {(n, *shape)} (per dataset)")


def load(cfg: Config, model: Model) -> Datasets:
    """Read and validate the data file named by ``cfg.data.path``.  Raises ``UserError``."""
    path = Path(cfg.data.path)
    suffix = path.suffix.lower()
    is_zarr = path.is_dir() and suffix == ".zarr"
    if not (path.is_file() or is_zarr):
        raise UserError(f"data.path: file not found: {path}")
    labels = times = None
    if suffix in TABLE_SUFFIXES or suffix in XARRAY_SUFFIXES:
        panel = (read_table if suffix in TABLE_SUFFIXES else read_xarray)(path, cfg.data)
        arrays = {"emissions": panel.emissions if panel.has_sequences else panel.emissions[:, 0]}
        labels, times = panel.labels, panel.times
    else:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
            raise UserError(f"{path}: cannot read as .npz: {err}") from None
    digest = _digest(path)
    if "emissions" not in arrays:
        raise UserError(f"{path}: no array named 'emissions' (found: {', '.join(arrays) or 'none'})")
    emissions = np.asarray(arrays["emissions"], dtype=np.float64)
    if emissions.ndim not in (3, 4):
        raise UserError(f"{path}: emissions has shape {emissions.shape}; expected (datasets, time, emission_dim) "
                        f"or (datasets, sequences, time, emission_dim)")
    has_sequences = emissions.ndim == 4
    if not has_sequences:
        emissions = emissions[:, None]
    n, _, t, d = emissions.shape
    if d != cfg.model.emission_dim:
        raise UserError(f"{path}: emissions last dimension is {d} but model.emission_dim = {cfg.model.emission_dim}")
    if n == 0 or t == 0:
        raise UserError(f"{path}: emissions has shape {arrays['emissions'].shape}; need at least one dataset and one time step")
    if np.isinf(emissions).any():
        where = np.argwhere(np.isinf(emissions))[0]
        raise UserError(f"{path}: emissions has an infinite value at dataset {where[0]}, time {where[2]}, "
                        f"emission {where[3]}" + (f", sequence {where[1]}" if has_sequences else ""))
    all_missing = np.isnan(emissions).reshape(n, -1).all(axis=1)
    if all_missing.any():
        raise UserError(f"{path}: dataset {int(np.argmax(all_missing))} has no observed value (all NaN)")
    observed_steps = (~np.isnan(emissions)).any(-1).sum(-1)  # (N, M)
    short = np.argwhere((observed_steps > 0) & (observed_steps < cfg.data.min_length))
    if short.size:
        i, j = short[0]
        name = f"dataset {labels[i]!r}" if labels is not None else f"dataset {i}"
        raise UserError(f"{path}: {name}" + (f", sequence {j}" if has_sequences else "") +
                        f" has {observed_steps[i, j]} observed time steps; data.min_length = {cfg.data.min_length}")
    if cfg.data.standardize:
        center, scale = standardization(emissions, cfg.data.scale_by)
        emissions = (emissions - center[:, None, None]) / scale[:, None, None]
    else:
        center = scale = None

    inputs = None
    if cfg.model.input_dim > 0:
        if "inputs" not in arrays:
            raise UserError(f"{path}: model.input_dim = {cfg.model.input_dim} but the file has no 'inputs' array")
        inputs = np.asarray(arrays["inputs"], dtype=np.float64)
        if not has_sequences and inputs.ndim == 3:
            inputs = inputs[:, None]
        expected = (n, emissions.shape[1], t, cfg.model.input_dim)
        if inputs.shape != expected:
            raise UserError(f"{path}: inputs has shape {arrays['inputs'].shape}; expected "
                            f"{expected if has_sequences else (n, t, cfg.model.input_dim)}")
        if not np.isfinite(inputs).all():
            raise UserError(f"{path}: inputs must be finite (NaN or inf found)")
    elif "inputs" in arrays:
        raise UserError(f"{path}: the file has 'inputs' but model.input_dim = 0")

    known = {"emissions", "inputs"} | {f"{p}_{store_name(leaf)}" for leaf in LEAVES for p in ("init", "true")}
    for name in arrays:
        if name not in known and not name.startswith("future_"):
            raise UserError(f"{path}: unknown array {name!r} (expected emissions, inputs, init_<leaf>, true_<leaf>)")

    init_values, true_values = {}, {}
    for leaf in LEAVES:
        shape = model.leaf_shape(leaf)
        if leaf in cfg.model.init:
            init_values[leaf] = _per_dataset(
                _leaf_value(cfg.model.init[leaf], shape, f"model.init.{leaf}"), shape, n, f"model.init.{leaf}")
        for prefix, target in (("init", init_values), ("true", true_values)):
            key = f"{prefix}_{store_name(leaf)}"
            if key in arrays:
                arr = np.asarray(arrays[key], dtype=np.float64)
                if not np.isfinite(arr).all():
                    raise UserError(f"{path}: {key} must be finite")
                target[leaf] = _per_dataset(arr, shape, n, f"{path}: {key}")
    for leaf in cfg.model.frozen:
        if leaf in RANDOM_DEFAULT and leaf not in init_values:
            raise UserError(f"model.frozen: {leaf} has a random default; give its value as "
                            f"init_{store_name(leaf)} in the data file or model.init.{leaf}")
    return Datasets(emissions, inputs, init_values, true_values, has_sequences, digest, labels, times,
                    center, scale)
