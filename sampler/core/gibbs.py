"""Blocked Gibbs sampler for the conjugate LG-SSM (one chain; the engine vmaps it).

One sweep: (1) draw the latent states of every sequence by forward filtering, backward sampling
(FFBS through ``sampler.core.kalman``); (2) draw missing emission entries from their conditional given the
states (data augmentation, so the emission block stays conjugate); (3) draw each parameter block from
its conjugate conditional: (m0, S0) ~ NIW, ([F, B, b], Q) ~ MNIW, ([H, D, d], R) ~ MNIW, with dynamax's
priors; (4) Metropolis moves along the directions the likelihood cannot see (a change of latent
coordinates, ``latent_space_moves``), which the Gibbs blocks alone explore by a slow random walk.
Frozen leaves are held fixed and the free part of a block is drawn from its conditional given
them (see ``regression_block``): this is exact for any frozen subset, which dynamax's
``fit_blocked_gibbs`` does not support.

Hand-written rather than wrapping ``fit_blocked_gibbs`` because that runs a Python loop over draws,
cannot be vmapped over datasets x chains, and has no missing data or frozen leaves.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core import priors
from sampler.core.kalman import kalman_filter, observed_noise, small_cholesky, small_matmul, small_solve_lower
from sampler.core.model import Model
from sampler.core.priors import sample_inverse_wishart


def _sym(A):
    return 0.5 * (A + jnp.swapaxes(A, -1, -2))


def _mvn(key, mean, cov):
    L = small_cholesky(_sym(cov) + 1e-12 * jnp.eye(cov.shape[-1], dtype=cov.dtype))
    return mean + small_matmul(L, jax.random.normal(key, mean.shape, mean.dtype))


def _inputs_or_zeros(params: ParamsLGSSM, T: int, inputs):
    """Inputs as (T, U) (zeros of width 0 when the model has none)."""
    return jnp.zeros((T, 0), params.initial.mean.dtype) if inputs is None else inputs


def sample_states(key, model: Model, params: ParamsLGSSM, emissions, inputs=None):
    """One draw of x_{1:T} ~ p(x | y, params) for one sequence.  emissions (T, D) -> states (T, S)."""
    T = emissions.shape[0]
    _, means, covs = kalman_filter(params, emissions, inputs, form=model.moments_form,
                                   partial_missing=model.partial_missing)
    u = _inputs_or_zeros(params, T, inputs)
    F, Q = params.dynamics.weights, params.dynamics.cov
    B, b = params.dynamics.input_weights, params.dynamics.bias
    keys = jax.random.split(key, T)
    x_last = _mvn(keys[-1], means[-1], covs[-1])

    mm = small_matmul

    def back(x_next, xs):
        # x_t | x_{t+1} ~ N(m + G r, P - G P_pred G^T), G = P F^T P_pred^-1, r = x_{t+1} - F m - B u - b;
        # with P_pred = Lp Lp^T and W = Lp^-1 F P: G r = W^T Lp^-1 r and G P_pred G^T = W^T W.
        m, P, u_next, k = xs
        FP = mm(F, P)
        Lp = small_cholesky(_sym(mm(FP, F.T) + Q))
        W = small_solve_lower(Lp, FP)
        z = small_solve_lower(Lp, x_next - mm(F, m) - B @ u_next - b)
        x = _mvn(k, m + mm(W.T, z), P - mm(W.T, W))
        return x, x

    _, xs = jax.lax.scan(back, x_last, (means[:-1], covs[:-1], u[1:], keys[:-1]), reverse=True)
    return jnp.concatenate([xs, x_last[None]], axis=0)


def impute_missing(key, params: ParamsLGSSM, emissions, states, inputs=None):
    """Fill NaN entries of ``emissions`` (T, D) with a draw from p(y_missing | y_observed, x, params).

    Matheron's rule: draw e ~ N(0, R) and correct it by the observed residual, so one D x D solve per
    time step handles any missingness pattern.
    """
    T, D = emissions.shape
    u = _inputs_or_zeros(params, T, inputs)
    H, d, Dw, R = (params.emissions.weights, params.emissions.bias,
                   params.emissions.input_weights, params.emissions.cov)
    observed = jnp.isfinite(emissions)
    mean = states @ H.T + u @ Dw.T + d
    noise = jax.random.normal(key, (T, D), emissions.dtype) @ jnp.linalg.cholesky(R).T
    resid = jnp.where(observed, emissions - mean - noise, 0.0)
    R_obs = observed_noise(R, observed)  # (T, D, D): R on observed block, I elsewhere
    w = jnp.linalg.solve(R_obs, resid[..., None])[..., 0]  # zero on missing entries
    return jnp.where(observed, emissions, mean + noise + w @ R.T)


def regression_block(key, Y, Z, W, Sigma, prior, free_cols: Sequence[bool], sigma_free: bool):
    """Draw the free part of (W, Sigma) from p(W, Sigma | Y, Z, frozen part), Y = Z W^T + N(0, Sigma).

    Args:
        Y: (N, k) responses.  Z: (N, p) regressors.  W: (k, p), Sigma: (k, k) current values.
        prior: dynamax MNIW-like (loc (k, p), col_precision (p, p), df, scale (k, k)):
            W | Sigma ~ MN(loc, Sigma, col_precision^-1), Sigma ~ IW(df, scale).
        free_cols: static, which columns of W are sampled (the others are frozen).
        sigma_free: static, whether Sigma is sampled.

    Given the frozen columns f, the free columns a have the conditional prior
    MN(M0_a - (W_f - M0_f) L_fa L_aa^-1, Sigma, L_aa^-1) (L = col_precision), and W_f contributes
    |f| degrees of freedom and (W_f - M0_f) [(L^-1)_ff]^-1 (W_f - M0_f)^T to Sigma's inverse Wishart.
    """
    M0, Lam, nu0, Psi0 = prior.loc, prior.col_precision, prior.df, prior.scale
    a = [i for i, free in enumerate(free_cols) if free]
    f = [i for i, free in enumerate(free_cols) if not free]
    if not a and not sigma_free:
        return W, Sigma
    k_sigma, k_w = jax.random.split(key)
    nu, Psi = nu0, Psi0
    if f:
        Wf, M0f = W[:, f], M0[:, f]
        Y = Y - Z[:, f] @ Wf.T
        E = Wf - M0f
        V_ff = jnp.linalg.inv(Lam)[np.ix_(f, f)]
        Psi = Psi + E @ jnp.linalg.solve(V_ff, E.T)
        nu = nu + len(f)
    if not a:  # every column frozen: Sigma | W ~ IW(nu + N, Psi + residual scatter)
        return W, sample_inverse_wishart(k_sigma, nu + Y.shape[0], _sym(Psi + Y.T @ Y))
    Lam_aa = Lam[np.ix_(a, a)]
    M0a = M0[:, a]
    if f:
        M0a = M0a - E @ Lam[np.ix_(f, a)] @ jnp.linalg.inv(Lam_aa)
    Za = Z[:, a]
    Sxx = _sym(Lam_aa + Za.T @ Za)
    Sxy = Za.T @ Y + Lam_aa @ M0a.T
    Syy = Y.T @ Y + M0a @ Lam_aa @ M0a.T
    L = jnp.linalg.cholesky(Sxx)
    Mn = jax.scipy.linalg.cho_solve((L, True), Sxy).T  # (k, |a|)
    if sigma_free:
        Sigma = sample_inverse_wishart(k_sigma, nu + Y.shape[0], _sym(Psi + Syy - Mn @ Sxy))
    G = jax.random.normal(k_w, Mn.shape, Mn.dtype)
    # W_a = Mn + chol(Sigma) G L^-1, so that rows have covariance Sxx^-1
    Wa = Mn + jnp.linalg.cholesky(Sigma) @ solve_triangular(L, G.T, lower=True, trans="T").T
    return W.at[:, a].set(Wa), Sigma


def gibbs_sweep(key, model: Model, params: ParamsLGSSM, emissions, inputs=None):
    """One blocked-Gibbs sweep.  emissions (M, T, D); inputs (M, T, U) or None.  Returns new params."""
    M, T, _ = emissions.shape
    S, U = model.state_dim, model.input_dim
    k_x, k_y, k_init, k_dyn, k_em, k_move = jax.random.split(key, 6)
    u = jnp.zeros((M, T, 0), emissions.dtype) if inputs is None else inputs
    x = jax.vmap(lambda k, y, uu: sample_states(k, model, params, y, uu if U else None))(
        jax.random.split(k_x, M), emissions, u)
    y = emissions
    if model.has_missing:
        y = jax.vmap(lambda k, yy, xx, uu: impute_missing(k, params, yy, xx, uu if U else None))(
            jax.random.split(k_y, M), emissions, x, u)
    frozen = set(model.frozen)
    ones = jnp.ones((M, T, 1), emissions.dtype)
    prior_of = model.ssm

    # initial state: NIW as a regression of x_1 on a constant
    W0, S0 = regression_block(
        k_init, x[:, 0], jnp.ones((M, 1), emissions.dtype), params.initial.mean[:, None], params.initial.cov,
        NIWAsMNIW(prior_of.initial_prior), ["initial.mean" not in frozen], "initial.cov" not in frozen)

    # dynamics: x_{t+1} = [F B b] [x_t; u_{t+1}; 1] + N(0, Q)
    Zd = jnp.concatenate([x[:, :-1], u[:, 1:], ones[:, 1:]], axis=-1).reshape(M * (T - 1), -1)
    Wd = jnp.concatenate([params.dynamics.weights, params.dynamics.input_weights,
                          params.dynamics.bias[:, None]], axis=1)
    free_d = ([("dynamics.weights" not in frozen)] * S + [("dynamics.input_weights" not in frozen)] * U
              + [("dynamics.bias" not in frozen)])
    Wd, Q = regression_block(k_dyn, x[:, 1:].reshape(M * (T - 1), S), Zd, Wd, params.dynamics.cov,
                              prior_of.dynamics_prior, free_d, "dynamics.cov" not in frozen)

    # emissions: y_t = [H D d] [x_t; u_t; 1] + N(0, R), missing entries imputed above
    Ze = jnp.concatenate([x, u, ones], axis=-1).reshape(M * T, -1)
    Ye = y.reshape(M * T, -1)
    We = jnp.concatenate([params.emissions.weights, params.emissions.input_weights,
                          params.emissions.bias[:, None]], axis=1)
    free_e = ([("emissions.weights" not in frozen)] * S + [("emissions.input_weights" not in frozen)] * U
              + [("emissions.bias" not in frozen)])
    We, R = regression_block(k_em, Ye, Ze, We, params.emissions.cov, prior_of.emission_prior,
                              free_e, "emissions.cov" not in frozen)

    params = ParamsLGSSM(
        initial=params.initial._replace(mean=W0[:, 0], cov=S0),
        dynamics=params.dynamics._replace(weights=Wd[:, :S], input_weights=Wd[:, S:S + U], bias=Wd[:, -1], cov=Q),
        emissions=params.emissions._replace(weights=We[:, :S], input_weights=We[:, S:S + U], bias=We[:, -1], cov=R))
    if frozen & LATENT_LEAVES:
        return params
    return latent_space_moves(k_move, model, params)


#: leaves that a change of latent coordinates x -> A x + c alters.
LATENT_LEAVES = frozenset({"initial.mean", "initial.cov", "dynamics.weights", "dynamics.bias",
                           "dynamics.input_weights", "dynamics.cov", "emissions.weights", "emissions.bias"})
MOVE_ROUNDS, LINEAR_SCALE, SHIFT_SCALE = 4, 0.15, 0.3


def _transform(params: ParamsLGSSM, A, c) -> ParamsLGSSM:
    """Parameters of the same observation model in latent coordinates x' = A x + c."""
    A_inv = jnp.linalg.inv(A)
    F = A @ params.dynamics.weights @ A_inv
    H = params.emissions.weights @ A_inv
    return ParamsLGSSM(
        initial=params.initial._replace(mean=A @ params.initial.mean + c,
                                        cov=_sym(A @ params.initial.cov @ A.T)),
        dynamics=params.dynamics._replace(weights=F, input_weights=A @ params.dynamics.input_weights,
                                          bias=A @ params.dynamics.bias + c - F @ c,
                                          cov=_sym(A @ params.dynamics.cov @ A.T)),
        emissions=params.emissions._replace(weights=H, bias=params.emissions.bias - H @ c))


def latent_space_moves(key, model: Model, params: ParamsLGSSM) -> ParamsLGSSM:
    """Metropolis moves along the likelihood's invariant directions (parameter expansion).

    The likelihood is unchanged by a change of latent coordinates x -> A x + c, so the posterior along
    those directions is the prior times a Jacobian, and states sampled by FFBS then move with them only
    slowly: the Gibbs chain random-walks along the ridge.  Each round proposes a linear map
    A = expm(Z), Z ~ N(0, LINEAR_SCALE^2) (an involution with Z -> -Z) and then a shift
    c ~ N(0, SHIFT_SCALE^2), accepted with the prior ratio times the map's Jacobian
    |A|^(2S + 4 + U - D) (m0, S0, B, b, Q, H transform; F by similarity).  Only the rotation- and
    shift-dependent leaves change; R, D and the likelihood do not.  Used when none of them is frozen.
    """
    S, D, U = model.state_dim, model.emission_dim, model.input_dim
    ssm = model.ssm
    logdet_power = 2 * S + 4 + U - D
    dtype = params.emissions.cov.dtype

    def accept(key, current, proposal, log_jac):
        log_ratio = priors.log_prior(ssm, proposal) - priors.log_prior(ssm, current) + log_jac
        ok = jnp.log(jax.random.uniform(key, (), dtype)) < log_ratio
        ok = ok & jnp.isfinite(log_ratio)
        return jax.tree.map(lambda new, old: jnp.where(ok, new, old), proposal, current)

    def one_round(current, key):
        kz, ka, kc, kb = jax.random.split(key, 4)
        Z = LINEAR_SCALE * jax.random.normal(kz, (S, S), dtype)
        A = jax.scipy.linalg.expm(Z)
        current = accept(ka, current, _transform(current, A, jnp.zeros(S, dtype)), logdet_power * jnp.trace(Z))
        c = SHIFT_SCALE * jax.random.normal(kc, (S,), dtype)
        current = accept(kb, current, _transform(current, jnp.eye(S, dtype=dtype), c), 0.0)
        return current, None

    params, _ = jax.lax.scan(one_round, params, jax.random.split(key, MOVE_ROUNDS))
    return params


class NIWAsMNIW:
    """dynamax's NIW(loc, mean_concentration, df, scale) seen as an MNIW with one column."""

    def __init__(self, niw):
        self.loc = niw.loc[:, None]
        self.col_precision = jnp.reshape(jnp.asarray(niw.mean_concentration, niw.loc.dtype), (1, 1))
        self.df, self.scale = niw.df, niw.scale

