"""sampler: batched Bayesian posterior sampling for many linear Gaussian state-space models.

Python API::

    import sampler
    run_dir = sampler.run("config.toml", sampler__num_draws=200)   # -> pathlib.Path
    tree = sampler.open_run(run_dir)                               # -> xarray.DataTree
    sampler.forecast(run_dir, horizon=8)                           # `sampler forecast`: group "forecast"
    sampler.kalman.marginal_log_prob(params, emissions)            # dynamax's lgssm_filter loglik
    frame = sampler.forecast_frame(run_dir, levels=(80, 95))      # after `sampler forecast`: pandas

Layers, each importing only those below it: ``core`` (pure JAX), ``storage`` (files), ``execution``
(scheduling, Ray), ``analysis`` (forecasts, diagnostics, studies), ``bench``; ``cli`` on top.

Every ``sampler`` command imports this module first, so it imports nothing heavy itself: the
functions below import JAX and the layers when called (``sampler status`` and ``--help`` stay fast).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Union

# XLA logs a warning line ("Assume version compatibility") for every executable it loads from the
# persistent compilation cache: noise in a notebook, and before a bad-input error that must be the
# only line on stderr.  Level 2 keeps XLA's errors; imported libraries (and so the environments they
# spawn) often set 1, hence raised rather than defaulted.  It works when sampler is imported before
# jax (every CLI command; in a notebook, import sampler first).
if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0", "1"):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"


def _cap_xla_cpu_isa() -> None:
    """On an AVX-512 host, compile XLA:CPU code for AVX2 (``--xla_cpu_max_isa=AVX2``) unless the user
    chose an ISA.

    Why: for these CPUs XLA records LLVM's tuning preferences ``+prefer-no-gather/-scatter`` among
    the compiled code's "required" features, so every executable loaded from the persistent
    compilation cache logs two error lines ending "This could lead to execution errors such as
    SIGILL" (openxla/xla issue 44565, jax issue 38445), although the code was built on this very
    CPU (the cache directory is keyed by the host CPU, ``sampler.core.precision``).  AVX2 code
    records no such preference: the cache loads silently.  Measured on this project's AVX-512 CPU:
    the Gibbs sweep ran no slower (docs/performance.md, "Compilation cache")."""
    if "xla_cpu_max_isa" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "").split()
    except OSError:
        return
    if "avx512f" in flags and "avx2" in flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_max_isa=AVX2".strip()


def _one_cpu_device_per_core() -> None:
    """Present each usable core as its own XLA:CPU device (``--xla_force_host_platform_device_count``)
    unless the user set a count.

    Why: XLA:CPU runs a Gibbs sweep's many small kernels one after another, so one program over a
    shard's chains keeps about one core busy; split over one device per core (``engine.device_count``)
    the chains run as concurrent programs.  Measured on this project's 2-core CPU: the block program
    1.2-1.7x faster at 64 to 1,024 chains, a run of 256 datasets x 4 chains to
    ESS 400 1.17x warm and 1.24x from a cold compilation cache (95 -> 77 s), the draws bitwise the
    same as on one device (docs/performance.md).
    Only the host platform is affected: on a GPU box the engine still splits over the GPUs."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if cores > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores}".strip()


def _hoist_small_loops() -> None:
    """Compile each XLA:CPU while loop that touches under 64 MiB as one kernel
    (``xla_cpu_small_while_loop_byte_threshold``, 1 KiB by default), unless the user passed
    ``--xla_backend_extra_options``.

    Why: XLA:CPU runs a loop body as one small kernel per fusion, each dispatched on its own: the
    Kalman filter's step is ~29 kernels over (512,) arrays, 100 times per sweep.  XLA's own
    ``SmallWhileLoopHoistingPass`` emits a loop below the threshold (and free of dots, library
    calls and collectives) as one function instead.  Measured on this project's 2-core CPU: the
    seed's filter over 512 sequences 1.1-1.6x faster (1.0x at 4,096), the Gibbs block program about
    6% (10 alternating process pairs), compile time unchanged (docs/performance.md).  CPU only: a
    GPU backend ignores it."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_extra_options" in flags:
        return
    threshold = f"xla_cpu_small_while_loop_byte_threshold={64 << 20}"
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_extra_options={threshold}".strip()


_cap_xla_cpu_isa()
_one_cpu_device_per_core()
_hoist_small_loops()

__version__ = "0.1.0"
__all__ = ["forecast", "forecast_frame", "kalman", "open_run", "run"]


def run(config_or_path, *, progress: bool = True, **overrides) -> Path:
    """Sample every dataset of a config (a TOML path or a ``sampler.storage.config.Config``);
    resumes an existing run dir.

    ``overrides`` are dotted config keys with ``__`` for the dots, e.g. ``sampler__num_draws=200``,
    ``run__workers=0``.  Returns the run dir.  The caller's ``jax_enable_x64`` is as it was on return.
    """
    from sampler.core.precision import callers_precision_restored
    from sampler.execution import driver
    from sampler.storage import config
    if isinstance(config_or_path, config.Config):
        cfg = config.from_dict(config.apply_overrides(config_or_path.model_dump(), settings=overrides))
    else:
        cfg = config.load(config_or_path, **overrides)
    with callers_precision_restored():
        return driver.execute(cfg, progress=progress)


def open_run(run_dir: Union[str, Path]):
    """The run's ``samples.zarr`` as an ``xarray.DataTree`` (posterior, sample_stats, observed_data)."""
    from sampler.storage import store
    from sampler.storage.rundir import RunDir
    return store.open_tree(RunDir(run_dir).store)


def forecast(run_dir: Union[str, Path], horizon: int = 50, *, burn_in: int = 0, thin: int = 1,
             plot=None) -> dict:
    """``sampler forecast``: smooth and forecast every dataset of a run, writing the store's
    ``forecast`` group (``sampler.analysis.forecast.forecast_run``; ``plot``: dataset indices whose
    figures go to ``DIR/plots/``).  Returns what the command prints; the caller's
    ``jax_enable_x64`` is as it was."""
    from sampler.analysis import forecast as forecast_mod
    from sampler.core.precision import callers_precision_restored
    from sampler.storage.rundir import RunDir
    with callers_precision_restored():
        return forecast_mod.forecast_run(RunDir(run_dir).require().path, horizon=horizon, burn_in=burn_in,
                                         thin=thin, plot=plot)


def forecast_frame(run_dir: Union[str, Path], levels=(80, 95)):
    """The run's forecasts (after ``sampler forecast``) as a pandas DataFrame in statsforecast's
    layout: ``unique_id``, ``ds``, ``sampler``, ``sampler-lo-80``, ... (``sampler.analysis.frames``)."""
    from sampler.analysis import frames
    return frames.forecast_frame(run_dir, levels)


def __getattr__(name: str):
    """``sampler.kalman`` without importing JAX before it is used."""
    if name == "kalman":
        return importlib.import_module("sampler.kalman")
    raise AttributeError(f"module 'sampler' has no attribute {name!r}")
