"""The log density equals the seed notebook's formula; frozen leaves are not part of the position."""
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from dynamax.parameters import from_unconstrained, log_det_jac_constrain, to_unconstrained

from sampler.core.leaves import LEAVES, get_leaf
from sampler.core.model import Model


def seed_logprob(model: Model, params, props, emissions):
    """The seed's ``_logprob`` (dynamax's filter, prior and Jacobian), at constrained ``params``."""
    unc = to_unconstrained(params, props)
    p = from_unconstrained(unc, props)
    lls = jax.vmap(lambda y: model.ssm.marginal_log_prob(p, y))(emissions)
    return jax.jit(model.ssm.log_prior)(p) + lls.sum() + log_det_jac_constrain(p, props)  # jit: eager tfp takes ~12 s


@pytest.mark.parametrize("frozen", [(), ("emissions.weights", "emissions.bias"), ("dynamics.cov", "initial.mean")])
def test_log_density_equals_seed_formula(frozen):
    model = Model(2, 5, frozen=frozen)
    params = model.initial_params(jr.PRNGKey(0), {})
    params = params._replace(dynamics=params.dynamics._replace(cov=jnp.array([[0.2, 0.05], [0.05, 0.3]])))
    _, y = model.ssm.sample(params, jr.PRNGKey(1), 60)
    ys = jnp.stack([y, y[::-1]])
    ours = model.logdensity(model.to_position(params), params, ys)
    ref = seed_logprob(model, params, model.props, ys)
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_position_roundtrip_and_frozen_leaves_excluded():
    model = Model(2, 3, input_dim=1, frozen=("emissions.weights",))
    params = model.initial_params(jr.PRNGKey(2), {})
    pos = model.to_position(params)
    # 2 + 3 (initial) + 4 + 2 + 2 + 3 (dynamics) + 3 + 3 + 6 (emissions without H)
    assert pos.shape == (28,) == (model.dim,)
    anchor = params
    moved = model.to_params(pos + 0.1, anchor)
    assert np.array_equal(moved.emissions.weights, anchor.emissions.weights)
    back = model.to_params(pos, anchor)
    for leaf in LEAVES:
        np.testing.assert_allclose(get_leaf(back, leaf), get_leaf(params, leaf), rtol=1e-12, atol=1e-12)


def test_covariance_cholesky_factors_from_the_position_and_back():
    """A covariance leaf's Cholesky factor, read from the position (free) or factorised from the anchor
    (frozen), and the position rebuilt from given factors equal the bijector's round trip."""
    model = Model(2, 4, frozen=("dynamics.cov",))
    params = model.initial_params(jr.PRNGKey(5), {})
    R = jnp.array([[1.0, 0.3, 0.0, 0.1], [0.3, 2.0, 0.2, 0.0], [0.0, 0.2, 0.5, 0.05], [0.1, 0.0, 0.05, 0.8]])
    params = params._replace(emissions=params.emissions._replace(cov=R))
    pos = model.to_position(params)
    for leaf, value in (("emissions.cov", R), ("dynamics.cov", params.dynamics.cov)):
        L = model.covariance_cholesky(pos, params, leaf)
        np.testing.assert_allclose(L, np.linalg.cholesky(value), rtol=1e-12, atol=1e-14)
    factors = {"emissions.cov": np.linalg.cholesky(R), "initial.cov": np.linalg.cholesky(params.initial.cov)}
    np.testing.assert_allclose(model.to_position(params, factors), pos, rtol=1e-12, atol=1e-13)
    moved = model.to_position(params, {"emissions.cov": 2.0 * np.linalg.cholesky(R)})
    np.testing.assert_allclose(model.to_params(moved, params).emissions.cov, 4.0 * R, rtol=1e-12, atol=1e-15)


def test_dynamax_filter_selectable_as_reference():
    ours, ref = Model(2, 4), Model(2, 4, kalman_form="dynamax")
    params = ours.initial_params(jr.PRNGKey(3), {})
    _, y = ours.ssm.sample(params, jr.PRNGKey(4), 40)
    a = ours.log_likelihood(params, y[None])
    b = ref.log_likelihood(params, y[None])
    assert float(a) == pytest.approx(float(b), rel=1e-8)
