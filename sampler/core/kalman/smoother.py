"""The RTS smoother and the closed-form gradient of log p(y) it gives (``complete.py``).

Fisher's identity: grad log p(y | theta) = E[grad log p(x, y | theta) | y], exact, where
log p(x, y) = log N(x_1 | m0, P0) + sum_{t>=2} log N(x_t | F x_{t-1} + c_t, Q)
+ sum_{observed t} log N(y_t | H x_t + d + D u_t, R).  Each term's expected gradient needs only the
smoothed means and covariances and the lag-one smoothed cross-covariances, so the gradient costs one
backward S x S recursion plus a few per-sequence contractions, instead of reverse mode through the
filter's scan.

State-sized quantities are scalar-unrolled lists (``linalg.as_lists``) of (T,) arrays: under vmap
each is one contiguous (B, T) array, where (B, T, S, S) arrays would put 2-wide axes innermost.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sampler.core.kalman.linalg import (as_lists, chol_lists, from_lists, lower, lsum, small_cholesky,
                                        small_matmul, small_solve_lower, solve_lower_lists, sym_lists)


def _spd_inverse(A):
    """Inverse of a small SPD matrix (S, S) through its Cholesky factor."""
    W = small_solve_lower(small_cholesky(A), jnp.eye(A.shape[-1], dtype=A.dtype))
    return W.T @ W


def _gains(FP, Ppn):
    """RTS gains G_t = Pf_t F^T Ppn_t^-1 (nested list): Ppn_t G_t^T = F Pf_t, Ppn_t SPD."""
    S = len(FP)
    L = chol_lists(sym_lists(Ppn))
    rows = []
    for j in range(S):  # column j of G^T is row j of G
        z = solve_lower_lists(L, [FP[i][j] for i in range(S)])
        x = [None] * S
        for i in reversed(range(S)):  # L^T x = z
            s = z[i]
            for k in range(i + 1, S):
                s = s - L[k][i] * x[k]
            x[i] = s / L[i][i]
        rows.append(x)
    return rows


def _smooth_step(carry, xs):
    """m_t = mf_t + G_t (m_{t+1} - mp_{t+1}), P_t = Pf_t + G_t (P_{t+1} - Pp_{t+1}) G_t^T."""
    m_next, P_next = carry
    m_f, P_f, G, m_p, P_p = xs
    S = len(m_f)
    dm = [m_next[i] - m_p[i] for i in range(S)]
    dP = sym_lists([[P_next[i][j] - P_p[i][j] for j in range(i + 1)] for i in range(S)])
    GD = [[lsum(G[i][k] * dP[k][j] for k in range(S)) for j in range(S)] for i in range(S)]
    m = tuple(m_f[i] + lsum(G[i][k] * dm[k] for k in range(S)) for i in range(S))
    P = tuple(tuple(P_f[i][j] + lsum(GD[i][k] * G[j][k] for k in range(S)) for j in range(i + 1))
              for i in range(S))
    return (m, P), (m, P)


def rts_smoother(mf, Pf, F, Q, c_next):
    """Smoothed moments from filtered ones.  mf: S lists of (T,); Pf: lower triangle of (T,);
    F, Q: (S, S) arrays; c_next: S lists of (T,) (the transition into step t+1 has bias c_next[t]).
    Returns smoothed means and covariances (same layout) and the gains (S x S lists of (T-1,))."""
    S = len(mf)
    Fl, Ql = as_lists(F), as_lists(Q)
    mfh, Pfh = [m[:-1] for m in mf], sym_lists([[p[:-1] for p in row] for row in Pf])
    FP = [[lsum(Fl[i][k] * Pfh[k][j] for k in range(S)) for j in range(S)] for i in range(S)]
    Ppn = lower([[lsum(FP[i][k] * Fl[j][k] for k in range(S)) + Ql[i][j] for j in range(S)]
                 for i in range(S)])
    mpn = [lsum(Fl[i][k] * mfh[k] for k in range(S)) + c_next[i][:-1] for i in range(S)]
    G = _gains(FP, Ppn)
    last = (tuple(m[-1] for m in mf), tuple(tuple(p[-1] for p in row) for row in Pf))
    xs = (tuple(mfh), lower(Pfh), tuple(map(tuple, G)), tuple(mpn), Ppn)
    _, (ms, Ps) = jax.lax.scan(_smooth_step, last, xs, reverse=True)
    cat = lambda a, b: jnp.concatenate([a, b[None]])
    ms = [cat(ms[i], last[0][i]) for i in range(S)]
    Ps = tuple(tuple(cat(Ps[i][j], last[1][i][j]) for j in range(i + 1)) for i in range(S))
    return ms, Ps, G


def _dynamics_gradient(m0, P0, F, Q, ms, Ps, G, c_next):
    """Gradients for m0, P0, F, Q and each transition's bias (T-1, S) (see ``fisher_gradient``)."""
    S, mm = len(ms), small_matmul
    sym = lambda A: 0.5 * (A + A.T)
    Pf = sym_lists(Ps)
    Fl = as_lists(F)
    r = [ms[i][1:] - lsum(Fl[i][k] * ms[k][:-1] for k in range(S)) - c_next[i][:-1] for i in range(S)]
    tot = lambda f: from_lists([[jnp.sum(f(i, j)) for j in range(S)] for i in range(S)])
    cross = tot(lambda i, j: lsum(Pf[i][k][1:] * G[j][k] for k in range(S)))  # sum Cov(x_{t+1}, x_t)
    P_prev, P_next = tot(lambda i, j: Pf[i][j][:-1]), tot(lambda i, j: Pf[i][j][1:])
    r_m, r_r = tot(lambda i, j: r[i] * ms[j][:-1]), tot(lambda i, j: r[i] * r[j])
    Qi, P0i = _spd_inverse(Q), _spd_inverse(P0)
    delta = jnp.stack([m[0] for m in ms]) - m0
    Ps0 = from_lists([[p[0] for p in row] for row in Pf])
    FC = mm(F, cross.T)
    S_rr = sym(P_next - FC - FC.T + mm(mm(F, P_prev), F.T) + r_r)
    Qil = as_lists(Qi)
    return {"m0": mm(P0i, delta), "P0": 0.5 * mm(mm(P0i, Ps0 + jnp.outer(delta, delta) - P0), P0i),
            "F": mm(Qi, cross - mm(F, P_prev) + r_m),
            "Q": sym(0.5 * mm(mm(Qi, S_rr - r[0].shape[0] * Q), Qi)),
            "c": jnp.stack([lsum(r[k] * Qil[k][i] for k in range(S)) for i in range(S)], axis=-1)}


def fisher_gradient(m0, P0, F, Q, H, R, Ri, e, gram, full, ms, Ps, G, c_next):
    """Gradient of log p(y) by Fisher's identity (see the module docstring).

    Args: the (symmetrised) parameters, R^-1, residuals e (T, D) = y - d - D u on complete rows (zero
    elsewhere), their Gram matrix, the complete-row indicator (T,), the smoothed moments and gains
    (``rts_smoother``'s layout), c_next (S lists of (T,)).

    Returns a dict of gradients: m0, P0, F, Q, H, R (covariances as symmetric matrices), c (T-1, S)
    (with respect to the bias of each transition) and msf (T, S), E[x_t | y] on complete rows (zero
    elsewhere): E[s_t | y] = e_t - H msf_t, s_t = y_t - H x_t - d - D u_t, is the gradient's
    part for d, D, y and u.
    """
    S = len(ms)
    sym = lambda A: 0.5 * (A + A.T)
    g = _dynamics_gradient(m0, P0, F, Q, ms, Ps, G, c_next)
    msf = jnp.stack(ms, axis=-1) * full[:, None]
    Pf = sym_lists(Ps)
    S_xx = from_lists([[jnp.sum(full * (Pf[i][j] + ms[i] * ms[j])) for j in range(S)] for i in range(S)])
    X = e.T @ msf                                       # sum_t e_t E[x_t]^T
    g["H"] = Ri @ (X - H @ S_xx)
    HX = H @ X.T
    S_ss = gram - HX - HX.T + H @ S_xx @ H.T            # sum_t E[s_t s_t^T | y]
    g["R"] = sym(0.5 * Ri @ (S_ss - jnp.sum(full) * R) @ Ri)
    g["msf"] = msf
    return g
