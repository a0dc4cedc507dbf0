"""A structural model end to end: run, summary, forecast, the resolved config; a bad config's exit."""
import numpy as np
import pytest

from helpers import cli_here
from sampler.analysis import diagnostics
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
path = "d.csv"
dataset = "unique_id"
time = "ds"
emissions = ["y"]
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


def test_structural_run_summary_forecast_frame_end_to_end(tmp_path):
    """A statsforecast-style ``unique_id, ds, y`` table in, a frozen variable held at its value,
    posterior variables, components summing to the smoothed mean, a decomposition plot, and a
    statsforecast-style frame out."""
    import pandas as pd
    import xarray as xr
    import sampler
    rng = np.random.default_rng(0)
    t = np.arange(48)
    dates = pd.date_range("2000-01-01", periods=48, freq="QS")
    y = np.stack([np.cumsum(0.1 * rng.normal(size=48)) + 0.05 * t + np.tile([1, 0, -1, 0.5], 12) for _ in range(3)])
    pd.DataFrame([{"unique_id": f"s{i}", "ds": d.date().isoformat(), "y": y[i, k]}
                  for i in range(3) for k, d in enumerate(dates) if (i, k) != (1, 10)]).to_csv(tmp_path / "d.csv", index=False)
    # the data's quarterly pattern is fixed: its sd frozen at 0 (model.frozen + model.init)
    frozen = 'frozen = ["quarterly_sd"]\n[model.init]\nquarterly_sd = 0.0\nlevel_sd = 0.2\n'
    (tmp_path / "c.toml").write_text(STRUCTURAL_CONFIG.format(extra=frozen))
    sampler.run(tmp_path / "c.toml")   # in-process: a CLI call would import JAX again
    summary = diagnostics.summarize(tmp_path / "run")
    assert summary["quantities"] == ["level_sd", "obs_sd", "slope_sd"]   # not the frozen one
    result = sampler.forecast(tmp_path / "run", horizon=8, plot=[1])
    assert str(tmp_path / "run" / "plots" / "decomposition_1_e0.png") in result["plots"]
    tree = xr.open_datatree(tmp_path / "run" / "samples.zarr", engine="zarr")
    post = tree["posterior"]
    assert set(post.data_vars) == {"level_sd", "slope_sd", "quarterly_sd", "obs_sd"}
    assert post["slope_sd"].dims == ("chain", "draw", "dataset", "emission")
    assert (post["obs_sd"] > 0).all() and (post["quarterly_sd"].values == 0.0).all()
    # the table's dataset names are the store's dataset coordinate, in every group
    assert list(post["obs_sd"]["dataset"].values) == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(post["obs_sd"].sel(dataset="s1"), post["obs_sd"].isel(dataset=1))
    fc = tree["forecast"]
    assert list(fc["smooth_mean"]["dataset"].values) == ["s0", "s1", "s2"]
    assert list(fc["component"].values) == ["local_linear_trend", "quarterly"]
    assert fc["component_mean"].dims == ("dataset", "time", "component", "emission")
    # on the data scale (standardised data; the centre goes with the first component)
    np.testing.assert_allclose(fc["component_mean"].sum("component"), fc["smooth_mean"], rtol=1e-10, atol=1e-10)
    assert float(np.abs(fc["smooth_mean"].values[:, :, 0] - y).max()) < 1.0
    # trend + fixed quarterly pattern: the forecast continues the pattern
    f = fc["forecast_mean"].values[:, :, 0]
    np.testing.assert_allclose(f[:, 4:], y[:, -4:] + 0.05 * 8, atol=1.0)
    # statsforecast's layout, dates continued quarterly, limits nested around the mean
    frame = sampler.forecast_frame(tmp_path / "run", levels=(80, 95))
    assert list(frame.columns) == ["unique_id", "ds", "sampler", "sampler-lo-95", "sampler-lo-80",
                                   "sampler-hi-80", "sampler-hi-95"]
    assert list(frame["unique_id"].unique()) == ["s0", "s1", "s2"] and len(frame) == 24
    np.testing.assert_array_equal(frame["ds"].iloc[:8], pd.date_range("2012-01-01", periods=8, freq="QS"))
    np.testing.assert_allclose(frame["sampler"].to_numpy().reshape(3, 8), f)
    assert (frame["sampler-lo-95"] < frame["sampler-lo-80"]).all() and (frame["sampler-hi-80"] < frame["sampler-hi-95"]).all()
    # the resolved config round-trips, components included
    again = config_mod.load(tmp_path / "run" / "config.toml")
    assert [c.kind for c in again.model.components] == ["local_linear_trend", "seasonal"]
    assert again.model.components[0].priors == {"slope_sd": 0.05} and again.model.state_dim == 5
    assert again.model.frozen == ["quarterly_sd"] and again.model.init == {"quarterly_sd": 0.0, "level_sd": 0.2}


def _quarterly_table(path, n=2, T=40, seed=1):
    import pandas as pd
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2000-01-01", periods=T, freq="QS")
    rows = [{"unique_id": f"s{i}", "ds": d.date().isoformat(),
             "y": 0.1 * k + [1, 0, -1, 0.5][k % 4] + 0.3 * rng.normal()} for i in range(n) for k, d in enumerate(dates)]
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.mark.parametrize("extra, message", [
    ('frozen = ["damping"]\n', "model.frozen: unknown variable 'damping'; the components' are level_sd, obs_sd"),
    ('frozen = ["obs_sd"]\n', "model.frozen: obs_sd needs a value: model.init.obs_sd or init_obs_sd"),
    ('[model.init]\nobs_sd = [0.1, 0.2]\n', "model.init.obs_sd: [0.1, 0.2] does not fit shape (1,)"),
    ('[model.init]\nslope_sd = 0.0\n', "model.init.slope_sd: a standard deviation must be > 0"),
])
def test_bad_frozen_or_init_is_a_one_line_error(tmp_path, extra, message):
    """In-process (the CLI turns a UserError into one line and exit 2: the test below)."""
    from sampler.errors import UserError
    from sampler.storage import data as data_mod
    _quarterly_table(tmp_path / "d.csv")
    (tmp_path / "c.toml").write_text(STRUCTURAL_CONFIG.format(extra=extra))
    with pytest.raises(UserError) as err:
        data_mod.load(config_mod.load(tmp_path / "c.toml"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_component_config_exits_2_from_the_cli(tmp_path):
    (tmp_path / "c.toml").write_text(STRUCTURAL_CONFIG.format(extra="state_dim = 3"))
    res = cli_here("run", "c.toml", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "state_dim = 3 but the components have 5" in res.stderr
    assert not (tmp_path / "run").exists()


def test_simulate_and_calibrate_refuse_structural_models_in_one_line(tmp_path):
    from sampler.analysis import calibrate
    from sampler.errors import UserError
    (tmp_path / "c.toml").write_text(STRUCTURAL_CONFIG.format(extra=""))
    res = cli_here("simulate", "c.toml", "--out", "s.npz", "--num-datasets", "2", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "structural models (model.components) are not supported yet" in res.stderr
    cfg = config_mod.load(tmp_path / "c.toml", run__dir=str(tmp_path / "study"))
    with pytest.raises(UserError, match="structural models"):
        calibrate.calibrate(cfg, num_datasets=2, progress=False)
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "study").exists()
