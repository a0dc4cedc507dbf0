"""``sampler bench --only ess``: wall time until every dataset reaches a bulk-ESS target on diag(R).

The headline comparison of sampling efficiency.  For each procedure the clock runs from a cold
compilation cache through warmup and sampling until every dataset's minimum bulk-ESS over the
diagonal of R (the emission covariance, identified; F and H are not) reaches ``target`` (400), checking
after every block of draws; the time spent computing the ESS itself is not counted.  Reported per
procedure: the wall time, the time scaled to 256 datasets, and dataset-ESS per second (the sum over
datasets of that minimum ESS, divided by the wall time).

* ``sampler`` kernels (``gibbs``, ``chees``, ``nuts``): the engine (the compiled programs of
  ``sampler run``, draws fetched to the host, no store) on N datasets x 4 chains with the default
  warmup (500).  On a CPU the gradient-based kernels run on fewer datasets and are scaled linearly.
* the seed notebook's ``fit_hmc`` (10 warmup steps, HMC with 5 leapfrog steps, a Python loop over a
  jitted step) on the seed's dataset, one chain, blocks of 1,000 draws;
* dynamax's ``fit_blocked_gibbs`` on the seed's dataset, one chain, the first 500 draws discarded:
  it returns only after all its draws (and compiles on every call), so it is called with 1,500
  draws, then twice as many, until one call reaches the target; that call's wall time counts.

* the strongest anchor (``sampler.bench.anchor``): dynamax's Gibbs step vmapped by hand over the same
  N datasets x 4 chains as the engine's Gibbs row, with the same burn-in, blocks and check.

The seed's and dynamax's looped procedures are per dataset, so their 256-dataset figure is 256 x their
time.
"""
from __future__ import annotations

import os
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import NamedTuple, Optional, TextIO

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from sampler.bench.anchor import vmapped_dynamax_gibbs_time_to_ess
from sampler.bench.measure import min_bulk_ess
from sampler.bench.problems import bench_config, seed_dataset, seed_hmc_chain, seed_params, write_data
from sampler.core import engine
from sampler.execution import runner

TARGET_ESS = 400.0
BURN_IN = 500


def _row(procedure: str, datasets: int, chains: int, draws: int, wall: float, ess: np.ndarray,
         target: float, scale_to: int, **extra) -> dict:
    return {"procedure": procedure, "datasets": datasets, "chains": chains, "draws": draws,
            "wall_s": wall, "reached": bool(np.all(ess >= target)),
            "datasets_at_target": int(np.sum(ess >= target)), "min_ess": float(np.min(ess)),
            "dataset_ess": float(np.sum(ess)), "dataset_ess_per_s": float(np.sum(ess)) / wall,
            f"wall_s_for_{scale_to}": wall * scale_to / datasets, **extra}


def engine_time_to_ess(root: Path, algorithm: str, num_datasets: int, *, num_chains: int = 4,
                       num_warmup: int = BURN_IN, block: int = 250, max_draws: int = 8000,
                       target: float = TARGET_ESS, dtype: str = "float64", scale_to: int = 256,
                       shard_size: Optional[int] = None, progress: Optional[TextIO] = None) -> dict:
    """``sampler``'s engine on ``num_datasets`` seed-model datasets until all reach ``target``: in
    shards of ``shard_size`` datasets (default: one shard), one after another, as ``sampler run``
    runs them on one host, each until all of its own datasets reach it.  ``draws`` is the most any
    shard needed.  ``progress``: a line per shard as it ends (a run cut short still says how far it got)."""
    data = write_data(root / f"data-{num_datasets}", num_datasets)
    cfg = bench_config(root / algorithm, data, num_chains=num_chains, num_warmup=num_warmup,
                       num_draws=max_draws, shard_size=shard_size or num_datasets, checkpoint_every=block,
                       algorithm=algorithm, dtype=dtype)
    ctx = runner.RunContext(cfg, root / algorithm / "null")
    t0 = time.perf_counter()
    shards = []
    for shard in ctx.shards:
        shards.append(_shard_to_target(ctx, shard, target))
        if progress is not None:
            done = shards[-1]
            print(f"shard {len(shards)}/{len(ctx.shards)}: {done.datasets} datasets, {done.draws} draws, min ESS "
                  f"{done.ess.min():.0f}, {time.perf_counter() - t0 - sum(s.paused for s in shards):.1f} s so far",
                  file=progress, flush=True)
    wall = time.perf_counter() - t0 - sum(s.paused for s in shards)
    compile_s = _compile_seconds(ctx, runner.shard_inputs(ctx, ctx.shards[0]), block)
    ess = np.concatenate([s.ess for s in shards])
    steps = np.concatenate([s.steps.ravel() for s in shards])
    lockstep = np.concatenate([s.steps.max(axis=1) for s in shards])   # a shard's slowest chain, per draw
    gradient_based = algorithm != "gibbs"
    chain_sweeps = num_chains * sum(s.datasets * (num_warmup + s.draws) for s in shards)
    return _row(f"sampler {algorithm}", num_datasets, num_chains, max(s.draws for s in shards), wall, ess,
                target, scale_to, chain_sweeps_per_s=chain_sweeps / wall, shards=len(shards), **compile_s,
                grads_per_draw=float(steps.mean()) if gradient_based else float("nan"),
                lockstep_grads_per_draw=float(lockstep.mean()) if gradient_based else float("nan"))


class _ShardResult(NamedTuple):
    datasets: int
    draws: int
    ess: np.ndarray       # (datasets,) minimum bulk ESS over diag(R)
    steps: np.ndarray     # (draws, chains) gradient evaluations per draw
    paused: float         # seconds spent checking the ESS, off the clock


def _shard_to_target(ctx, shard, target: float) -> _ShardResult:
    """One shard's chains: initial values, warmup, then blocks of draws until every one of its
    datasets reaches ``target``, checked after each block (the check off the clock)."""
    n, C = shard.stop - shard.start, ctx.cfg.sampler.num_chains
    inputs = runner.shard_inputs(ctx, shard)
    chains = runner.init_chains(ctx, inputs)
    blocks, steps, paused, done = [], [], 0.0, 0
    # without overlap: a block that reaches the target is not followed by one more, dispatched unused
    for b in runner.iter_blocks(ctx, inputs, chains, overlap=False):
        draws = b.host_draws()
        R = draws.params.emissions.cov                                    # (block, B, D, D)
        steps.append(draws.stats.n_steps[:, :n * C])
        done = b.start + R.shape[0]
        t_check = time.perf_counter()
        blocks.append(runner.to_store_layout(np.diagonal(R, axis1=-2, axis2=-1), n, C))
        ess = min_bulk_ess(np.concatenate(blocks, axis=1))
        paused += time.perf_counter() - t_check
        if np.all(ess >= target):
            break
    return _ShardResult(n, done, ess, np.concatenate(steps, axis=0), paused)


def _compile_seconds(ctx, inputs, block: int) -> dict:
    """Compile seconds of the run's two programs (warmup; a block of draws), each compiled alone with
    every cache off, after the timed run (whose wall time includes them, the block program's
    compiled beside the warmup: ``runner.init_chains``)."""
    s, b = ctx.cfg.sampler, inputs.batch
    jax.clear_caches()
    cache_was = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        t = time.perf_counter()
        runner.init_program(ctx).lower(inputs.keys, b.emissions, b.inputs, b.init_values).compile()
        t_init = time.perf_counter()
        engine.sample_program(ctx.model, ctx.kernel, min(block, s.num_draws), ctx.num_devices).lower(
            inputs.keys, runner.chains_template(ctx, inputs), b.emissions, b.inputs, np.int32(0),
            np.int32(block)).compile()
        return {"compile_warmup_s": t_init - t, "compile_block_s": time.perf_counter() - t_init}
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_was)


def seed_time_to_ess(*, block: int = 1000, max_draws: int = 20000, target: float = TARGET_ESS,
                     scale_to: int = 256) -> dict:
    """The seed's ``fit_hmc`` procedure, continued in blocks of draws until ``target``."""
    t0 = time.perf_counter()
    step, state, key = seed_hmc_chain()
    r, paused = [], 0.0
    while len(r) < max_draws:
        for _ in range(block):
            step_key, key = jax.random.split(key)
            state, r_t = step(state, step_key)
            r.append(r_t)
        t_check = time.perf_counter()
        ess = min_bulk_ess(np.asarray(jnp.stack(r))[None, :, None, :])
        paused += time.perf_counter() - t_check
        if np.all(ess >= target):
            break
    wall = time.perf_counter() - t0 - paused
    return _row("seed fit_hmc (HMC, 10 warmup steps)", 1, 1, len(r), wall, ess, target, scale_to)


def dynamax_gibbs_time_to_ess(*, first: int = BURN_IN + 1000, max_draws: int = 24000,
                              target: float = TARGET_ESS, scale_to: int = 256) -> dict:
    """dynamax's ``fit_blocked_gibbs`` on the seed dataset with 1,500, 3,000, ... draws."""
    model, _ = seed_params()
    emissions = seed_dataset()
    params, _ = model.initialize(jr.PRNGKey(42))
    size = first
    while True:
        t0 = time.perf_counter()
        with open(os.devnull, "w") as quiet, redirect_stdout(quiet), redirect_stderr(quiet):  # its progress bar
            samples = model.fit_blocked_gibbs(jr.PRNGKey(0), params, size, emissions)
        R = np.asarray(jax.block_until_ready(samples.emissions.cov))[BURN_IN:]
        wall = time.perf_counter() - t0
        ess = min_bulk_ess(np.diagonal(R, axis1=-2, axis2=-1)[None, :, None, :])
        if np.all(ess >= target) or 2 * size > max_draws:
            return _row("dynamax fit_blocked_gibbs (1 chain)", 1, 1, size - BURN_IN, wall, ess, target, scale_to)
        size *= 2


def time_to_ess(root: Path, *, datasets: dict[str, int], dtype: str = "float64",
                include_seed: bool = True, include_dynamax: bool = True, max_draws: int = 8000,
                num_warmup: int = BURN_IN, seed_max_draws: int = 20000,
                target: float = TARGET_ESS) -> list[dict]:
    """Rows for each ``sampler`` kernel in ``datasets`` (algorithm -> number of datasets), then the
    seed's procedure and dynamax's Gibbs, each with ``best_sampler_ratio``: the best kernel's
    dataset-ESS/s divided by its own, and ``best_sampler_time_ratio``: its time to the target
    (scaled to 256 datasets) divided by the best kernel's.  The two differ because the sum of ESS
    grows with the draws: a procedure that needs more draws to bring its worst dataset to the
    target ends with more ESS on the others, so dataset-ESS/s favours it (docs/performance.md)."""
    rows = [engine_time_to_ess(root, algorithm, n, dtype=dtype, max_draws=max_draws, num_warmup=num_warmup,
                               target=target)
            for algorithm, n in datasets.items()]
    references = []
    if include_dynamax and "gibbs" in datasets:
        n = datasets["gibbs"]
        r = vmapped_dynamax_gibbs_time_to_ess(n, burn_in=num_warmup, max_draws=max_draws, target=target, dtype=dtype)
        references.append(_row(r["procedure"], n, r["chains"], r["draws"], r["wall_s"], r["ess"], target, 256,
                               chain_sweeps_per_s=r["chain_sweeps_per_s"]))
    if include_seed:
        references.append(seed_time_to_ess(target=target, max_draws=seed_max_draws))
    if include_dynamax:
        references.append(dynamax_gibbs_time_to_ess(target=target))
    best = max(rows, key=lambda r: r["dataset_ess_per_s"])
    for ref in references:
        ref["best_sampler_ratio"] = best["dataset_ess_per_s"] / ref["dataset_ess_per_s"]
        ref["best_sampler_time_ratio"] = ref["wall_s_for_256"] / best["wall_s_for_256"]
    return rows + references


#: datasets per shard of the ``scale`` part on an accelerator: a block of 250 draws of 12,500 x 4
#: chains is ~15 GB on the device (every parameter leaf; diag(R) alone goes to the ESS check).
ACCELERATOR_SHARD = 12_500
SCALE_LIMIT_S = 600.0


def scale_time_to_ess(root: Path, *, num_datasets: int, shard_size: int, dtype: str = "float64",
                      num_warmup: int = BURN_IN, max_draws: int = 8000, target: float = TARGET_ESS,
                      progress: Optional[TextIO] = None) -> dict:
    """``sampler bench --only scale``: Gibbs alone on ``num_datasets`` x 4 chains (100,000 on an
    accelerator: issue 17's GPU target is all of them at ESS >= 400 within ``SCALE_LIMIT_S``), in
    shards of ``shard_size`` run one after another; ``engine_time_to_ess``'s row with
    ``within_limit``."""
    row = engine_time_to_ess(root, "gibbs", num_datasets, num_warmup=num_warmup, max_draws=max_draws,
                             target=target, dtype=dtype, scale_to=num_datasets, shard_size=shard_size,
                             progress=progress)
    return {**row, "shard_size": shard_size, "within_limit": row["reached"] and row["wall_s"] < SCALE_LIMIT_S}


SCALE_COLUMNS = ("procedure", "datasets", "shards", "shard_size", "draws", "wall_s", "reached", "datasets_at_target",
                 "min_ess", "dataset_ess_per_s", "chain_sweeps_per_s", "compile_block_s", "within_limit")


COLUMNS = ("procedure", "datasets", "draws", "wall_s", "reached", "datasets_at_target", "min_ess", "dataset_ess_per_s",
           "wall_s_for_256", "chain_sweeps_per_s", "compile_warmup_s", "compile_block_s", "grads_per_draw", "lockstep_grads_per_draw", "best_sampler_ratio",
           "best_sampler_time_ratio")


def default_datasets(quick: bool, backend: str, datasets: Optional[int] = None) -> dict[str, int]:
    """How many datasets each kernel runs: all of them for Gibbs (and everywhere on an accelerator);
    on a CPU, fewer for the gradient-based kernels, whose 256-dataset runs take hours there."""
    n = datasets or (8 if quick else 256)
    if backend != "cpu":
        return {"gibbs": n, "chees": n, "nuts": n}
    return {"gibbs": n, "chees": min(n, 2 if quick else 8), "nuts": min(n, 1)}
