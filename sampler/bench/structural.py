"""Structural models' Gibbs sampler (parts ``sts`` and ``sts-panel``).

* ``sts``       -- chain-sweeps/s of the structural Gibbs sweep against the state size S of one
  emission: local linear trend (S = 2), + a period-3 dummy seasonal (S = 4), + a period-12 one
  (S = 13, monthly data); T = 96, warm programs (compilation reported apart).
* ``sts-panel`` -- the issue's aim: the posterior of N monthly series (default 1,000; local linear
  trend + seasonal 12, T = 96, 4 chains, 500 burn-in + 1,000 sweeps), wall time including
  compilation, draws discarded (the engine's programs; the store's cost is part ``io``).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from sampler.core import engine, kernels
from sampler.core.structural.components import Component
from sampler.core.structural.model import StructuralModel
from sampler.core.structural.simulation import prior_draw, sample_emissions

COLUMNS = ("model", "state_dim", "series", "chains", "sweeps", "compile_s", "chain_sweeps_per_s")
PANEL_COLUMNS = ("series", "chains", "burn_in", "sweeps", "wall_s", "chain_sweeps_per_s")
MODELS = {
    "local_linear_trend": (Component.create("local_linear_trend"),),
    "trend + seasonal(3)": (Component.create("local_linear_trend"), Component.create("seasonal", period=3)),
    "trend + seasonal(12)": (Component.create("local_linear_trend"), Component.create("seasonal", period=12)),
}


def _problem(components, num_series: int, T: int, num_chains: int, seed: int = 0):
    """The model, (B, 1, T, 1) emissions from its prior (standardised per series), chain keys and the
    devices a run would split them over (``engine.device_count``; B padded for them)."""
    model = StructuralModel(components, 1)
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * num_series)
    y = np.stack([np.asarray(sample_emissions(k2, model, prior_draw(k1, model), T))[:, 0]
                  for k1, k2 in zip(keys[:num_series], keys[num_series:])])
    y = (y - y.mean(1, keepdims=True)) / y.std(1, keepdims=True)
    em = jnp.asarray(np.repeat(y, num_chains, 0)[:, None, :, None])
    chain_keys = engine.chain_keys(0, jnp.repeat(jnp.arange(num_series), num_chains),
                                   jnp.tile(jnp.arange(num_chains), num_series))
    devices = engine.device_count(num_series)
    em, chain_keys = engine.pad_to_devices((em, chain_keys), num_series * num_chains, num_chains, devices)
    return model, em, chain_keys, devices


def sweep_throughput(num_series: int = 64, T: int = 96, num_chains: int = 4, sweeps: int = 100) -> list[dict]:
    """Warm chain-sweeps/s of each of ``MODELS``."""
    kernel = kernels.build("gibbs")
    rows = []
    for name, components in MODELS.items():
        model, em, keys, devices = _problem(components, num_series, T, num_chains)
        t0 = time.perf_counter()
        chains = jax.block_until_ready(engine.init_program(model, kernel, 20, num_chains, devices)(keys, em, None, {}))
        program = engine.sample_program(model, kernel, sweeps, devices)
        jax.block_until_ready(program(keys, chains, em, None, np.int32(0), np.int32(sweeps)))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(program(keys, chains, em, None, np.int32(sweeps), np.int32(sweeps)))
        wall = time.perf_counter() - t0
        rows.append({"model": name, "state_dim": model.component_state_dim, "series": num_series,
                     "chains": num_chains, "sweeps": sweeps, "compile_s": compile_s,
                     "chain_sweeps_per_s": num_series * num_chains * sweeps / wall})
    return rows


def monthly_panel(num_series: int = 1000, T: int = 96, num_chains: int = 4, burn_in: int = 500,
                  sweeps: int = 1000, block: int = 250) -> dict:
    """Wall time (incl. compilation) of burn-in + ``sweeps`` for ``num_series`` monthly series."""
    model, em, keys, devices = _problem(MODELS["trend + seasonal(12)"], num_series, T, num_chains)
    kernel = kernels.build("gibbs")
    t0 = time.perf_counter()
    chains = engine.init_program(model, kernel, burn_in, num_chains, devices)(keys, em, None, {})
    program = engine.sample_program(model, kernel, block, devices)
    for start in range(0, sweeps, block):
        chains, draws = program(keys, chains, em, None, np.int32(start), np.int32(min(block, sweeps - start)))
        np.asarray(draws.lp)  # to the host, as a run would
    wall = time.perf_counter() - t0
    return {"series": num_series, "chains": num_chains, "burn_in": burn_in, "sweeps": sweeps, "wall_s": wall,
            "chain_sweeps_per_s": num_series * num_chains * (burn_in + sweeps) / wall}
