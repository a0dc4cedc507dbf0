"""The run's floating-point precision and JAX's process-wide settings: one place for both."""
from __future__ import annotations

import functools
import hashlib
import os
import platform
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

#: ``[sampler] dtype`` -> the numpy dtype of every array handed to the compiled programs.
DTYPES = {"float64": np.float64, "float32": np.float32}


def numpy_dtype(name: str) -> type:
    return DTYPES[name]


@functools.cache
def host_fingerprint(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """12 hex digits naming this host's CPU for the compilation cache: its model name and instruction
    set flags (``/proc/cpuinfo``; the machine and processor names where that is unreadable).

    XLA's cache key does not include the host CPU's features: an XLA:CPU entry compiled on one CPU
    and loaded on another only gets a warning ("... could lead to execution errors such as SIGILL",
    openxla/xla issue 44565).  Keying the cache directory by this fingerprint means a node whose home
    directory is shared with other CPU models never loads their code."""
    try:
        lines = cpuinfo.read_text().splitlines()
        wanted = ("model name", "flags", "Features", "CPU implementer", "CPU part")
        text = "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))
    except OSError:
        text = ""
    text = text or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def configure_jax(dtype: str) -> None:
    """Process-wide JAX settings for a run (call before any model is built): precision, and a
    persistent compilation cache (``$JAX_COMPILATION_CACHE_DIR``, default ``~/.cache/sampler/xla``,
    in a subdirectory per host CPU: ``host_fingerprint``) so that resuming or re-running a config
    does not pay the compile again (measured: docs/performance.md, "Compilation cache")."""
    jax.config.update("jax_enable_x64", dtype == "float64")
    base = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path.home() / ".cache" / "sampler" / "xla")
    keyed = str(Path(base) / f"cpu-{host_fingerprint()}")
    if jax.config.jax_compilation_cache_dir != keyed:
        # a compile at import time (dynamax's PRNGKey default argument) may already have opened the
        # cache at $JAX_COMPILATION_CACHE_DIR itself: start over in the keyed directory
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", keyed)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    unroll_threefry_on_cpu()


@contextmanager
def callers_precision_restored():
    """Give the caller back its ``jax_enable_x64`` on leaving: a run sets it process-wide for its
    dtype (``configure_jax``), and a notebook's own arrays should not turn float32 (or float64)
    because it called ``sampler.run``.  Compiled programs are keyed by the setting, so switching
    it back costs nothing."""
    previous = jax.config.jax_enable_x64
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def unroll_threefry_on_cpu() -> None:
    """Lower ``threefry2x32`` on CPU with jax's own unrolled rule (the one other backends use) instead
    of its rolled 5-iteration loop: the same random bits, but under vmap each draw becomes one fused
    kernel instead of a loop of small ones; a Gibbs sweep makes dozens of draws, and random numbers
    were its largest single cost (1.4x on draws, docs/performance.md).  The names are jax 0.9.2's
    private ones (jax is pinned); where they are missing the default lowering stays."""
    try:
        from jax._src import prng
        from jax.interpreters import mlir
        mlir.register_lowering(prng.threefry2x32_p, prng._threefry2x32_lowering_rule, platform="cpu")
    except (ImportError, AttributeError):
        pass
