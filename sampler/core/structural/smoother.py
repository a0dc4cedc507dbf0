"""Durbin-Koopman simulation smoother for one scalar series: a draw of x_{1:T} ~ p(x | y, params).

Durbin & Koopman (2002): draw (x+, y+) from the model, then x = x+ + E[x | y - y+] with the mean
computed by the covariance filter and the backward recursion r_{t-1} = h v_t / f_t + L_t' r_t,
``E[x_t | y] = a_t + P_t r_{t-1}``.  It factors nothing but the scalar innovation variance f_t, so
singular Q (a dummy seasonal drives one state of period - 1) and sds near zero are safe, where FFBS
needs a Cholesky factor of every predicted covariance.  A NaN observation skips its update.

Hand-written because dynamax's smoother samples by FFBS, has no missing data and is multivariate
(here the observation is a scalar: no matrix inverse anywhere).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _sym(P):
    return 0.5 * (P + P.T)


def log_likelihood(F, q, h, r, m0, s0, y, offset):
    """log p(y_{1:T}) of one scalar series (x_1 ~ N(m0, diag(s0^2)); NaN = missing), by the same
    scalar-innovation covariance filter: -1/2 sum over observed t of log(2 pi f_t) + e_t^2 / f_t.
    A dense filter (``sampler.kalman``) would factor a 1 x 1 matrix per step and carry the
    general model's bias and input terms; this is the marginal moves' inner loop."""
    observed = jnp.isfinite(y)

    def step(carry, xs):
        a, P = carry
        v, o, obs = xs
        f = h @ P @ h + r
        e = jnp.where(obs, v - o - h @ a, 0.0)
        K = P @ h / f
        a = jnp.where(obs, a + K * e, a)
        P = jnp.where(obs, P - jnp.outer(K, K) * f, P)
        ll = jnp.where(obs, -0.5 * (jnp.log(2 * jnp.pi * f) + e ** 2 / f), 0.0)
        return (F @ a, _sym(F @ P @ F.T) + jnp.diag(q)), ll

    _, ll = jax.lax.scan(step, (m0, jnp.diag(s0 ** 2)), (jnp.where(observed, y, 0.0), offset, observed))
    return jnp.sum(ll)


def smoothed_mean(F, q, h, r, P1, v):
    """E[x_{1:T} | v] for the model with zero initial mean and no offsets.

    Args:
        F: (S, S) transition.  q: (S,) diag(Q).  h: (S,) loading.  r: () observation variance.
        P1: (S, S) initial covariance.  v: (T,) observations, NaN for missing.

    Returns:
        (T, S).
    """
    S = F.shape[0]
    observed = jnp.isfinite(v)
    v0 = jnp.where(observed, v, 0.0)

    def forward(carry, xs):
        a, P = carry
        y, obs = xs
        f = h @ P @ h + r
        e = jnp.where(obs, y - h @ a, 0.0)
        finv = jnp.where(obs, 1.0 / f, 0.0)
        K = F @ P @ h * finv                                 # DK gain (includes F)
        L = F - jnp.outer(K, h)
        a_next = F @ a + K * e
        P_next = _sym(F @ P @ L.T) + jnp.diag(q)
        return (a_next, P_next), (a, P, e * finv, L)

    _, (a, P, u, L) = jax.lax.scan(forward, (jnp.zeros(S, F.dtype), P1), (v0, observed))

    def backward(r_next, xs):
        a_t, P_t, u_t, L_t = xs
        r_prev = h * u_t + L_t.T @ r_next
        return r_prev, a_t + P_t @ r_prev

    _, mean = jax.lax.scan(backward, jnp.zeros(S, F.dtype), (a, P, u, L), reverse=True)
    return mean


def simulation_smoother(key, F, q, h, r, m0, s0, y, offset):
    """One draw of the states given the observations.

    Args:
        F: (S, S).  q: (S,) diag(Q).  h: (S,).  r: () observation variance.
        m0, s0: (S,) initial mean and sds (x_1 ~ N(m0, diag(s0^2))).
        y: (T,) observations (NaN missing).  offset: (T,) known part of y (regression).

    Returns:
        x (T, S).
    """
    T, S = y.shape[0], F.shape[0]
    k0, kx, ky = jax.random.split(key, 3)
    x1 = m0 + s0 * jax.random.normal(k0, (S,), F.dtype)
    noise = jnp.sqrt(q) * jax.random.normal(kx, (T - 1, S), F.dtype)

    def step(x, eps):
        x = F @ x + eps
        return x, x

    _, rest = jax.lax.scan(step, x1, noise)
    x_plus = jnp.concatenate([x1[None], rest])
    y_plus = x_plus @ h + jnp.sqrt(r) * jax.random.normal(ky, (T,), F.dtype)
    return x_plus + smoothed_mean(F, q, h, r, jnp.diag(s0 ** 2), y - offset - y_plus)
