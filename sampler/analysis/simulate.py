"""Simulated datasets: parameters from the model's prior (or given true values), emissions from the model.

``prior``: every dataset's free leaves are drawn from dynamax's conjugate prior of
``LinearGaussianConjugateSSM(state_dim, emission_dim, input_dim)`` (NIW for the initial state, MNIW
for dynamics and emissions) *conditioned on the frozen leaves*, which are held at the config's values
(``model.init`` / the data file's ``init_<leaf>``).  That conditional prior is the one the sampler's
posterior is built on (``p(free | frozen, y)``), so the draws are what simulation-based calibration
needs.  They are made by ``sampler.core.simulation.prior_draw`` (the Gibbs sampler's conjugate block update with no observations (a
conjugate posterior with no data is the prior)); ``tests/test_calibrate.py`` checks them against
dynamax's own ``NIW`` / ``MNIW`` samplers.

dynamax's default prior is very wide (inverse Wishart with ``df = dim + 0.1``: no finite mean; half
of the draws of ``F`` for state_dim 1, 70% for state_dim 2, are explosive, and ``|y|`` reaches
1e70 in T = 100 steps).  A draw whose *observed* emissions are not finite or exceed
``max_abs_emission`` in absolute value is therefore redrawn.  The rule looks at the observed data
only, so simulation-based calibration stays exact: for every dataset y the true parameters are a
draw from p(theta | y), whatever subset of y's is kept (it changes which part of the prior is
exercised, not the calibration).

Emissions come from dynamax's ``sample`` (independent of the sampler's own Kalman code); inputs, when
``input_dim > 0``, are standard normal; entries are missing (NaN) independently with probability
``missing_fraction``.  Dataset ``i`` is the first accepted of the draws keyed
``fold_in(fold_in(PRNGKey(seed), i), attempt)``, so it does not depend on ``num_datasets`` and the
whole file is a deterministic function of its settings (byte for byte: see ``npz_bytes``).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from sampler.core.leaves import LEAVES, RANDOM_DEFAULT, get_leaf, set_leaf, store_name
from sampler.core.model import Model
from sampler.core.precision import configure_jax, numpy_dtype
from sampler.core.simulation import simulation_program, spectral_radius
from sampler.errors import UserError
from sampler.storage import data as data_mod
from sampler.storage.config import Config
from sampler.storage.files import atomic_write

#: redraws per dataset before giving up (at the default bound ~50% of draws are kept for
#: state_dim 1 and ~30% for state_dim 2, so this is never reached in practice).
MAX_ATTEMPTS = 200
DEFAULT_MAX_ABS_EMISSION = 1e4


def _dataset_values(arr: np.ndarray, num_datasets: int, where: str) -> np.ndarray:
    """(N0, ...) values from a data file -> (num_datasets, ...): shared when all N0 rows are equal."""
    if np.all(arr == arr[:1]):
        return np.broadcast_to(arr[:1], (num_datasets, *arr.shape[1:])).copy()
    if arr.shape[0] == num_datasets:
        return arr
    raise UserError(f"{where}: the data file has {arr.shape[0]} different per-dataset values but "
                    f"--num-datasets is {num_datasets}; give one shared value or {num_datasets} rows")


def _file_values(cfg: Config, model: Model, source: str, num_datasets: int) -> dict[str, np.ndarray]:
    """Per-dataset leaf values the simulation holds fixed: the frozen leaves (``prior``) or every
    leaf (``truth``), dotted leaf -> (num_datasets, *leaf_shape)."""
    frozen = set(model.frozen)
    path = Path(cfg.data.path)
    if source == "prior" and (not path.is_file() or not frozen):
        values = {leaf: data_mod.leaf_value(cfg.model.init[leaf], model.leaf_shape(leaf), f"model.init.{leaf}")
                  for leaf in frozen if leaf in cfg.model.init}
        for leaf in frozen - set(values):
            if leaf in RANDOM_DEFAULT:
                raise UserError(f"model.frozen: {leaf} has a random default; give its value as model.init.{leaf} "
                                f"or init_{store_name(leaf)} in data.path ({path} not found)")
        return {leaf: np.broadcast_to(v, (num_datasets, *v.shape)).copy() for leaf, v in values.items()}
    ds = data_mod.load(cfg)
    if source == "prior":
        return {leaf: _dataset_values(ds.init_values[leaf], num_datasets, f"{path}: init_{store_name(leaf)}")
                for leaf in frozen if leaf in ds.init_values}
    out, absent = {}, []
    for leaf in LEAVES:
        if int(np.prod(model.leaf_shape(leaf))) == 0:
            continue
        if leaf in ds.true_values:
            out[leaf] = _dataset_values(ds.true_values[leaf], num_datasets, f"{path}: true_{store_name(leaf)}")
        elif leaf in frozen and leaf in ds.init_values:
            out[leaf] = _dataset_values(ds.init_values[leaf], num_datasets, f"{path}: init_{store_name(leaf)}")
        else:
            absent.append(f"true_{store_name(leaf)}")
    if absent:
        raise UserError(f"{path}: --from truth needs the true parameters, but the file has no {', '.join(absent)}")
    return out


def _anchors(model: Model, values: dict[str, np.ndarray], num_datasets: int, dtype):
    """``ParamsLGSSM`` with leaves (N, ...): dynamax's default values overridden by ``values``."""
    default = model.initial_params(jax.random.PRNGKey(0), {})
    leaves = {leaf: values.get(leaf, np.broadcast_to(np.asarray(get_leaf(default, leaf)),
                                                     (num_datasets, *model.leaf_shape(leaf))))
              for leaf in LEAVES}
    params = default
    for leaf, value in leaves.items():
        params = set_leaf(params, leaf, jnp.asarray(value, dtype))
    return params


def simulate_arrays(cfg: Config, *, num_datasets: int, source: str = "prior", num_timesteps: int = 100,
                    num_sequences: Optional[int] = None, missing_fraction: float = 0.0, seed: int = 0,
                    max_abs_emission: float = DEFAULT_MAX_ABS_EMISSION) -> tuple[dict[str, np.ndarray], dict]:
    """Simulated datasets as the arrays of a data file, and a summary of the simulation.

    Returns:
        arrays: ``emissions`` (N, T, D) or (N, M, T, D) when ``num_sequences`` is given, ``inputs``
        likewise when ``input_dim > 0``, ``true_<leaf>`` (N, *leaf_shape) for every leaf and
        ``init_<leaf>`` for the frozen ones.
        info: settings, draws made and rejected, fraction with explosive dynamics (spectral radius
        of F > 1) among all prior draws and among the kept datasets.
    """
    if cfg.model.components:
        raise UserError("sampler simulate / calibrate: structural models (model.components) are not supported yet; "
                        "their simulation-based calibration is in tests/test_structural.py (docs/structural.md)")
    if source not in ("prior", "truth"):
        raise UserError(f"--from {source!r}: expected 'prior' or 'truth'")
    for name, value in (("--num-datasets", num_datasets), ("--num-timesteps", num_timesteps),
                        ("--num-sequences", 1 if num_sequences is None else num_sequences)):
        if value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})")
    if not 0.0 <= missing_fraction < 1.0:
        raise UserError(f"--missing-fraction must be in [0, 1) (got {missing_fraction})")
    if not max_abs_emission > 0:
        raise UserError(f"max_abs_emission must be positive (got {max_abs_emission})")
    if seed < 0:
        raise UserError(f"--seed must be non-negative (got {seed})")
    configure_jax(cfg.sampler.dtype)
    model = Model.from_config(cfg.model)
    N, M, T = num_datasets, num_sequences or 1, num_timesteps
    dtype = numpy_dtype(cfg.sampler.dtype)
    values = _file_values(cfg, model, source, N)
    anchors = _anchors(model, values, N, dtype)
    program = simulation_program(model, M, T, float(missing_fraction), source == "prior")
    base = jax.random.PRNGKey(seed)
    slot_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(np.arange(N, dtype=np.uint32))

    pending = np.ones(N, bool)
    result = None
    draws, explosive_draws = 0, 0
    for attempt in range(MAX_ATTEMPTS if source == "prior" else 1):
        params, ys, inputs, ok = jax.tree.map(np.asarray, program(slot_keys, np.uint32(attempt), anchors,
                                                                  max_abs_emission))
        take = pending & ok
        if result is None:
            result = (params, ys, inputs)
        else:
            result = jax.tree.map(lambda old, new: np.where(take.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                                  result, (params, ys, inputs))
        draws += int(pending.sum())
        explosive_draws += int((spectral_radius(params.dynamics.weights) > 1)[pending].sum())
        pending &= ~ok
        if not pending.any():
            break
    if pending.any():
        i = int(np.argmax(pending))
        if source == "truth":
            raise UserError(f"{cfg.data.path}: the true parameters of dataset {i} give emissions that are not "
                            f"finite or exceed {max_abs_emission:g} in absolute value")
        raise UserError(f"dataset {i}: none of {MAX_ATTEMPTS} draws from the prior gave emissions within "
                        f"{max_abs_emission:g}; raise max_abs_emission or shorten --num-timesteps")
    params, ys, inputs = result
    arrays = {"emissions": ys if num_sequences else ys[:, 0]}
    if inputs is not None:
        arrays["inputs"] = inputs if num_sequences else inputs[:, 0]
    for leaf in LEAVES:
        arrays[f"true_{store_name(leaf)}"] = np.asarray(get_leaf(params, leaf), np.float64)
    for leaf in model.frozen:
        arrays[f"init_{store_name(leaf)}"] = arrays[f"true_{store_name(leaf)}"]
    arrays = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
    explosive = spectral_radius(arrays["true_dynamics_weights"]) > 1
    info = {"num_datasets": N, "source": source, "num_timesteps": T, "num_sequences": num_sequences,
            "missing_fraction": missing_fraction, "seed": seed, "max_abs_emission": max_abs_emission,
            "draws": draws, "rejected": draws - N, "rejected_fraction": (draws - N) / draws,
            "explosive_fraction_of_draws": explosive_draws / draws,
            "explosive_fraction_kept": float(explosive.mean())}
    return arrays, info


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (what ``np.savez`` writes) with fixed zip timestamps: equal arrays give equal bytes,
    so a run dir's data hash does not change when the same simulation is written again."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


def simulate_file(cfg: Config, out: Path, *, num_datasets: int, source: str = "prior", num_timesteps: int = 100,
                  num_sequences: Optional[int] = None, missing_fraction: float = 0.0, seed: int = 0,
                  max_abs_emission: float = DEFAULT_MAX_ABS_EMISSION) -> dict:
    """``sampler simulate``: write simulated datasets to ``out`` (a data file for ``sampler run``).

    See ``simulate_arrays`` for the arrays; returns its summary plus ``out``.
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")
    arrays, info = simulate_arrays(cfg, num_datasets=num_datasets, source=source, num_timesteps=num_timesteps,
                                   num_sequences=num_sequences, missing_fraction=missing_fraction, seed=seed,
                                   max_abs_emission=max_abs_emission)
    atomic_write(out, npz_bytes(arrays))
    return {"out": str(out.resolve()), **info}
