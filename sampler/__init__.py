"""sampler: batched Bayesian posterior sampling for many linear Gaussian state-space models.

Python API::

    import sampler
    run_dir = sampler.run("config.toml", sampler__num_draws=200)   # -> pathlib.Path
    tree = sampler.open_run(run_dir)                               # -> xarray.DataTree
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

__version__ = "0.1.0"


def run(config_or_path: Union[str, Path, "sampler.config.Config"], *, progress: bool = True,
        **overrides) -> Path:
    """Sample every dataset of a config (a TOML path or a ``Config``); resumes an existing run dir.

    ``overrides`` are dotted config keys with ``__`` for the dots, e.g. ``sampler__num_draws=200``,
    ``run__workers=0``.  Returns the run dir.
    """
    from sampler import config, driver
    if isinstance(config_or_path, config.Config):
        raw = config_or_path.model_dump()
        for key, value in overrides.items():
            *parents, leaf = key.split("__")
            node = raw
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        cfg = config.from_dict(raw)
    else:
        cfg = config.load(config_or_path, **overrides)
    return driver.execute(cfg, progress=progress)


def open_run(run_dir: Union[str, Path]):
    """The run's ``samples.zarr`` as an ``xarray.DataTree`` (posterior, sample_stats, observed_data)."""
    from sampler import store
    from sampler.runner import STORE
    return store.open_tree(Path(run_dir) / STORE)
