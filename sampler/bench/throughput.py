"""Gradient throughput of the LG-SSM marginal log-likelihood (parts ``grad`` and ``parallel``).

* ``grad``  -- gradient evaluations/s of the LG-SSM marginal log-likelihood, ``sampler.core.kalman``
  against dynamax's ``lgssm_filter``, vmapped over B sequences (T=100, D=10, S=2, as the seed).
* ``parallel`` -- gradient evaluations/s of the sequential information filter against the
  parallel-in-time one (``kalman = "parallel"``, an associative scan) over series length T and
  batch B, with each one's compile time: where the parallel filter wins on this machine.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from dynamax.linear_gaussian_ssm import lgssm_filter

from sampler.bench.measure import time_calls
from sampler.bench.problems import SEED_T, seed_emissions, seed_params
from sampler.core.kalman import marginal_log_prob

#: (T, B) points of the ``parallel`` part: long series with few chains, where the sequential
#: scan's per-step cost is not amortised over a batch, and the seed's shape at large B.
PARALLEL_GRID = ((100, 1), (1000, 1), (10000, 1), (1000, 4), (1000, 64), (100, 1024))
GRAD_COLUMNS = ("batch", "ours_grads_per_s", "ours_complete_grads_per_s", "ours_partial_missing_grads_per_s",
                "dynamax_grads_per_s", "ratio")
PARALLEL_COLUMNS = ("T", "batch", "information_grads_per_s", "parallel_grads_per_s", "parallel_speedup",
                    "information_compile_s", "parallel_compile_s")


def _batched(params, B: int, dtype: str):
    """Each of the B sequences with its own copy of ``params`` (as B chains would have)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x, dtype), (B,) + jnp.shape(x)), params)


def grad_throughput(batches=(1, 64, 1024, 8192), num_timesteps: int = SEED_T,
                    dtype: str = "float64") -> list[dict]:
    """Gradient evaluations/s of the marginal log-likelihood w.r.t. all parameters, ours vs dynamax.

    Each of the B sequences has its own copy of the parameters (as B chains would), so the gradient
    is a full (B, ...) parameter pytree.  "ours" is the public ``marginal_log_prob`` at its default
    arguments (it decides on device, once per batch, whether any row is partly missing; for these
    complete data it takes the complete-row path).  "ours_complete" forces that path
    (``partial_missing=False``: one factorisation of R per sequence, closed-form gradient);
    "ours_partial_missing" forces the exact partly-missing path (``partial_missing=True``: R
    restricted to each row's observed entries, factored at every time step).  ``ratio`` is ours
    (default) over dynamax.
    """
    _, params = seed_params()
    rows = []
    for B in batches:
        y = jnp.asarray(seed_emissions(B, num_timesteps), dtype)
        p = _batched(params, B, dtype)
        row = {"batch": B}
        for name, ll in (("ours", marginal_log_prob),
                         ("ours_complete", partial(marginal_log_prob, partial_missing=False)),
                         ("ours_partial_missing", partial(marginal_log_prob, partial_missing=True)),
                         ("dynamax", lambda q, e: lgssm_filter(q, e).marginal_loglik)):
            fn = jax.jit(jax.vmap(jax.grad(ll)))
            first, per_call = time_calls(fn, p, y)
            row[f"{name}_grads_per_s"] = B / per_call
            row[f"{name}_compile_s"] = first - per_call
        row["ratio"] = row["ours_grads_per_s"] / row["dynamax_grads_per_s"]
        rows.append(row)
    return rows


def parallel_in_time(grid=PARALLEL_GRID, dtype: str = "float64") -> list[dict]:
    """Gradient evaluations/s, sequential information filter vs the parallel-in-time one, at each
    (T, B) of ``grid`` (seed model, complete data, each sequence with its own parameters)."""
    _, params = seed_params()
    rows = []
    for T, B in grid:
        y = jnp.asarray(seed_emissions(B, T), dtype)
        p = _batched(params, B, dtype)
        row = {"T": T, "batch": B}
        for form in ("information", "parallel"):
            fn = jax.jit(jax.vmap(jax.grad(partial(marginal_log_prob, form=form, partial_missing=False))))
            first, per_call = time_calls(fn, p, y, min_seconds=0.5)
            row[f"{form}_grads_per_s"] = B / per_call
            row[f"{form}_compile_s"] = first - per_call
        row["parallel_speedup"] = row["parallel_grads_per_s"] / row["information_grads_per_s"]
        rows.append(row)
    return rows
