"""The run's floating-point precision and JAX's process-wide settings: one place for both."""
from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

#: ``[sampler] dtype`` -> the numpy dtype of every array handed to the compiled programs.
DTYPES = {"float64": np.float64, "float32": np.float32}


def numpy_dtype(name: str) -> type:
    return DTYPES[name]


def configure_jax(dtype: str) -> None:
    """Process-wide JAX settings for a run (call before any model is built): precision, and a
    persistent compilation cache (``$JAX_COMPILATION_CACHE_DIR``, default ``~/.cache/sampler/xla``)
    so that resuming or re-running a config does not pay the compile again."""
    jax.config.update("jax_enable_x64", dtype == "float64")
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path.home() / ".cache" / "sampler" / "xla")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
