"""Per-dataset convergence diagnostics from the store (arviz underneath), on the draws written so far.

The LG-SSM likelihood and dynamax's priors are invariant under a rotation of the latent space, so F, H,
the initial state and Q are identified only up to that rotation and their R-hat says nothing about
convergence; an affine change of the latent space also moves the biases (d, b) and the initial mean,
and ``lp`` carries the (non-invariant) prior of all of them.  By default diagnostics therefore use the
one identified leaf, the emission covariance R; ``all_leaves=True`` adds every free leaf and ``lp``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from sampler import driver
from sampler.runner import RUN_FILE, STORE

INVARIANT = ("emissions_cov",)
RHAT_OK, ESS_OK = 1.01, 400.0


def _diagnose(ds: xr.Dataset) -> dict[str, np.ndarray]:
    import arviz as az
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = az.rhat(ds, method="rank")
        bulk = az.ess(ds, method="bulk")
        tail = az.ess(ds, method="tail")

    def reduce(res: xr.Dataset, how) -> np.ndarray:
        arrays = [how(res[v].values.reshape(res[v].sizes["dataset"], -1), axis=1) for v in res.data_vars]
        return how(np.stack(arrays, axis=1), axis=1)

    return {"max_rhat": reduce(rhat, np.nanmax), "min_ess_bulk": reduce(bulk, np.nanmin),
            "min_ess_tail": reduce(tail, np.nanmin)}


def summarize(run_dir: Path, *, all_leaves: bool = False) -> dict:
    """Per-dataset diagnostics and an aggregate verdict.

    Returns {"datasets": [{dataset, draws, max_rhat, min_ess_bulk, min_ess_tail, divergences,
    acceptance_rate, step_size}], "aggregate": {...}, "quantities": [...], "algorithm": ...}.
    """
    run_dir = Path(run_dir)
    info = json.loads((run_dir / RUN_FILE).read_text())
    tree = xr.open_datatree(str(run_dir / STORE), engine="zarr")
    posterior, stats = tree["posterior"].to_dataset(), tree["sample_stats"].to_dataset()
    frozen = set(tree.attrs.get("frozen", []))
    names = [v for v in posterior.data_vars if posterior[v].size > 0
             and v.replace("_", ".", 1) not in frozen and (all_leaves or v in INVARIANT)]
    rows = []
    for prog in driver.shard_progress(run_dir):
        a, b = prog["datasets"]
        n_draws = prog["draws_done"]
        if n_draws < 4:
            rows += [{"dataset": d, "draws": n_draws} for d in range(a, b)]
            continue
        sel = dict(draw=slice(0, n_draws), dataset=slice(a, b))
        ds = posterior[names].isel(sel).load()
        if all_leaves:
            ds["lp"] = stats["lp"].isel(sel).load()
        diag = _diagnose(ds)
        st = stats.isel(sel)
        div = st["diverging"].sum(("chain", "draw")).values
        acc = st["acceptance_rate"].mean(("chain", "draw")).values
        step = st["step_size"].mean(("chain", "draw")).values
        for i, d in enumerate(range(a, b)):
            rows.append({"dataset": d, "draws": n_draws, "max_rhat": float(diag["max_rhat"][i]),
                         "min_ess_bulk": float(diag["min_ess_bulk"][i]),
                         "min_ess_tail": float(diag["min_ess_tail"][i]),
                         "divergences": int(div[i]), "acceptance_rate": float(acc[i]),
                         "step_size": float(step[i])})
    done = [r for r in rows if "max_rhat" in r]
    ok = [r for r in done if r["max_rhat"] < RHAT_OK and r["min_ess_bulk"] > ESS_OK]
    return {"algorithm": info.get("algorithm"), "quantities": names + (["lp"] if all_leaves else []),
            "datasets": rows,
            "aggregate": {"datasets": len(rows), "diagnosed": len(done), "passing": len(ok),
                          "rhat_threshold": RHAT_OK, "ess_threshold": ESS_OK,
                          "with_divergences": sum(1 for r in done if r["divergences"] > 0)}}


def format_table(summary: dict, limit: int = 50) -> str:
    """Human-readable summary: one row per dataset (first ``limit``) and the aggregate line."""
    lines = [f"algorithm: {summary['algorithm']}; diagnostics over {', '.join(summary['quantities'])}",
             f"{'dataset':>7} {'draws':>6} {'max_rhat':>9} {'ess_bulk':>9} {'ess_tail':>9} "
             f"{'diverg':>6} {'accept':>7} {'step':>8}  flags"]
    for r in summary["datasets"][:limit]:
        if "max_rhat" not in r:
            lines.append(f"{r['dataset']:>7} {r['draws']:>6}  (too few draws)")
            continue
        flags = []
        if r["max_rhat"] >= RHAT_OK:
            flags.append("R-hat")
        if r["min_ess_bulk"] <= ESS_OK:
            flags.append("low-ESS")
        if r["divergences"]:
            flags.append("divergences")
        lines.append(f"{r['dataset']:>7} {r['draws']:>6} {r['max_rhat']:>9.4f} {r['min_ess_bulk']:>9.0f} "
                     f"{r['min_ess_tail']:>9.0f} {r['divergences']:>6} {r['acceptance_rate']:>7.3f} "
                     f"{r['step_size']:>8.4f}  {' '.join(flags)}")
    if len(summary["datasets"]) > limit:
        lines.append(f"... {len(summary['datasets']) - limit} more datasets (use --json for all)")
    a = summary["aggregate"]
    lines.append(f"{a['passing']} of {a['datasets']} datasets pass (R-hat < {a['rhat_threshold']} and bulk "
                 f"ESS > {a['ess_threshold']:.0f}); {a['with_divergences']} with divergences")
    return "\n".join(lines)
