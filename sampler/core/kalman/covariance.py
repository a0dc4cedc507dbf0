"""The classic (covariance-form) Kalman filter: the innovation covariance factored at every step,
restricted to each step's observed entries."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from sampler.core.kalman.common import LOG_2PI, observed_noise, predict
from sampler.core.kalman.linalg import log_det_cholesky


def covariance_filter(params, emissions, inputs):
    H, d, D_in, R = (params.emissions.weights, params.emissions.bias,
                     params.emissions.input_weights, params.emissions.cov)
    observed = jnp.isfinite(emissions)
    mask = observed.astype(H.dtype)
    R_t = observed_noise(R, observed)
    y = jnp.where(observed, emissions, 0.0)
    c = d + inputs @ D_in.T
    next_inputs = jnp.concatenate([inputs[1:], inputs[-1:]], axis=0)

    def step(carry, xs):
        ll, m, P = carry
        y_t, c_t, m_t, R_tt, u_next = xs
        Hm = m_t[:, None] * H
        r = m_t * (y_t - c_t - H @ m)
        L_S = jnp.linalg.cholesky(Hm @ P @ Hm.T + R_tt)
        v = solve_triangular(L_S, r, lower=True)
        G = solve_triangular(L_S, Hm @ P, lower=True)
        ll_t = -0.5 * (jnp.sum(m_t) * LOG_2PI + log_det_cholesky(L_S) + v @ v)
        m_post = m + G.T @ v
        P_post = 0.5 * (P - G.T @ G + (P - G.T @ G).T)
        m_pred, P_pred = predict(m_post, P_post, params, u_next)
        return (ll + ll_t, m_pred, 0.5 * (P_pred + P_pred.T)), (m_post, P_post)

    carry0 = (jnp.zeros((), H.dtype), params.initial.mean, params.initial.cov)
    (ll, _, _), filtered = jax.lax.scan(step, carry0, (y, c, mask, R_t, next_inputs))
    return ll, filtered
