"""Small dense linear algebra for state-sized matrices, unrolled into elementwise code.

Under ``vmap`` over thousands of chains, LAPACK calls and batched dots on 2 x 2 matrices are separate
kernels dominated by per-call overhead; straight-line elementwise code fuses with its neighbours.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

#: matrices up to this size are unrolled; larger ones go to LAPACK / dot.
UNROLL_MAX_DIM = 4


def small_cholesky(A):
    """Lower Cholesky factor of SPD matrices ``A`` (..., n, n); unrolled when n is small.

    For n <= 4 this is straight-line elementwise code, which XLA fuses and vectorises across a vmapped
    batch; LAPACK calls on tiny matrices are dominated by per-call overhead.
    """
    n = A.shape[-1]
    if n > UNROLL_MAX_DIM:
        return jnp.linalg.cholesky(A)
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        s = A[..., j, j] - sum((L[j][k] ** 2 for k in range(j)), start=jnp.zeros_like(A[..., j, j]))
        L[j][j] = jnp.sqrt(s)
        for i in range(j + 1, n):
            s = A[..., i, j] - sum((L[i][k] * L[j][k] for k in range(j)), start=jnp.zeros_like(A[..., i, j]))
            L[i][j] = s / L[j][j]
    zero = jnp.zeros_like(A[..., 0, 0])
    rows = [jnp.stack([L[i][j] if j <= i else zero for j in range(n)], axis=-1) for i in range(n)]
    return jnp.stack(rows, axis=-2)


def log_det_cholesky(L):
    """log|L L^T| = 2 sum_i log L_ii for lower Cholesky factors ``L`` (..., n, n).

    The diagonal is read by n static slices: ``jnp.diagonal`` lowers to a gather behind two
    ``stablehlo.case`` ops, ~40 ops per call, and the Gibbs block program called it ~60 times, a
    noticeable part of its compile time (docs/performance.md)."""
    return 2.0 * lsum(jnp.log(L[..., i, i]) for i in range(L.shape[-1]))


def small_solve_lower(L, b):
    """Solve ``L x = b`` for lower-triangular ``L`` (n, n) and ``b`` (n,) or (n, k)."""
    n = L.shape[-1]
    if n > UNROLL_MAX_DIM:
        return solve_triangular(L, b, lower=True)
    xs = []
    for i in range(n):
        s = b[i] - sum((L[i, k] * xs[k] for k in range(i)), start=jnp.zeros_like(b[i]))
        xs.append(s / L[i, i])
    return jnp.stack(xs, axis=0)


class CholeskyFactor(NamedTuple):
    """A covariance R = L L^T by its lower Cholesky factor ``chol`` L (n, n) and ``chol_inv`` L^-1.

    What every consumer of R in a Gibbs sweep needs (the moves' prior, the filter's R^-1 and log|R|,
    the log prior, the unconstrained position); the sweep draws L itself (``priors.inverse_wishart_factor``)
    and hands it on, so none of them factorises R again (docs/performance.md)."""
    chol: jax.Array
    chol_inv: jax.Array


def cholesky_factor(R, chol=None) -> CholeskyFactor:
    """``CholeskyFactor`` of R (n, n); ``chol``: its lower Cholesky factor, if known."""
    L = small_cholesky(R) if chol is None else chol
    return CholeskyFactor(L, small_solve_lower(L, jnp.eye(R.shape[-1], dtype=R.dtype)))


def small_matmul(A, b):
    """``A @ b`` for A (n, k) and b (k,) or (k, m) as broadcast multiply-and-sum when every dimension is
    small: under vmap XLA fuses it with the surrounding elementwise code, where a batched dot of 2 x 2
    matrices is a separate, overhead-bound kernel (docs/performance.md)."""
    if max(A.shape + b.shape) > UNROLL_MAX_DIM:
        return A @ b
    if b.ndim == 1:
        return jnp.sum(A * b[None, :], axis=-1)
    return jnp.sum(A[:, :, None] * b[None, :, :], axis=1)


# --- scalar-unrolled ("structure of arrays") algebra ---------------------------------------------------
# A matrix is a Python list of rows of same-shaped arrays (under vmap, one value per chain); nothing is
# stacked into an (n, n) array, so a scan step is one fused elementwise kernel over the batch.
def as_lists(A):
    """(..., n, k) array -> n x k nested list of (...) arrays."""
    n, k = A.shape[-2:]
    return [[A[..., i, j] for j in range(k)] for i in range(n)]


def from_lists(A):
    """n x k nested list of (...) arrays -> (..., n, k) array."""
    return jnp.stack([jnp.stack(row, axis=-1) for row in A], axis=-2)


def chol_lists(A):
    """Lower Cholesky factor of an SPD nested list (lower triangle read); entries above the diagonal
    are None."""
    n = len(A)
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        s = A[j][j]
        for k in range(j):
            s = s - L[j][k] * L[j][k]
        L[j][j] = jnp.sqrt(s)
        for i in range(j + 1, n):
            s = A[i][j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i][j] = s / L[j][j]
    return L


def solve_lower_lists(L, b):
    """``L^-1 b`` for a lower-triangular nested list ``L`` (as ``chol_lists`` returns) and a list ``b``;
    entries of ``b`` may be None (zero)."""
    xs = []
    for i in range(len(L)):
        s = b[i]
        for k in range(i):
            if xs[k] is not None:
                s = -L[i][k] * xs[k] if s is None else s - L[i][k] * xs[k]
        xs.append(None if s is None else s / L[i][i])
    return xs


def lsum(terms):
    """Sum of an iterable of arrays (no zero start: one add fewer per element)."""
    out = None
    for t in terms:
        out = t if out is None else out + t
    return out


def sym_lists(P):
    """Full symmetric nested list from a lower triangle (row i holds entries 0..i)."""
    return [[P[i][j] if j <= i else P[j][i] for j in range(len(P))] for i in range(len(P))]


def lower(P):
    """Lower triangle (row i holds entries 0..i) of a nested list, as tuples."""
    return tuple(tuple(P[i][:i + 1]) for i in range(len(P)))
