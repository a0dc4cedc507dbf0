"""Whole runs of ``sampler run`` against the seed's procedure (parts ``e2e``, ``io`` and ``rss``).

* ``e2e``   -- dataset-ESS per second: the seed's own procedure (window adaptation with 10 steps,
  HMC with 5 integration steps, 1,000 draws, a Python loop over a jitted step) on one dataset
  against ``sampler run`` on many datasets x 4 chains, both timed from a cold compilation cache.
  Dataset-ESS = sum over datasets of the minimum bulk-ESS over diag(R) (R is identified; F, H are not).
* ``io``    -- the cost of streaming to Zarr + orbax checkpoints: the same run with its draws
  discarded (null sink) against a real run dir, both with warm (already compiled) programs.
* ``rss``   -- peak resident memory of ``sampler run`` (a subprocess) at 1,000 and 10,000 draws.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
import zarr

from sampler.bench.measure import min_bulk_ess
from sampler.bench.problems import bench_config, seed_hmc_chain, write_data
from sampler.execution import driver, runner
from sampler.storage import config
from sampler.storage.rundir import RunDir

E2E_COLUMNS = ("procedure", "wall_s", "dataset_ess", "dataset_ess_per_s")
IO_COLUMNS = ("datasets", "repeats", "real_run_dir_s", "null_sink_s", "overhead")
RSS_COLUMNS = ("draws", "datasets", "chains", "max_rss_mb", "wall_s")


# --- e2e ---------------------------------------------------------------------------------------------
def seed_procedure(num_draws: int = 1000) -> dict:
    """The seed notebook's ``fit_hmc`` on its one dataset, timed from scratch (incl. compilation)."""
    t0 = time.perf_counter()
    step, state, key = seed_hmc_chain()
    r_diag = []
    for _ in range(num_draws):
        step_key, key = jr.split(key)
        state, r = step(state, step_key)
        r_diag.append(r)
    r_diag = np.asarray(jax.block_until_ready(jax.numpy.stack(r_diag)))
    wall = time.perf_counter() - t0
    ess = float(min_bulk_ess(r_diag[None, :, None, :])[0])
    return {"procedure": "seed fit_hmc (1 dataset, 1 chain)", "datasets": 1, "chains": 1,
            "draws": num_draws, "wall_s": wall, "dataset_ess": ess, "dataset_ess_per_s": ess / wall}


def sampler_run(root: Path, num_datasets: int, **settings) -> dict:
    """``sampler run`` (in-process, no Ray) on ``num_datasets`` seed-model datasets, timed end to end."""
    cfg = bench_config(root, write_data(root, num_datasets), **settings)
    t0 = time.perf_counter()
    run_dir = driver.execute(cfg, workers=0, progress=False)
    wall = time.perf_counter() - t0
    R = zarr.open_group(str(RunDir(run_dir).store), mode="r")["posterior"]["emissions_cov"][...]
    ess = min_bulk_ess(np.diagonal(R, axis1=-2, axis2=-1))
    return {"procedure": f"sampler run ({cfg.resolved_algorithm()}, {num_datasets} datasets x "
                         f"{cfg.sampler.num_chains} chains)", "datasets": num_datasets,
            "chains": cfg.sampler.num_chains, "draws": cfg.sampler.num_draws, "wall_s": wall,
            "dataset_ess": float(ess.sum()), "dataset_ess_per_s": float(ess.sum()) / wall,
            "datasets_min_ess_over_400": int((ess > 400).sum())}


# --- io ----------------------------------------------------------------------------------------------
def null_sink_run(root: Path, num_datasets: int, **settings) -> dict:
    """The same sampling as ``sampler_run`` with every block of draws fetched to the host and dropped:
    no Zarr, no checkpoints."""
    cfg = bench_config(root, write_data(root, num_datasets), **settings)
    t0 = time.perf_counter()
    ctx = runner.RunContext(cfg, root / "null")  # timed, as it is in sampler_run's driver.execute
    for shard in ctx.shards:
        inputs = runner.shard_inputs(ctx, shard)
        chains = runner.init_chains(ctx, inputs)
        # the real run's loop (``run_shard``), its writes and checkpoints left out
        for block in runner.iter_blocks(ctx, inputs, chains):
            block.host_draws()
    return {"sink": "null", "wall_s": time.perf_counter() - t0}


def streaming_overhead(root: Path, num_datasets: int, repeats: int = 3, **settings) -> dict:
    """Median wall of ``repeats`` real runs against as many null-sink runs, interleaved (real, null,
    real, null, ...) after one run that compiles the programs, so that a shared machine's drift hits
    both alike."""
    sampler_run(root / "warm", num_datasets, **settings)
    real, null = [], []
    for i in range(repeats):
        real.append(sampler_run(root / f"real-{i}", num_datasets, **settings)["wall_s"])
        null.append(null_sink_run(root / f"real-{i}", num_datasets, **settings)["wall_s"])
    real_s, null_s = float(np.median(real)), float(np.median(null))
    # each pair's own overhead too: on a shared machine the spread across pairs is the error bar
    return {"datasets": num_datasets, "repeats": repeats, "real_run_dir_s": real_s, "null_sink_s": null_s,
            "overhead": real_s / null_s - 1.0, "real_runs_s": real, "null_runs_s": null,
            "pair_overheads": [r / n - 1.0 for r, n in zip(real, null)]}


# --- rss ---------------------------------------------------------------------------------------------
_RSS_CHILD = """
import json, resource, sys
import sampler
sampler.run(sys.argv[1], progress=False)
print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(root: Path, draws=(1000, 10000), num_datasets: int = 1, num_chains: int = 4) -> list[dict]:
    """Peak RSS of a whole ``sampler run`` in a fresh process, at each number of draws."""
    rows = []
    data = write_data(root, num_datasets)
    for n in draws:
        cfg = bench_config(root / f"rss-{n}", data, num_chains=num_chains, num_warmup=100, num_draws=n,
                           shard_size=0, checkpoint_every=250, algorithm="auto", dtype="float64")
        (root / f"rss-{n}").mkdir(parents=True, exist_ok=True)
        path = root / f"rss-{n}" / "config.toml"
        path.write_text(config.to_toml(cfg))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path)], capture_output=True, text=True,
                             check=True)
        rows.append({"draws": n, "datasets": num_datasets, "chains": num_chains,
                     "wall_s": time.perf_counter() - t0, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows
