"""The strongest anchor of ``sampler bench --only ess``: dynamax's own Gibbs step, vmapped by hand.

What a user who knows JAX would write instead of ``sampler``: dynamax's ``fit_blocked_gibbs`` step
(``lgssm_posterior_sample``, then ``niw_posterior_update`` / ``mniw_posterior_update`` draws from the
states' sufficient statistics, as that method does) as a pure function, ``lax.scan`` over sweeps and
``vmap`` over datasets x chains, one compiled program per block of sweeps.  No latent-coordinate moves,
no missing data, no frozen leaves; the same datasets, chains, burn-in, blocks and ESS check as the
engine's row, and the clock likewise starts before compilation.
"""
from __future__ import annotations

import time
from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from dynamax.linear_gaussian_ssm import ParamsLGSSM, lgssm_posterior_sample
from dynamax.linear_gaussian_ssm.models import (ParamsLGSSMDynamics, ParamsLGSSMEmissions,
                                                ParamsLGSSMInitial)
from dynamax.utils.distributions import mniw_posterior_update, niw_posterior_update

from sampler.bench.measure import min_bulk_ess
from sampler.bench.problems import seed_emissions, seed_params


def dynamax_gibbs_step(model, params: ParamsLGSSM, key, emissions) -> ParamsLGSSM:
    """One sweep of dynamax's blocked Gibbs for one sequence (T, D), no inputs, with biases: the body
    of ``LinearGaussianConjugateSSM.fit_blocked_gibbs``'s ``one_sample``."""
    T, S = emissions.shape[0], model.state_dim
    k_x, k_init, k_dyn, k_em = jr.split(key, 4)
    x = lgssm_posterior_sample(k_x, params, emissions)
    ones = jnp.ones((T, 1), emissions.dtype)
    zp, xn = jnp.concatenate([x[:-1], ones[1:]], axis=1), x[1:]
    z = jnp.concatenate([x, ones], axis=1)
    cov0, mean0 = niw_posterior_update(model.initial_prior, (x[0], jnp.outer(x[0], x[0]), 1)).sample(seed=k_init)
    Q, Fb = mniw_posterior_update(model.dynamics_prior, (zp.T @ zp, zp.T @ xn, xn.T @ xn, T - 1)).sample(seed=k_dyn)
    R, Hd = mniw_posterior_update(model.emission_prior, (z.T @ z, z.T @ emissions, emissions.T @ emissions, T)
                                  ).sample(seed=k_em)
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=mean0, cov=cov0),
        dynamics=ParamsLGSSMDynamics(weights=Fb[:, :S], bias=Fb[:, -1], input_weights=jnp.zeros((S, 0)), cov=Q),
        emissions=ParamsLGSSMEmissions(weights=Hd[:, :S], bias=Hd[:, -1],
                                       input_weights=jnp.zeros((emissions.shape[1], 0)), cov=R))


def _sweeps(model, num_sweeps: int, params, keys, emissions, start):
    """``num_sweeps`` sweeps of every chain; returns (params, diag(R) per sweep (B, num_sweeps, D))."""
    def chain(p, key, y):
        def one(p, i):
            p = dynamax_gibbs_step(model, p, jr.fold_in(key, start + i), y)
            return p, jnp.diag(p.emissions.cov)
        return jax.lax.scan(one, p, jnp.arange(num_sweeps))
    return jax.vmap(chain)(params, keys, emissions)


def vmapped_dynamax_gibbs_time_to_ess(num_datasets: int, *, num_chains: int = 4, burn_in: int = 500,
                                      block: int = 250, max_draws: int = 8000, target: float = 400.0,
                                      dtype: str = "float64") -> dict:
    """Wall time (compilation included) until every dataset's minimum bulk-ESS over diag(R) reaches
    ``target``, checking after each block; the row's fields are those of ``ess._row``'s callers."""
    model, _ = seed_params()
    t0 = time.perf_counter()
    y = jnp.asarray(seed_emissions(num_datasets), dtype).repeat(num_chains, axis=0)   # dataset-major
    keys = jr.split(jr.PRNGKey(0), y.shape[0])
    params = jax.vmap(lambda k: model.initialize(k)[0])(keys)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    warm = jax.jit(partial(_sweeps, model, burn_in))
    params, _ = warm(params, keys, y, 0)
    program = jax.jit(partial(_sweeps, model, block))
    blocks, paused, done = [], 0.0, 0
    while done < max_draws:
        params, r = program(params, keys, y, burn_in + done)
        r = np.asarray(r)
        done += block
        t_check = time.perf_counter()
        blocks.append(r.reshape(num_datasets, num_chains, block, -1).transpose(1, 2, 0, 3))   # (C, K, N, D)
        ess = min_bulk_ess(np.concatenate(blocks, axis=1))
        paused += time.perf_counter() - t_check
        if np.all(ess >= target):
            break
    wall = time.perf_counter() - t0 - paused
    return {"procedure": "dynamax Gibbs step, vmapped by hand", "datasets": num_datasets, "chains": num_chains,
            "draws": done, "wall_s": wall, "ess": ess, "chain_sweeps_per_s": y.shape[0] * (burn_in + done) / wall}
