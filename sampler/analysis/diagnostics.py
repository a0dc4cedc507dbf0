"""Per-dataset convergence diagnostics from the store, on the draws written so far.

arviz's rank-normalised split R-hat and bulk / tail ESS (Vehtari et al. 2021), re-implemented
vectorised over all datasets and entries at once (equal to arviz to ~1e-12, tested): arviz loops over
every scalar in Python, which took ~2.5 minutes for 256 datasets.

The LG-SSM likelihood and dynamax's priors are invariant under a rotation of the latent space, so F, H,
the initial state and Q are identified only up to that rotation and their R-hat says nothing about
convergence; an affine change of the latent space also moves the biases (d, b) and the initial mean,
and ``lp`` carries the (non-invariant) prior of all of them.  By default diagnostics therefore use the
one identified leaf, the emission covariance R; ``all_leaves=True`` adds every free leaf and ``lp``.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import zarr
from scipy import special

from sampler.analysis.bulk_ess import geyer_ess
from sampler.core.leaves import LEAVES, is_covariance, scalar_entries, store_name
from sampler.core.model import Model
from sampler.storage.rundir import RunDir

RHAT_OK, ESS_OK = 1.01, 400.0
#: bytes of draws loaded at once (a shard's draws of the diagnosed entries, split by datasets if larger).
LOAD_BYTES = 256 * 2 ** 20
#: bytes of draws per vectorised diagnostics call (its temporaries are a few times this).
CALL_BYTES = 16 * 2 ** 20


# --- arviz's rank-normalised split R-hat and bulk / tail ESS, vectorised over rows -------------------
# x is (K, chains, draws): K independent scalars, each diagnosed as arviz diagnoses a (chain, draw) array.
def _split_chains(x):
    """(K, C, N) -> (K, 2C, N // 2): first and last halves of every chain (the middle draw of an odd N
    is dropped)."""
    half = x.shape[2] // 2
    return np.concatenate([x[:, :, :half], x[:, :, x.shape[2] - half:]], axis=1)


def _average_ranks(x):
    """1-based ranks along axis 1 of (K, n), ties sharing their mean rank (``rankdata(method="average")``,
    which is slow along an axis)."""
    K, n = x.shape
    order = np.argsort(x, axis=1)
    s = np.take_along_axis(x, order, axis=1)
    starts = np.ones((K, n), dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    first = np.flatnonzero(starts)  # flat positions where a run of equal values begins
    size = np.diff(np.append(first, K * n))
    sorted_ranks = np.repeat(first % n + (size + 1) / 2.0, size).reshape(K, n)
    ranks = np.empty((K, n))
    np.put_along_axis(ranks, order, sorted_ranks, axis=1)
    return ranks


def _z_scale(x):
    """Rank-normalise each row over all its chains and draws (average ranks, Blom's offset 3/8)."""
    K, C, N = x.shape
    rank = _average_ranks(x.reshape(K, C * N))
    return special.ndtri((rank - 0.375) / (C * N + 0.25)).reshape(K, C, N)


def _rhat(x):
    """Classic R-hat of each row of (K, C, N)."""
    n = x.shape[2]
    between = n * np.var(np.mean(x, axis=2), axis=1, ddof=1)
    within = np.mean(np.var(x, axis=2, ddof=1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # constant rows: NaN, as arviz
        return np.sqrt((between / within + n - 1) / n)


def _ess(x):
    """ESS of each row of (K, C, N) by Geyer's initial monotone sequence (arviz's ``_ess``): the one
    implementation, ``sampler.analysis.bulk_ess.geyer_ess``, in float64."""
    with jax.enable_x64(True):
        return np.asarray(geyer_ess(np.asarray(x, dtype=np.float64)))


def _valid(x, min_chains: int) -> np.ndarray:
    """Rows arviz diagnoses: no NaN, at least 4 draws and ``min_chains`` chains."""
    ok = ~np.isnan(x).any(axis=(1, 2))
    return ok & (x.shape[2] >= 4) & (x.shape[1] >= min_chains)


def rank_diagnostics(x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-normalised split R-hat (max of bulk and folded), bulk ESS and tail ESS (min over the 5% and
    95% quantile indicators) of each row of x (K, C, N), as arviz's ``rhat(method="rank")``,
    ``ess(method="bulk")`` and ``ess(method="tail")``; NaN where arviz gives NaN."""
    K = len(x)
    split = _split_chains(x)
    z = _z_scale(split)
    folded = np.abs(split - np.median(split.reshape(K, -1), axis=1)[:, None, None])
    rhat = np.where(_valid(x, 2), np.maximum(_rhat(z), _rhat(_z_scale(folded))), np.nan)
    bulk = np.where(_valid(x, 1), _ess(z), np.nan)
    q = np.quantile(x.reshape(K, -1), [0.05, 0.95], axis=1)  # type 7, as arviz's ``quantile``
    tail = np.minimum(*(_ess(_split_chains((x <= qk[:, None, None]).astype(float))) for qk in q))
    return rhat, bulk, np.where(_valid(x, 1), tail, np.nan)


# --- the run -----------------------------------------------------------------------------------------
def _entries(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Flat indices of a draw's distinct entries (``sampler.core.leaves.scalar_entries``: the lower
    triangle of a covariance), every entry of anything else (``lp``)."""
    leaf = name.replace("_", ".", 1)
    if not is_covariance(leaf):
        return np.arange(int(np.prod(shape, dtype=int)))
    return np.ravel_multi_index(tuple(np.array(scalar_entries(leaf, shape)).T), shape)


def _load(arrays: dict, draws: int, a: int, b: int) -> np.ndarray:
    """Draws [0, draws) of datasets [a, b): (datasets, entries, chains, draws), store chunk by chunk."""
    parts = []
    for name, arr in arrays.items():
        idx = _entries(name, arr.shape[3:])
        step = arr.chunks[1]
        out = np.empty((b - a, idx.size, arr.shape[0], draws))
        for d0 in range(0, draws, step):
            d1 = min(d0 + step, draws)
            x = arr[:, d0:d1, a:b].reshape(arr.shape[0], d1 - d0, b - a, -1)[..., idx]  # (C, k, n, E)
            out[..., d0:d1] = x.transpose(2, 3, 0, 1)
        parts.append(out)
    return np.concatenate(parts, axis=1)


def _diagnose(x: np.ndarray) -> dict[str, np.ndarray]:
    """x: (datasets, entries, chains, draws) -> per dataset max R-hat, min bulk and tail ESS over entries."""
    n, E, C, N = x.shape
    per_call = max(1, CALL_BYTES // (E * C * N * 8))
    out = {"max_rhat": [], "min_ess_bulk": [], "min_ess_tail": []}
    for a in range(0, n, per_call):
        rows = x[a:a + per_call].reshape(-1, C, N)
        k = len(rows) // E
        for key, values, how in zip(("max_rhat", "min_ess_bulk", "min_ess_tail"), rank_diagnostics(rows),
                                    (np.nanmax, np.nanmin, np.nanmin)):
            values = values.reshape(k, E)
            all_nan = np.isnan(values).all(axis=1)
            out[key].append(np.where(all_nan, np.nan, how(np.where(all_nan[:, None], 0.0, values), axis=1)))
    return {k: np.concatenate(v) for k, v in out.items()}


def summarize(run_dir: Path, *, all_leaves: bool = False) -> dict:
    """Per-dataset diagnostics and an aggregate verdict, on the draws stored so far.

    Returns {"datasets": [{dataset, draws, max_rhat, min_ess_bulk, min_ess_tail, divergences,
    acceptance_rate, step_size}], "aggregate": {...}, "quantities": [...], "algorithm": ...}.
    """
    rd = RunDir(run_dir)
    info = rd.info()
    root = zarr.open_group(str(rd.store), mode="r")
    posterior, stats_group = root["posterior"], root["sample_stats"]
    frozen = set(root.attrs.get("frozen", []))
    identified = set(root.attrs.get("identified", Model.identified))  # runs before it was recorded
    names = [v for v in sorted(posterior.array_keys(), key=_leaf_order) if posterior[v].size > 0
             and v not in frozen and v.replace("_", ".", 1) not in frozen and (all_leaves or v in identified)]
    arrays = {v: posterior[v] for v in names}
    if all_leaves:
        arrays["lp"] = stats_group["lp"]
    chains = stats_group["lp"].shape[0]
    per_dataset_draw = 8 * chains * sum(_entries(k, a.shape[3:]).size for k, a in arrays.items())
    rows = []
    for prog in rd.shard_progress():
        a, b = prog["datasets"]
        n_draws = prog["draws_done"]
        if n_draws < 4:
            rows += [{"dataset": d, "draws": n_draws} for d in range(a, b)]
            continue
        block = max(1, LOAD_BYTES // (per_dataset_draw * n_draws))
        diag = {}
        for a0 in range(a, b, block):
            part = _diagnose(_load(arrays, n_draws, a0, min(a0 + block, b)))
            for key, value in part.items():
                diag.setdefault(key, []).append(value)
        diag = {k: np.concatenate(v) for k, v in diag.items()}
        div = stats_group["diverging"][:, :n_draws, a:b].sum(axis=(0, 1))
        acc = stats_group["acceptance_rate"][:, :n_draws, a:b].mean(axis=(0, 1))
        step = stats_group["step_size"][:, :n_draws, a:b].mean(axis=(0, 1))
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


def _leaf_order(name: str) -> int:
    order = [store_name(leaf) for leaf in LEAVES]
    return order.index(name) if name in order else len(order)


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
