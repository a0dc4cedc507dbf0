"""CLI contract: bad input -> one line, exit 2, nothing written; run/status/summary; the store layout."""
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.conftest import cli, simulate, write_config


def assert_bad_input(tmp_path, config: Path, *needles, extra=()):
    res = cli("run", config, *extra, cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def _data(tmp_path, name="d.npz", **arrays):
    np.savez(tmp_path / name, **arrays)
    return name


@pytest.mark.parametrize("case", [
    "rank", "emission_dim", "all_nan", "inf", "missing_file", "unknown_key", "mistyped_key",
    "nonpositive_draws", "zero_chains", "state_dim", "unknown_frozen", "frozen_random_default", "bad_set",
])
def test_bad_input_exit_2_no_output(tmp_path, case):
    good = simulate(3)["emissions"]
    data, extra, needles, sections = "d.npz", (), (), {}
    if case == "rank":
        _data(tmp_path, emissions=good[0])
        needles = ("emissions has shape (40, 2)",)
    elif case == "emission_dim":
        _data(tmp_path, emissions=good[..., :1])
        needles = ("emission_dim",)
    elif case == "all_nan":
        bad = good.copy()
        bad[1] = np.nan
        _data(tmp_path, emissions=bad)
        needles = ("dataset 1", "all NaN")
    elif case == "inf":
        bad = good.copy()
        bad[2, 5, 1] = np.inf
        _data(tmp_path, emissions=bad)
        needles = ("infinite", "dataset 2", "time 5")
    elif case == "missing_file":
        data, needles = "nope.npz", ("data.path", "not found")
    else:
        _data(tmp_path, emissions=good)
    if case == "unknown_key":
        sections, needles = {"sampler": {"num_chain": 2}}, ("sampler.num_chain", "unknown key")
    elif case == "mistyped_key":
        sections, needles = {"run": {"checkpoint_every": "ten"}}, ("run.checkpoint_every",)
    elif case == "nonpositive_draws":
        sections, needles = {"sampler": {"num_draws": 0}}, ("sampler.num_draws",)
    elif case == "zero_chains":
        sections, needles = {"sampler": {"num_chains": 0}}, ("sampler.num_chains",)
    elif case == "unknown_frozen":
        sections, needles = {"model": {"frozen": ["emissions.weight"]}}, ("model.frozen", "emissions.weight")
    elif case == "frozen_random_default":
        sections, needles = {"model": {"frozen": ["emissions.weights"]}}, ("emissions.weights", "init_emissions_weights")
    elif case == "bad_set":
        extra, needles = ("--set", "sampler.num_draws"), ("--set",)
    cfg = write_config(tmp_path / "c.toml", data, **sections)
    if case == "state_dim":
        cfg.write_text(cfg.read_text().replace("state_dim = 1", "state_dim = 0"))
        needles = ("model.state_dim",)
    assert_bad_input(tmp_path, cfg, "c.toml" if case in ("unknown_key", "mistyped_key") else "", *needles, extra=extra)


def test_run_status_summary_and_store_layout(tmp_path):
    data = simulate(3, num_sequences=2)
    data["emissions"][0, 1, 5] = np.nan       # a missing row
    data["emissions"][2, 0, 7, 1] = np.nan    # a partly missing row
    np.savez(tmp_path / "d.npz", **data)
    cfg = write_config(tmp_path / "c.toml", "d.npz", run={"shard_size": 2})
    res = cli("run", cfg, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "run"
    assert "datasets pass" in res.stdout
    # status
    st = cli("status", run_dir, "--json")
    rows = json.loads(st.stdout)
    assert [r["draws_done"] for r in rows] == [30, 30] and [r["datasets"] for r in rows] == [[0, 2], [2, 3]]
    assert "2 of 2 shards complete" in cli("status", run_dir).stdout
    # summary
    sm = json.loads(cli("summary", run_dir, "--json").stdout)
    assert len(sm["datasets"]) == 3 and sm["algorithm"] == "gibbs"
    assert all(np.isfinite(r["max_rhat"]) for r in sm["datasets"])
    # store layout (SPEC)
    tree = xr.open_datatree(run_dir / "samples.zarr", engine="zarr")
    post = tree["posterior"]
    assert post["emissions_cov"].dims == ("chain", "draw", "dataset", "emission", "emission_col")
    assert post["emissions_cov"].shape == (2, 30, 3, 2, 2)
    assert set(post.data_vars) >= {"initial_mean", "initial_cov", "dynamics_weights", "dynamics_bias",
                                   "dynamics_input_weights", "dynamics_cov", "emissions_weights",
                                   "emissions_bias", "emissions_input_weights", "emissions_cov"}
    assert np.isfinite(post["emissions_cov"].values).all()
    stats = tree["sample_stats"]
    for name in ("lp", "acceptance_rate", "diverging", "step_size", "n_steps", "energy"):
        assert stats[name].dims == ("chain", "draw", "dataset")
    assert np.isfinite(stats["lp"].values).all()
    obs = tree["observed_data"]["emissions"]
    assert obs.dims == ("dataset", "sequence", "time", "emission")
    np.testing.assert_array_equal(obs.values, data["emissions"])
    assert (run_dir / "config.toml").is_file() and (run_dir / "checkpoints").is_dir()
    # arviz computes R-hat on it
    import arviz as az
    rhat = az.rhat(tree["posterior"].to_dataset()[["emissions_cov"]])
    assert rhat["emissions_cov"].dims == ("dataset", "emission", "emission_col")


def test_status_and_summary_reject_non_run_dir(tmp_path):
    for cmd in ("status", "summary"):
        res = cli(cmd, tmp_path)
        assert res.returncode == 2 and "not a sampler run dir" in res.stderr
