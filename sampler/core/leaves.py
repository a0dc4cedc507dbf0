"""The dynamax parameter leaves, in one table: name, ``initialize`` keyword, dimension names.

Every per-leaf fact (a leaf's shape, its Zarr dims, the data file's ``init_<leaf>`` name, which of
its scalars are distinct) is read from ``TABLE``, so model, store and data agree by construction.
Plain Python and numpy: the config imports it, and a bad config is reported before JAX is loaded.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Leaf(NamedTuple):
    """One leaf of dynamax's ``ParamsLGSSM``.

    name: dotted (``emissions.weights``).  init_kwarg: its keyword of ``LinearGaussianSSM.initialize``.
    dims: names of its own axes: ``state``/``state_col`` (size S), ``emission``/``emission_col`` (D),
    ``input`` (U).
    """
    name: str
    init_kwarg: str
    dims: tuple[str, ...]


TABLE: dict[str, Leaf] = {leaf.name: leaf for leaf in (
    Leaf("initial.mean", "initial_mean", ("state",)),
    Leaf("initial.cov", "initial_covariance", ("state", "state_col")),
    Leaf("dynamics.weights", "dynamics_weights", ("state", "state_col")),
    Leaf("dynamics.bias", "dynamics_bias", ("state",)),
    Leaf("dynamics.input_weights", "dynamics_input_weights", ("state", "input")),
    Leaf("dynamics.cov", "dynamics_covariance", ("state", "state_col")),
    Leaf("emissions.weights", "emission_weights", ("emission", "state_col")),
    Leaf("emissions.bias", "emission_bias", ("emission",)),
    Leaf("emissions.input_weights", "emission_input_weights", ("emission", "input")),
    Leaf("emissions.cov", "emission_covariance", ("emission", "emission_col")),
)}
#: dotted leaf names, in ParamsLGSSM order.
LEAVES: tuple[str, ...] = tuple(TABLE)
#: leaves whose dynamax default initial value is random (drawn from the chain's key).
RANDOM_DEFAULT = frozenset({"emissions.weights"})


def leaf_shape(leaf: str, state_dim: int, emission_dim: int, input_dim: int) -> tuple[int, ...]:
    """The leaf's own shape for S, D, U."""
    size = {"state": state_dim, "state_col": state_dim, "emission": emission_dim,
            "emission_col": emission_dim, "input": input_dim}
    return tuple(size[d] for d in TABLE[leaf].dims)


def store_name(leaf: str) -> str:
    """Zarr / data-file name of a leaf: ``emissions.weights`` -> ``emissions_weights``."""
    return leaf.replace(".", "_")


def is_covariance(leaf: str) -> bool:
    return leaf.endswith(".cov")


def scalar_entries(leaf: str, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Index tuples of a leaf's distinct scalars, row-major: the lower triangle of a covariance (its
    upper triangle repeats it), every entry otherwise."""
    if is_covariance(leaf):
        return [(i, j) for i in range(shape[0]) for j in range(i + 1)]
    return [tuple(int(k) for k in idx) for idx in np.ndindex(*shape)]


def get_leaf(tree, leaf: str):
    group, field = leaf.split(".")
    return getattr(getattr(tree, group), field)


def set_leaf(tree, leaf: str, value):
    group, field = leaf.split(".")
    return tree._replace(**{group: getattr(tree, group)._replace(**{field: value})})
