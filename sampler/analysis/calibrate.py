"""Simulation-based calibration (SBC; Talts et al. 2018): simulate from the prior, sample, rank, report.

``calibrate`` draws ``num_datasets`` datasets from the prior (``sampler.simulate``) into
``DIR/simulated.npz``, samples them all in one run through ``driver.execute`` (in-process or on Ray,
checkpointed and resumable like any run; ``DIR`` is that run's directory), then for every test
quantity ranks the true value among the thinned posterior draws (chains pooled).  If the sampler
draws from the exact posterior, every rank is uniform on {0, ..., L} (L pooled draws).

Test quantities:

* ``invariant``: quantities the likelihood identifies, unchanged by the latent-coordinate maps
  x -> A x + c that leave the likelihood alone: the entries of R (lower triangle) and D, the
  coefficients of F's characteristic polynomial (trace and det for state_dim 2; F itself for
  state_dim 1), F's spectral radius, and diag(H Q H^T) (the state noise seen in emission space).
  The characteristic-polynomial coefficients are used rather than eigenvalues because they are real
  and smooth in F, whereas eigenvalues sorted by modulus are complex in pairs and jump when two moduli
  cross.
* ``joint``: ``loglik``, the data log-likelihood at the parameters; the rank of its value at the true
  parameters among its values at the draws is a valid SBC statistic of the joint posterior
  (Modrak et al. 2023) and reacts to errors no single parameter shows.
* ``rotation-dependent``: every other free scalar (F for state_dim > 1, H, Q, b, B, d, m0, S0).
  Their ranks are valid SBC quantities too (SBC is a property of the joint), but they move only by the
  slow random walk along the likelihood's invariant directions, so short chains give autocorrelated,
  non-uniform ranks without anything being wrong.  They are reported and plotted but excluded from
  the verdict unless ``include_rotation_dependent``.  (With latent leaves frozen the invariance is
  broken and they become identified.)

Uniformity per quantity: the ECDF test of Saeilynoja, Buerkner & Vehtari (2022) - the smallest
two-sided binomial tail probability of the rank ECDF over an evaluation grid (their ``gamma``),
calibrated by simulating uniform ranks; the same simulation gives the simultaneous 95% ECDF band
drawn in the plots.  A chi-square test on binned ranks is reported beside it.  Verdict: Holm's
step-down correction over the verdict quantities at ``ALPHA``.  Coverage: the fraction of datasets
whose true value lies in the central 50/80/90/95% posterior interval (from the fractional rank, see
``coverage``), with Clopper-Pearson 95% intervals.  Recovery: posterior z-score (mean - truth) / sd against contraction
1 - (posterior IQR / prior IQR)^2, the prior IQR taken over the simulated true values (dynamax's
inverse-Wishart priors have no finite variance, so the usual variance ratio is useless); on the log
scale for variances (they span several decades across prior draws).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import zarr
from scipy import stats

from sampler.analysis import simulate
from sampler.analysis.plots import save_figure
from sampler.analysis.scores import LEVELS
from sampler.core.leaves import LEAVES, scalar_entries, store_name
from sampler.core.model import Model
from sampler.core.precision import configure_jax
from sampler.core.predictive import log_likelihoods
from sampler.core.simulation import spectral_radius
from sampler.errors import UserError
from sampler.execution import driver, runner
from sampler.storage.config import Config
from sampler.storage.files import atomic_write
from sampler.storage.rundir import RunDir
ALPHA = 0.05
#: pooled draws kept per dataset when ``thin`` is not given.
TARGET_DRAWS = 100
#: uniform-rank simulations calibrating the ECDF test (p-value resolution 1 / NUM_NULL).
NUM_NULL = 4000
#: at most this many ECDF evaluation points; at most this many panels per figure.
MAX_GRID, MAX_PANELS = 100, 48
#: the leaves the likelihood identifies (unchanged by x -> A x + c); dynamics.weights too when S = 1.
INVARIANT_LEAVES = ("emissions.cov", "emissions.input_weights")


# --- test quantities -------------------------------------------------------------------------------------
def char_poly(F: np.ndarray) -> np.ndarray:
    """Elementary symmetric polynomials e_1..e_S of F's eigenvalues (e_1 = trace, e_S = det), i.e. the
    characteristic polynomial's coefficients up to sign.  F: (..., S, S) -> (..., S), real."""
    eig = np.linalg.eigvals(F)
    coef = np.zeros(F.shape[:-2] + (F.shape[-1] + 1,), complex)
    coef[..., 0] = 1.0
    for k in range(F.shape[-1]):  # multiply by (1 + lambda_k t)
        coef[..., 1:] = coef[..., 1:] + eig[..., k, None] * coef[..., :-1]
    return coef[..., 1:].real


def quantities(model: Model, params: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    """Scalar test quantities of parameters with any leading shape.

    Args:
        params: dotted leaf -> (..., *leaf_shape), every leaf.

    Returns:
        name -> (kind, values (...)), kind ``invariant`` or ``rotation-dependent``; frozen leaves
        and quantities of frozen leaves only are left out (they cannot move).
    """
    S, frozen = model.state_dim, set(model.frozen)
    invariant = set(INVARIANT_LEAVES) | ({"dynamics.weights"} if S == 1 else set())
    out: dict[str, tuple[str, np.ndarray]] = {}
    for leaf in LEAVES:
        shape = model.leaf_shape(leaf)
        if leaf in frozen or 0 in shape:
            continue
        kind = "invariant" if leaf in invariant else "rotation-dependent"
        for idx in scalar_entries(leaf, shape):
            out[f"{store_name(leaf)}[{','.join(map(str, idx))}]"] = (kind, params[leaf][(..., *idx)])
    F, H, Q = params["dynamics.weights"], params["emissions.weights"], params["dynamics.cov"]
    if "dynamics.weights" not in frozen:
        if S > 1:
            e = char_poly(F)
            for k in range(S):
                name = "trace(F)" if k == 0 else "det(F)" if k == S - 1 else f"e{k + 1}(F)"
                out[name] = ("invariant", e[..., k])
        out["spectral_radius(F)"] = ("invariant", spectral_radius(F))
    if not {"emissions.weights", "dynamics.cov"} <= frozen:
        HQH = np.einsum("...is,...st,...jt->...ij", H, Q, H)
        for i in range(model.emission_dim):
            out[f"HQH'[{i},{i}]"] = ("invariant", HQH[..., i, i])
    return out


def ranks(truth: np.ndarray, draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each true value among its draws, ties broken at random.  truth (N,), draws (N, L) ->
    ints (N,) in [0, L]."""
    less = (draws < truth[:, None]).sum(1)
    ties = (draws == truth[:, None]).sum(1)
    return less + rng.integers(0, ties + 1)


# --- uniformity ------------------------------------------------------------------------------------------
def _grid(L: int) -> np.ndarray:
    """ECDF evaluation points k / (L + 1) as integers k in [1, L] (at most MAX_GRID of them)."""
    return np.unique(np.linspace(1, L, min(L, MAX_GRID)).round().astype(int))


def _gamma(counts: np.ndarray, N: int, z: np.ndarray) -> np.ndarray:
    """Saeilynoja et al.'s statistic: min over the grid of the two-sided binomial tail probability of
    the ECDF counts.  counts (..., K) = #{rank < k}; z (K,) -> (...)."""
    p = 2.0 * np.minimum(stats.binom.cdf(counts, N, z), stats.binom.sf(counts - 1, N, z))
    return np.minimum(p, 1.0).min(-1)


def uniformity_null(N: int, L: int, rng: np.random.Generator, num: int = NUM_NULL) -> np.ndarray:
    """``gamma`` of ``num`` samples of N uniform ranks on {0..L} (sorted ascending).  The ECDF counts
    on the grid are cumulative multinomial counts, so this costs nothing in N."""
    k = _grid(L)
    probs = np.diff(np.concatenate([[0], k, [L + 1]])) / (L + 1)
    counts = np.cumsum(rng.multinomial(N, probs, size=num), axis=1)[:, :-1]
    return np.sort(_gamma(counts, N, k / (L + 1)))


def ecdf_test(r: np.ndarray, L: int, null: np.ndarray) -> float:
    """p-value of the ECDF uniformity test for ranks r (N,) in [0, L], against ``uniformity_null``."""
    k = _grid(L)
    counts = (r[:, None] < k[None, :]).sum(0)
    g = _gamma(counts, len(r), k / (L + 1))
    return float((1 + np.searchsorted(null, g, side="right")) / (1 + len(null)))


def ecdf_band(N: int, L: int, null: np.ndarray, level: float = 0.95):
    """Simultaneous ``level`` band of ECDF - z on the grid: (z (K,), lower (K,), upper (K,))."""
    k = _grid(L)
    z = k / (L + 1)
    g = np.quantile(null, 1 - level)
    return z, stats.binom.ppf(g / 2, N, z) / N - z, stats.binom.isf(g / 2, N, z) / N - z


def _bins(N: int, L: int) -> int:
    """Rank-histogram bins: about 10 expected counts per bin, 2 to 20 bins, at most L + 1."""
    return int(max(2, min(20, L + 1, N // 10)))


def chi2_test(r: np.ndarray, L: int) -> float:
    """Chi-square p-value of binned ranks (bin b holds ranks with floor(r B / (L + 1)) = b)."""
    B = _bins(len(r), L)
    observed = np.bincount(r * B // (L + 1), minlength=B)
    expected = np.bincount(np.arange(L + 1) * B // (L + 1), minlength=B) / (L + 1) * len(r)
    return float(stats.chisquare(observed, expected).pvalue)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (reject where adjusted < alpha: family-wise error <= alpha)."""
    p = np.asarray(p, float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.isf(a, k + 1, n - k))
    return lo, hi


def coverage(r: np.ndarray, L: int, rng: np.random.Generator) -> dict[str, dict]:
    """Coverage of the central posterior intervals at LEVELS, from ranks r (N,) in [0, L].

    The true value's posterior CDF is estimated by its fractional rank (r + U) / (L + 1), U uniform:
    exactly uniform under calibration, so the expected coverage is the nominal level.  (Intervals
    with end points interpolated between L draws cover less: 88% for a 90% interval from 100 draws.)

    Returns:
        {"50": {"covered": k, "fraction": k / N, "ci": Clopper-Pearson 95% interval}, ...}
    """
    u = (r + rng.uniform(size=len(r))) / (L + 1)
    out = {}
    for q in LEVELS:
        k = int((np.abs(u - 0.5) <= q / 2).sum())
        out[f"{round(100 * q)}"] = {"covered": k, "fraction": k / len(r), "ci": clopper_pearson(k, len(r))}
    return out


def recovery(truth: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior z-score (mean - truth) / sd and contraction 1 - (IQR_post / IQR_prior)^2 per dataset,
    the prior IQR over the true values.  truth (N,), draws (N, L) -> ((N,), (N,))."""
    sd = draws.std(1)
    z = (draws.mean(1) - truth) / np.where(sd > 0, sd, np.nan)
    iqr = lambda x, axis=None: np.subtract(*np.quantile(x, [0.75, 0.25], axis=axis))
    prior = iqr(truth)
    contraction = 1 - (iqr(draws, 1) / prior) ** 2 if prior > 0 else np.full(len(truth), np.nan)
    return z, contraction


# --- the run ---------------------------------------------------------------------------------------------
def _run_config(cfg: Config, data_path: Path) -> Config:
    out = cfg.model_copy(deep=True)
    out.data.path = str(data_path)
    return out


def _prepare(cfg: Config, blob: bytes) -> None:
    """Make ``cfg.run.dir`` a run dir whose data file ``DIR/simulated.npz`` holds ``blob`` (or check
    that an existing one does).  Raises ``UserError`` (writing nothing) on a changed simulation."""
    rd = RunDir(cfg.run.dir)
    sim = rd.simulated
    if rd.is_run_dir():
        old = rd.info()["fingerprint"].get("data.sha256")
        if old != hashlib.sha256(blob).hexdigest():
            raise UserError(f"{rd.path}: cannot resume: the simulated datasets differ from this run's "
                            f"(--num-datasets, --num-timesteps, --seed or the model changed, or not a "
                            f"calibration run dir); use a new --run-dir")
        if not sim.exists() or sim.read_bytes() != blob:
            atomic_write(sim, blob)
        return
    # A new run dir must be empty when the run is created, so the data file is staged outside it and
    # moved in once run.json exists; the saved config names its final place.
    rd.check_usable()
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / sim.name
        staged.write_bytes(blob)
        ctx = runner.RunContext(_run_config(cfg, staged), rd.path)  # validates; nothing written
        ctx.cfg.data.path = str(sim)
        with rd.lock():
            runner.prepare_run_dir(ctx)
            atomic_write(sim, blob)


def _posterior(run_dir: Path, thin: Optional[int]) -> tuple[dict[str, np.ndarray], dict]:
    """Thinned posterior draws of every leaf, chains pooled: dotted leaf -> (N, L, *leaf_shape)."""
    root = zarr.open_group(str(RunDir(run_dir).store), mode="r")
    C, K, N = root["sample_stats"]["lp"].shape
    thin = thin or max(1, (C * K) // TARGET_DRAWS)
    keep = np.arange(0, K, thin)
    out = {}
    for leaf in LEAVES:
        arr = root["posterior"][store_name(leaf)]
        step = arr.chunks[1]
        parts = []
        for d0 in range(0, K, step):  # chunk by chunk: never the whole unthinned leaf in memory
            sel = keep[(keep >= d0) & (keep < d0 + step)]
            if sel.size:
                parts.append(arr[:, d0:d0 + step][:, sel - d0])
        x = np.concatenate(parts, axis=1)  # (C, K', N, ...)
        out[leaf] = np.moveaxis(x, 2, 0).reshape((N, C * len(keep)) + x.shape[3:])
    return out, {"chains": C, "draws_per_chain": K, "thin": thin, "pooled_draws": C * len(keep)}


def calibrate(cfg: Config, *, num_datasets: int, num_timesteps: int = 100, thin: Optional[int] = None,
              seed: int = 0, workers: Optional[int] = None, address: Optional[str] = None,
              progress: bool = True, include_rotation_dependent: bool = False,
              max_abs_emission: float = simulate.DEFAULT_MAX_ABS_EMISSION) -> dict:
    """``sampler calibrate``: simulate from the prior, sample every dataset, rank, test, plot, report.

    ``cfg.run.dir`` is the study's run dir.  Re-running with the same arguments on a partly done dir
    resumes the sampling (the simulation is a deterministic function of its settings).

    Returns the report also written to ``DIR/calibration.json``: ``settings``, ``simulation``,
    ``quantities`` (per quantity: kind, in_verdict, p_value (ECDF), p_holm, p_chi2, coverage,
    recovery summary, ranks), ``verdict`` and ``plots``.
    """
    run_dir = Path(cfg.run.dir).resolve()
    cfg = cfg.model_copy(deep=True)
    cfg.run.dir = str(run_dir)
    if thin is not None and not 1 <= thin <= cfg.sampler.num_draws:
        raise UserError(f"--thin {thin}: must be between 1 and sampler.num_draws ({cfg.sampler.num_draws})")
    rd = RunDir(run_dir)
    rd.check_usable()  # before the simulation: a foreign non-empty dir is refused at once
    driver.start_ray_if_requested(cfg.run.workers if workers is None else workers, address)
    arrays, sim_info = simulate.simulate_arrays(cfg, num_datasets=num_datasets, num_timesteps=num_timesteps,
                                                seed=seed, max_abs_emission=max_abs_emission)
    cfg = _run_config(cfg, rd.simulated)
    _prepare(cfg, simulate.npz_bytes(arrays))
    driver.execute(cfg, workers=workers, address=address, progress=progress)
    report = analyse(cfg, arrays, thin=thin, include_rotation_dependent=include_rotation_dependent)
    report["simulation"] = sim_info
    atomic_write(rd.calibration_report, json.dumps(report, indent=1))
    return report


def analyse(cfg: Config, arrays: dict[str, np.ndarray], *, thin: Optional[int] = None,
            include_rotation_dependent: bool = False) -> dict:
    """Ranks, tests, coverage and plots of a finished calibration run (``cfg.run.dir``) whose data
    file holds ``arrays`` (from ``simulate.simulate_arrays``)."""
    configure_jax(cfg.sampler.dtype)  # the log-likelihoods in the run's precision
    run_dir = Path(cfg.run.dir)
    frozen = tuple(cfg.model.frozen)
    emissions = arrays["emissions"] if arrays["emissions"].ndim == 4 else arrays["emissions"][:, None]
    inputs = arrays.get("inputs")
    if inputs is not None and inputs.ndim == 3:
        inputs = inputs[:, None]
    model = Model.from_config(cfg.model, emissions)
    draws, draw_info = _posterior(run_dir, thin)
    truth = {leaf: arrays[f"true_{store_name(leaf)}"] for leaf in LEAVES}
    N, L = next(iter(draws.values())).shape[:2]
    q_truth, q_draws = quantities(model, truth), quantities(model, draws)
    q_truth["loglik"] = ("joint", log_likelihoods(model, {k: v[:, None] for k, v in truth.items()},
                                                   emissions, inputs)[:, 0])
    q_draws["loglik"] = ("joint", log_likelihoods(model, draws, emissions, inputs))

    rng = np.random.default_rng(0)
    null = uniformity_null(N, L, rng)
    rows = []
    for name, (kind, t) in q_truth.items():
        d = q_draws[name][1]
        r = ranks(t, d, rng)
        log_scale = _is_variance(name)  # variances span decades across prior draws: compare logs
        z, contraction = recovery(np.log(t), np.log(d)) if log_scale else recovery(t, d)
        rows.append({"name": name, "kind": kind, "recovery_scale": "log" if log_scale else "linear",
                     "in_verdict": kind != "rotation-dependent" or include_rotation_dependent,
                     "p_value": ecdf_test(r, L, null), "p_chi2": chi2_test(r, L), "coverage": coverage(r, L, rng),
                     "z_median": _finite(np.nanmedian(z)), "z_abs_gt_3": float(np.mean(np.abs(z) > 3)),
                     "contraction_median": _finite(np.nanmedian(contraction)),
                     "ranks": r.tolist(), "_z": z, "_contraction": contraction})
    verdict_rows = [row for row in rows if row["in_verdict"]]
    for row, p in zip(verdict_rows, holm([row["p_value"] for row in verdict_rows])):
        row["p_holm"] = float(p)
    failing = [row["name"] for row in verdict_rows if row["p_holm"] < ALPHA]
    report = {
        "settings": {"run_dir": str(run_dir), "algorithm": cfg.resolved_algorithm(),
                     "state_dim": model.state_dim, "emission_dim": model.emission_dim,
                     "input_dim": model.input_dim, "frozen": list(frozen), "num_datasets": N,
                     "num_warmup": cfg.sampler.num_warmup, **draw_info, "rank_levels": L + 1,
                     "alpha": ALPHA, "levels": list(LEVELS)},
        "verdict": {"passed": not failing, "failing": failing, "quantities": len(verdict_rows),
                    "method": f"ECDF uniformity test (Saeilynoja et al. 2022) per quantity, Holm-corrected "
                              f"over the {len(verdict_rows)} verdict quantities at alpha {ALPHA}"},
        "quantities": rows,
    }
    report["plots"] = [str(p) for p in plot_all(RunDir(run_dir).plots, rows, N, L, null)]
    for row in rows:
        del row["_z"], row["_contraction"]
    return report


def _is_variance(name: str) -> bool:
    """A diagonal entry of a covariance leaf or of HQH'."""
    return re.fullmatch(r"(.*_cov|HQH')\[(\d+),\2\]", name) is not None


def _finite(x) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


# --- figures ---------------------------------------------------------------------------------------------
def _panels(n: int):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _title(ax, row: dict) -> None:
    p = row.get("p_holm", row["p_value"])
    bad = p < ALPHA
    ax.set_title(f"{row['name']}\np{'(Holm)' if 'p_holm' in row else ''} = {p:.2g}",
                 fontsize=9, color="tab:red" if bad else "black")


def rank_histograms(path: Path, rows: list[dict], N: int, L: int, title: str) -> Path:
    """Rank histograms with the expected count (bins hold L + 1 rank values as evenly as possible) and the
    99% binomial band of each bin's count under uniform ranks."""
    B = _bins(N, L)
    width = np.bincount(np.arange(L + 1) * B // (L + 1), minlength=B) / (L + 1)
    lo, hi = stats.binom.ppf(0.005, N, width), stats.binom.isf(0.005, N, width)
    fig, axes = _panels(len(rows))
    for ax, row in zip(axes, rows):
        counts = np.bincount(np.asarray(row["ranks"]) * B // (L + 1), minlength=B)
        x = np.arange(B)
        ax.fill_between(np.append(x, B) - 0.5, np.append(lo, lo[-1]), np.append(hi, hi[-1]), step="post",
                        color="0.85", label="99% band")
        ax.bar(x, counts, width=0.9, color="tab:blue")
        ax.step(np.append(x, B) - 0.5, N * np.append(width, width[-1]), where="post", color="k", lw=1.0, zorder=3)
        ax.set_xticks([0, B - 1], ["low", "high"])
        ax.tick_params(labelsize=8)
        _title(ax, row)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=90)


def ecdf_differences(path: Path, rows: list[dict], N: int, L: int, null: np.ndarray, title: str) -> Path:
    """ECDF of the fractional ranks minus the uniform CDF, with the simultaneous 95% band."""
    z, lo, hi = ecdf_band(N, L, null)
    k = np.round(z * (L + 1)).astype(int)
    fig, axes = _panels(len(rows))
    for ax, row in zip(axes, rows):
        r = np.asarray(row["ranks"])
        diff = (r[:, None] < k[None, :]).mean(0) - z
        ax.fill_between(z, lo, hi, color="0.85", step="mid")
        ax.plot(z, diff, color="tab:blue", lw=1.2, drawstyle="steps-mid")
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=8)
        _title(ax, row)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=90)


def recovery_plot(path: Path, rows: list[dict], title: str) -> Path:
    """Posterior z-score against contraction, one point per dataset."""
    fig, axes = _panels(len(rows))
    for ax, row in zip(axes, rows):
        c, z = np.clip(row["_contraction"], -0.5, 1.0), np.clip(row["_z"], -5, 5)
        ax.scatter(c, z, s=4, alpha=0.5, color="tab:blue", edgecolors="none")
        for y in (-2, 2):
            ax.axhline(y, color="0.6", lw=0.6, ls="--")
        ax.set_xlim(-0.55, 1.05)
        ax.set_ylim(-5.3, 5.3)
        ax.set_xlabel("contraction", fontsize=8)
        ax.set_ylabel("z-score", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_title(row["name"] + (" (log)" if row["recovery_scale"] == "log" else ""), fontsize=9)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=90)


def plot_all(plots: Path, rows: list[dict], N: int, L: int, null: np.ndarray) -> list[Path]:
    """The study's PNGs under ``plots``: ranks, ECDF differences and recovery of the verdict quantities;
    ranks and ECDF differences of the others (if any)."""
    verdict = [r for r in rows if r["in_verdict"]][:MAX_PANELS]
    other = [r for r in rows if not r["in_verdict"]][:MAX_PANELS]
    out = [rank_histograms(plots / "calibration_ranks.png", verdict, N, L,
                           f"SBC rank histograms, verdict quantities ({N} datasets, {L} draws each; 99% band)"),
           ecdf_differences(plots / "calibration_ecdf.png", verdict, N, L, null,
                            "ECDF(rank) - uniform, simultaneous 95% band"),
           recovery_plot(plots / "calibration_recovery.png", [r for r in verdict if r["kind"] != "joint"],
                         "recovery: posterior z-score vs contraction, one dot per dataset (clipped)")]
    if other:
        out += [rank_histograms(plots / "calibration_ranks_rotation_dependent.png", other, N, L,
                                "SBC rank histograms, rotation-dependent quantities (not in the verdict)"),
                ecdf_differences(plots / "calibration_ecdf_rotation_dependent.png", other, N, L, null,
                                 "ECDF(rank) - uniform, rotation-dependent quantities")]
    return out


# --- text ------------------------------------------------------------------------------------------------
def format_report(report: dict) -> str:
    """The report as a table: one row per quantity (verdict quantities first), then the verdict."""
    s, sim, v = report["settings"], report.get("simulation", {}), report["verdict"]
    lines = [f"SBC: {s['num_datasets']} datasets x {s['chains']} chains ({s['algorithm']}), "
             f"{s['pooled_draws']} pooled draws per dataset (thin {s['thin']})"]
    if sim:
        lines.append(f"simulated from the prior: T = {sim['num_timesteps']}, {sim['draws']} draws, "
                     f"{100 * sim['rejected_fraction']:.0f}% redrawn (observed |y| > {sim['max_abs_emission']:g}); "
                     f"{100 * sim['explosive_fraction_of_draws']:.0f}% of prior draws and "
                     f"{100 * sim['explosive_fraction_kept']:.0f}% of kept datasets have explosive F")
    levels = [f"{round(100 * q)}" for q in LEVELS]
    width = max(len(r["name"]) for r in report["quantities"]) + 2
    lines.append(f"{'quantity':<{width}}{'kind':<20}{'p(ECDF)':>8}{'p(Holm)':>8}{'p(chi2)':>8}"
                 + "".join(f"{'cov' + q:>7}" for q in levels))
    for row in sorted(report["quantities"], key=lambda r: not r["in_verdict"]):
        holm_p = f"{row['p_holm']:.3f}" if "p_holm" in row else "-"
        cov = "".join(f"{row['coverage'][q]['fraction']:>7.2f}" for q in levels)
        lines.append(f"{row['name']:<{width}}{row['kind']:<20}{row['p_value']:>8.3f}{holm_p:>8}"
                     f"{row['p_chi2']:>8.3f}{cov}")
    lines.append(("PASS" if v["passed"] else "FAIL") + f": {v['method']}"
                 + ("" if v["passed"] else f"; non-uniform: {', '.join(v['failing'])}"))
    rd = RunDir(s["run_dir"])
    lines.append(f"report: {rd.calibration_report}; plots: {rd.plots}/calibration_*.png")
    return "\n".join(lines)
