"""MCMC kernels for one chain, blackjax underneath: warmup (adaptation) and one transition.

Every kernel exposes the same two pure functions so the engine can vmap them over
datasets x chains without knowing which algorithm runs:

* ``warmup(key, position, target, num_steps) -> (ChainState, Tuning)``; for a cross-chain kernel
  (``Kernel.cross_chain``) ``position`` holds all C chains of one dataset, (C, dim), and the
  states come back batched (C, ...) with one Tuning shared by the dataset's chains.
* ``step(key, state, target, tuning, draw) -> (ChainState, StepStats)``, ``draw`` the global
  post-warmup draw index.

``target`` is one dataset's posterior (``Target``).  The chain state is blackjax's ``HMCState``
(position, logdensity, logdensity_grad) for every kernel, so checkpoints have one layout.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple, Optional

import blackjax
import jax
import jax.numpy as jnp
import optax
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.mcmc.hmc import HMCState as ChainState
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.model import Model

ALGORITHMS = ("nuts", "hmc", "chees", "gibbs")


class Target(NamedTuple):
    """One dataset's posterior: the model, the chain's anchor (frozen values) and the data."""
    model: Model
    anchor: ParamsLGSSM
    emissions: jax.Array             # (M, T, D)
    inputs: Optional[jax.Array]      # (M, T, U) or None

    def logdensity_fn(self):
        return self.model.logdensity_fn(self.anchor, self.emissions, self.inputs)


class Tuning(NamedTuple):
    """Adapted kernel parameters of one chain."""
    step_size: jax.Array            # ()
    inverse_mass_matrix: jax.Array  # (dim,) diagonal
    trajectory_length: jax.Array    # () mean leapfrog path length (ChEES); NaN for the others


class StepStats(NamedTuple):
    """Per-draw statistics, stored in the ``sample_stats`` group."""
    acceptance_rate: jax.Array
    diverging: jax.Array
    n_steps: jax.Array
    energy: jax.Array


class Kernel(NamedTuple):
    name: str
    warmup: Callable
    step: Callable
    #: the warmup adapts all chains of a dataset together (positions (C, dim) in, shared Tuning out)
    cross_chain: bool = False


def _sampling_algorithm(name: str, num_integration_steps: int, max_num_doublings: int):
    if name == "nuts":
        return blackjax.nuts, {"max_num_doublings": max_num_doublings}
    if name == "hmc":
        return blackjax.hmc, {"num_integration_steps": num_integration_steps}
    raise ValueError(f"unknown algorithm {name!r}; expected one of {ALGORITHMS}")


@lru_cache(maxsize=None)
def build(name: str, *, num_integration_steps: int = 5, max_num_doublings: int = 10,
          target_acceptance_rate: float = 0.8) -> Kernel:
    """The kernel for ``name`` ("nuts", "hmc", "chees" or "gibbs")."""
    if name == "gibbs":
        return _gibbs_kernel()
    if name == "chees":
        return _chees_kernel()
    algorithm, extra = _sampling_algorithm(name, num_integration_steps, max_num_doublings)

    def warmup(key, position, target: Target, num_steps: int):
        adaptation = blackjax.window_adaptation(
            algorithm, target.logdensity_fn(), target_acceptance_rate=target_acceptance_rate,
            adaptation_info_fn=get_filter_adapt_info_fn(), **extra)
        (state, parameters), _ = adaptation.run(key, position, num_steps=num_steps)
        return state, Tuning(jnp.asarray(parameters["step_size"], position.dtype),
                             parameters["inverse_mass_matrix"], jnp.full((), jnp.nan, position.dtype))

    def step(key, state, target: Target, tuning: Tuning, draw):
        kernel = algorithm(target.logdensity_fn(), tuning.step_size, tuning.inverse_mass_matrix, **extra)
        new_state, info = kernel.step(key, state)
        n_steps = getattr(info, "num_integration_steps", num_integration_steps)
        return new_state, StepStats(info.acceptance_rate, info.is_divergent,
                                    jnp.asarray(n_steps, jnp.int32), info.energy)

    return Kernel(name, warmup, step)


def init_state(position, target: Target) -> ChainState:
    """Chain state at ``position`` without adaptation (used when num_warmup = 0)."""
    return blackjax.hmc.init(position, target.logdensity_fn())


def untuned(position, initial_step_size: float) -> Tuning:
    """Tuning of a chain that had no warmup: the given step size, unit mass, no trajectory length."""
    return Tuning(jnp.asarray(initial_step_size, position.dtype), jnp.ones(position.shape[-1:], position.dtype),
                  jnp.full((), jnp.nan, position.dtype))


#: ChEES: leapfrog steps per transition are capped here (blackjax's default budget).
CHEES_MAX_LEAPFROG_STEPS = 1000
#: Adam learning rate of the trajectory-length optimiser (the value of blackjax's ChEES example).
CHEES_LEARNING_RATE = 0.025


def chees_num_steps(draw, tuning: Tuning):
    """Leapfrog steps of draw ``draw``: ``ceil(u * trajectory_length / step_size)`` with ``u`` the
    base-2 Halton (van der Corput) point number ``draw + 1`` (0.5, 0.25, 0.75, ...), the same for
    every chain and dataset (so vmapped chains wait only for datasets with longer trajectories, never
    for a chain's bad luck),
    clipped to [1, CHEES_MAX_LEAPFROG_STEPS] (an untuned chain, num_warmup = 0, takes one step).
    Deterministic in the draw index, so resume is exact."""
    u = blackjax.mcmc.dynamic_hmc.halton_sequence(jnp.asarray(draw, jnp.int32), 30)
    n = jnp.ceil(u * tuning.trajectory_length / tuning.step_size)
    return jnp.clip(jnp.nan_to_num(n, nan=1.0), 1, CHEES_MAX_LEAPFROG_STEPS).astype(jnp.int32)


def _chees_kernel() -> Kernel:
    """Jittered HMC whose step size, diagonal mass matrix and trajectory length are adapted across
    the chains of a dataset by blackjax's ChEES (Hoffman, Radul & Sountsov 2021).

    Sampling uses the same jittered trajectory lengths as blackjax's ``dynamic_hmc`` but takes the
    jitter from the global draw index (``chees_num_steps``) instead of a per-chain counter, so the
    chain state stays blackjax's ``HMCState``.
    """
    def warmup(key, positions, target: Target, num_steps: int):
        num_chains = positions.shape[0]
        adaptation = blackjax.chees_adaptation(
            target.logdensity_fn(), num_chains, mass_matrix_estimation="diagonal",
            max_leapfrog_steps=CHEES_MAX_LEAPFROG_STEPS, adaptation_info_fn=get_filter_adapt_info_fn())
        (states, parameters), _ = adaptation.run(
            key, positions, jnp.asarray(0.1, positions.dtype), optax.adam(CHEES_LEARNING_RATE), num_steps)
        step_size = jnp.asarray(parameters["step_size"], positions.dtype)
        num_leapfrog = parameters["integration_steps_params"][0]
        tuning = Tuning(step_size, parameters["inverse_mass_matrix"].astype(positions.dtype),
                        jnp.asarray(num_leapfrog * step_size, positions.dtype))
        return ChainState(states.position, states.logdensity, states.logdensity_grad), tuning

    hmc_kernel = blackjax.mcmc.hmc.build_kernel()

    def step(key, state, target: Target, tuning: Tuning, draw):
        n_steps = chees_num_steps(draw, tuning)
        new_state, info = hmc_kernel(key, state, target.logdensity_fn(), tuning.step_size,
                                     tuning.inverse_mass_matrix, n_steps)
        return new_state, StepStats(info.acceptance_rate, info.is_divergent, n_steps, info.energy)

    return Kernel("chees", warmup, step, cross_chain=True)


def _gibbs_kernel() -> Kernel:
    """Blocked Gibbs (``sampler.gibbs``): no tuning; warmup is plain burn-in.

    Its stats: acceptance_rate 1, never diverging, n_steps 1 (one sweep), energy and step_size NaN.
    """
    from sampler import gibbs

    def sweep(key, position, target: Target):
        model = target.model
        params = gibbs.gibbs_sweep(key, model, model.to_params(position, target.anchor),
                                   target.emissions, target.inputs)
        return model.to_position(params)

    def chain_state(position, target: Target) -> ChainState:
        # the log density is only needed for recorded draws (lp), not for the sweep itself
        return ChainState(position, target.logdensity_fn()(position), jnp.zeros_like(position))

    def step(key, state, target: Target, tuning: Tuning, draw):
        position = sweep(key, state.position, target)
        nan = jnp.full((), jnp.nan, position.dtype)
        stats = StepStats(jnp.ones((), position.dtype), jnp.zeros((), bool), jnp.ones((), jnp.int32), nan)
        return chain_state(position, target), stats

    def warmup(key, position, target: Target, num_steps: int):
        position, _ = jax.lax.scan(lambda x, k: (sweep(k, x, target), None), position,
                                   jax.random.split(key, num_steps))
        nan = jnp.full((), jnp.nan, position.dtype)
        return chain_state(position, target), Tuning(nan, jnp.ones_like(position), nan)

    return Kernel("gibbs", warmup, step)
