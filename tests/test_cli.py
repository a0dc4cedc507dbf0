"""CLI contract: bad input -> one line, exit 2, nothing written; run/status/summary; the store layout."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from helpers import cli, cli_here, simulate, write_config


def assert_bad_input(tmp_path, config: Path, *needles, extra=(), subprocess=False):
    """``subprocess``: through a real ``python -m sampler`` (its exit status and stderr), else in this process."""
    res = (cli if subprocess else cli_here)("run", config, *extra, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("sampler: error: "), lines[0]
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
    assert_bad_input(tmp_path, cfg, "c.toml" if case in ("unknown_key", "mistyped_key") else "", *needles, extra=extra,
                     subprocess=case == "rank")


def test_run_status_summary_and_store_layout(tmp_path):
    import arviz as az
    import jax
    import jax.numpy as jnp
    from dynamax.linear_gaussian_ssm import (LinearGaussianConjugateSSM, ParamsLGSSM, ParamsLGSSMDynamics,
                                             ParamsLGSSMEmissions, ParamsLGSSMInitial)
    from sampler.analysis import diagnostics
    from sampler.storage.rundir import RunDir, format_status
    data = simulate(3, num_sequences=2)
    data["emissions"][0, 1, 5] = np.nan       # a missing row
    data["emissions"][2, 0, 7, 1] = np.nan    # a partly missing row
    np.savez(tmp_path / "d.npz", **data)
    cfg = write_config(tmp_path / "c.toml", "d.npz", run={"shard_size": 2})
    res = cli("run", cfg, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "run"
    summary = diagnostics.summarize(run_dir)
    # `run` prints the diagnostics table of what it stored (20 rows at most), then the run dir
    table = diagnostics.format_table(summary, limit=20)
    assert res.stdout.splitlines() == table.splitlines() + [f"run dir: {run_dir.resolve()}"], res.stdout
    # status: 2 shards of shard_size 2 over 3 datasets, 30 draws each, checkpoints every 10 of which
    # the last keep_checkpoints (default 2) are kept; the same as RunDir.shard_progress
    st = cli_here("status", run_dir, "--json")
    assert st.returncode == 0, st.stderr
    expected = [{"shard": 0, "datasets": [0, 2], "warmup_done": True, "draws_done": 30, "checkpoints": [20, 30],
                 "failures": 0},
                {"shard": 1, "datasets": [2, 3], "warmup_done": True, "draws_done": 30, "checkpoints": [20, 30],
                 "failures": 0}]
    assert json.loads(st.stdout) == expected == RunDir(run_dir).shard_progress()
    text = cli_here("status", run_dir).stdout
    assert text == format_status(RunDir(run_dir)) + "\n"
    assert text.splitlines()[1:] == [f"{0:>5} {'0-1':>15} {'done':>6} {30:>6}/{30:<6} {'20,30':>20} {0:>8}",
                                     f"{1:>5} {'2-2':>15} {'done':>6} {30:>6}/{30:<6} {'20,30':>20} {0:>8}",
                                     "2 of 2 shards complete"]
    # summary: the same numbers as summarize() in this process (json round-trips floats exactly; the
    # Gibbs sampler has no step size, NaN, which assert_equal takes as equal to NaN)...
    sm = json.loads(cli_here("summary", run_dir, "--json").stdout)
    np.testing.assert_equal(sm, summary)
    assert sm["algorithm"] == "gibbs" and sm["quantities"] == ["emissions_cov"]
    # store layout (SPEC)
    tree = xr.open_datatree(run_dir / "samples.zarr", engine="zarr")
    post = tree["posterior"]
    assert post["emissions_cov"].dims == ("chain", "draw", "dataset", "emission", "emission_col")
    assert post["emissions_cov"].shape == (2, 30, 3, 2, 2)
    assert set(post.data_vars) >= {"initial_mean", "initial_cov", "dynamics_weights", "dynamics_bias",
                                   "dynamics_input_weights", "dynamics_cov", "emissions_weights",
                                   "emissions_bias", "emissions_input_weights", "emissions_cov"}
    assert post["dynamics_input_weights"].shape == (2, 30, 3, 1, 0)   # input_dim 0
    R = post["emissions_cov"].values
    np.testing.assert_array_equal(R, np.swapaxes(R, -1, -2))          # symmetric...
    assert (np.linalg.eigvalsh(R) > 0).all()                          # ...positive definite draws
    stats = tree["sample_stats"]
    for name in ("lp", "acceptance_rate", "diverging", "step_size", "n_steps", "energy"):
        assert stats[name].dims == ("chain", "draw", "dataset")
    # ...and those of arviz (R-hat, bulk / tail ESS over R's distinct entries) and of the stored stats
    ds = tree["posterior"].to_dataset()[["emissions_cov"]]
    rhat = az.rhat(ds, method="rank")["emissions_cov"]
    assert rhat.dims == ("dataset", "emission", "emission_col")
    bulk, tail = (az.ess(ds, method=m)["emissions_cov"].values for m in ("bulk", "tail"))
    low = np.tril_indices(2)
    assert [r["dataset"] for r in sm["datasets"]] == [0, 1, 2]
    for d, row in enumerate(sm["datasets"]):
        assert row["draws"] == 30
        assert row["max_rhat"] == pytest.approx(rhat.values[d][low].max(), rel=1e-9)
        assert row["min_ess_bulk"] == pytest.approx(bulk[d][low].min(), rel=1e-9)
        assert row["min_ess_tail"] == pytest.approx(tail[d][low].min(), rel=1e-9)
        assert row["divergences"] == int(stats["diverging"].values[:, :, d].sum())
        assert row["acceptance_rate"] == pytest.approx(stats["acceptance_rate"].values[:, :, d].mean(), rel=1e-12)
        assert row["step_size"] == pytest.approx(stats["step_size"].values[:, :, d].mean(), rel=1e-12, nan_ok=True)
    passing = sum(r["max_rhat"] < 1.01 and r["min_ess_bulk"] > 400 for r in sm["datasets"])
    assert sm["aggregate"] == {"datasets": 3, "diagnosed": 3, "passing": passing, "rhat_threshold": 1.01,
                               "ess_threshold": 400.0,
                               "with_divergences": sum(r["divergences"] > 0 for r in sm["datasets"])}
    # lp = log prior + log likelihood, here against dynamax's own prior and filter for dataset 1 (no
    # missing entries: dynamax's filter takes no NaN), both sequences, at one stored draw (dynamax runs
    # eagerly here, seconds per draw; test_model checks the log density itself at many points)
    ssm = LinearGaussianConjugateSSM(1, 2)
    y = data["emissions"][1]
    for c, k in ((1, 17),):
        v = {name: jnp.asarray(post[name].values[c, k, 1]) for name in post.data_vars}
        params = ParamsLGSSM(
            initial=ParamsLGSSMInitial(mean=v["initial_mean"], cov=v["initial_cov"]),
            dynamics=ParamsLGSSMDynamics(weights=v["dynamics_weights"], bias=v["dynamics_bias"],
                                         input_weights=v["dynamics_input_weights"], cov=v["dynamics_cov"]),
            emissions=ParamsLGSSMEmissions(weights=v["emissions_weights"], bias=v["emissions_bias"],
                                           input_weights=v["emissions_input_weights"], cov=v["emissions_cov"]))
        with warnings.catch_warnings():  # dynamax's log_prior (tfp) passes None to jnp.shape: a DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            prior = float(jax.jit(ssm.log_prior)(params))  # eager tfp takes ~12 s
        want = prior + sum(float(ssm.marginal_log_prob(params, jnp.asarray(y[m]))) for m in range(2))
        assert float(stats["lp"].values[c, k, 1]) == pytest.approx(want, rel=1e-8)  # dynamax adds 1e-9 to diagonals
    obs = tree["observed_data"]["emissions"]
    assert obs.dims == ("dataset", "sequence", "time", "emission")
    np.testing.assert_array_equal(obs.values, data["emissions"])
    assert (run_dir / "config.toml").is_file() and (run_dir / "checkpoints").is_dir()


def test_status_and_summary_reject_non_run_dir(tmp_path):
    from sampler.storage.rundir import RunDir
    for cmd in ("status", "summary"):
        res = cli_here(cmd, tmp_path)
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr == f"sampler: error: {tmp_path}: not a sampler run dir (no {RunDir.RUN_FILE})\n", res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
