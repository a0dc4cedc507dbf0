"""Shared fixtures (the helpers they use are in ``helpers.py``)."""
from __future__ import annotations

from pathlib import Path

import sampler  # noqa: F401  (first: its XLA settings must precede JAX's backend start, as in the CLI)
import jax
import numpy as np
import pytest

from helpers import simulate

jax.config.update("jax_enable_x64", True)  # reference comparisons are in float64


@pytest.fixture(autouse=True)
def _float64_by_default():
    """The engine sets jax's x64 process-wide for a run's dtype (``precision.configure_jax``; only the
    public ``sampler.run`` / ``sampler.forecast`` restore it): each test starts in float64 again, so
    data a later test simulates is not float32 by accident of order."""
    jax.config.update("jax_enable_x64", True)


#: the test files that take longest (minutes: Ray clusters, object store, several CLI runs), measured
#: on 2 cores.  pytest-xdist's `--dist loadfile` hands files out in collection order, so these go
#: first and the short files fill in at the end; in alphabetical order a long file handed out last
#: left one worker idle for minutes.
LONGEST_FIRST = ["test_distributed.py", "test_object_store.py", "test_environment_errors.py",
                 "test_resume.py", "test_cli.py", "test_forecast.py", "test_calibrate.py", "test_scheduling.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept within


@pytest.fixture
def small_data(tmp_path) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **simulate(3))
    return path
