"""Emission datasets from an ``.npz`` file, validated against the model.

Arrays in the file:
* ``emissions``: (N, T, D) or (N, M, T, D); NaN = missing entry.
* ``inputs`` (when ``model.input_dim > 0``): same leading shape, last dim U.
* ``init_<leaf>`` (e.g. ``init_emissions_weights``): per dataset (N, *leaf_shape) or shared (*leaf_shape).
* ``true_<leaf>``: the true parameters, for simulation studies (same shapes).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from sampler.config import Config
from sampler.errors import UserError
from sampler.model import LEAVES, RANDOM_DEFAULT, Model, store_name


@dataclass
class Datasets:
    """All datasets of a run, in host memory.

    emissions: (N, M, T, D).  inputs: (N, M, T, U) or None.
    init_values / true_values: dotted leaf -> (N, *leaf_shape).
    has_sequences: whether the file had a sequence axis (4-d emissions).
    """
    emissions: np.ndarray
    inputs: Optional[np.ndarray]
    init_values: dict[str, np.ndarray] = field(default_factory=dict)
    true_values: dict[str, np.ndarray] = field(default_factory=dict)
    has_sequences: bool = False
    sha256: str = ""

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
    if not path.is_file():
        raise UserError(f"data.path: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise UserError(f"{path}: cannot read as .npz: {err}") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
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
    return Datasets(emissions, inputs, init_values, true_values, has_sequences, digest)
