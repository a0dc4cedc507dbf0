"""A structural model end to end: run, summary, forecast, the resolved config; a bad config's exit."""
import numpy as np
import pytest

from helpers import cli
from sampler.analysis import diagnostics, forecast
from sampler.storage import config as config_mod

pytestmark = pytest.mark.timeout(600)

STRUCTURAL_CONFIG = """
[model]
emission_dim = 1
{extra}
[[model.components]]
kind = "local_linear_trend"
priors = {{ slope_sd = 0.05 }}

[[model.components]]
kind = "seasonal"
period = 4
name = "quarterly"

[data]
path = "d.npz"
standardize = true

[sampler]
num_chains = 2
num_warmup = 30
num_draws = 40

[run]
dir = "run"
workers = 0
checkpoint_every = 20
"""


def test_structural_run_summary_forecast_end_to_end(tmp_path):
    import xarray as xr
    rng = np.random.default_rng(0)
    t = np.arange(48)
    y = np.stack([np.cumsum(0.1 * rng.normal(size=48)) + 0.05 * t + np.tile([1, 0, -1, 0.5], 12) for _ in range(3)])
    np.savez(tmp_path / "d.npz", emissions=y[:, :, None])
    (tmp_path / "c.toml").write_text(STRUCTURAL_CONFIG.format(extra=""))
    import sampler
    sampler.run(tmp_path / "c.toml")   # in-process: a CLI call would import JAX again
    summary = diagnostics.summarize(tmp_path / "run")
    assert summary["quantities"] == ["level_sd", "obs_sd", "quarterly_sd", "slope_sd"]
    forecast.forecast_run(tmp_path / "run", horizon=8)
    tree = xr.open_datatree(tmp_path / "run" / "samples.zarr", engine="zarr")
    post = tree["posterior"]
    assert set(post.data_vars) == {"level_sd", "slope_sd", "quarterly_sd", "obs_sd"}
    assert post["slope_sd"].dims == ("chain", "draw", "dataset", "emission")
    assert (post["obs_sd"] > 0).all()
    f = tree["forecast"]["forecast_mean"].values[:, :, 0]
    # trend + fixed quarterly pattern: the forecast continues the pattern on the data scale
    last_cycle = y[:, -4:] + 0.05 * 8
    np.testing.assert_allclose(f[:, 4:], last_cycle, atol=1.0)
    # the resolved config round-trips, components included
    again = config_mod.load(tmp_path / "run" / "config.toml")
    assert [c.kind for c in again.model.components] == ["local_linear_trend", "seasonal"]
    assert again.model.components[0].priors == {"slope_sd": 0.05} and again.model.state_dim == 5


def test_bad_component_config_exits_2_from_the_cli(tmp_path):
    (tmp_path / "c.toml").write_text(STRUCTURAL_CONFIG.format(extra="state_dim = 3"))
    res = cli("run", "c.toml", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "state_dim = 3 but the components have 5" in res.stderr
    assert not (tmp_path / "run").exists()
