"""Shared fixtures (the helpers they use are in ``helpers.py``)."""
from __future__ import annotations

from pathlib import Path

import sampler  # noqa: F401  (first: its XLA settings must precede JAX's backend start, as in the CLI)
import jax
import numpy as np
import pytest

from helpers import simulate

jax.config.update("jax_enable_x64", True)  # reference comparisons are in float64


@pytest.fixture
def small_data(tmp_path) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **simulate(3))
    return path
