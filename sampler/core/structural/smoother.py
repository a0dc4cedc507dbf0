"""The scalar-innovation covariance filter of one series, its log-likelihood and the Durbin-Koopman
simulation smoother: a draw of x_{1:T} ~ p(x | y, params).

The filter runs in Durbin & Koopman's prediction form (2012, section 4.3): with the predicted
(a_t, P_t), ``v_t = y_t - h' a_t``, ``f_t = h' P_t h + r``, ``K_t = F P_t h / f_t``,
``a_{t+1} = F a_t + K_t v_t``, ``P_{t+1} = F P_t F' - f_t K_t K_t' + Q``; a NaN observation skips
its update (K_t = 0).  It factors nothing but the scalar f_t, so a singular Q (a dummy seasonal
drives one state of period - 1) and sds near zero are safe, where FFBS needs a Cholesky factor of
every predicted covariance.  F enters only through ``Transition`` (``transition.py``: F x without
forming F) and h is 0/1, so h' x is a sum of the loaded states.

Simulation smoother (Durbin & Koopman 2002): draw (x+, y+) from the model, then
x = x+ + E[x | y - y+], the mean by the fast state smoother (DK 2012, section 4.6.2): the backward
``r_{t-1} = h (v_t / f_t - K_t' r_t) + F' r_t`` and the forward ``x_1 = P_1 r_0``,
``x_{t+1} = F x_t + Q r_t``, which keeps no P_t (S x S per step) between the passes.

Hand-written because dynamax's smoother samples by FFBS, has no missing data and is multivariate
(here the observation is a scalar: no matrix inverse anywhere).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sampler.core.structural.transition import Transition


def _observe(x, loaded: np.ndarray):
    """h' x over the leading axis of x (S, ...): h is 1 at the states ``loaded``, 0 elsewhere."""
    return jnp.sum(x[loaded], axis=0)


def _loaded(value, loaded: np.ndarray, S: int):
    """h * value (S,)."""
    return jnp.zeros(S, value.dtype).at[loaded].set(value)


def _filter(tr: Transition, q, loaded, r, a1, P1, y):
    """The prediction-form filter -> per step (v_t / f_t, K_t, log p(y_t | y_{1:t-1})), 0 where y_t
    is NaN.  y (T,) with any known offset already subtracted."""
    observed = jnp.isfinite(y)

    def step(carry, xs):
        a, P = carry
        y_t, obs = xs
        Ph = _observe(P, loaded)                          # P h (P symmetric)
        f = _observe(Ph, loaded) + r
        v = jnp.where(obs, y_t - _observe(a, loaded), 0.0)
        finv = jnp.where(obs, 1.0 / f, 0.0)
        K = tr.apply(Ph) * finv
        P_next = tr.sandwich(P) - jnp.outer(K, K) * f
        P_next = 0.5 * (P_next + P_next.T) + jnp.diag(q)
        ll = jnp.where(obs, -0.5 * (jnp.log(2 * jnp.pi * f) + v * v * finv), 0.0)
        return (tr.apply(a) + K * v, P_next), (v * finv, K, ll)

    _, out = jax.lax.scan(step, (a1, P1), (jnp.where(observed, y, 0.0), observed))
    return out


def log_likelihood(tr: Transition, q, loaded, r, m0, s0, y, offset):
    """log p(y_{1:T}) of one scalar series (x_1 ~ N(m0, diag(s0^2)); NaN = missing):
    -1/2 sum over observed t of log(2 pi f_t) + v_t^2 / f_t.  A dense filter (``sampler.kalman``)
    would factor a 1 x 1 matrix per step and carry the general model's bias and input terms; this
    is the marginal moves' inner loop."""
    _, _, ll = _filter(tr, q, loaded, r, m0, jnp.diag(s0 ** 2), y - offset)
    return jnp.sum(ll)


def smoothed_mean(tr: Transition, q, loaded, r, P1, v):
    """E[x_{1:T} | v] for the model with zero initial mean and no offsets.

    Args:
        tr: F.  q: (S,) diag(Q).  loaded: states with h = 1.  r: () observation variance.
        P1: (S, S) initial covariance.  v: (T,) observations, NaN for missing.

    Returns:
        (T, S).
    """
    S = P1.shape[0]
    u, K, _ = _filter(tr, q, loaded, r, jnp.zeros(S, P1.dtype), P1, v)

    def backward(r_t, xs):
        u_t, K_t = xs
        r_prev = _loaded(u_t - K_t @ r_t, loaded, S) + tr.apply_transposed(r_t)
        return r_prev, r_prev

    _, rs = jax.lax.scan(backward, jnp.zeros(S, P1.dtype), (u, K), reverse=True)   # rs[t] = r_t, t = 0..T-1

    def forward(x_t, r_t):
        x_next = tr.apply(x_t) + q * r_t
        return x_next, x_next

    x1 = P1 @ rs[0]
    _, rest = jax.lax.scan(forward, x1, rs[1:])
    return jnp.concatenate([x1[None], rest])


def simulation_smoother(key, tr: Transition, q, loaded, r, m0, s0, y, offset):
    """One draw of the states given the observations.

    Args:
        tr: F.  q: (S,) diag(Q).  loaded: states with h = 1.  r: () observation variance.
        m0, s0: (S,) initial mean and sds (x_1 ~ N(m0, diag(s0^2))).
        y: (T,) observations (NaN missing).  offset: (T,) known part of y (regression).

    Returns:
        x (T, S).
    """
    T, S = y.shape[0], q.shape[0]
    k0, kx, ky = jax.random.split(key, 3)
    x1 = m0 + s0 * jax.random.normal(k0, (S,), q.dtype)
    noise = jnp.sqrt(q) * jax.random.normal(kx, (T - 1, S), q.dtype)

    def step(x, eps):
        x = tr.apply(x) + eps
        return x, x

    _, rest = jax.lax.scan(step, x1, noise)
    x_plus = jnp.concatenate([x1[None], rest])
    y_plus = _observe(x_plus.T, loaded) + jnp.sqrt(r) * jax.random.normal(ky, (T,), q.dtype)
    return x_plus + smoothed_mean(tr, q, loaded, r, jnp.diag(s0 ** 2), y - offset - y_plus)
