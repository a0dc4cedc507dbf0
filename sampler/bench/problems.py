"""What the benchmark samples: the seed notebook's model and data, and the files of a bench run.

The seed problem is the notebook this project replaces: a ``LinearGaussianConjugateSSM`` with
S = 2 latent states, D = 10 emissions and T = 100 steps, its true parameters, its one dataset and
its own ``fit_hmc`` procedure.  ``write_data`` and ``bench_config`` turn many datasets of that model
into what ``sampler run`` reads.
"""
from __future__ import annotations

from pathlib import Path

import blackjax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM
from dynamax.parameters import from_unconstrained, log_det_jac_constrain, to_unconstrained
from dynamax.utils.utils import random_rotation

from sampler.storage import config
from sampler.storage.config import Config

SEED_T, SEED_D, SEED_S = 100, 10, 2


def seed_params(state_dim: int = SEED_S, emission_dim: int = SEED_D):
    """The seed notebook's true parameters (F = 0.99 rotation(pi/10), Q = 0.01 I) and its model."""
    k1 = jr.split(jr.PRNGKey(0), 3)[0]
    model = LinearGaussianConjugateSSM(state_dim, emission_dim)
    params, _ = model.initialize(key=k1, dynamics_weights=0.99 * random_rotation(seed=k1, n=state_dim,
                                                                                   theta=jnp.pi / 10),
                                 dynamics_covariance=0.01 * jnp.eye(state_dim))
    return model, params


def seed_emissions(num_datasets: int, num_timesteps: int = SEED_T, seed: int = 1) -> np.ndarray:
    """(num_datasets, T, D) emissions from the seed's true model, one key per dataset."""
    model, params = seed_params()
    keys = jr.split(jr.PRNGKey(seed), num_datasets)
    return np.asarray(jax.jit(jax.vmap(lambda k: model.sample(params, k, num_timesteps)[1]))(keys))


def seed_dataset():
    """The seed notebook's one dataset: (T, D) emissions sampled with key k3."""
    model, true_params = seed_params()
    return model.sample(true_params, jr.split(jr.PRNGKey(0), 3)[2], SEED_T)[1]


def seed_hmc_chain():
    """The seed notebook's ``fit_hmc`` up to its sampling loop, on its one dataset: dynamax's
    ``marginal_log_prob``, window adaptation with 10 steps, HMC with 5 integration steps.

    Returns (step, state, key): ``step(state, key) -> (state, diag(R) of the state it left)`` jitted,
    to be called in a Python loop with ``key`` split once per draw, as the seed does.
    """
    emissions = seed_dataset()
    model, _ = seed_params()
    init_key, key = jr.split(jr.PRNGKey(42))
    params, props = model.initialize(init_key)

    def logprob(unc):
        p = from_unconstrained(unc, props)
        return model.log_prior(p) + model.marginal_log_prob(p, emissions) + log_det_jac_constrain(p, props)

    warmup = blackjax.window_adaptation(blackjax.hmc, logprob, num_integration_steps=5)
    init_key, key = jr.split(key)
    (state, hmc_params), _ = warmup.run(init_key, to_unconstrained(params, props), num_steps=10)
    kernel = blackjax.hmc(logprob, **hmc_params).step

    @jax.jit
    def step(state, step_key):
        new_state, _ = kernel(step_key, state)
        return new_state, jnp.diag(from_unconstrained(state.position, props).emissions.cov)
    return step, state, key


# --- files of a bench run ----------------------------------------------------------------------------
def write_data(root: Path, num_datasets: int) -> Path:
    """``root/data.npz`` with ``num_datasets`` seed-model datasets (kept when it already exists)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "data.npz"
    if not path.exists():
        np.savez(path, emissions=seed_emissions(num_datasets))
    return path


def bench_config(root: Path, data: Path, *, num_chains: int, num_warmup: int, num_draws: int,
                 shard_size: int, checkpoint_every: int, algorithm: str, dtype: str) -> Config:
    """The config of a seed-model run on ``data`` with its run dir at ``root/run`` (in-process)."""
    return config.from_dict({
        "model": {"state_dim": SEED_S, "emission_dim": SEED_D},
        "data": {"path": str(data)},
        "sampler": {"algorithm": algorithm, "num_chains": num_chains, "num_warmup": num_warmup,
                    "num_draws": num_draws, "seed": 0, "dtype": dtype},
        "run": {"dir": str(root / "run"), "checkpoint_every": checkpoint_every, "workers": 0,
                "shard_size": shard_size},
    })
