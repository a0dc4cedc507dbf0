"""The information filter for complete rows (a row is observed in full or missing in full), with its
gradient in closed form.

This is the path ``marginal_log_prob`` takes whenever no row of the data is partly missing:

* **Emission terms once per sequence.** With one factorisation of R, ``J = H^T R^-1 H`` is the same
  at every observed step, ``h_t = H^T R^-1 e_t`` is one (T, D) x (D, S) product and the quadratic
  terms sum to ``tr(R^-1 sum_t e_t e_t^T)``: one Gram matrix, no per-step D-sized work.
* **Scalar-unrolled sequential step.** Inside the scan every S x S matrix is a Python list of
  scalars (one value per chain under vmap) and nothing is stacked mid-step, so a step is one fused
  elementwise kernel over the batch; the logs of the Cholesky diagonals are taken after the loop.
* **Closed-form gradient** (``smoother.py``): a ``custom_jvp`` whose tangent is the Fisher identity,
  grad log p(y) = E[grad log p(x, y) | y], evaluated with the RTS smoother.  Exact (equal to autodiff
  of the filter to rounding), and reverse mode never differentiates through the scan.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sampler.core.kalman.common import LOG_2PI, with_gradient
from sampler.core.kalman.linalg import (as_lists, chol_lists, cholesky_factor, from_lists, log_det_cholesky, lower,
                                       lsum, solve_lower_lists, sym_lists)
from sampler.core.kalman.smoother import fisher_gradient, rts_smoother


class RowMoments(NamedTuple):
    """The data's part of ``emission_terms``' Gram matrix, for a caller that filters the same data
    under many parameters (a Gibbs chain computes it once per block of sweeps instead of a T x D x D
    product per sweep): ``gram`` = sum_t z_t z_t^T over the complete rows, z_t = [y_t - centre; u_t; 1],
    so that e_t = y_t - d - D u_t = [I, -D, centre - d] z_t.  Centred on the rows' mean, so that the
    residuals' Gram matrix formed from it keeps float32 precision when y has a large mean."""
    centre: jax.Array   # (D,)
    gram: jax.Array     # (D+U+1, D+U+1)


def row_moments(y, u) -> RowMoments:
    """``RowMoments`` of one sequence's emissions y (T, D) and inputs u (T, U) (width 0 for none)."""
    full = jnp.all(jnp.isfinite(y), axis=-1)
    observed = jnp.where(full[:, None], y, 0.0)
    centre = jnp.sum(observed, axis=0) / jnp.maximum(jnp.sum(full), 1).astype(y.dtype)
    z = jnp.concatenate([observed - centre, u, jnp.ones_like(y[:, :1])], axis=-1)
    z = jnp.where(full[:, None], z, 0.0)
    return RowMoments(centre, z.T @ z)


def emission_terms(H, d, Dw, R, y, u, moments=None, R_factor=None):
    """Per-sequence emission terms of the complete rows (rows with any NaN count as missing).

    Returns full (T,) 0/1, e (T, D) residuals y - d - D u (zero on missing rows), R^-1 (D, D),
    J (S, S), h (T, S), the Gram matrix sum_t e_t e_t^T (D, D) and the constant part of
    -2 log p(y): n (D log 2 pi + log|R|) + tr(R^-1 Gram).  ``moments``: ``row_moments(y, u)`` if
    the caller has it (the Gram matrix then costs no pass over T); ``R_factor``: R's
    ``CholeskyFactor``, if known."""
    D = R.shape[-1]
    full = jnp.all(jnp.isfinite(y), axis=-1).astype(R.dtype)
    e = (jnp.where(full[:, None] > 0, y, 0.0) - d - u @ Dw.T) * full[:, None]
    L, W = cholesky_factor(R) if R_factor is None else R_factor
    Ri = W.T @ W
    K = Ri @ H
    J = H.T @ K
    if moments is None:
        gram = e.T @ e
    else:
        M = jnp.concatenate([jnp.eye(D, dtype=R.dtype), -Dw, (moments.centre - d)[:, None]], axis=1)
        gram = M @ moments.gram @ M.T
    const = (jnp.sum(full) * (D * LOG_2PI + log_det_cholesky(L))
             + jnp.sum(Ri * gram))
    return full, e, Ri, 0.5 * (J + J.T), e @ K, gram, const


def _update(m, P, J, h):
    """Condition N(m, P) (P: lower-triangle list) on information J, h: P = L L^T,
    I + L^T J L = C C^T, W^T = C^-1 L^T.  Returns posterior mean, covariance (lower triangle),
    diag(C) and the quadratic part of -2 log p(y_t | past)."""
    S = len(m)
    L = chol_lists(sym_lists(P))
    JL = [[lsum(J[a][b] * L[b][j] for b in range(j, S)) for j in range(S)] for a in range(S)]
    M = [[lsum(L[a][i] * JL[a][j] for a in range(i, S)) for j in range(i + 1)] for i in range(S)]
    A = [[M[i][j] + 1.0 if i == j else M[i][j] for j in range(i + 1)] for i in range(S)]
    C = chol_lists(sym_lists(A))
    Jm = [lsum(J[a][b] * m[b] for b in range(S)) for a in range(S)]
    v = solve_lower_lists(C, [lsum(L[k][i] * (h[k] - Jm[k]) for k in range(i, S)) for i in range(S)])
    cols = [solve_lower_lists(C, [L[j][i] if i <= j else None for i in range(S)]) for j in range(S)]
    Wt = [[cols[j][i] for j in range(S)] for i in range(S)]
    mp = [m[i] + lsum(Wt[k][i] * v[k] for k in range(S)) for i in range(S)]
    Pp = [[lsum(Wt[k][i] * Wt[k][j] for k in range(S)) for j in range(i + 1)] for i in range(S)]
    quad = lsum(m[i] * (Jm[i] - 2.0 * h[i]) for i in range(S)) - lsum(x * x for x in v)
    return mp, Pp, [C[i][i] for i in range(S)], quad


def _scan_lists(m0, P0, F, Q, c_next, J, h, full):
    """The sequential pass in scalar-unrolled form.  Returns the scan's part of log p(y), filtered
    means (S lists of (T,)) and covariances (lower triangle, lists of (T,))."""
    S = m0.shape[-1]
    Fl, Ql, Jl = as_lists(F), as_lists(Q), as_lists(J)

    def step(carry, xs):
        m, P = carry
        h_t, c_t, f_t = xs
        mp, Pp, cdiag, quad = _update(m, P, [[f_t * x for x in row] for row in Jl], h_t)
        FP = [[lsum(Fl[i][k] * sym_lists(Pp)[k][j] for k in range(S)) for j in range(S)] for i in range(S)]
        Pn = tuple(tuple(lsum(FP[i][k] * Fl[j][k] for k in range(S)) + Ql[i][j] for j in range(i + 1))
                   for i in range(S))
        mn = tuple(lsum(Fl[i][k] * mp[k] for k in range(S)) + c_t[i] for i in range(S))
        return (mn, Pn), (tuple(mp), lower(Pp), tuple(cdiag), quad)

    carry0 = (tuple(m0[i] for i in range(S)), lower(as_lists(P0)))
    xs = (tuple(h[:, i] for i in range(S)), tuple(c_next[:, i] for i in range(S)), full)
    _, (mf, Pf, cdiag, quad) = jax.lax.scan(step, carry0, xs)
    ll = -0.5 * (jnp.sum(quad) + 2.0 * lsum(jnp.sum(jnp.log(c)) for c in cdiag))
    return ll, list(mf), Pf


def _forward(m0, P0, F, b, Bw, Q, H, d, Dw, R, y, u, moments=None, R_factor=None):
    """log p(y) and everything its gradient needs."""
    sym = lambda A: 0.5 * (A + A.T)
    P0, Q = sym(P0), sym(Q)
    full, e, Ri, J, h, gram, const = emission_terms(H, d, Dw, R, y, u, moments, R_factor)
    c_next = b + jnp.concatenate([u[1:], u[-1:]], axis=0) @ Bw.T
    ll, mf, Pf = _scan_lists(m0, P0, F, Q, c_next, J, h, full)
    return ll - 0.5 * const, (P0, Q, c_next, full, e, Ri, gram, mf, Pf)


def complete_value_and_grad(primals, need):
    """log p(y) and its gradients with respect to the arguments of ``complete_loglik`` flagged in
    ``need`` (None for the others), by Fisher's identity (``smoother.py``)."""
    m0, P0, F, b, Bw, Q, H, d, Dw, R, y, u = primals
    ll, (P0s, Qs, c_next, full, e, Ri, gram, mf, Pf) = _forward(*primals)
    if not any(need):
        return ll, (None,) * len(primals)
    c_lists = [c_next[:, i] for i in range(c_next.shape[-1])]
    ms, Ps, G = rts_smoother(mf, Pf, F, Qs, c_lists)
    g = fisher_gradient(m0, P0s, F, Qs, H, R, Ri, e, gram, full, ms, Ps, G, c_lists)
    msf, gc = g["msf"], g["c"]
    s_sum = jnp.sum(e, axis=0) - H @ jnp.sum(msf, axis=0)  # sum_t E[s_t | y]
    Rs = (lambda: (e - msf @ H.T) @ Ri) if need[10] or need[11] else None  # R^-1 E[s_t | y] (T, D)
    grads = {0: lambda: g["m0"], 1: lambda: g["P0"], 2: lambda: g["F"], 3: lambda: jnp.sum(gc, axis=0),
             4: lambda: gc.T @ u[1:], 5: lambda: g["Q"], 6: lambda: g["H"], 7: lambda: Ri @ s_sum,
             8: lambda: Ri @ (e.T @ u - H @ (msf.T @ u)), 9: lambda: g["R"], 10: lambda: -Rs(),
             11: lambda: Rs() @ Dw + jnp.concatenate([jnp.zeros_like(u[:1]), gc @ Bw])}
    return ll, tuple(grads[i]() if n else None for i, n in enumerate(need))


def complete_filter(m0, P0, F, b, Bw, Q, H, d, Dw, R, y, u, moments=None, R_factor=None):
    """(log p(y | params), filtered means (T, S), filtered covariances (T, S, S)) of the complete-row
    pass: ``kalman_filter``'s fast path for S <= ``UNROLL_MAX_DIM`` (same arguments as
    ``complete_loglik_fn``, and ``row_moments(y, u)`` and R's ``CholeskyFactor`` if known)."""
    ll, (*_, mf, Pf) = _forward(m0, P0, F, b, Bw, Q, H, d, Dw, R, y, u, moments, R_factor)
    return ll, jnp.stack(mf, axis=-1), from_lists(sym_lists(Pf))


def complete_loglik_fn(m0, P0, F, b, Bw, Q, H, d, Dw, R, y, u):
    """log p(y | params) for data whose rows are observed in full or missing in full (a row with a
    NaN counts as missing).  Arguments are the completed dynamax leaves (``common.complete_params``),
    emissions (T, D) and inputs (T, U)."""
    return _forward(m0, P0, F, b, Bw, Q, H, d, Dw, R, y, u)[0]


complete_loglik = with_gradient(complete_loglik_fn, complete_value_and_grad)
