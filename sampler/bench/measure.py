"""How the benchmark measures and reports: the device, call timing, ESS and R-hat of diag(R), tables."""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Optional, TextIO

import jax
import numpy as np

from sampler.analysis.bulk_ess import bulk_ess
from sampler.analysis.diagnostics import rank_diagnostics


def device_description() -> dict:
    """What the numbers were measured on."""
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device": dev.device_kind, "devices": jax.device_count(),
            "cpu_cores": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__}


def time_calls(fn: Callable, *args, min_seconds: float = 1.0, min_calls: int = 3) -> tuple[float, float]:
    """(first call incl. compilation, mean seconds per later call) of a jitted function."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < min_seconds:
        jax.block_until_ready(fn(*args))
        calls += 1
    return first, (time.perf_counter() - t0) / calls


#: bytes of draws per ``bulk_ess`` call (its sort and FFT temporaries are a few times this).
ESS_CALL_BYTES = 256 * 2 ** 20


def min_bulk_ess(r_diag: np.ndarray) -> np.ndarray:
    """r_diag: (chain, draw, dataset, D) -> (dataset,) minimum over D of the bulk ESS, arviz's
    algorithm (``sampler.analysis.bulk_ess``) on the default device, in float64, in calls of at
    most ``ESS_CALL_BYTES`` of draws: 100,000 datasets are checked on the GPU that sampled them."""
    C, N, K, D = r_diag.shape
    x = np.moveaxis(np.asarray(r_diag, np.float64), (2, 3), (0, 1)).reshape(K * D, C, N)
    rows = max(1, ESS_CALL_BYTES // (C * N * 8))
    with jax.enable_x64(True):
        ess = np.concatenate([np.asarray(bulk_ess(x[a:a + rows])) for a in range(0, K * D, rows)])
    return np.nanmin(ess.reshape(K, D), axis=1)


def max_rhat(r_diag: np.ndarray) -> float:
    """r_diag: (chain, draw, D) -> max over D of the rank-normalised split R-hat (arviz's
    ``rhat(method="rank")``, computed as ``rank_diagnostics`` does, which equals it)."""
    return float(np.nanmax(rank_diagnostics(np.moveaxis(r_diag, -1, 0))[0]))


# --- reporting ---------------------------------------------------------------------------------------
def print_text(out: Optional[TextIO], text: str) -> None:
    """``text`` on ``out`` at once (the parts take minutes); nothing when ``out`` is None."""
    if out is not None:
        print(text, file=out, flush=True)


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """``columns`` of ``rows``, right-aligned; floats to 3 significant digits (below 100) or whole."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
