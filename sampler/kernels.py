"""MCMC kernels for one chain, blackjax underneath: warmup (adaptation) and one transition.

Every kernel exposes the same two pure functions so the engine can vmap them over
datasets x chains without knowing which algorithm runs:

* ``warmup(key, position, logdensity_fn, num_steps) -> (ChainState, Tuning)``
* ``step(key, state, logdensity_fn, tuning) -> (ChainState, StepStats)``
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.mcmc.hmc import HMCState as ChainState

ALGORITHMS = ("nuts", "hmc")


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


def build(name: str, *, num_integration_steps: int = 5, max_num_doublings: int = 10,
          target_acceptance_rate: float = 0.8) -> Kernel:
    """The kernel for ``name`` ("nuts" or "hmc")."""
    algorithm, extra = _sampling_algorithm(name, num_integration_steps, max_num_doublings)

    def warmup(key, position, logdensity_fn, num_steps: int):
        adaptation = blackjax.window_adaptation(
            algorithm, logdensity_fn, target_acceptance_rate=target_acceptance_rate,
            adaptation_info_fn=get_filter_adapt_info_fn(), **extra)
        (state, parameters), _ = adaptation.run(key, position, num_steps=num_steps)
        return state, Tuning(jnp.asarray(parameters["step_size"], position.dtype),
                             parameters["inverse_mass_matrix"])

    def step(key, state, logdensity_fn, tuning: Tuning):
        kernel = algorithm(logdensity_fn, tuning.step_size, tuning.inverse_mass_matrix, **extra)
        new_state, info = kernel.step(key, state)
        n_steps = getattr(info, "num_integration_steps", num_integration_steps)
        return new_state, StepStats(info.acceptance_rate, info.is_divergent,
                                    jnp.asarray(n_steps, jnp.int32), info.energy)

    return Kernel(name, warmup, step)


def init_state(position, logdensity_fn) -> ChainState:
    """Chain state at ``position`` without adaptation (used when num_warmup = 0)."""
    return blackjax.hmc.init(position, logdensity_fn)
