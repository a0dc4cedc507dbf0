"""float32 end to end (``sampler.dtype = "float32"``): the seed posterior and its forecasts agree with
float64 within Monte Carlo error, and a simulation-based calibration study passes in float32.

Both are long (two seed runs; a 100-dataset study): ``./scripts/test -m slow tests/test_float32.py``.
The default run checks the Gibbs blocks' float32 arithmetic on large states, and that ``sampler.run``
and ``sampler.forecast`` give the caller its own jax precision back.
"""
import warnings

import arviz as az
import jax
import numpy as np
import pytest

import sampler
from helpers import simulate, write_config
from sampler.analysis import calibrate
from sampler.storage import config


def _seed_run(tmp_path, dtype: str):
    cfg = write_config(tmp_path / f"{dtype}.toml", "seed.npz", state_dim=2, emission_dim=10,
                       sampler={"num_chains": 4, "num_warmup": 300, "num_draws": 1000, "dtype": dtype},
                       run={"dir": dtype, "checkpoint_every": 500})
    run_dir = sampler.run(cfg, progress=False)
    sampler.forecast(run_dir, horizon=20)
    tree = sampler.open_run(run_dir)
    R = tree["posterior"]["emissions_cov"].values[:, :, 0]                  # (chain, draw, D, D)
    # the store holds float64; a float32 run's draws are float32 values in it
    assert np.array_equal(R.astype(np.float32).astype(R.dtype), R) == (dtype == "float32")
    return np.diagonal(R, axis1=-2, axis2=-1), tree["forecast"]


def _mean_and_se(draws):
    """(chain, draw, D) -> posterior mean (D,) and its Monte Carlo standard error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = np.array([float(az.ess(draws[..., i])) for i in range(draws.shape[-1])])
    return draws.mean((0, 1)), draws.std((0, 1)) / np.sqrt(ess)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_seed_posterior_and_forecast_in_float32_match_float64(tmp_path):
    from examples.seed.make_data import main as make_data
    make_data(tmp_path, 1)
    (r64, f64), (r32, f32) = _seed_run(tmp_path, "float64"), _seed_run(tmp_path, "float32")
    assert np.all(np.isfinite(r32))
    (m64, s64), (m32, s32) = _mean_and_se(r64), _mean_and_se(r32)
    z = (m32 - m64) / np.sqrt(s32 ** 2 + s64 ** 2)
    assert np.all(np.abs(z) < 4), z
    # forecasts: a posterior mean over ~1,000 effective draws moves by a few % of the predictive sd
    sd = f64["forecast_std"].values
    assert np.max(np.abs(f32["forecast_mean"].values - f64["forecast_mean"].values) / sd) < 0.25
    assert np.max(np.abs(f32["forecast_std"].values / sd - 1.0)) < 0.1
    smooth_sd = f64["smooth_std"].values
    assert np.max(np.abs(f32["smooth_mean"].values - f64["smooth_mean"].values) / smooth_sd) < 0.25


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sbc_passes_in_float32(tmp_path):
    path = write_config(tmp_path / "sbc32.toml", "unused.npz", state_dim=1, emission_dim=2,
                        sampler={"algorithm": "gibbs", "num_chains": 2, "num_warmup": 200, "num_draws": 200,
                                 "dtype": "float32"},
                        run={"dir": "sbc32", "checkpoint_every": 100})
    report = calibrate.calibrate(config.load(path), num_datasets=100, num_timesteps=50, progress=False)
    assert report["verdict"]["passed"] is True, calibrate.format_report(report)


def test_float32_block_conditional_survives_large_states():
    """The emission block's inverse-Wishart scale in float32 on an explosive chain's states (x up to
    ~2,000, emissions up to ~8,000, as in a simulation study's prior draw): Psi + Syy - Mn Sxy would
    cancel to a matrix with a negative eigenvalue (then NaN draws); the residual form keeps it the
    float64 scale to float32 rounding."""
    from types import SimpleNamespace

    import jax.numpy as jnp
    from sampler.core import gibbs
    from sampler.core.model import Model
    T = 50
    x = 1.16 ** np.arange(T)[:, None] * 1.0                                   # (T, 1), ~1,700 at the end
    Z = np.concatenate([x, np.ones((T, 1))], axis=1)
    H = np.array([[-1.8, -0.7], [4.1, -0.2]])                                   # [weights, bias] per output
    Y = Z @ H.T + np.random.default_rng(0).multivariate_normal([0, 0], [[1.2, -1.0], [-1.0, 1.2]], T)
    prior = Model(1, 2).ssm.emission_prior
    scales = {}
    for dt in (np.float32, np.float64):
        cast = lambda a: jnp.asarray(a, dt)
        p = SimpleNamespace(loc=cast(prior.loc), col_precision=cast(prior.col_precision), df=cast(prior.df),
                            scale=cast(prior.scale))
        b = gibbs.block_conditional(cast(Y), cast(Z), cast(H), cast(np.eye(2)), p, [True, True], True)
        scales[dt] = np.asarray(b.scale, np.float64)
    assert np.all(np.linalg.eigvalsh(scales[np.float32]) > 0)
    np.testing.assert_allclose(scales[np.float32], scales[np.float64], rtol=2e-2, atol=0.5)


@pytest.mark.timeout(300)
def test_run_and_forecast_give_the_caller_its_precision_back(tmp_path):
    """A float32 run switches jax's x64 off while it works; a notebook in float64 gets it back from
    ``sampler.run`` and ``sampler.forecast``."""
    np.savez(tmp_path / "d.npz", **simulate(2))
    cfg = write_config(tmp_path / "c.toml", "d.npz", sampler={"dtype": "float32", "num_draws": 10})
    run_dir = sampler.run(cfg, progress=False, run__dir=str(tmp_path / "run"))
    assert jax.config.jax_enable_x64
    sampler.forecast(run_dir, horizon=3)
    assert jax.config.jax_enable_x64
