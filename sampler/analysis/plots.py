"""PNG figures of a run under ``DIR/plots/`` (matplotlib, Agg backend), drawn like the seed notebook's.

* ``forecast_<i>.png`` (``forecast_<i>_seq<j>.png`` with sequences): observed emissions, smoothed
  mean +-2 sd, forecast mean +-2 sd and the line dividing them, one emission dimension per offset row.
* ``lp_<i>.png``: log probability (``sample_stats.lp``) per chain against the draw, with the value at
  the true parameters when the data file has ``true_<leaf>`` arrays for every leaf.
* ``diagnostics.png``: across datasets, histograms of max R-hat and min bulk ESS with the 1.01 / 400
  thresholds, and of divergences.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence

import jax.numpy as jnp
import matplotlib
import numpy as np
import zarr

matplotlib.use("Agg")  # files only, never a display; before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sampler.analysis import diagnostics  # noqa: E402
from sampler.core.leaves import LEAVES  # noqa: E402
from sampler.core.model import params_from_leaves  # noqa: E402
from sampler.execution.runner import RunContext  # noqa: E402
from sampler.storage.data import to_data_scale  # noqa: E402
from sampler.storage.files import atomic_write  # noqa: E402
from sampler.storage.location import location  # noqa: E402
from sampler.storage.rundir import RunDir  # noqa: E402

#: emission dimensions drawn in a forecast figure, and sequences of a dataset drawn.
MAX_DIMS, MAX_SEQUENCES = 10, 4


def _offset(observed: np.ndarray) -> float:
    """Vertical spacing between emission rows: twice the largest per-dimension sd, rounded up to
    one significant digit (4 for the seed data, as in the notebook)."""
    sd = float(np.nanmax(np.nanstd(observed, axis=0)))
    if not np.isfinite(sd) or sd == 0.0:
        return 1.0
    x = 2.0 * sd
    scale = 10.0 ** np.floor(np.log10(x))
    return float(np.ceil(x / scale) * scale)


def emissions_and_forecast(path: Path, observed, smooth_mean, smooth_std, forecast_mean, forecast_std,
                           title: str = "") -> Path:
    """The seed's ``plot_emissions_and_forecast``; each dimension is centred on its observed mean and
    drawn at offset ``spc * i``.

    Args:
        observed, smooth_mean, smooth_std: (T, D) (observed NaN = missing).
        forecast_mean, forecast_std: (H, D).
    """
    T, D = observed.shape
    H = forecast_mean.shape[0]
    dims = min(D, MAX_DIMS)
    centre = np.nan_to_num(np.nanmean(observed, axis=0))
    spc = _offset(observed[:, :dims])
    t_obs, t_fc = np.arange(T), np.arange(T, T + H)
    fig, ax = plt.subplots(figsize=(9, max(4.5, 1.5 + 0.6 * dims)))
    for i in range(dims):
        off = spc * i - centre[i]
        ax.plot(t_obs, observed[:, i] + off, "--k", label="observed" if i == 0 else None)
        ln = ax.plot(t_obs, smooth_mean[:, i] + off, label="smoothed" if i == 0 else None)[0]
        ax.fill_between(t_obs, off + smooth_mean[:, i] - 2 * smooth_std[:, i],
                        off + smooth_mean[:, i] + 2 * smooth_std[:, i], color=ln.get_color(), alpha=0.25)
        ax.plot(t_fc, forecast_mean[:, i] + off, ls=":", c=ln.get_color(), label="forecast" if i == 0 else None)
        ax.fill_between(t_fc, off + forecast_mean[:, i] - 2 * forecast_std[:, i],
                        off + forecast_mean[:, i] + 2 * forecast_std[:, i], color=ln.get_color(), alpha=0.25)
    ax.axvline(T, color="black", linestyle="-", lw=2)
    ax.set_xlabel("time")
    ax.set_xlim(0, T + H - 1)
    ax.set_ylabel("emissions")
    ax.set_yticks(spc * np.arange(dims), [f"dim. {i}" for i in range(dims)])
    ax.legend(loc="upper left")
    ax.grid(True)
    ax.set_title(title + (f" (dims 0-{dims - 1} of {D})" if dims < D else ""))
    return save_figure(fig, path)


def decomposition(path: Path, observed, smooth_mean, smooth_std, forecast_mean, forecast_std,
                  component_mean, component_std, names, title: str = "") -> Path:
    """The structural decomposition of one emission (statsmodels' ``plot_components``): observed
    with the smoothed fit and the forecast, then each component's smoothed contribution, +-2 sd.

    Args:
        observed, smooth_mean, smooth_std: (T,).  forecast_mean, forecast_std: (H,).
        component_mean, component_std: (T, K).  names: K component names.
    """
    T, H, K = observed.shape[0], forecast_mean.shape[0], len(names)
    t_obs, t_fc = np.arange(T), np.arange(T, T + H)
    fig, axes = plt.subplots(K + 1, 1, figsize=(9, 2.2 * (K + 1)), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(t_obs, observed, "k.", ms=3, label="observed")
    for t, m, s, label in ((t_obs, smooth_mean, smooth_std, "smoothed"), (t_fc, forecast_mean, forecast_std, "forecast")):
        ln = ax.plot(t, m, label=label)[0]
        ax.fill_between(t, m - 2 * s, m + 2 * s, color=ln.get_color(), alpha=0.25)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    for k in range(K):
        a = axes[k + 1, 0]
        m, s = component_mean[:, k], component_std[:, k]
        a.plot(t_obs, m, color=f"C{k + 2}")
        a.fill_between(t_obs, m - 2 * s, m + 2 * s, color=f"C{k + 2}", alpha=0.25)
        a.set_ylabel(names[k], fontsize=8)
    for a in axes[:, 0]:
        a.axvline(T, color="black", lw=1)
        a.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time")
    return save_figure(fig, path)


def lp_trace(path: Path, lp, true_lp: Optional[float] = None, title: str = "") -> Path:
    """The seed's log-probability trace, one line per chain.  lp: (chains, draws)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c, trace in enumerate(lp):
        ax.plot(trace, lw=0.8, alpha=0.8, label=f"chain {c}")
    if true_lp is not None:
        ax.axhline(true_lp, color="black", linestyle="--", label="true parameters")
    ax.set_xlabel("iteration")
    ax.set_ylabel("log probability")
    ax.legend()
    ax.set_title(title)
    return save_figure(fig, path)


def diagnostics_overview(path: Path, summary: dict) -> Path:
    """Histograms across datasets of max R-hat, min bulk ESS and divergences (``diagnostics.summarize``)."""
    rows = [r for r in summary["datasets"] if "max_rhat" in r]
    agg = summary["aggregate"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    rhat = np.array([r["max_rhat"] for r in rows], dtype=float)
    ess = np.array([r["min_ess_bulk"] for r in rows], dtype=float)
    div = np.array([r["divergences"] for r in rows], dtype=float)
    for ax, values, threshold, label in ((axes[0], rhat, agg["rhat_threshold"], "max R-hat"),
                                         (axes[1], ess, agg["ess_threshold"], "min bulk ESS")):
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = min(finite.min(), threshold), max(finite.max(), threshold)
            ax.hist(finite, bins=np.linspace(lo, hi + 1e-9 * max(1.0, abs(hi)), 31), color="C0")
        ax.axvline(threshold, color="C3", linestyle="--", label=f"threshold {threshold:g}")
        ax.set_xlabel(label)
        ax.set_ylabel("datasets")
        ax.legend()
    axes[2].hist(div, bins=np.arange(0, max(1, div.max() if div.size else 0) + 2) - 0.5, color="C1")
    axes[2].set_xlabel("divergences (all chains)")
    axes[2].set_ylabel("datasets")
    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{agg['passing']} of {agg['datasets']} datasets pass (R-hat < {agg['rhat_threshold']}, "
                 f"bulk ESS > {agg['ess_threshold']:.0f}); {agg['with_divergences']} with divergences; "
                 f"over {', '.join(summary['quantities'])}")
    return save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write atomically (``files.atomic_write``: local or object store) and close a figure."""
    path = location(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def true_log_prob(ctx, dataset: int) -> Optional[float]:
    """log prior + log likelihood at the data file's true parameters of one dataset, or None when the
    file does not hold ``true_<leaf>`` for every leaf."""
    truth = ctx.data.true_values
    if any(leaf not in truth for leaf in LEAVES):
        return None
    params = params_from_leaves({leaf: jnp.asarray(truth[leaf][dataset]) for leaf in LEAVES})
    inputs = None if ctx.data.inputs is None else jnp.asarray(ctx.data.inputs[dataset])
    return float(ctx.model.log_joint(params, jnp.asarray(ctx.data.emissions[dataset]), inputs))


def _decompositions(out_dir: Path, fc, parts: dict, y, dataset: int, sequence: Optional[int], title: str) -> list[Path]:
    """``decomposition_<dataset>[_seq<j>]_e<emission>.png`` for the first MAX_DIMS emissions."""
    pick = (dataset,) if sequence is None else (dataset, sequence)
    cm, cs = fc["component_mean"][pick], fc["component_std"][pick]        # (T, K, D)
    names = [str(x) for x in fc["component"][:]]
    j = 0 if sequence is None else sequence
    out = []
    for e in range(min(y.shape[1], MAX_DIMS)):
        stem = f"decomposition_{dataset}" + ("" if sequence is None else f"_seq{sequence}") + f"_e{e}.png"
        out.append(decomposition(out_dir / stem, y[:, e], parts["smooth_mean"][j][:, e], parts["smooth_std"][j][:, e],
                                 parts["forecast_mean"][j][:, e], parts["forecast_std"][j][:, e],
                                 cm[:, :, e], cs[:, :, e], names, title=f"{title}, emission {e}"))
    return out


def plot_run(run_dir: Path, datasets: Sequence[int], ctx=None) -> list[Path]:
    """Write the diagnostics overview and, for each of ``datasets``, the forecast and lp figures.

    Reads group ``forecast`` (written by ``sampler.analysis.forecast.forecast_run``), ``observed_data`` and
    ``sample_stats.lp`` (the draws stored so far).  Returns the paths written.
    """
    rd = RunDir(run_dir)
    out_dir = rd.plots
    written = [diagnostics_overview(out_dir / "diagnostics.png", diagnostics.summarize(rd.path))]
    if not datasets:
        return written
    ctx = ctx or RunContext.from_run_dir(rd.path)
    root = zarr.open_group(str(rd.store), mode="r")
    fc = root["forecast"]
    seq = ctx.data.has_sequences
    done = rd.draws_available()
    for i in datasets:
        y = ctx.data.emissions[i]  # (M, T, D), standardised when [data] standardize is on
        if ctx.data.scale is not None:
            y = to_data_scale(y[None], ctx.data.center[i:i + 1], ctx.data.scale[i:i + 1])[0]
        parts = {k: fc[k][i] if seq else fc[k][i][None] for k in
                 ("smooth_mean", "smooth_std", "forecast_mean", "forecast_std")}
        for j in range(min(y.shape[0], MAX_SEQUENCES)):
            name = f"forecast_{i}_seq{j}.png" if seq else f"forecast_{i}.png"
            title = f"dataset {i}" + (f", sequence {j}" if seq else "")
            written.append(emissions_and_forecast(
                out_dir / name, y[j], parts["smooth_mean"][j], parts["smooth_std"][j],
                parts["forecast_mean"][j], parts["forecast_std"][j], title=title))
            if "component_mean" in fc:
                written += _decompositions(out_dir, fc, parts, y[j], i, j if seq else None, title)
        lp = root["sample_stats"]["lp"][:, :done, i]
        written.append(lp_trace(out_dir / f"lp_{i}.png", lp, true_log_prob(ctx, i), title=f"dataset {i}"))
    return written
