"""Simulated datasets (pure JAX): parameters from the model's conjugate prior given the frozen
leaves, emissions from dynamax's ``sample``, one compiled attempt for every dataset at once.

The prior draw is ``sampler.core.gibbs``'s conjugate block update with no observations (a conjugate
posterior with no data is the prior), so it is the prior the sampler's posterior is built on,
``p(free | frozen)``; emissions come from dynamax (independent of our Kalman code).
"""
from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np

from sampler.core.gibbs import NIWAsMNIW, regression_block
from sampler.core.leaves import get_leaf, set_leaf
from sampler.core.model import Model


def prior_draw(key, model: Model, anchor):
    """One draw of the free leaves from dynamax's conjugate prior given the frozen leaves.

    Args:
        key: PRNG key.
        model: the model (dims, frozen leaves).
        anchor: ``ParamsLGSSM`` holding the frozen leaves' values (free leaves' values are ignored).

    Returns:
        ``ParamsLGSSM``: frozen leaves as in ``anchor``, free leaves drawn.  The three blocks
        (m0, S0), ([F B b], Q), ([H D d], R) are independent a priori.
    """

    S, U = model.state_dim, model.input_dim
    frozen, ssm = set(model.frozen), model.ssm
    dtype = anchor.emissions.cov.dtype
    k_init, k_dyn, k_em = jax.random.split(key, 3)

    def block(k, leaves, cov_leaf, prior):
        """(W, Sigma) of one regression block with no observations, W = leaves side by side."""
        cols = [get_leaf(anchor, leaf) for leaf in leaves]
        cols = [c if c.ndim == 2 else c[:, None] for c in cols]  # biases become one column
        W = jnp.concatenate(cols, axis=1)
        free_cols = [leaf not in frozen for leaf, c in zip(leaves, cols) for _ in range(c.shape[1])]
        return regression_block(k, jnp.zeros((0, W.shape[0]), dtype), jnp.zeros((0, W.shape[1]), dtype), W,
                                 get_leaf(anchor, cov_leaf), prior, free_cols, cov_leaf not in frozen)

    m0, S0 = block(k_init, ["initial.mean"], "initial.cov", NIWAsMNIW(ssm.initial_prior))
    Wd, Q = block(k_dyn, ["dynamics.weights", "dynamics.input_weights", "dynamics.bias"], "dynamics.cov",
                  ssm.dynamics_prior)
    We, R = block(k_em, ["emissions.weights", "emissions.input_weights", "emissions.bias"], "emissions.cov",
                  ssm.emission_prior)
    values = {"initial.mean": m0[:, 0], "initial.cov": S0,
              "dynamics.weights": Wd[:, :S], "dynamics.input_weights": Wd[:, S:S + U], "dynamics.bias": Wd[:, -1],
              "dynamics.cov": Q,
              "emissions.weights": We[:, :S], "emissions.input_weights": We[:, S:S + U], "emissions.bias": We[:, -1],
              "emissions.cov": R}
    params = anchor
    for leaf, value in values.items():
        params = set_leaf(params, leaf, value)
    return params


def sample_dataset(key, model: Model, params, num_sequences: int, num_timesteps: int, missing_fraction: float):
    """Emissions of one dataset from dynamax's ``sample``.

    Returns:
        emissions (M, T, D) with NaN at missing entries; inputs (M, T, U) standard normal, or None
        when ``input_dim == 0``; missing (M, T, D) bool.
    """
    M, T, U = num_sequences, num_timesteps, model.input_dim
    dtype = params.emissions.cov.dtype
    k_u, k_y, k_mask = jax.random.split(key, 3)
    keys = jax.random.split(k_y, M)
    ssm = model.ssm
    if U:
        inputs = jax.random.normal(k_u, (M, T, U), dtype)
        ys = jax.vmap(lambda k, u: ssm.sample(params, k, T, inputs=u)[1])(keys, inputs)
    else:
        inputs = None
        ys = jax.vmap(lambda k: ssm.sample(params, k, T)[1])(keys)
    missing = jax.random.uniform(k_mask, ys.shape, dtype) < missing_fraction
    return jnp.where(missing, jnp.nan, ys), inputs, missing


def _attempt(model, num_sequences, num_timesteps, missing_fraction, from_prior, key, anchor, max_abs):
    """One simulation try: (params, emissions, inputs, accepted).  ``accepted``: observed entries finite,
    at most ``max_abs`` in absolute value, and at least one observed entry (a rule on the data only)."""
    k_par, k_data = jax.random.split(key)
    params = prior_draw(k_par, model, anchor) if from_prior else anchor
    ys, inputs, missing = sample_dataset(k_data, model, params, num_sequences, num_timesteps, missing_fraction)
    # NaN (overflow) at an observed entry fails the bound too; at a masked entry it is never observed
    ok = jnp.all(missing | (jnp.abs(ys) <= max_abs)) & ~jnp.all(missing)
    return params, ys, inputs, ok


@lru_cache(maxsize=None)
def simulation_program(model: Model, num_sequences: int, num_timesteps: int, missing_fraction: float, from_prior: bool):
    """Compiled ``(slot_keys (N,), attempt, anchors (N, ...), max_abs) -> (params, emissions, inputs,
    accepted)``, attempt ``attempt`` of every dataset (its key: ``fold_in(slot_key, attempt)``)."""
    one = partial(_attempt, model, num_sequences, num_timesteps, missing_fraction, from_prior)

    def batch(slot_keys, attempt, anchors, max_abs):
        keys = jax.vmap(lambda k: jax.random.fold_in(k, attempt))(slot_keys)
        return jax.vmap(one, in_axes=(0, 0, None))(keys, anchors, max_abs)

    return jax.jit(batch)


def spectral_radius(F: np.ndarray) -> np.ndarray:
    """max |eigenvalue| of dynamics matrices F (..., S, S) -> (...)."""
    return np.abs(np.linalg.eigvals(F)).max(-1)
