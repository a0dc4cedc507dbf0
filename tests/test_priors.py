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


def test_inverse_wishart_draw_moments():
    """Sigma ~ IW(df, scale) as the Gibbs sweep draws it (``gibbs.draw_blocks``: ``sample_gamma``'s
    chi-squares and ``inverse_wishart_factor``) against tfp's inverse Wishart."""
    from sampler.core import gibbs
    scale = jnp.array([[2.0, 0.3], [0.3, 1.0]])
    df = 7.5
    block = gibbs.BlockConditional(jnp.zeros((2, 0)), jnp.eye(2), jnp.asarray(df), scale, None, None, ())
    drawn = jax.vmap(lambda k: gibbs.draw_blocks(k, [block])[0])(jr.split(jr.PRNGKey(0), 40000))
    draws = drawn.Sigma
    # the draw comes with Sigma's Cholesky factor (lower triangular, positive diagonal)
    np.testing.assert_allclose(drawn.Sigma_chol, np.linalg.cholesky(draws), rtol=1e-9, atol=1e-12)
    mean = scale / (df - 2 - 1)
    np.testing.assert_allclose(draws.mean(0), mean, rtol=0.03, atol=0.005)
    ref = InverseWishart(df, scale).sample(seed=jr.PRNGKey(1), sample_shape=(40000,))
    np.testing.assert_allclose(np.var(draws, axis=0), np.var(ref, axis=0), rtol=0.15)
    # its log density matches dynamax's too
    x = draws[0]
    assert float(priors.inverse_wishart_log_prob(x, df, scale)) == pytest.approx(
        float(InverseWishart(df, scale).log_prob(x)), rel=1e-8)


def test_blocks_drawn_together_are_independent_each_from_its_own_conditional():
    """``gibbs.draw_blocks`` shares one gamma and one normal draw among the blocks: each block must
    still get its own variates (no correlation across blocks), its frozen column kept, and its free
    columns W_a ~ MN(mean, Sigma, col_factor^T col_factor)."""
    from sampler.core import gibbs
    scale, df = jnp.array([[2.0, 0.3], [0.3, 1.0]]), jnp.asarray(7.5)
    only_sigma = gibbs.BlockConditional(jnp.zeros((2, 0)), jnp.eye(2), df, scale, None, None, ())
    W = jnp.full((2, 3), 5.0)
    regression = gibbs.BlockConditional(W, jnp.eye(2), df, scale, jnp.ones((2, 2)), jnp.diag(jnp.array([1.0, 0.5])),
                                        (0, 2))
    n = 40000
    ((_, S1, _), (W2, S2, _)) = jax.jit(jax.vmap(lambda k: gibbs.draw_blocks(k, [only_sigma, regression])))(
        jr.split(jr.PRNGKey(3), n))
    expected_sigma = scale / (7.5 - 3)
    for S in (S1, S2):
        np.testing.assert_allclose(S.mean(0), expected_sigma, rtol=0.03, atol=0.005)
    assert abs(np.corrcoef(S1[:, 0, 0], S2[:, 0, 0])[0, 1]) < 4 / np.sqrt(n)
    np.testing.assert_array_equal(W2[:, :, 1], 5.0)
    free = np.asarray(W2[:, :, [0, 2]])
    np.testing.assert_allclose(free.mean(0), 1.0, atol=0.03)
    # Var W[i, j] = E[Sigma_ii] (col_factor^T col_factor)_jj, and W[0] is independent of S1
    np.testing.assert_allclose(free.var(0), np.diag(expected_sigma)[:, None] * np.array([1.0, 0.25]), rtol=0.06)
    assert abs(np.corrcoef(S1[:, 0, 0], free[:, 0, 0])[0, 1]) < 4 / np.sqrt(n)


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
