"""The sweep's variates (``sampler.core.draws``) are jax.random's, bit for bit, under jit and vmap, in
both precisions; the identity product that materialises them changes no value."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sampler.core import draws


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(100, 2), (3, 14), (85,), (83,), (4, 6), (1,)])
def test_draws_are_jax_randoms_bit_for_bit(shape, dtype):
    jax.config.update("jax_enable_x64", dtype == "float64")
    keys = jax.random.split(jax.random.PRNGKey(len(shape) * 100 + shape[0]), 64)
    ours = jax.jit(jax.vmap(lambda k: (draws.normal(k, shape, dtype),
                                       draws.uniform(k, shape, dtype, -2.0, 3.0))))(keys)
    theirs = jax.vmap(lambda k: (jax.random.normal(k, shape, dtype),
                                 jax.random.uniform(k, shape, dtype, -2.0, 3.0)))(keys)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.timeout(60)
def test_materialized_is_exact():
    """Exact for every normal float and zero (a dot on XLA:CPU flushes subnormals, which no uniform or
    normal variate is)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 12)) * 10.0 ** rng.integers(-300, 300, (50, 12))
    x[0, :3] = [0.0, np.finfo(np.float64).tiny, -np.finfo(np.float64).max]
    out = np.asarray(jax.jit(draws.materialized)(jnp.asarray(x)))
    np.testing.assert_array_equal(out, x)
