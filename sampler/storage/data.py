"""Emission datasets from a data file (``.npz``, long-format table, or xarray file), validated
against the model config, optionally standardised per dataset.

``.npz`` arrays:
* ``emissions``: (N, T, D) or (N, M, T, D); NaN = missing entry.
* ``inputs`` (when ``model.input_dim > 0``): same leading shape, last dim U.
* ``init_<leaf>`` (e.g. ``init_emissions_weights``): per dataset (N, *leaf_shape) or shared (*leaf_shape).
* ``true_<leaf>``: the true parameters, for simulation studies (same shapes).

Tables and xarray files: ``sampler.storage.panels``.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from sampler.core.leaves import LEAVES, RANDOM_DEFAULT, leaf_shape, store_name
from sampler.errors import UserError
from sampler.storage import location
from sampler.storage.config import Config, ModelConfig
from sampler.storage.panels import TABLE_SUFFIXES, XARRAY_SUFFIXES, read_table, read_xarray


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


def leaf_value(cfg_value, shape, where: str) -> np.ndarray:
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


def _read_arrays(path: Path, cfg: Config) -> tuple[dict, Optional[np.ndarray], Optional[np.ndarray]]:
    """The file's arrays (``emissions`` as in an ``.npz``), and labels and times of a table / xarray file."""
    suffix = path.suffix.lower()
    if not (path.is_file() or (path.is_dir() and suffix == ".zarr")):
        raise UserError(f"data.path: file not found: {path}")
    if suffix in TABLE_SUFFIXES or suffix in XARRAY_SUFFIXES:
        panel = (read_table if suffix in TABLE_SUFFIXES else read_xarray)(path, cfg.data)
        return ({"emissions": panel.emissions if panel.has_sequences else panel.emissions[:, 0]},
                panel.labels, panel.times)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}, None, None
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise UserError(f"{path}: cannot read as .npz: {err}") from None


def _emissions(arrays: dict, path: Path, cfg: Config, labels) -> np.ndarray:
    """Validated emissions (N, M, T, D)."""
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
    return emissions


def _inputs(arrays: dict, path: Path, cfg: Config, emissions: np.ndarray, has_sequences: bool):
    """Validated inputs (N, M, T, U), or None when ``model.input_dim = 0``."""
    U = cfg.model.input_dim
    if U == 0:
        if "inputs" in arrays:
            raise UserError(f"{path}: the file has 'inputs' but model.input_dim = 0")
        return None
    if "inputs" not in arrays:
        raise UserError(f"{path}: model.input_dim = {U} but the file has no 'inputs' array")
    inputs = np.asarray(arrays["inputs"], dtype=np.float64)
    if not has_sequences and inputs.ndim == 3:
        inputs = inputs[:, None]
    n, m, t, _ = emissions.shape
    if inputs.shape != (n, m, t, U):
        raise UserError(f"{path}: inputs has shape {arrays['inputs'].shape}; expected "
                        f"{(n, m, t, U) if has_sequences else (n, t, U)}")
    if not np.isfinite(inputs).all():
        raise UserError(f"{path}: inputs must be finite (NaN or inf found)")
    return inputs


def _file_values(arrays: dict, path: Path, shapes: dict, n: int, init_values: dict, true_values: dict) -> None:
    """The file's ``init_<name>`` / ``true_<name>`` arrays into the dicts; ``shapes``: name in the file
    -> (key in the dicts, shape per dataset)."""
    known = {"emissions", "inputs"} | {f"{p}_{name}" for name in shapes for p in ("init", "true")}
    for name in arrays:
        if name not in known and not name.startswith("future_"):
            raise UserError(f"{path}: unknown array {name!r} (expected emissions, inputs, "
                            f"init_<name>, true_<name> for: {', '.join(shapes)})")
    for name, (key_in_dicts, shape) in shapes.items():
        for prefix, target in (("init", init_values), ("true", true_values)):
            key = f"{prefix}_{name}"
            if key in arrays:
                arr = np.asarray(arrays[key], dtype=np.float64)
                if not np.isfinite(arr).all():
                    raise UserError(f"{path}: {key} must be finite")
                target[key_in_dicts] = _per_dataset(arr, shape, n, f"{path}: {key}")


def _leaf_values(arrays: dict, path: Path, model: ModelConfig, n: int) -> tuple[dict, dict]:
    """(init_values, true_values): dotted leaf -> (n, *leaf_shape) from ``model.init`` and the file."""
    if model.components:
        return _variable_values(arrays, path, model, n)
    init_values, true_values = {}, {}
    for leaf in LEAVES:
        if leaf in model.init:
            shape = leaf_shape(leaf, model.state_dim, model.emission_dim, model.input_dim)
            where = f"model.init.{leaf}"
            init_values[leaf] = _per_dataset(leaf_value(model.init[leaf], shape, where), shape, n, where)
    shapes = {store_name(leaf): (leaf, leaf_shape(leaf, model.state_dim, model.emission_dim, model.input_dim))
              for leaf in LEAVES}
    _file_values(arrays, path, shapes, n, init_values, true_values)
    for leaf in model.frozen:
        if leaf in RANDOM_DEFAULT and leaf not in init_values:
            raise UserError(f"model.frozen: {leaf} has a random default; give its value as "
                            f"init_{store_name(leaf)} in the data file or model.init.{leaf}")
    return init_values, true_values


def _variable_values(arrays: dict, path: Path, model: ModelConfig, n: int) -> tuple[dict, dict]:
    """A structural model's (init_values, true_values): variable -> (n, emission_dim[, size]) from
    ``model.init`` (a number, or one value per emission) and the file; every frozen variable needs
    one; sds > 0 (a frozen component sd may be 0; obs_sd never: the innovation variance needs it),
    dampings in (0, 1)."""
    D = model.emission_dim
    shapes = {name: (D,) + ((k,) if k else ()) for name, k in model.variable_sizes().items()}
    init_values, true_values = {}, {}
    for name, value in model.init.items():
        where = f"model.init.{name}"
        try:
            given = np.broadcast_to(np.asarray(value, dtype=np.float64), shapes[name])
        except (ValueError, TypeError):
            raise UserError(f"{where}: {value!r} does not fit shape {shapes[name]} (a number, or one per emission)") from None
        init_values[name] = _per_dataset(given, shapes[name], n, where)
    _file_values(arrays, path, {name: (name, shape) for name, shape in shapes.items()}, n, init_values, true_values)
    for name in model.frozen:
        if name not in init_values:
            raise UserError(f"model.frozen: {name} needs a value: model.init.{name} or init_{name} in the data file")
    for name, value in init_values.items():
        zero_ok = name in model.frozen and name != "obs_sd"     # a frozen zero disturbance: a fixed pattern
        if name.endswith("sd") and not (np.isfinite(value).all() and (value >= 0 if zero_ok else value > 0).all()):
            raise UserError(f"model.init.{name}: a standard deviation must be {'>= 0' if zero_ok else '> 0'}")
        if name.endswith("_damping") and not ((value > 0) & (value < 1)).all():
            raise UserError(f"model.init.{name}: a damping must be in (0, 1)")
    return init_values, true_values


def load(cfg: Config) -> Datasets:
    """Read and validate the data file named by ``cfg.data.path``.  Raises ``UserError``."""
    path = location.location(cfg.data.path)
    if location.is_remote(path) and not location.exists(path):  # unreachable: raised, not "not found"
        raise UserError(f"data.path: file not found: {path}")
    with location.local_file(path) as local:  # numpy, pandas and xarray read local files
        arrays, labels, times = _read_arrays(local, cfg)
        digest = _digest(local)
    has_sequences = np.ndim(arrays.get("emissions")) == 4
    emissions = _emissions(arrays, path, cfg, labels)
    center = scale = None
    if cfg.data.standardize:
        center, scale = standardization(emissions, cfg.data.scale_by)
        emissions = (emissions - center[:, None, None]) / scale[:, None, None]
    inputs = _inputs(arrays, path, cfg, emissions, has_sequences)
    init_values, true_values = _leaf_values(arrays, path, cfg.model, emissions.shape[0])
    return Datasets(emissions, inputs, init_values, true_values, has_sequences, digest, labels, times,
                    center, scale)
