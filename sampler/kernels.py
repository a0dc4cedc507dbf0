"""MCMC kernels for one chain, blackjax underneath: warmup (adaptation) and one transition.

Every kernel exposes the same two pure functions so the engine can vmap them over
datasets x chains without knowing which algorithm runs:

* ``warmup(key, position, target, num_steps) -> (ChainState, Tuning)``
* ``step(key, state, target, tuning) -> (ChainState, StepStats)``

``target`` is one dataset's posterior (``Target``).  The chain state is blackjax's ``HMCState``
(position, logdensity, logdensity_grad) for every kernel, so checkpoints have one layout.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple, Optional

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.mcmc.hmc import HMCState as ChainState
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.model import Model

ALGORITHMS = ("nuts", "hmc", "gibbs")


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


def _sampling_algorithm(name: str, num_integration_steps: int, max_num_doublings: int):
    if name == "nuts":
        return blackjax.nuts, {"max_num_doublings": max_num_doublings}
    if name == "hmc":
        return blackjax.hmc, {"num_integration_steps": num_integration_steps}
    raise ValueError(f"unknown algorithm {name!r}; expected one of {ALGORITHMS}")


@lru_cache(maxsize=None)
def build(name: str, *, num_integration_steps: int = 5, max_num_doublings: int = 10,
          target_acceptance_rate: float = 0.8) -> Kernel:
    """The kernel for ``name`` ("nuts", "hmc" or "gibbs")."""
    if name == "gibbs":
        return _gibbs_kernel()
    algorithm, extra = _sampling_algorithm(name, num_integration_steps, max_num_doublings)

    def warmup(key, position, target: Target, num_steps: int):
        adaptation = blackjax.window_adaptation(
            algorithm, target.logdensity_fn(), target_acceptance_rate=target_acceptance_rate,
            adaptation_info_fn=get_filter_adapt_info_fn(), **extra)
        (state, parameters), _ = adaptation.run(key, position, num_steps=num_steps)
        return state, Tuning(jnp.asarray(parameters["step_size"], position.dtype),
                             parameters["inverse_mass_matrix"])

    def step(key, state, target: Target, tuning: Tuning):
        kernel = algorithm(target.logdensity_fn(), tuning.step_size, tuning.inverse_mass_matrix, **extra)
        new_state, info = kernel.step(key, state)
        n_steps = getattr(info, "num_integration_steps", num_integration_steps)
        return new_state, StepStats(info.acceptance_rate, info.is_divergent,
                                    jnp.asarray(n_steps, jnp.int32), info.energy)

    return Kernel(name, warmup, step)


def init_state(position, target: Target) -> ChainState:
    """Chain state at ``position`` without adaptation (used when num_warmup = 0)."""
    return blackjax.hmc.init(position, target.logdensity_fn())


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

    def step(key, state, target: Target, tuning: Tuning):
        position = sweep(key, state.position, target)
        nan = jnp.full((), jnp.nan, position.dtype)
        stats = StepStats(jnp.ones((), position.dtype), jnp.zeros((), bool), jnp.ones((), jnp.int32), nan)
        return chain_state(position, target), stats

    def warmup(key, position, target: Target, num_steps: int):
        position, _ = jax.lax.scan(lambda x, k: (sweep(k, x, target), None), position,
                                   jax.random.split(key, num_steps))
        tuning = Tuning(jnp.full((), jnp.nan, position.dtype), jnp.ones_like(position))
        return chain_state(position, target), tuning

    return Kernel("gibbs", warmup, step)
