"""Forecasting from the store (chunked = in memory, per draw = dynamax, missing data, sequences, inputs,
atomic replacement, plots), the vectorised diagnostics against arviz, and (slow) the seed forecast
against dynamax's fit_blocked_gibbs."""
import json
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import sampler
from sampler.analysis import diagnostics
from sampler.analysis import forecast as fc
from sampler.core import predictive
from sampler.core.leaves import LEAVES, store_name
from sampler.core.model import params_from_leaves
from helpers import cli_here, diagnostics_rows, simulate, write_config

PARTS = ("smooth_mean", "smooth_std", "forecast_mean", "forecast_std")
HORIZON = 6  # one compiled pass shape for most tests


# --- references --------------------------------------------------------------------------------------
def per_draw_moments(run_dir, horizon, burn_in=0, thin=1, dataset=None, draws=None):
    """Per-draw emission moments of every retained draw, all in memory: mean and variance
    (datasets, draws, M, T + horizon, D), with the data as the store holds them."""
    tree = sampler.open_run(run_dir)
    post = tree["posterior"]
    y = tree["observed_data"]["emissions"].values
    if "sequence" not in tree["observed_data"]["emissions"].dims:
        y = y[:, None]
    N, M, T, _ = y.shape
    datasets = range(N) if dataset is None else [dataset]
    one = jax.vmap(jax.vmap(predictive.smooth_and_forecast, (None, 0, 0, 0)), (0, None, None, None))
    means, variances = [], []
    for n in datasets:
        leaves = {}
        for leaf in LEAVES:
            v = post[store_name(leaf)].values[:, burn_in:draws:thin, n]  # (C, L, ...)
            leaves[leaf] = jnp.asarray(v.reshape((v.shape[0] * v.shape[1],) + v.shape[2:]))
        mean, var = one(params_from_leaves(leaves), jnp.asarray(y[n]), jnp.zeros((M, T, 0)),
                        jnp.zeros((M, horizon, 0)))
        means.append(np.asarray(mean))
        variances.append(np.asarray(var))
    return np.stack(means), np.stack(variances)


def total_variance(means, variances):
    """The seed's law of total variance over axis 1: mean of means, sqrt(mean of vars + var of means)."""
    return means.mean(1), np.sqrt(variances.mean(1) + means.var(1))


def forecast_group(run_dir) -> xr.Dataset:
    return sampler.open_run(run_dir)["forecast"].to_dataset()


def as_combined(ds: xr.Dataset):
    """Group ``forecast`` -> mean and std (datasets, M, T + horizon, D) like ``total_variance``."""
    parts = {k: ds[k].values if "sequence" in ds[k].dims else ds[k].values[:, None] for k in PARTS}
    return (np.concatenate([parts["smooth_mean"], parts["forecast_mean"]], axis=2),
            np.concatenate([parts["smooth_std"], parts["forecast_std"]], axis=2))


def tree_snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size)
                  for p in root.rglob("*"))


# --- a small run with missing entries and two sequences per dataset --------------------------------------
@pytest.fixture(scope="module")
def seq_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    data = simulate(3, T=30, num_sequences=2, seed=1)
    y = data["emissions"]
    y[0, 0, 5] = np.nan          # a fully missing row
    y[1, 1, 7, 0] = np.nan       # a partly missing row
    y[2, 0, 10:14] = np.nan      # a gap
    y[2, 1, -1] = np.nan         # the last step missing
    np.savez(d / "d.npz", **data)
    return sampler.run(write_config(d / "c.toml", "d.npz"), progress=False)


def test_chunked_forecast_equals_in_memory_reference(seq_run, monkeypatch):
    fc.forecast_run(seq_run, horizon=HORIZON)
    got = as_combined(forecast_group(seq_run))
    want = total_variance(*per_draw_moments(seq_run, HORIZON))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    # tiny blocks: one dataset x one draw per read, 2 (draw, dataset) pairs per pass (padded), burn-in
    # and thinning across read boundaries
    monkeypatch.setattr(fc, "READ_BYTES", 1)
    out = fc.forecast_run(seq_run, horizon=HORIZON, burn_in=5, thin=3, max_batch=2)
    assert out["draws_per_chain"] == len(range(5, 30, 3)) and out["draws"] == 2 * out["draws_per_chain"]
    got = as_combined(forecast_group(seq_run))
    want = total_variance(*per_draw_moments(seq_run, HORIZON, burn_in=5, thin=3))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_run_in_progress_uses_the_draws_stored_so_far(seq_run, tmp_path):
    import shutil
    run_dir = shutil.copytree(seq_run, tmp_path / "run")
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints" / "shard-00000").iterdir())
    shutil.rmtree(run_dir / "checkpoints" / "shard-00000" / str(steps[-1]))  # as if mid-run
    out = fc.forecast_run(run_dir, horizon=HORIZON, max_batch=2)  # pass shapes compiled above
    assert out["draws_per_chain"] == steps[-2]
    got = as_combined(forecast_group(run_dir))
    want = total_variance(*per_draw_moments(run_dir, HORIZON, draws=steps[-2]))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_missing_data_and_sequences_give_finite_output_with_spec_dims(seq_run):
    fc.forecast_run(seq_run, horizon=HORIZON)
    ds = forecast_group(seq_run)
    assert ds["smooth_mean"].dims == ("dataset", "sequence", "time", "emission")
    assert ds["forecast_std"].dims == ("dataset", "sequence", "horizon", "emission")
    assert ds["smooth_std"].shape == (3, 2, 30, 2) and ds["forecast_mean"].shape == (3, 2, HORIZON, 2)
    for k in PARTS:
        assert np.isfinite(ds[k].values).all(), k
    # missing rows are smoothed from their neighbours, not observed: more uncertain than both
    var = (ds["smooth_std"].values ** 2).sum(-1)
    assert var[0, 0, 5] > max(var[0, 0, 4], var[0, 0, 6])
    assert min(var[2, 0, 11], var[2, 0, 12]) > max(var[2, 0, 9], var[2, 0, 14])


def test_rerun_replaces_the_group(seq_run):
    fc.forecast_run(seq_run, horizon=HORIZON)
    first = forecast_group(seq_run)["forecast_mean"].values
    fc.forecast_run(seq_run, horizon=3)
    ds = forecast_group(seq_run)
    assert ds.sizes["horizon"] == 3 and ds.attrs["horizon"] == 3
    np.testing.assert_allclose(ds["forecast_mean"].values, first[:, :, :3], rtol=1e-12)
    assert not [p for p in seq_run.iterdir() if p.name.startswith(".forecast.") and p.name != ".forecast.lock"]
    assert sorted(p.name for p in (seq_run / "samples.zarr").iterdir() if p.is_dir()) == [
        "forecast", "observed_data", "posterior", "sample_stats"]


def test_cli_forecast_writes_plots(seq_run):
    r = cli_here("forecast", seq_run, "--horizon", str(HORIZON), "--plot", "0,2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    names = sorted(p.split("/")[-1] for p in out["plots"])
    assert names == sorted(["diagnostics.png", "forecast_0_seq0.png", "forecast_0_seq1.png", "lp_0.png",
                            "forecast_2_seq0.png", "forecast_2_seq1.png", "lp_2.png"])
    for p in out["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert out["datasets"] == 3 and out["sequences"] == 2 and out["draws"] == 60
    r = cli_here("forecast", seq_run, "--plot", "3")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--plot 3" in r.stderr


def test_true_log_prob_is_on_the_scale_of_the_stored_lp(seq_run):
    """The lp figure's true line is the model's log joint at the truth, the quantity stored as lp."""
    from sampler.analysis.plots import true_log_prob
    from sampler.execution.runner import RunContext
    ctx = RunContext.from_run_dir(seq_run)
    y = jnp.asarray(ctx.data.emissions[1])
    truth = params_from_leaves({leaf: jnp.asarray(ctx.data.true_values[leaf][1]) for leaf in LEAVES})
    assert true_log_prob(ctx, 1) == pytest.approx(float(ctx.model.log_joint(truth, y)), rel=1e-12)
    tree = sampler.open_run(seq_run)
    draw = params_from_leaves({leaf: jnp.asarray(tree["posterior"][store_name(leaf)].values[1, 3, 1])
                                  for leaf in LEAVES})
    stored = float(tree["sample_stats"]["lp"].values[1, 3, 1])
    assert float(ctx.model.log_joint(draw, y)) == pytest.approx(stored, rel=1e-9)


# --- per draw: against dynamax ------------------------------------------------------------------------
def hand_forecast(params, mean, cov, future_inputs):
    """Predictive emission mean and variance of the steps after (mean, cov), written out in numpy."""
    F, b, B, Q = (np.asarray(x) for x in (params.dynamics.weights, params.dynamics.bias,
                                          params.dynamics.input_weights, params.dynamics.cov))
    H, d, Dw, R = (np.asarray(x) for x in (params.emissions.weights, params.emissions.bias,
                                           params.emissions.input_weights, params.emissions.cov))
    m, P = np.asarray(mean), np.asarray(cov)
    means, variances = [], []
    for u in np.asarray(future_inputs):
        m, P = F @ m + B @ u + b, F @ P @ F.T + Q
        means.append(H @ m + d + Dw @ u)
        variances.append(np.diag(H @ P @ H.T + R))
    return np.array(means), np.array(variances)


@pytest.mark.parametrize("input_dim,form", [(0, "information"), (0, "covariance"), (2, "auto")])
def test_per_draw_smoothing_and_forecast_equal_dynamax(input_dim, form):
    from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM, lgssm_filter, lgssm_smoother
    S, D, T, H = 2, 4, 40, 9
    key = jax.random.PRNGKey(7)
    m = LinearGaussianConjugateSSM(S, D, input_dim)
    params, _ = m.initialize(key, dynamics_weights=0.95 * jnp.array([[np.cos(0.3), -np.sin(0.3)],
                                                                    [np.sin(0.3), np.cos(0.3)]]),
                             dynamics_bias=jnp.array([0.1, -0.05]),
                             dynamics_input_weights=0.3 * jnp.ones((S, input_dim)),
                             emission_input_weights=-0.2 * jnp.ones((D, input_dim)),
                             emission_bias=jnp.linspace(-1, 1, D))
    u = jax.random.normal(jax.random.PRNGKey(1), (T + H, input_dim))
    _, y = m.sample(params, jax.random.PRNGKey(2), T + H, inputs=u)
    y, u, fu = y[:T], u[:T], u[T:]
    mean, var = predictive.smooth_and_forecast(params, y, u, fu, form=form, partial_missing=False)
    close = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8 * np.abs(want).max())
    post = lgssm_smoother(params, y, u)
    Hw, d, Dw, R = params.emissions.weights, params.emissions.bias, params.emissions.input_weights, params.emissions.cov
    ref_mean = post.smoothed_means @ Hw.T + d + u @ Dw.T
    ref_var = jnp.einsum("ds,tsr,dr->td", Hw, post.smoothed_covariances, Hw) + jnp.diag(R)
    close(mean[:T], ref_mean)
    close(var[:T], ref_var)
    if input_dim == 0:  # the seed's own call
        sm, sd = m.posterior_predictive(params, y)
        close(mean[:T], sm)
        close(np.sqrt(var[:T]), sd)
    filt = lgssm_filter(params, y, u)
    f_mean, f_var = hand_forecast(params, filt.filtered_means[-1], filt.filtered_covariances[-1], fu)
    close(mean[T:], f_mean)
    close(var[T:], f_var)


# --- inputs: future inputs required -------------------------------------------------------------------
@pytest.fixture
def input_run_dir(tmp_path):
    """A prepared (not yet sampled) run dir of a model with inputs."""
    from sampler.execution import runner
    from sampler.storage import config
    data = simulate(2, input_dim=1, T=20)
    np.savez(tmp_path / "d.npz", **data)
    cfg = config.load(write_config(tmp_path / "c.toml", "d.npz", model={"state_dim": 1, "emission_dim": 2,
                                                                        "input_dim": 1}))
    ctx = runner.RunContext(cfg, tmp_path / "run")
    runner.prepare_run_dir(ctx)
    return tmp_path / "run", data


@pytest.mark.parametrize("future", [None, np.zeros((2, 10, 3))], ids=["missing", "mis-shaped"])
def test_model_with_inputs_needs_future_inputs(input_run_dir, future):
    run_dir, data = input_run_dir
    if future is not None:
        np.savez(run_dir.parent / "d.npz", **data, future_inputs=future)
    before = tree_snapshot(run_dir)
    r = cli_here("forecast", run_dir, "--horizon", "10")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "future_inputs" in lines[0], r.stderr
    assert tree_snapshot(run_dir) == before


# --- diagnostics: vectorised = arviz ------------------------------------------------------------------
def test_vectorised_diagnostics_equal_arviz():
    from arviz.stats.diagnostics import _ess_bulk, _ess_tail, _rhat_rank
    rng = np.random.default_rng(0)
    for C, N in ((4, 200), (2, 33), (1, 40), (3, 6)):
        x = diagnostics_rows(rng, C, N)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = [np.array([f(row) for row in x]) for f in (_rhat_rank, _ess_bulk, _ess_tail)]
        for got, ref in zip(diagnostics.rank_diagnostics(x), want):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
            np.testing.assert_allclose(got, ref, rtol=1e-10, equal_nan=True)


def test_summary_equals_arviz_per_dataset(seq_run):
    summary = diagnostics.summarize(seq_run)
    R = sampler.open_run(seq_run)["posterior"]["emissions_cov"]
    for row in summary["datasets"]:
        ds = R.isel(dataset=row["dataset"]).to_dataset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rhat = float(az.rhat(ds, method="rank")["emissions_cov"].max())
            bulk = float(az.ess(ds, method="bulk")["emissions_cov"].min())
            tail = float(az.ess(ds, method="tail")["emissions_cov"].min())
        assert row["max_rhat"] == pytest.approx(rhat, rel=1e-10)
        assert row["min_ess_bulk"] == pytest.approx(bulk, rel=1e-10)
        assert row["min_ess_tail"] == pytest.approx(tail, rel=1e-10)


# --- slow: the seed forecast against dynamax's blocked Gibbs ------------------------------------------
def mc_se(x):
    """Monte Carlo standard error of the mean over (chain, draw) of x (chain, draw, ...)."""
    C, L = x.shape[:2]
    rows = np.moveaxis(x.reshape(C, L, -1), 2, 0)
    _, bulk, _ = diagnostics.rank_diagnostics(rows)
    return (rows.std(axis=(1, 2)) / np.sqrt(bulk)).reshape(x.shape[2:])


def combined_with_se(means, variances):
    """Law-of-total-variance mean and sd over (chain, draw) of per-draw moments, with their MC errors."""
    mean = means.mean((0, 1))
    w = variances + (means - mean) ** 2          # E[w] = total variance
    sd = np.sqrt(w.mean((0, 1)))
    return mean, mc_se(means), sd, mc_se(w) / (2 * sd)


@pytest.mark.slow
def test_seed_forecast_matches_dynamax_blocked_gibbs(tmp_path):
    """``./scripts/test -m slow``: smoothed and forecast means and sds on the seed data from our run
    agree with those from a long dynamax ``fit_blocked_gibbs`` run within Monte Carlo error."""
    import jax.random as jr
    from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM
    from examples.seed.make_data import main as make_data
    make_data(tmp_path, 1)
    y = np.load(tmp_path / "seed.npz")["emissions"][0]
    horizon = 50
    cfg = write_config(tmp_path / "c.toml", "seed.npz", state_dim=2, emission_dim=10,
                       sampler={"num_chains": 4, "num_warmup": 500, "num_draws": 1000},
                       run={"checkpoint_every": 500})
    run_dir = sampler.run(cfg, progress=False)
    fc.forecast_run(run_dir, horizon=horizon)
    got_mean, got_sd = (x[0, 0] for x in as_combined(forecast_group(run_dir)))
    means, variances = per_draw_moments(run_dir, horizon, dataset=0)  # (1, C*L, 1, T+H, D)
    ours = combined_with_se(means[0, :, 0].reshape(4, 1000, *means.shape[3:]),
                            variances[0, :, 0].reshape(4, 1000, *means.shape[3:]))
    np.testing.assert_allclose(got_mean, ours[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_sd, ours[2], rtol=1e-10)

    m = LinearGaussianConjugateSSM(2, 10)
    chains = []
    for c in range(4):
        init, _ = m.initialize(jr.PRNGKey(100 + c))
        draws = m.fit_blocked_gibbs(jr.PRNGKey(c), init, 3000, jnp.asarray(y))
        draws = jax.tree.map(lambda x: x[1000:], draws)
        one = lambda p: predictive.smooth_and_forecast(p, jnp.asarray(y), jnp.zeros((100, 0)), jnp.zeros((horizon, 0)))
        chains.append(jax.lax.map(one, draws, batch_size=250))
    ref = combined_with_se(np.stack([np.asarray(c[0]) for c in chains]),
                           np.stack([np.asarray(c[1]) for c in chains]))
    z_mean = (ours[0] - ref[0]) / np.hypot(ours[1], ref[1])
    z_sd = (ours[2] - ref[2]) / np.hypot(ours[3], ref[3])
    assert np.abs(z_mean).max() < 4.5, np.abs(z_mean).max()
    assert np.abs(z_sd).max() < 4.5, np.abs(z_sd).max()
