"""The information-form Kalman filter: every emission-sized computation in one vectorised pass.

When ``emission_dim > state_dim`` (many series, few factors) ``J = H^T R^-1 H``,
``h_t = H^T R^-1 (y_t - d - D u_t)`` and ``log|R|`` are computed once per sequence, and each
sequential step only factors ``state_dim x state_dim`` matrices (unrolled for small ``state_dim``);
dynamax factors the ``emission_dim``-sized innovation covariance at every step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core.kalman.common import LOG_2PI, observed_noise
from sampler.core.kalman.linalg import log_det_cholesky, small_cholesky, small_matmul, small_solve_lower


def info_terms(params: ParamsLGSSM, emissions, inputs, partial_missing: bool):
    """Per-time-step information-form terms of the emission model.

    Returns J (T, S, S), h (T, S), q (T,), logdet_R (T,), n_obs (T,) with
    J_t = H^T R_t^-1 H, h_t = H^T R_t^-1 e_t, q_t = e_t^T R_t^-1 e_t, e_t = y_t - d - D u_t,
    where R_t is R restricted to the observed entries at t (a missing row contributes zeros).
    """
    H, d, D_in, R = (params.emissions.weights, params.emissions.bias,
                     params.emissions.input_weights, params.emissions.cov)
    observed = jnp.isfinite(emissions)
    e = jnp.where(observed, emissions, 0.0) - d - inputs @ D_in.T  # (T, D)
    if partial_missing:
        m = observed.astype(H.dtype)
        e = e * m
        L = jnp.linalg.cholesky(observed_noise(R, observed))  # (T, D, D)
        Hm = m[:, :, None] * H[None]  # (T, D, S)
        A = solve_triangular(L, Hm, lower=True)  # (T, D, S)
        z = solve_triangular(L, e[..., None], lower=True)[..., 0]  # (T, D)
        J = jnp.einsum("tds,tdr->tsr", A, A)
        h = jnp.einsum("tds,td->ts", A, z)
        q = jnp.sum(z * z, axis=-1)
        logdet = log_det_cholesky(L)
        n_obs = jnp.sum(m, axis=-1)
        return J, h, q, logdet, n_obs
    full = jnp.all(observed, axis=-1).astype(H.dtype)  # (T,)
    e = e * full[:, None]
    L = jnp.linalg.cholesky(R)
    A = solve_triangular(L, H, lower=True)  # (D, S)
    Z = solve_triangular(L, e.T, lower=True)  # (D, T)
    J = (A.T @ A)[None] * full[:, None, None]
    h = Z.T @ A  # (T, S), zero on missing rows because e is
    q = jnp.sum(Z * Z, axis=0)
    logdet = log_det_cholesky(L) * full
    n_obs = full * emissions.shape[-1]
    return J, h, q, logdet, n_obs


def info_update(m, P, J_t, h_t, q_t, ld_t, n_t):
    """Condition the prior N(m, P) on one time step's information terms (see ``info_terms``).

    Returns (log p(y_t | past) (), posterior mean (S,), posterior covariance (S, S)).  Only S x S
    factorisations: P = L L^T, I + L^T J L = C C^T, posterior covariance W W^T with W^T = C^-1 L^T.
    """
    mm = small_matmul
    eye = jnp.eye(m.shape[-1], dtype=P.dtype)
    L = small_cholesky(P)
    C = small_cholesky(eye + mm(mm(L.T, J_t), L))
    Jm = mm(J_t, m)
    v = small_solve_lower(C, mm(L.T, h_t - Jm))
    ll_t = -0.5 * (n_t * LOG_2PI + ld_t + log_det_cholesky(C)
                   + q_t - 2.0 * jnp.sum(m * h_t) + jnp.sum(m * Jm) - jnp.sum(v * v))
    Wt = small_solve_lower(C, L.T)
    return ll_t, m + mm(Wt.T, v), mm(Wt.T, Wt)


def information_scan(m0, P0, F, Q, c_next, J, h, q, logdet_R, n_obs):
    """The sequential pass over per-step information terms (``info_terms``): x_1 ~ N(m0, P0) and the
    transition into step t+1 is N(F x_t + c_next[t], Q).  Returns (log-likelihood, (filtered means
    (T, S), filtered covariances (T, S, S)))."""
    mm = small_matmul

    def step(carry, xs):
        ll, m, P = carry
        *terms, c_t = xs
        ll_t, m_post, P_post = info_update(m, P, *terms)
        P_pred = mm(mm(F, P_post), F.T) + Q
        return (ll + ll_t, mm(F, m_post) + c_t, 0.5 * (P_pred + P_pred.T)), (m_post, P_post)

    carry0 = (jnp.zeros((), J.dtype), m0, P0)
    (ll, _, _), filtered = jax.lax.scan(step, carry0, (J, h, q, logdet_R, n_obs, c_next))
    return ll, filtered


def information_filter(params, emissions, inputs, partial_missing):
    terms = info_terms(params, emissions, inputs, partial_missing)
    dyn = params.dynamics
    next_inputs = jnp.concatenate([inputs[1:], inputs[-1:]], axis=0)
    c_next = dyn.bias + next_inputs @ dyn.input_weights.T
    return information_scan(params.initial.mean, params.initial.cov, dyn.weights, dyn.cov, c_next, *terms)
