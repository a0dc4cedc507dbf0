"""Structural models: exact log-likelihoods against statsmodels and the general path, Gibbs against
NUTS, simulation-based calibration, config errors (a run end to end: test_structural_run.py)."""
import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sampler.core import engine, kernels
from sampler.core.kalman import marginal_log_prob
from sampler.core.structural.components import Component
from sampler.core.structural.model import StructuralModel, ar_to_pacf, is_stationary, pacf_to_ar
from sampler.core.structural.simulation import prior_draw, sample_emissions
from sampler.errors import UserError
from sampler.storage import config as config_mod

pytestmark = pytest.mark.timeout(600)

FULL = (Component.create("local_linear_trend"), Component.create("seasonal", period=12),
        Component.create("seasonal", name="yearly", period=4, harmonics=2),
        Component.create("ar", order=2), Component.create("regression", input_dim=1))
FULL_PARAMS = {"level_sd": [0.3], "slope_sd": [0.05], "seasonal_sd": [0.2], "yearly_sd": [0.15],
               "ar_sd": [0.4], "ar_coefficients": [[0.5, -0.2]], "regression_coefficients": [[0.7]],
               "obs_sd": [0.6]}


def _series(T=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(T, 1))
    y = np.cumsum(rng.normal(size=T)) + np.sin(np.arange(T) * 2 * np.pi / 12) + 0.7 * X[:, 0]
    y[[7, 30, 31]] = np.nan
    return y, X


def test_log_likelihood_equals_statsmodels_unobserved_components():
    """Every component kind statsmodels has, missing values, the same known initial state."""
    from statsmodels.tsa.statespace.structural import UnobservedComponents
    y, X = _series()
    model = StructuralModel(FULL, 1, 1, partial_missing=False, has_missing=True)
    p = {k: jnp.asarray(v) for k, v in FULL_PARAMS.items()}
    ours = float(model.log_likelihood(p, jnp.asarray(y)[None, :, None], jnp.asarray(X)[None]))
    ref = UnobservedComponents(y, level="lltrend", seasonal=12, freq_seasonal=[{"period": 4, "harmonics": 2}],
                               autoregressive=2, exog=X)
    ref.ssm.initialize_known(np.zeros(model.component_state_dim), np.diag(model.initial_sds ** 2))
    ref.ssm.loglikelihood_burn = 0
    by_name = {"sigma2.irregular": 0.36, "sigma2.level": 0.09, "sigma2.trend": 0.0025, "sigma2.seasonal": 0.04,
               "sigma2.freq_seasonal_4(2)": 0.0225, "sigma2.ar": 0.16, "ar.L1": 0.5, "ar.L2": -0.2, "beta.x1": 0.7}
    expected = ref.loglike(np.array([by_name[n] for n in ref.param_names]))
    assert ours == pytest.approx(expected, rel=1e-8)


def _statsmodels_without_regression(y, model):
    """statsmodels' UC model of FULL less the regression, at FULL_PARAMS, known initial state."""
    from statsmodels.tsa.statespace.structural import UnobservedComponents
    ref = UnobservedComponents(y, level="lltrend", seasonal=12, freq_seasonal=[{"period": 4, "harmonics": 2}],
                               autoregressive=2)
    ref.ssm.initialize_known(np.zeros(model.component_state_dim), np.diag(model.initial_sds ** 2))
    by_name = {"sigma2.irregular": 0.36, "sigma2.level": 0.09, "sigma2.trend": 0.0025, "sigma2.seasonal": 0.04,
               "sigma2.freq_seasonal_4(2)": 0.0225, "sigma2.ar": 0.16, "ar.L1": 0.5, "ar.L2": -0.2}
    return ref, np.array([by_name[n] for n in ref.param_names])


def test_structured_transition_and_smoother_equal_statsmodels():
    """F x, F' x (never formed) against statsmodels' transition matrix; the fast state smoother's
    E[x | y] (no P_t kept) against statsmodels' smoothed states, with missing values."""
    from sampler.core.structural import smoother
    y, _ = _series()
    model = StructuralModel(FULL[:-1], 1)
    p = {k: jnp.asarray(v)[0] for k, v in FULL_PARAMS.items() if not k.startswith("regression")}
    ref, theta = _statsmodels_without_regression(y, model)
    ref.update(theta)
    F_ref = np.asarray(ref.ssm["transition"])            # (S, S): time-invariant
    tr = model.transition(p)
    x = np.random.default_rng(1).normal(size=(model.component_state_dim, 3))
    np.testing.assert_allclose(tr.apply(jnp.asarray(x)), F_ref @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tr.apply_transposed(jnp.asarray(x)), F_ref.T @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.lgssm({k: v[None] for k, v in p.items()}).dynamics.weights, F_ref, atol=1e-12)
    mean = smoother.smoothed_mean(tr, model.disturbance_variances(p), model.loaded_states, p["obs_sd"] ** 2,
                                  jnp.diag(jnp.asarray(model.initial_sds) ** 2), jnp.asarray(y))
    expected = ref.smooth(theta).smoothed_state.T
    np.testing.assert_allclose(mean, expected, rtol=1e-8, atol=1e-8)


def test_log_likelihood_equals_general_path_with_two_emissions():
    """Damped trend (statsmodels has none) and two emissions: the block-diagonal LG-SSM's value."""
    comps = (Component.create("damped_trend"), Component.create("seasonal", period=3))
    model = StructuralModel(comps, 2)
    p = prior_draw(jax.random.PRNGKey(3), model)
    y = np.array(sample_emissions(jax.random.PRNGKey(4), model, p, 50))
    y[5, 1] = np.nan
    ours = model.log_likelihood(p, jnp.asarray(y)[None])
    general = marginal_log_prob(model.lgssm(p), jnp.asarray(y), partial_missing=True)
    assert float(ours) == pytest.approx(float(general), rel=1e-8)


def test_ar_reparameterisation_round_trips_and_bounds_stationarity():
    r = jnp.array([0.5, -0.3, 0.8])
    np.testing.assert_allclose(ar_to_pacf(pacf_to_ar(r)), r, rtol=1e-10)
    assert bool(is_stationary(jnp.array([0.5, 0.3]))) and not bool(is_stationary(jnp.array([0.5, 0.6])))
    assert not bool(is_stationary(jnp.array([1.01])))


def test_position_round_trip():
    model = StructuralModel(FULL + (Component.create("damped_trend", name="damped"),), 2, 1)
    p = prior_draw(jax.random.PRNGKey(0), model)
    back = model.to_params(model.to_position(p))
    for name, value in p.items():
        np.testing.assert_allclose(back[name], value, rtol=1e-9, atol=1e-12)
    assert model.to_position(p).shape == (model.dim,)


def _chains(model, kernel, y, num_chains, num_warmup, num_draws, seed=0):
    """Draws (name -> (N * C, K, ...)) of datasets y (N, T, D), C chains each."""
    N = y.shape[0]
    em = jnp.asarray(np.repeat(y, num_chains, 0)[:, None])
    keys = engine.chain_keys(seed, jnp.repeat(jnp.arange(N), num_chains), jnp.tile(jnp.arange(num_chains), N))
    k = kernels.build(kernel)
    chains = engine.init_program(model, k, num_warmup, num_chains)(keys, em, None, {})
    _, draws = engine.sample_program(model, k, num_draws)(keys, chains, em, None, np.int32(0), np.int32(num_draws))
    return {n: np.swapaxes(np.asarray(v), 0, 1) for n, v in draws.params.items()}


def _mean_and_se(x):
    """Posterior mean and its Monte Carlo standard error (arviz's ESS) of draws (C, K)."""
    return x.mean(), x.std() / np.sqrt(float(az.ess(x)))


@pytest.mark.slow
def test_gibbs_agrees_with_nuts_on_a_trend_posterior():
    model = StructuralModel((Component.create("local_linear_trend"),), 1, has_missing=True)
    truth = {"level_sd": jnp.array([0.2]), "slope_sd": jnp.array([0.03]), "obs_sd": jnp.array([0.3])}
    y = np.array(sample_emissions(jax.random.PRNGKey(11), model, truth, 60))
    y[20:23] = np.nan
    gibbs = _chains(model, "gibbs", y[None], 4, 200, 1000)
    nuts = _chains(model, "nuts", y[None], 4, 300, 500)
    for name in truth:
        (mg, sg), (mn, sn) = _mean_and_se(gibbs[name][..., 0]), _mean_and_se(nuts[name][..., 0])
        assert abs(mg - mn) < 4 * np.hypot(sg, sn), (name, mg, mn, sg, sn)
        assert gibbs[name].std() == pytest.approx(nuts[name].std(), rel=0.2)


def _sbc_ranks(components, num_datasets, T, seed, thin=10, draws=300, warmup=200, input_dim=0):
    """Ranks (num_datasets, variables) of prior draws among thinned Gibbs posterior draws."""
    model = StructuralModel(components, 1, input_dim)
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * num_datasets)
    truths = [prior_draw(k, model) for k in keys[:num_datasets]]
    ys = np.stack([np.asarray(sample_emissions(k, model, t, T)) for k, t in zip(keys[num_datasets:], truths)])
    post = _chains(model, "gibbs", ys, 1, warmup, draws, seed=seed)
    ranks = {}
    for name in model.variables:
        kept = post[name][:, ::thin, 0].reshape(num_datasets, -1, *post[name].shape[3:])
        truth = np.stack([np.asarray(t[name][0]) for t in truths])
        ranks[name] = np.sum(kept < truth[:, None], axis=1)
    return ranks, draws // thin


def _assert_uniform(ranks, num_ranks, bins=5):
    for name, r in ranks.items():
        for column in r.reshape(r.shape[0], -1).T:
            counts = np.histogram(column, bins=bins, range=(0, num_ranks + 1))[0]
            p = stats.chisquare(counts).pvalue
            assert p > 1e-3, (name, counts, p)


def test_gibbs_with_frozen_variables_matches_quadrature():
    """A local level + regression with obs_sd and the coefficient frozen, two sequences with gaps:
    the one free variable, level_sd, has a 1-d posterior; Gibbs (conditioning on the frozen values in
    every block) against quadrature of prior x exact likelihood."""
    from sampler.core.structural import gibbs
    comps = (Component.create("level"), Component.create("regression", input_dim=1))
    model = StructuralModel(comps, 1, 1, frozen=("obs_sd", "regression_coefficients"))
    rng = np.random.default_rng(5)
    M, T = 2, 50
    u = rng.normal(size=(M, T, 1))
    y = np.cumsum(0.3 * rng.normal(size=(M, T)), axis=1) + 0.8 * u[..., 0] + 0.5 * rng.normal(size=(M, T))
    y[0, [10, 40]] = np.nan
    y[1, :5] = np.nan
    y, u = jnp.asarray(y)[..., None], jnp.asarray(u)
    fixed = {"obs_sd": jnp.array([0.5]), "regression_coefficients": jnp.array([[0.8]])}

    grid = np.linspace(1e-3, 1.5, 3000)
    def log_post(sd):
        p = dict(fixed, level_sd=jnp.array([sd]))
        return model.log_prior(p) + model.log_likelihood(p, y, u)
    lp = np.asarray(jax.vmap(log_post)(jnp.asarray(grid)))
    w = np.exp(lp - lp.max())
    w /= w.sum()
    mean, sd = float(np.sum(w * grid)), float(np.sqrt(np.sum(w * (grid - np.sum(w * grid)) ** 2)))

    def chain(key):
        p = model.initial_params(jax.random.fold_in(key, 0), fixed)
        def step(p, k):
            p = gibbs.gibbs_sweep(k, model, p, y, u)
            return p, p["level_sd"][0]
        _, draws = jax.lax.scan(step, p, jax.random.split(key, 1200))
        return draws[200:]
    draws = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.PRNGKey(0), 8)))
    ess = float(az.ess(draws))
    assert ess > 800
    assert abs(draws.mean() - mean) < 4 * sd / np.sqrt(ess)
    assert draws.std() == pytest.approx(sd, rel=0.15)


@pytest.mark.slow  # statistical; the default run checks structural models against statsmodels and quadrature
def test_sbc_local_level():
    ranks, L = _sbc_ranks((Component.create("level"),), 40, 40, seed=1, thin=5, draws=150, warmup=60)
    _assert_uniform(ranks, L)


@pytest.mark.slow
@pytest.mark.parametrize("components", [
    (Component.create("local_linear_trend"),),
    (Component.create("damped_trend"),),
    (Component.create("level"), Component.create("seasonal", period=4)),
    (Component.create("level"), Component.create("seasonal", period=6, harmonics=2)),
    (Component.create("level"), Component.create("ar", order=2)),
], ids=["local_linear_trend", "damped_trend", "seasonal", "trigonometric", "ar"])
def test_sbc_each_component_kind(components):
    ranks, L = _sbc_ranks(components, 100, 60, seed=2, thin=20, draws=1000)
    _assert_uniform(ranks, L)


@pytest.mark.parametrize("component, input_dim, message", [
    ({"kind": "trend"}, 0, "model.components.0.kind"),
    ({"kind": "seasonal", "period": 1}, 0, "period = 1; need period >= 2"),
    ({"kind": "seasonal", "period": 12, "harmonics": 7}, 0, "harmonics = 7"),
    ({"kind": "ar", "order": 0}, 0, "ar: order = 0"),
    ({"kind": "regression"}, 0, "regression: needs inputs"),
    ({"kind": "level", "priors": {"sd": -1}}, 0, "priors.sd = -1"),
    ({"kind": "level"}, 1, "no regression component uses the inputs"),
])
def test_bad_component_configs_are_one_line_errors(component, input_dim, message):
    raw = {"model": {"emission_dim": 1, "input_dim": input_dim, "components": [component]},
           "data": {"path": "x.npz"}}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        config_mod.from_dict(raw, "c.toml")
    assert "\n" not in str(err.value)


def test_two_unnamed_seasonals_collide():
    raw = {"model": {"emission_dim": 1, "components": [{"kind": "level"}, {"kind": "seasonal", "period": 4},
                                                       {"kind": "seasonal", "period": 12}]},
           "data": {"path": "x.npz"}}
    with pytest.raises(UserError, match="'seasonal_sd' is already taken"):
        config_mod.from_dict(raw, "c.toml")
