"""``sampler.analysis.bulk_ess`` (arviz's bulk ESS as one JAX function) against arviz itself."""
import warnings

import jax
import numpy as np
import pytest

from sampler.analysis.bulk_ess import bulk_ess
from helpers import diagnostics_rows


def _ar1(rng, phi, shape):
    """Rows of AR(1) chains x_t = phi x_{t-1} + e_t, phi (K,) from strongly negative to near one."""
    e = rng.normal(size=shape)
    x = np.empty(shape)
    x[..., 0] = e[..., 0]
    for t in range(1, shape[-1]):
        x[..., t] = phi[:, None] * x[..., t - 1] + e[..., t]
    return x


@pytest.mark.timeout(300)
def test_bulk_ess_equals_arviz():
    from arviz.stats.diagnostics import _ess_bulk
    rng = np.random.default_rng(0)
    for C, N in ((4, 300), (2, 33), (1, 40), (3, 6), (4, 5), (2, 4)):
        # AR(1) rows (Geyer's truncation at every lag), rows 5-26 overwritten by the shared battery
        x = diagnostics_rows(rng, C, N, _ar1(rng, np.linspace(-0.9, 0.99, 40), (40, C, N)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = np.array([_ess_bulk(row) for row in x])
        with jax.enable_x64(True):
            got = np.asarray(bulk_ess(x))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True)


def test_bulk_ess_of_fewer_than_four_draws_is_nan():
    assert np.isnan(np.asarray(bulk_ess(np.ones((2, 4, 3))))).all()
