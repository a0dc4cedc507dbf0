"""``sampler bench``: ``run`` runs the selected parts in this process, printing a table as each ends.

The parts and what they measure are described in their modules (``sampler.bench``'s docstring lists
them).  Nothing here is a test: the numbers are measurements, printed with the device they ran on.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional, TextIO

import jax

from sampler.bench import ess, runs, structural, throughput, warmup
from sampler.bench.measure import device_description, format_table, print_text
from sampler.core.precision import configure_jax
from sampler.errors import UserError

PARTS = ("grad", "parallel", "e2e", "io", "rss", "warmup", "ess", "headline", "scale", "sts", "sts-panel")


def run(*, quick: bool = False, batches: Optional[str] = None, datasets: Optional[int] = None,
        include: Optional[str] = None, dtype: str = "float64", out: Optional[TextIO] = sys.stdout) -> dict:
    """Run the selected parts (``include``: comma-separated of ``PARTS``; default all) and
    return {"device": ..., part: rows}.  With ``out``, a table is printed as each part finishes.

    The compilation cache is pointed at a fresh directory so that "including compilation" is true.
    """
    parts = tuple(p.strip() for p in include.split(",")) if include else PARTS
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise UserError(f"--only: unknown part(s) {', '.join(sorted(unknown))} (choose from {', '.join(PARTS)})")
    with tempfile.TemporaryDirectory(prefix="sampler-bench-") as tmp:
        root = Path(tmp)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(root / "xla-cache")
        # JAX read the environment when it was imported (with this module): the cache directory
        # and x64 are set explicitly, before anything compiles, as every run does
        configure_jax(dtype)
        results = {"device": device_description(), "dtype": dtype}
        print_text(out, f"device: {results['device']}  dtype: {dtype}")
        if "grad" in parts:
            bs = tuple(int(b) for b in batches.split(",")) if batches else ((1, 64) if quick else (1, 64, 1024, 8192))
            results["grad"] = throughput.grad_throughput(bs, dtype=dtype)
            print_text(out, format_table(results["grad"], throughput.GRAD_COLUMNS))
        if "parallel" in parts:
            grid = throughput.PARALLEL_GRID[:2] if quick else throughput.PARALLEL_GRID
            results["parallel"] = throughput.parallel_in_time(grid, dtype=dtype)
            print_text(out, format_table(results["parallel"], throughput.PARALLEL_COLUMNS))
        n = datasets or (8 if quick else 256)
        draws = 100 if quick else 1000
        settings = dict(num_chains=4, num_warmup=50 if quick else 300, num_draws=draws,
                        shard_size=min(n, 256) if jax.default_backend() == "cpu" else n,
                        checkpoint_every=max(draws // 4, 1), algorithm="auto", dtype=dtype)
        if "e2e" in parts:
            results["e2e"] = _e2e(root, n, draws, settings, out)
        if "io" in parts:
            m = max(n // 4, 1)
            io_settings = dict(settings, shard_size=min(settings["shard_size"], m))
            results["io"] = [runs.streaming_overhead(root / "io", m, repeats=1 if quick else 3, **io_settings)]
            print_text(out, format_table(results["io"], runs.IO_COLUMNS))
        if "rss" in parts:
            results["rss"] = runs.peak_rss(root / "rss", draws=(100, 1000) if quick else (1000, 10000))
            print_text(out, format_table(results["rss"], runs.RSS_COLUMNS))
        if "warmup" in parts:
            results["warmup"] = warmup.warmup_comparison(num_chains=8, num_warmup=50 if quick else 200,
                                                         num_draws=50 if quick else 200)
            print_text(out, format_table(results["warmup"], warmup.COLUMNS))
        for part in ("ess", "headline"):
            if part not in parts:
                continue
            # headline: Gibbs against dynamax's Gibbs step vmapped by hand (and looped), nothing else
            counts = ess.default_datasets(quick, jax.default_backend(), datasets)
            results[part] = ess.time_to_ess(
                root / part, datasets=counts if part == "ess" else {"gibbs": counts["gibbs"]}, dtype=dtype,
                include_seed=part == "ess", max_draws=500 if quick else 8000,
                num_warmup=100 if quick else ess.BURN_IN, seed_max_draws=2000 if quick else 20000,
                target=100.0 if quick else ess.TARGET_ESS)
            print_text(out, format_table(results[part], ess.COLUMNS))
        if "scale" in parts:
            results["scale"] = [_scale(root, quick, datasets, dtype, out)]
            print_text(out, format_table(results["scale"], ess.SCALE_COLUMNS))
        if "sts" in parts:
            results["sts"] = structural.sweep_throughput(num_series=8 if quick else 64, sweeps=20 if quick else 100)
            print_text(out, format_table(results["sts"], structural.COLUMNS))
        if "sts-panel" in parts:
            results["sts-panel"] = [structural.monthly_panel(
                num_series=datasets or (8 if quick else 1000), burn_in=50 if quick else 500,
                sweeps=100 if quick else 1000, block=50 if quick else 250)]
            print_text(out, format_table(results["sts-panel"], structural.PANEL_COLUMNS))
    return results


def _scale(root: Path, quick: bool, datasets: Optional[int], dtype: str, out: Optional[TextIO]) -> dict:
    """Gibbs alone to ESS >= 400 on many datasets: 100,000 in shards of ``ess.ACCELERATOR_SHARD`` on
    an accelerator; on a CPU 512 in shards of 256 (two shards: the same path, in minutes)."""
    accelerator = jax.default_backend() != "cpu"
    n = datasets or (8 if quick else 100_000 if accelerator else 512)
    shard = min(n, 4 if quick else ess.ACCELERATOR_SHARD if accelerator else 256)
    return ess.scale_time_to_ess(root / "scale", num_datasets=n, shard_size=shard, dtype=dtype,
                                 num_warmup=100 if quick else ess.BURN_IN, max_draws=500 if quick else 8000,
                                 target=100.0 if quick else ess.TARGET_ESS, progress=out)


def _e2e(root: Path, n: int, draws: int, settings: dict, out: Optional[TextIO]) -> list[dict]:
    """The seed's procedure, ``sampler run`` on ``n`` datasets, and their dataset-ESS/s ratio."""
    seed = runs.seed_procedure(num_draws=draws)
    ours = runs.sampler_run(root / "e2e", n, **settings)
    rows = [seed, ours, {"ratio_dataset_ess_per_s": ours["dataset_ess_per_s"] / seed["dataset_ess_per_s"]}]
    print_text(out, format_table(rows[:2], runs.E2E_COLUMNS))
    print_text(out, f"ratio (dataset-ESS/s): {rows[2]['ratio_dataset_ess_per_s']:.1f}x")
    return rows
