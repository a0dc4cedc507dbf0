"""sampler.kalman against dynamax's lgssm_filter (values, gradients, float32) and missing-data references."""
from functools import partial

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM, lgssm_filter

from sampler.core.kalman import kalman_filter, marginal_log_prob, row_moments

CASES = [(2, 10, 0, 100), (3, 2, 1, 50), (2, 2, 0, 60), (1, 3, 2, 40), (4, 4, 0, 30), (5, 8, 1, 25)]


def random_problem(S, D, U, T, seed=0):
    key = jr.PRNGKey(seed)
    ks = jr.split(key, 8)
    m = LinearGaussianConjugateSSM(S, D, U)
    params, _ = m.initialize(ks[0])
    A = jr.normal(ks[1], (D, D))
    params = params._replace(
        initial=params.initial._replace(mean=jr.normal(ks[2], (S,))),
        dynamics=params.dynamics._replace(input_weights=jr.normal(ks[3], (S, U)), bias=0.1 * jr.normal(ks[4], (S,))),
        emissions=params.emissions._replace(input_weights=jr.normal(ks[5], (D, U)),
                                            cov=0.2 * jnp.eye(D) + 0.02 * A @ A.T))
    u = jr.normal(ks[6], (T, U)) if U else None
    _, y = m.sample(params, ks[7], T, inputs=u)
    return params, y, u


def sym(a):
    return 0.5 * (a + jnp.swapaxes(a, -1, -2)) if a.ndim == 2 and a.shape[0] == a.shape[1] else a


@pytest.mark.parametrize("S,D,U,T", CASES)
def test_value_matches_dynamax_float64(S, D, U, T):
    params, y, u = random_problem(S, D, U, T)
    ref = jax.jit(lambda p, yy, uu: lgssm_filter(p, yy, uu).marginal_loglik)(params, y, u)
    for form in ("information", "covariance"):
        ours = jax.jit(partial(marginal_log_prob, form=form))(params, y, u)
        assert abs(float(ours - ref)) <= 1e-8 * abs(float(ref)), form


@pytest.mark.parametrize("S,D,U,T", CASES[:2])
def test_gradient_matches_dynamax(S, D, U, T):
    params, y, u = random_problem(S, D, U, T, seed=1)
    g_ref = jax.grad(lambda p: lgssm_filter(p, y, u).marginal_loglik)(params)
    g = jax.jit(jax.grad(lambda p: marginal_log_prob(p, y, u)))(params)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)):
        if a.size:
            # covariance gradients compared on symmetric directions (the only ones a PSD parameter moves in)
            np.testing.assert_allclose(sym(b), sym(a), rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(a))))


def test_float32_close_to_float64():
    params, y, u = random_problem(2, 10, 0, 100, seed=2)
    ref = float(lgssm_filter(params, y, u).marginal_loglik)
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    v = marginal_log_prob(p32, y.astype(jnp.float32))
    assert v.dtype == jnp.float32
    assert abs(float(v) - ref) <= 1e-4 * abs(ref)


def test_vmap_over_batch_matches_loop():
    params, y, _ = random_problem(2, 10, 0, 50, seed=3)
    ys = jnp.stack([y, y * 1.1, y - 0.3])
    batched = jax.jit(jax.vmap(lambda yy: marginal_log_prob(params, yy)))(ys)
    ref = jax.jit(lambda yy: lgssm_filter(params, yy).marginal_loglik)
    for i in range(3):
        assert float(batched[i]) == pytest.approx(float(ref(ys[i])), rel=1e-9)


def reference_skipping(params, y):
    """Plain numpy Kalman filter: each step conditions on the observed entries only."""
    F, Q = np.asarray(params.dynamics.weights), np.asarray(params.dynamics.cov)
    b = np.asarray(params.dynamics.bias)
    H, d, R = (np.asarray(params.emissions.weights), np.asarray(params.emissions.bias),
               np.asarray(params.emissions.cov))
    m, P = np.asarray(params.initial.mean), np.asarray(params.initial.cov)
    ll = 0.0
    for t in range(y.shape[0]):
        o = np.isfinite(y[t])
        if o.any():
            Ho = H[o]
            S = Ho @ P @ Ho.T + R[np.ix_(o, o)]
            r = y[t, o] - d[o] - Ho @ m
            ll += -0.5 * (o.sum() * np.log(2 * np.pi) + np.linalg.slogdet(S)[1] + r @ np.linalg.solve(S, r))
            K = P @ Ho.T @ np.linalg.inv(S)
            m, P = m + K @ r, P - K @ S @ K.T
        m, P = F @ m + b, F @ P @ F.T + Q
    return ll


@pytest.mark.parametrize("form", ["information", "covariance"])
def test_missing_rows_and_entries_match_skipping_reference(form):
    params, y, _ = random_problem(2, 6, 0, 40, seed=4)
    y = np.asarray(y).copy()
    y[[3, 4, 20]] = np.nan          # whole rows missing: the update is skipped
    y[7, [0, 2]] = np.nan           # partly missing rows: only observed entries update
    y[30, 5] = np.nan
    ref = reference_skipping(params, y)
    ours = float(jax.jit(partial(marginal_log_prob, form=form))(params, jnp.asarray(y)))
    assert ours == pytest.approx(ref, rel=1e-9)
    # whole rows only: the fast path (one factorisation of R) gives the same value
    y2 = np.asarray(random_problem(2, 6, 0, 40, seed=4)[1]).copy()
    y2[[3, 4, 20]] = np.nan
    fast = float(jax.jit(partial(marginal_log_prob, form=form, partial_missing=False))(params, jnp.asarray(y2)))
    assert fast == pytest.approx(reference_skipping(params, y2), rel=1e-9)


def test_gradient_finite_with_missing():
    params, y, _ = random_problem(2, 6, 0, 30, seed=5)
    y = y.at[5].set(jnp.nan).at[9, 1].set(jnp.nan)
    g = jax.jit(jax.grad(lambda p: marginal_log_prob(p, y)))(params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))


def test_complete_row_filter_moments_match_dynamax_with_and_without_row_moments():
    """The information form on complete rows (``complete.py``'s unrolled pass): filtered moments
    and value against dynamax, inputs included, and the same with the data's ``row_moments`` given
    (the Gibbs sweep's once-per-block Gram matrix) and with a whole row missing."""
    params, y, u = random_problem(2, 5, 1, 40, seed=7)
    ref = lgssm_filter(params, y, u)
    run = jax.jit(lambda p, yy, uu, z: kalman_filter(p, yy, uu, form="information", partial_missing=False,
                                                     moments=z))
    for moments in (None, row_moments(y, u)):
        ll, means, covs = run(params, y, u, moments)
        assert abs(float(ll - ref.marginal_loglik)) <= 1e-9 * abs(float(ref.marginal_loglik))
        np.testing.assert_allclose(means, ref.filtered_means, rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(covs, ref.filtered_covariances, rtol=1e-8, atol=1e-9)
    params, y, _ = random_problem(2, 5, 0, 40, seed=8)
    y_gap, no_inputs = y.at[12].set(jnp.nan), jnp.zeros((40, 0))
    without, with_moments = run(params, y_gap, None, None), run(params, y_gap, None, row_moments(y_gap, no_inputs))
    assert float(without[0]) == pytest.approx(reference_skipping(params, np.asarray(y_gap)), rel=1e-9)
    for a, b in zip(without, with_moments):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # float32 data with a large mean: the moments are centred, so the log-likelihood keeps float32's
    # precision (uncentred, sum_t y_t y_t^T ~ 1e8 T would swamp the residuals' Gram matrix ~ T)
    offset = params._replace(emissions=params.emissions._replace(bias=params.emissions.bias + 1e4))
    f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
    p32, y32 = f32(offset), (y + 1e4).astype(jnp.float32)
    exact = float(run(offset, y + 1e4, None, None)[0])
    for moments in (None, row_moments(y32, jnp.zeros((40, 0), jnp.float32))):
        assert float(run(p32, y32, None, moments)[0]) == pytest.approx(exact, rel=1e-3)


# --- the parallel-in-time filter: few, jitted checks (its associative scan compiles slowly on CPU) ----
def test_parallel_value_and_filtered_moments_match_dynamax():
    params, y, u = random_problem(2, 10, 0, 100, seed=6)  # the seed's sizes
    ref = lgssm_filter(params, y, u)
    ll, means, covs = jax.jit(lambda p, yy, uu: kalman_filter(p, yy, uu, form="parallel"))(params, y, u)
    assert abs(float(ll - ref.marginal_loglik)) <= 1e-8 * abs(float(ref.marginal_loglik))
    np.testing.assert_allclose(means, ref.filtered_means, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(covs, ref.filtered_covariances, rtol=1e-8, atol=1e-9)


@pytest.mark.slow  # ~35 s compiling the scan's gradient; the parallel filter is opt-in (kalman = "parallel")
def test_parallel_gradient_with_missing_data_matches_sequential():
    """Whole and partly missing rows, inputs, S > D: value and gradient equal the sequential
    information filter's (itself checked against dynamax and the skipping reference above)."""
    params, y, u = random_problem(3, 2, 1, 12, seed=7)  # short: the scan's gradient compiles slowly
    y = y.at[jnp.array([3, 4])].set(jnp.nan).at[9, 1].set(jnp.nan)

    def value_and_grad(form):
        return jax.jit(jax.value_and_grad(lambda p: marginal_log_prob(p, y, u, form=form)))(params)

    (v, g), (v_ref, g_ref) = value_and_grad("parallel"), value_and_grad("information")
    assert float(v) == pytest.approx(float(v_ref), rel=1e-9)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)):
        if a.size:
            assert bool(jnp.all(jnp.isfinite(b)))
            np.testing.assert_allclose(sym(b), sym(a), rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(a))))


# --- the default (partial_missing=None): fast complete-row path, exact on partly missing rows ----------
def test_complete_path_gradient_wrt_everything_matches_dynamax():
    """The closed-form (Fisher identity) gradient of the complete-row path: parameters, emissions and
    inputs, against reverse mode through dynamax's filter."""
    params, y, u = random_problem(3, 5, 2, 15, seed=8)
    argnums = (0, 1, 2)
    v_ref, g_ref = jax.jit(jax.value_and_grad(lambda p, yy, uu: lgssm_filter(p, yy, uu).marginal_loglik,
                                              argnums))(params, y, u)
    v, g = jax.jit(jax.value_and_grad(lambda p, yy, uu: marginal_log_prob(p, yy, uu), argnums))(params, y, u)
    assert abs(float(v - v_ref)) <= 1e-9 * abs(float(v_ref))
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)):
        if a.size:
            np.testing.assert_allclose(sym(b), sym(a), rtol=1e-6, atol=1e-7 * float(jnp.max(jnp.abs(a))))


def test_batch_any_reduces_over_the_vmapped_batch():
    from sampler.core.kalman.filter import batch_any
    flags = jnp.array([False, True, False])
    assert bool(batch_any(flags[0])) is False
    assert np.asarray(jax.vmap(batch_any)(flags)).tolist() == [True] * 3
    assert np.asarray(jax.vmap(batch_any)(flags.at[1].set(False))).tolist() == [False] * 3
    nested = jax.vmap(jax.vmap(batch_any))(jnp.array([[False, True], [False, False]]))
    assert np.asarray(nested).tolist() == [[True, True], [True, True]]


def test_default_exact_on_mixed_batch_under_jit_vmap_grad():
    """A batch where one sequence has partly missing rows (the exact path runs for all), and one
    without (the complete path runs): values and gradients equal the explicit exact path's, the
    skipping reference's and, on complete data, dynamax's."""
    bsym = lambda a: 0.5 * (a + jnp.swapaxes(a, -1, -2)) if a.ndim >= 2 and a.shape[-1] == a.shape[-2] else a
    params, y, _ = random_problem(2, 4, 0, 20, seed=9)
    ys = np.stack([np.asarray(y), np.asarray(y) * 1.1, np.asarray(y) - 0.3])
    ys[0, [3, 4]] = np.nan          # whole rows
    mixed = ys.copy()
    mixed[1, 7, [0, 2]] = np.nan    # partly missing rows
    mixed[1, 15, 3] = np.nan
    ps = jax.tree.map(lambda x: jnp.broadcast_to(x, (3,) + x.shape), params)
    default = jax.jit(jax.vmap(jax.value_and_grad(marginal_log_prob)))
    exact = jax.jit(jax.vmap(jax.value_and_grad(partial(marginal_log_prob, partial_missing=True))))
    dyn = jax.jit(jax.vmap(jax.value_and_grad(lambda p, e: lgssm_filter(p, e).marginal_loglik)))
    for batch in (mixed, ys):
        (v, g), (v_ref, g_ref) = default(ps, jnp.asarray(batch)), exact(ps, jnp.asarray(batch))
        np.testing.assert_allclose(v, v_ref, rtol=1e-9)
        np.testing.assert_allclose(v, [reference_skipping(params, b) for b in batch], rtol=1e-9)
        for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g)):
            if a.size:
                np.testing.assert_allclose(bsym(b), bsym(a), rtol=1e-7, atol=1e-8 * float(jnp.max(jnp.abs(a))))
    v_dyn, g_dyn = dyn(ps, jnp.asarray(ys))  # rows 1 and 2 complete
    for a, b in zip(jax.tree.leaves(g_dyn), jax.tree.leaves(g)):
        if a.size:
            np.testing.assert_allclose(bsym(b[1:]), bsym(a[1:]), rtol=1e-6,
                                       atol=1e-7 * float(jnp.max(jnp.abs(a[1:]))))
    np.testing.assert_allclose(v[1:], v_dyn[1:], rtol=1e-9)


def test_default_gradient_float32_close_to_float64():
    params, y, _ = random_problem(2, 10, 0, 100, seed=2)
    f = jax.jit(jax.value_and_grad(marginal_log_prob))
    v64, g64 = f(params, y)
    v32, g32 = f(jax.tree.map(lambda x: x.astype(jnp.float32), params), y.astype(jnp.float32))
    assert v32.dtype == jnp.float32 and abs(float(v32 - v64)) <= 1e-5 * abs(float(v64))
    for a, b in zip(jax.tree.leaves(g64), jax.tree.leaves(g32)):
        if a.size:
            np.testing.assert_allclose(sym(b), sym(a), rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(a))))


def test_default_on_concrete_data_picks_on_host():
    """Eager call with concrete data: the partly missing row is seen on the host (exact path)."""
    params, y, _ = random_problem(2, 6, 0, 40, seed=4)
    y = np.asarray(y).copy()
    y[7, [0, 2]] = np.nan
    assert float(marginal_log_prob(params, jnp.asarray(y))) == pytest.approx(reference_skipping(params, y), rel=1e-9)
    assert float(marginal_log_prob(params, jnp.asarray(y), partial_missing=False)) != pytest.approx(
        reference_skipping(params, y), rel=1e-6)
