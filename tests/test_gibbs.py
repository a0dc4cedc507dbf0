"""Blocked Gibbs (with latent-coordinate moves) against NUTS and against dynamax's fit_blocked_gibbs."""
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sampler
from helpers import simulate, write_config


def diag_R(run_dir):
    R = sampler.open_run(run_dir)["posterior"]["emissions_cov"].values[:, :, 0]  # (chain, draw, D, D)
    return np.diagonal(R, axis1=-2, axis2=-1)


def mean_and_se(draws):
    """Posterior mean (D,) and its Monte Carlo standard error from (chain, draw, D) draws."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = np.array([float(az.ess(draws[..., i])) for i in range(draws.shape[-1])])
    return draws.mean((0, 1)), draws.std((0, 1)) / np.sqrt(ess)


@pytest.mark.slow  # keeps the default run well under 15 minutes on 2 cores
def test_gibbs_agrees_with_nuts_and_chees_on_identified_quantities(tmp_path):
    np.savez(tmp_path / "d.npz", **simulate(1, state_dim=1, emission_dim=3, T=50, seed=5))
    out = {}
    for algorithm, warmup, draws in (("gibbs", 300, 1500), ("nuts", 100, 250), ("chees", 300, 1000)):
        cfg = write_config(tmp_path / f"{algorithm}.toml", "d.npz", state_dim=1, emission_dim=3,
                           sampler={"algorithm": algorithm, "num_chains": 4, "num_warmup": warmup,
                                    "num_draws": draws},
                           run={"dir": algorithm, "checkpoint_every": draws})
        out[algorithm] = mean_and_se(diag_R(sampler.run(cfg, progress=False)))
    mg, sg = out["gibbs"]
    for other in ("nuts", "chees"):
        mo, so = out[other]
        z = (mg - mo) / np.sqrt(sg ** 2 + so ** 2)
        assert np.all(np.abs(z) < 4), (other, z)


def test_latent_space_moves_leave_the_likelihood_unchanged():
    from sampler.core import gibbs, kalman
    from sampler.core.model import Model
    model = Model(2, 4, input_dim=1)
    params = model.initial_params(jax.random.PRNGKey(0), {})
    params = params._replace(dynamics=params.dynamics._replace(bias=jnp.array([0.1, -0.2]),
                                                               input_weights=jnp.array([[0.3], [0.1]])))
    u = jax.random.normal(jax.random.PRNGKey(1), (30, 1))
    _, y = model.ssm.sample(params, jax.random.PRNGKey(2), 30, inputs=u)
    A = jax.scipy.linalg.expm(0.3 * jax.random.normal(jax.random.PRNGKey(3), (2, 2)))
    moved = gibbs._transform(params, A, jnp.linalg.inv(A), jnp.array([0.5, -1.0]))
    assert float(kalman.marginal_log_prob(moved, y, u)) == pytest.approx(
        float(kalman.marginal_log_prob(params, y, u)), rel=1e-10)
    assert not np.allclose(moved.emissions.weights, params.emissions.weights)


def test_the_moves_prior_differs_as_the_prior_and_its_whitened_weights_move_with_the_coordinates():
    """The latent moves' target (``priors.latent_log_prior``, on emission weights whitened by R's
    factor) changes by what the full log prior changes under a change of coordinates, and the
    whitened weights mapped as (H, d) are (``gibbs._emission_map``) equal the mapped weights whitened."""
    from sampler.core import gibbs, priors
    from sampler.core.model import Model
    model = Model(2, 4, input_dim=1)
    params = model.initial_params(jax.random.PRNGKey(0), {})
    params = params._replace(emissions=params.emissions._replace(
        bias=jnp.array([0.5, -1.0, 0.2, 0.0]), input_weights=jnp.array([[0.3], [0.0], [-0.2], [0.1]]),
        cov=jnp.diag(jnp.array([0.5, 1.0, 2.0, 0.7])) + 0.1))
    A = jax.scipy.linalg.expm(0.3 * jax.random.normal(jax.random.PRNGKey(3), (2, 2)))
    A_inv, c = jnp.linalg.inv(A), jnp.array([0.5, -1.0])
    moved = gibbs._transform(params, A, A_inv, c)
    L_inv = jnp.linalg.inv(jnp.linalg.cholesky(params.emissions.cov))
    stacked = lambda em: jnp.column_stack((em.weights, em.input_weights, em.bias))
    white = lambda p: L_inv @ stacked(p.emissions)
    loc = L_inv @ model.ssm.emission_prior.loc
    latent = lambda p: float(priors.latent_log_prior(model.ssm, p, white(p), loc))
    full = lambda p: float(priors.log_prior(model.ssm, p))
    assert latent(moved) - latent(params) == pytest.approx(full(moved) - full(params), rel=1e-9)
    assert abs(full(moved) - full(params)) > 1e-3  # the move changes the prior
    P = white(params)
    P_H, P_d = gibbs._emission_map(P[:, :2], P[:, -1], A_inv, c)
    np.testing.assert_allclose(jnp.column_stack((P_H, P[:, 2:3], P_d)), white(moved), rtol=1e-10, atol=1e-12)


def test_the_emission_block_reads_the_data_moments_as_it_would_compute_them():
    """The data's moments, computed once per block (``gibbs.data_moments``), stand in for the
    emission block's y^T y: the same draw to rounding, with inputs and several sequences.  (The
    filter's use of them, a missing row included, is checked in test_kalman; with missing entries the
    emission block imputes and does not read them.)"""
    from sampler.core import gibbs
    from sampler.core.model import Model
    model = Model(2, 3, input_dim=1)
    params = model.initial_params(jax.random.PRNGKey(0), {})
    u = jax.random.normal(jax.random.PRNGKey(1), (3, 30, 1))
    # any data and states will do for a conditional draw
    y, states = jax.random.normal(jax.random.PRNGKey(2), (3, 30, 3)), jax.random.normal(jax.random.PRNGKey(3), (3, 30, 2))
    draw = lambda z: gibbs.draw_parameters(jax.random.PRNGKey(4), model, params, states, y, u, z)[0]
    without, with_moments = jax.jit(lambda: (draw(None), draw(gibbs.data_moments(y, u))))()  # one compile
    for a, b in zip(jax.tree.leaves(without), jax.tree.leaves(with_moments)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)


def test_a_chain_without_states_starts_its_first_sweep_at_the_moves():
    """Before its first sweep a chain has parameters only (``undrawn_states``, all NaN): the sweep
    keeps the parameters the conjugate blocks would draw given states (R, which no move changes,
    stays, to rounding: it is re-formed from its factor), draws finite states and reports the log-likelihood of the parameters it ends at; from
    drawn states the same call does draw R."""
    from sampler.core import gibbs, kalman
    from sampler.core.model import Model
    model = Model(2, 3)
    params = model.initial_params(jax.random.PRNGKey(0), {})
    _, y = model.ssm.sample(params, jax.random.PRNGKey(1), 40)
    y = jnp.stack([y, y[::-1]])                                          # (M, T, D), M = 2
    sweep = jax.jit(lambda p, x: gibbs.gibbs_sweep(jax.random.PRNGKey(2), model, p, x, y))
    new, states, ll, factor = sweep(params, gibbs.undrawn_states(model, y))
    np.testing.assert_allclose(new.emissions.cov, params.emissions.cov, rtol=1e-13, atol=1e-15)
    assert states.shape == (2, 40, 2) and np.all(np.isfinite(states))
    expected = sum(float(kalman.marginal_log_prob(new, y[m])) for m in range(2))
    assert float(ll) == pytest.approx(expected, rel=1e-9)
    drawn, _, drawn_ll, drawn_factor = sweep(params, states)
    assert not np.allclose(drawn.emissions.cov, params.emissions.cov)
    # the R factor the sweep hands on (to the filter, the log prior and the position) is R's
    # Cholesky factor, kept or drawn, and the log-likelihood computed with it is the filter's own
    expected = sum(float(kalman.marginal_log_prob(drawn, y[m])) for m in range(2))
    assert float(drawn_ll) == pytest.approx(expected, rel=1e-9)
    for p, f in ((new, factor), (drawn, drawn_factor)):
        R = p.emissions.cov
        np.testing.assert_allclose(f.chol, np.linalg.cholesky(R), rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(np.triu(f.chol, 1), 0.0)
        np.testing.assert_allclose(f.chol_inv @ f.chol, np.eye(3), atol=1e-12)


@pytest.mark.slow
def test_seed_posterior_of_R_matches_dynamax_blocked_gibbs(tmp_path):
    """Our batched Gibbs on the seed data vs a long run of dynamax's own fit_blocked_gibbs (independent
    code, no latent moves): posterior means of diag(R) agree within Monte Carlo error."""
    import jax.random as jr
    from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM
    from examples.seed.make_data import main as make_data
    make_data(tmp_path, 1)
    y = np.load(tmp_path / "seed.npz")["emissions"]
    cfg = write_config(tmp_path / "c.toml", "seed.npz", state_dim=2, emission_dim=10,
                       sampler={"num_chains": 4, "num_warmup": 500, "num_draws": 1000},
                       run={"checkpoint_every": 500})
    ours = diag_R(sampler.run(cfg, progress=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = max(float(az.rhat(ours[..., i])) for i in range(10))
    assert rhat < 1.01
    m = LinearGaussianConjugateSSM(2, 10)
    chains = []
    for c in range(4):
        init, _ = m.initialize(jr.PRNGKey(100 + c))
        draws = m.fit_blocked_gibbs(jr.PRNGKey(c), init, 3000, jnp.asarray(y[0]))
        chains.append(np.diagonal(np.asarray(draws.emissions.cov[1000:]), axis1=-2, axis2=-1))
    ref = np.stack(chains)
    (mo, so), (mr, sr) = mean_and_se(ours), mean_and_se(ref)
    z = (mo - mr) / np.sqrt(so ** 2 + sr ** 2)
    assert np.all(np.abs(z) < 4), z
