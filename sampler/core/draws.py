"""Standard normal and uniform variates for the Gibbs sweep, each computed once on XLA:CPU.

XLA's fusion treats the threefry hash as cheap elementwise code and recomputes it inside every
fusion that reads a variate: the float64 inverse error function behind a normal is split into two
fusions (its logarithm, then its polynomials times the uniform), so each normal of the state draw
was hashed twice, and the gamma sampler's normals were evaluated in five fusions (profile:
docs/performance.md).  ``lax.optimization_barrier`` does not stop this (XLA:CPU removes it before
fusion); a dot does, because XLA:CPU does not fuse a dot's operands into it.  So a variate that several
fusions read goes through a product with the identity on CPU, which is exact: every entry is x * 1 plus
zeros.  The variates are ``jax.random``'s, bit for bit; what the sweep computes from them may
round differently in the last bits, because XLA fuses its consumers differently.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _row_width(shape) -> int:
    """The last axis if it has 2-16 entries, else the widest row of at most 16 that the values fill
    exactly (1 if none)."""
    if 2 <= (shape[-1] if shape else 0) <= 16:
        return shape[-1]
    size = math.prod(shape)
    return max((w for w in range(2, 17) if size % w == 0), default=1)


def materialized(x):
    """x itself, computed once into a buffer that its readers share.  On CPU: its values, in rows
    of 2-16, times the identity at full precision (exact for every normal float; XLA:CPU's dot
    flushes subnormals, which no variate here is; a wider identity would cost a dot of its own).
    Values that fill no such row, and other backends, get x unchanged."""
    width = _row_width(x.shape)
    if width == 1:
        return x

    def times_identity(x):
        rows = x.reshape(-1, width)
        eye = jnp.eye(width, dtype=x.dtype)
        return jnp.matmul(rows, eye, precision=lax.Precision.HIGHEST).reshape(x.shape)

    return lax.platform_dependent(x, cpu=times_identity, default=lambda x: x)


def uniform(key, shape, dtype, minval=0.0, maxval=1.0):
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, materialised."""
    return materialized(jax.random.uniform(key, shape, dtype, minval, maxval))


def normal(key, shape, dtype):
    """``jax.random.normal(key, shape, dtype)`` for a real dtype, its uniforms materialised (each
    normal is then hashed once)."""
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    u = uniform(key, shape, dtype, lo, np.array(1.0, dtype))
    return lax.mul(np.array(np.sqrt(2), dtype), lax.erf_inv(u))
