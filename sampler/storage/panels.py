"""Long-format tables (``.csv``, ``.parquet``/``.pq``) and xarray files (netCDF, Zarr) -> emission panels.

Tables: one row per (dataset, [sequence,] time) with one column per emission, or one row per
(dataset, [sequence,] time, variable) with a value column; column names from ``[data]``.  xarray
files: data variables over the named dims.  Both become emissions (N, M, T, D) on the sorted union of
the time values: a (dataset, sequence) without a row at some time is NaN there (a missing observation:
the filter skips that update), so ragged lengths and gaps need no special handling.  They carry
emissions only (no inputs, init, truth).  Every problem is a ``UserError`` naming file, column and row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from sampler.errors import UserError
from sampler.storage.config import DataConfig

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
XARRAY_SUFFIXES = {".nc", ".nc4", ".cdf", ".h5", ".netcdf", ".zarr"}


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


def _numeric(values, path: Path, kind: str, column: str) -> np.ndarray:
    """A column as float64; the first non-numeric entry is a ``UserError`` naming its row."""
    num = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy() & values.notna().to_numpy())
    if bad.size:
        i = bad[0]
        raise UserError(f"{path}: column {column!r}, {_table_row(kind, i)}: non-numeric value "
                        f"{values.iloc[i]!r}")
    return num.to_numpy(dtype=np.float64)


def _read_frame(path: Path, kind: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, float_precision="round_trip") if kind == "csv" else pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise UserError(f"{path}: cannot read as {kind}: {str(err).splitlines()[0]}") from None
    df.columns = [str(c) for c in df.columns]
    return df


def _key_columns(df: pd.DataFrame, data: DataConfig, path: Path, kind: str) -> dict[str, str]:
    """Config key -> column of every key column, each checked present and never empty."""
    keys = {"data.dataset": data.dataset, "data.time": data.time}
    if data.sequence:
        keys["data.sequence"] = data.sequence
    if data.variable:
        keys["data.variable"] = data.variable
        keys["data.value"] = data.value
    columns = list(df.columns)
    for key, name in keys.items():
        if name not in columns:
            raise UserError(f"{path}: no column {name!r} ({key}); columns: {', '.join(columns)}")
    for key, name in keys.items():
        if key == "data.value":
            continue
        missing = np.flatnonzero(df[name].isna().to_numpy())
        if missing.size:
            raise UserError(f"{path}: column {name!r}, {_table_row(kind, missing[0])}: empty key")
    return keys


def _long_values(df, data: DataConfig, keys: dict, path: Path, kind: str):
    """One row per (dataset, [sequence,] time, variable): (names, emission index per row, values (n, 1))."""
    others = [c for c in df.columns if c not in keys.values()]
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
    values = _numeric(df[data.value], path, kind, data.value)[:, None]
    return names, pd.Index(names).get_indexer(variable), values


def _wide_values(df, data: DataConfig, id_cols: list[str], path: Path, kind: str):
    """One row per (dataset, [sequence,] time), a column per emission: (names, None, values (n, D))."""
    columns = list(df.columns)
    names = list(data.emissions) or [c for c in columns if c not in id_cols]
    for name in names:
        if name not in columns:
            raise UserError(f"{path}: no column {name!r} (data.emissions); columns: {', '.join(columns)}")
    others = [c for c in columns if c not in id_cols and c not in names]
    if others:
        raise UserError(f"{path}: unknown column {others[0]!r} (not data.dataset, data.sequence, "
                        f"data.time or one of data.emissions)")
    return names, None, np.stack([_numeric(df[c], path, kind, c) for c in names], axis=1)


def _check_unique(df, dup_cols: list[str], path: Path, kind: str) -> None:
    dup = np.flatnonzero(df.duplicated(subset=dup_cols, keep=False).to_numpy())
    if dup.size:
        first = df.iloc[dup[0]][dup_cols]
        twin = dup[1:][(df.iloc[dup[1:]][dup_cols] == first).all(axis=1).to_numpy()][0]
        what = ", ".join(f"{c} {first[c]!r}" for c in dup_cols)
        raise UserError(f"{path}: duplicated rows for ({', '.join(dup_cols)}): {what} at "
                        f"{_table_row(kind, dup[0])} and {_table_row(kind, twin)}")


def read_table(path: Path, data: DataConfig) -> Panel:
    """A long-format table -> ``Panel``.  Raises ``UserError`` for missing or unknown columns,
    duplicated keys, non-numeric values and missing keys, naming the file, column and row."""
    kind = TABLE_SUFFIXES[path.suffix.lower()]
    df = _read_frame(path, kind)
    keys = _key_columns(df, data, path, kind)
    if len(df) == 0:
        raise UserError(f"{path}: the table has no rows")
    id_cols = [data.dataset] + ([data.sequence] if data.sequence else []) + [data.time]
    if data.variable:
        names, emission_index, values = _long_values(df, data, keys, path, kind)
        _check_unique(df, id_cols + [data.variable], path, kind)
    else:
        names, emission_index, values = _wide_values(df, data, id_cols, path, kind)
        _check_unique(df, id_cols, path, kind)
    if np.isinf(values).any():
        i, j = np.argwhere(np.isinf(values))[0]
        column = data.value if data.variable else names[j]
        raise UserError(f"{path}: column {column!r}, {_table_row(kind, i)}: infinite value")

    ds_codes, labels = pd.factorize(df[data.dataset], sort=False)
    t_codes, times = pd.factorize(df[data.time], sort=True)
    seq_codes = pd.factorize(df[data.sequence], sort=True)[0] if data.sequence else np.zeros(len(df), dtype=int)
    emissions = np.full((len(labels), int(seq_codes.max()) + 1, len(times), len(names)), np.nan)
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
