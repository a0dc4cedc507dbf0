"""Warmup schemes for many chains (part ``warmup``).

* ``warmup`` -- on the seed dataset with several chains: NUTS with per-chain window adaptation
  (``algorithm = "nuts"``) against the cross-chain schemes, ChEES (``algorithm = "chees"``, blackjax's
  ``chees_adaptation``) and MEADS (``meads_adaptation`` + ``ghmc``), and the blocked Gibbs kernel:
  ESS of diag(R) per 1,000 gradient evaluations (counting what a vmapped run pays: per draw, the
  longest trajectory among the chains) and per second, beside R-hat and the fraction of draws
  that moved (an ESS from chains that never move is meaningless).

Every scheme returns (positions (chains, draws, dim), leapfrog steps per draw (chains, draws)).
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

from sampler.bench.measure import max_rhat, min_bulk_ess
from sampler.bench.problems import SEED_D, SEED_S, seed_dataset
from sampler.core import kernels
from sampler.core.model import Model

COLUMNS = ("scheme", "draws", "wall_s", "grads_per_draw", "lockstep_grads_per_draw", "moved", "max_rhat",
           "min_ess", "ess_per_1k_grads", "ess_per_s")


class SeedTarget(NamedTuple):
    """The seed dataset's posterior with ``num_chains`` initial positions."""
    target: kernels.Target
    positions: jax.Array       # (chains, dim)
    r_diag: Callable           # jitted: positions (chains, draws, dim) -> diag(R) (chains, draws, D)

    @property
    def num_chains(self) -> int:
        return self.positions.shape[0]


def seed_target(num_chains: int) -> SeedTarget:
    """The seed model (nothing frozen) on the seed dataset, each chain started where dynamax's
    ``initialize`` puts it with the chain's own key."""
    model = Model(SEED_S, SEED_D, 0, (), "auto")
    emissions = jnp.asarray(seed_dataset())[None]            # (M=1, T, D)
    keys = jax.random.split(jax.random.PRNGKey(0), num_chains)
    anchors = jax.vmap(lambda k: model.initial_params(k, {}))(keys)
    positions = jax.vmap(model.to_position)(anchors)         # (chains, dim)
    anchor = jax.tree.map(lambda x: x[0], anchors)           # nothing frozen: the anchor is unused
    r_diag = jax.jit(jax.vmap(jax.vmap(lambda q: jnp.diag(model.to_params(q, anchor).emissions.cov))))
    return SeedTarget(kernels.Target(model, anchor, emissions, None), positions, r_diag)


def per_chain(seed: SeedTarget, name: str, num_warmup: int, num_draws: int):
    """A kernel of the engine with its own warmup on every chain, chains vmapped."""
    kernel, target = kernels.build(name), seed.target

    def chain(key, position):
        kw, ks = jax.random.split(key)
        state, tuning = kernel.warmup(kw, position, target, num_warmup)

        def one(state, xs):
            k, i = xs
            state, stats = kernel.step(k, state, target, tuning, i)
            return state, (state.position, stats.n_steps)
        return jax.lax.scan(one, state, (jax.random.split(ks, num_draws), jnp.arange(num_draws)))[1]
    pos, n = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.PRNGKey(1), seed.num_chains), seed.positions)
    return pos, n                                              # (chains, draws, dim), (chains, draws)


def grouped(seed: SeedTarget, name: str, num_warmup: int, num_draws: int):
    """A cross-chain kernel of the engine: one warmup over all chains, then the chains vmapped."""
    kernel, target, num_chains = kernels.build(name), seed.target, seed.num_chains
    kw, ks = jax.random.split(jax.random.PRNGKey(1))

    def run(positions):
        states, tuning = kernel.warmup(kw, positions, target, num_warmup)

        def one(states, xs):
            k, i = xs
            states, stats = jax.vmap(lambda kk, st: kernel.step(kk, st, target, tuning, i))(
                jax.random.split(k, num_chains), states)
            return states, (states.position, stats.n_steps)
        return jax.lax.scan(one, states, (jax.random.split(ks, num_draws), jnp.arange(num_draws)))[1]
    pos, n = jax.jit(run)(seed.positions)
    return jnp.swapaxes(pos, 0, 1), jnp.swapaxes(n, 0, 1)


def meads_ghmc(seed: SeedTarget, num_warmup: int, num_draws: int):
    """blackjax's ``meads_adaptation`` over all chains, then ``ghmc`` (not a kernel of the engine)."""
    logdensity, num_chains = seed.target.logdensity_fn(), seed.num_chains
    kw, ks = jax.random.split(jax.random.PRNGKey(1))
    (states, params), _ = blackjax.meads_adaptation(logdensity, num_chains).run(kw, seed.positions, num_warmup)
    step = blackjax.ghmc(logdensity, **params).step

    def one(states, k):
        states, info = jax.vmap(step)(jax.random.split(k, num_chains), states)
        return states, (states.position, getattr(info, "num_integration_steps", jnp.ones(num_chains, jnp.int32)))
    pos, n = jax.jit(lambda s: jax.lax.scan(one, s, jax.random.split(ks, num_draws))[1])(states)
    return jnp.swapaxes(pos, 0, 1), jnp.swapaxes(n, 0, 1)


def scheme_row(seed: SeedTarget, name: str, pos, n, wall: float) -> dict:
    """One scheme's row from its positions (chains, draws, dim) and steps per draw (chains, draws)."""
    num_chains = seed.num_chains
    r = np.asarray(seed.r_diag(pos))                           # (chains, draws, D)
    ess = float(min_bulk_ess(r[:, :, None, :])[0])
    moved = float(np.mean(np.any(np.diff(np.asarray(pos), axis=1) != 0, axis=-1)))
    n = np.asarray(n)
    gibbs = name.startswith("gibbs")
    lockstep = float(n.max(axis=0).sum()) * num_chains         # what a vmapped batch pays
    return {"scheme": name, "draws": int(n.shape[1]), "chains": num_chains, "wall_s": wall,
            "grads_per_draw": float("nan") if gibbs else float(n.mean()),
            "lockstep_grads_per_draw": float("nan") if gibbs else lockstep / n.size,
            "moved": moved, "max_rhat": max_rhat(r), "min_ess": ess,
            "ess_per_1k_grads": float("nan") if gibbs else 1000 * ess / lockstep,
            "ess_per_s": ess / wall}


def warmup_comparison(num_chains: int = 8, num_warmup: int = 200, num_draws: int = 200,
                      ghmc_factor: int = 10) -> list[dict]:
    """ESS of diag(R) per gradient evaluation and per second for each warmup/kernel scheme on the
    seed dataset.  MEADS's generalized HMC takes one leapfrog step per draw, so it runs
    ``ghmc_factor`` times as many warmup steps and draws.  Wall times include compilation."""
    seed = seed_target(num_chains)
    schemes = {
        "nuts + per-chain window adaptation": lambda: per_chain(seed, "nuts", num_warmup, num_draws),
        "chees (algorithm = chees, cross-chain)": lambda: grouped(seed, "chees", num_warmup, num_draws),
        "meads + ghmc (cross-chain)": lambda: meads_ghmc(seed, num_warmup * ghmc_factor, num_draws * ghmc_factor),
        "gibbs (no gradients)": lambda: per_chain(seed, "gibbs", num_warmup, num_draws),
    }
    rows = []
    for name, fn in schemes.items():
        t0 = time.perf_counter()
        pos, n = jax.block_until_ready(fn())
        rows.append(scheme_row(seed, name, pos, n, time.perf_counter() - t0))
    return rows
