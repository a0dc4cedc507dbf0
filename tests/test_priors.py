"""Hand-written conjugate priors equal dynamax's; the inverse-Wishart sampler has the right moments."""
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from dynamax.utils.distributions import InverseWishart

from sampler.core import priors
from sampler.core.model import Model


@pytest.mark.parametrize("S,D,U", [(2, 10, 0), (3, 2, 1)])
def test_log_prior_equals_dynamax(S, D, U):
    model = Model(S, D, U)
    params = model.initial_params(jr.PRNGKey(S + D), {})
    A = jr.normal(jr.PRNGKey(7), (S, S))
    params = params._replace(
        initial=params.initial._replace(mean=jnp.arange(S) * 0.3, cov=jnp.eye(S) + 0.1 * A @ A.T),
        dynamics=params.dynamics._replace(input_weights=jnp.ones((S, U)) * 0.2, bias=jnp.ones(S) * 0.1),
        emissions=params.emissions._replace(input_weights=-jnp.ones((D, U)) * 0.3))
    ssm = model.ssm
    assert float(priors.log_prior(ssm, params)) == pytest.approx(float(jax.jit(ssm.log_prior)(params)), rel=1e-8)  # dynamax adds 1e-9 to diagonals; jit: eager tfp takes ~12 s


def test_inverse_wishart_sampler_moments():
    scale = jnp.array([[2.0, 0.3], [0.3, 1.0]])
    df = 7.5
    draws = jax.vmap(lambda k: priors.sample_inverse_wishart(k, df, scale))(jr.split(jr.PRNGKey(0), 40000))
    mean = scale / (df - 2 - 1)
    np.testing.assert_allclose(draws.mean(0), mean, rtol=0.03, atol=0.005)
    ref = InverseWishart(df, scale).sample(seed=jr.PRNGKey(1), sample_shape=(40000,))
    np.testing.assert_allclose(np.var(draws, axis=0), np.var(ref, axis=0), rtol=0.15)
    # its log density matches dynamax's too
    x = draws[0]
    assert float(priors.inverse_wishart_log_prob(x, df, scale)) == pytest.approx(
        float(InverseWishart(df, scale).log_prob(x)), rel=1e-8)


def test_gamma_sampler_matches_scipy():
    """The hand-written Marsaglia-Tsang sampler (the inverse-Wishart's chi-squares) against scipy's
    gamma distribution, for shapes below 1 (the boosted branch), near 1 and large, and batch-invariant
    under vmap (a variate does not depend on the other chains)."""
    from scipy import stats
    shapes = jnp.array([0.3, 1.0, 1.05, 7.5, 55.0])
    keys = jr.split(jr.PRNGKey(3), 20000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k: priors.sample_gamma(k, shapes)))(keys))
    for j, a in enumerate(np.asarray(shapes)):
        assert stats.kstest(draws[:, j], stats.gamma(a).cdf).pvalue > 1e-3, a
    single = np.asarray(jax.jit(lambda k: priors.sample_gamma(k, shapes))(keys[17]))
    np.testing.assert_array_equal(single, draws[17])
