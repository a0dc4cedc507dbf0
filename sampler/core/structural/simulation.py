"""Draws from a structural model's prior and data from its parameters (simulation-based calibration)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sampler.core.structural.model import StructuralModel, is_stationary

#: candidates per AR draw (its prior is a normal restricted to the stationary region: rejection).
AR_CANDIDATES = 64


def _restricted_normal(key, sd, size, inside, dtype):
    """A N(0, sd^2 I) draw (size,) conditioned on ``inside`` by rejection among AR_CANDIDATES."""
    draws = sd * jax.random.normal(key, (AR_CANDIDATES, size), dtype)
    ok = jax.vmap(inside)(draws)
    return draws[jnp.argmax(ok)]


def prior_draw(key, model: StructuralModel, dtype=jnp.float64) -> dict:
    """One draw of every variable from the prior: name -> (D,) or (D, k)."""
    D, out = model.emission_dim, {}
    for p, k in zip(model.parameters, jax.random.split(key, len(model.parameters))):
        if p.kind == "sd":
            out[p.name] = jnp.abs(p.prior * jax.random.normal(k, (D,), dtype))
        elif p.kind == "damping":
            mean, sd = p.prior
            out[p.name] = mean + sd * jax.random.truncated_normal(k, -mean / sd, (1 - mean) / sd, (D,), dtype)
        elif p.kind == "ar":
            out[p.name] = jax.vmap(lambda kk: _restricted_normal(kk, p.prior, p.size, is_stationary, dtype))(
                jax.random.split(k, D))
        else:
            out[p.name] = p.prior * jax.random.normal(k, (D, p.size), dtype)
    return out


def sample_emissions(key, model: StructuralModel, params: dict, num_timesteps: int, inputs=None):
    """One sequence of every emission: (T, D).  inputs: (T, U) or None."""
    T, D = num_timesteps, model.emission_dim
    u = jnp.zeros((T, model.input_dim)) if inputs is None else inputs

    def one(k, p):
        lg = model.emission_lgssm(p)
        k1, k2, k3 = jax.random.split(k, 3)
        S = lg.initial.mean.shape[0]
        x1 = jnp.sqrt(jnp.diag(lg.initial.cov)) * jax.random.normal(k1, (S,))
        q = jnp.sqrt(jnp.diag(lg.dynamics.cov))

        def step(x, e):
            x = lg.dynamics.weights @ x + q * e
            return x, x
        _, rest = jax.lax.scan(step, x1, jax.random.normal(k2, (T - 1, S)))
        x = jnp.concatenate([x1[None], rest])
        noise = jnp.sqrt(lg.emissions.cov[0, 0]) * jax.random.normal(k3, (T,))
        return x @ lg.emissions.weights[0] + u @ lg.emissions.input_weights[0] + noise

    return jax.vmap(one, out_axes=1)(jax.random.split(key, D), params)
