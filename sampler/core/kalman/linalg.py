"""Small dense linear algebra for state-sized matrices, unrolled into elementwise code.

Under ``vmap`` over thousands of chains, LAPACK calls and batched dots on 2 x 2 matrices are separate
kernels dominated by per-call overhead; straight-line elementwise code fuses with its neighbours.
"""
from __future__ import annotations

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


def small_matmul(A, b):
    """``A @ b`` for A (n, k) and b (k,) or (k, m) as broadcast multiply-and-sum when every dimension is
    small: under vmap XLA fuses it with the surrounding elementwise code, where a batched dot of 2 x 2
    matrices is a separate, overhead-bound kernel (docs/performance.md)."""
    if max(A.shape + b.shape) > UNROLL_MAX_DIM:
        return A @ b
    if b.ndim == 1:
        return jnp.sum(A * b[None, :], axis=-1)
    return jnp.sum(A[:, :, None] * b[None, :, :], axis=1)
