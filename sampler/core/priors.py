"""dynamax's conjugate priors (NIW, MNIW), written out in plain jax.numpy.

Same densities and hyperparameters as ``LinearGaussianConjugateSSM.log_prior`` (tested equal), but
without tensorflow-probability objects in the traced code: tfp bijectors memoise their inputs, which
leaks tracers between nested jit traces (NUTS inside ``while_loop`` hit it), and they compile slowly.
State-sized factorisations go through ``small_cholesky`` / ``small_solve_lower`` (unrolled for small
S, so a vmapped batch does not pay a LAPACK call per chain).
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.scipy.special import multigammaln
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core import draws
from sampler.core.kalman.linalg import (CholeskyFactor, cholesky_factor, log_det_cholesky, small_cholesky,
                                       small_solve_lower)

#: a Python float, not a jnp constant: made at import, which in the CLI precedes enabling float64, a
#: jnp constant would stay float32 and shift every lp by ~1e-7 (CLI against in-process runs)
_LOG_2PI = math.log(2.0 * math.pi)


def inverse_wishart_log_prob(Sigma, df, scale, factor: Optional[CholeskyFactor] = None):
    """log IW(Sigma | df, scale) = log |scale|^{df/2} |Sigma|^{-(df+k+1)/2} exp(-tr(scale Sigma^-1)/2) / Z;
    ``factor``: Sigma's ``CholeskyFactor``, if known."""
    k = Sigma.shape[-1]
    L = small_cholesky(Sigma) if factor is None else factor.chol
    Ls = small_cholesky(scale)
    # tr(scale Sigma^-1) = ||L^-1 Ls||_F^2
    A = small_solve_lower(L, Ls) if factor is None else factor.chol_inv @ Ls
    return (0.5 * df * log_det_cholesky(Ls) - 0.5 * df * k * jnp.log(2.0) - multigammaln(0.5 * df, k)
            - 0.5 * (df + k + 1) * log_det_cholesky(L) - 0.5 * jnp.sum(A * A))


def matrix_normal_quadratic(W, loc, row_chol_inv, col_precision):
    """-tr(col_precision (W - loc)^T Sigma^-1 (W - loc)) / 2, given ``row_chol_inv`` = L^-1 (Sigma = L L^T):
    the only part of ``matrix_normal_log_prob`` that depends on W."""
    E = row_chol_inv @ (W - loc) @ small_cholesky(col_precision)
    return -0.5 * jnp.sum(E * E)


def matrix_normal_log_prob(W, loc, row_cov, col_precision, row_factor: Optional[CholeskyFactor] = None):
    """log MN(W | loc, row_cov, col_precision^-1) for W (k, p); ``row_factor``: row_cov's
    ``CholeskyFactor``, if known."""
    k, p = W.shape
    L, L_inv = cholesky_factor(row_cov) if row_factor is None else row_factor
    return (-0.5 * k * p * _LOG_2PI - 0.5 * p * log_det_cholesky(L) + 0.5 * k * log_det_cholesky(small_cholesky(col_precision))
            + matrix_normal_quadratic(W, loc, L_inv, col_precision))


def mniw_log_prob(Sigma, W, prior, factor: Optional[CholeskyFactor] = None):
    return (inverse_wishart_log_prob(Sigma, prior.df, prior.scale, factor)
            + matrix_normal_log_prob(W, prior.loc, Sigma, prior.col_precision, factor))


def _stacked(group):
    """[weights, input_weights, bias] as one (k, S + U + 1) matrix (dynamax's MNIW variable)."""
    return jnp.column_stack((group.weights, group.input_weights, group.bias))


def _initial_and_dynamics_log_prior(ssm, params: ParamsLGSSM):
    ip = ssm.initial_prior
    S = params.initial.cov
    lp = inverse_wishart_log_prob(S, ip.df, ip.scale)
    kappa = jnp.asarray(ip.mean_concentration, S.dtype)
    lp += matrix_normal_log_prob(params.initial.mean[:, None], ip.loc[:, None], S, jnp.reshape(kappa, (1, 1)))
    return lp + mniw_log_prob(params.dynamics.cov, _stacked(params.dynamics), ssm.dynamics_prior)


def log_prior(ssm, params: ParamsLGSSM, emission_factor: Optional[CholeskyFactor] = None):
    """``ssm.log_prior(params)`` for a dynamax ``LinearGaussianConjugateSSM`` with biases;
    ``emission_factor``: the emission covariance's ``CholeskyFactor``, if known."""
    return (_initial_and_dynamics_log_prior(ssm, params)
            + mniw_log_prob(params.emissions.cov, _stacked(params.emissions), ssm.emission_prior, emission_factor))


def latent_log_prior(ssm, params: ParamsLGSSM, whitened_weights, whitened_loc):
    """``log_prior`` up to terms that depend on the emission covariance R alone: what a change of
    latent coordinates (which keeps R) can change.  The emission weights [H, D, d] and the prior's
    mean come whitened by R's factor (L^-1 [H, D, d] and L^-1 loc, R = L L^T), so that this costs no
    factorisation and no product with an emission-sized matrix."""
    E = (whitened_weights - whitened_loc) @ small_cholesky(ssm.emission_prior.col_precision)
    return _initial_and_dynamics_log_prior(ssm, params) - 0.5 * jnp.sum(E * E)


def inverse_wishart_bartlett_shapes(df, k: int, dtype):
    """The gamma shapes (k,) whose draws, doubled, are ``inverse_wishart_factor``'s ``chi2``."""
    return 0.5 * (df - k + 1 + jnp.arange(k, dtype=dtype))


def inverse_wishart_factor(chi2, normals, scale):
    """Sigma ~ IW(df, scale) (k x k) by its lower Cholesky factor G (Sigma = G G^T), from the Bartlett
    variates: ``chi2`` (k,) with chi2_j ~ chi^2(df - k + 1 + j) (j = 0..k-1), and ``normals``
    (k (k - 1) / 2,) standard normal.

    Bartlett's decomposition with an upper-triangular factor: B B^T ~ Wishart(df, I) for B upper
    triangular with B_jj^2 ~ chi^2(df - k + 1 + j) and standard normals above the diagonal (the usual
    lower-triangular one with rows and columns reversed).  With scale = K K^T,
    W = K^-T B B^T K^-1 ~ Wishart(df, scale^-1), so Sigma = W^-1 = (K B^-T)(K B^-T)^T, and K B^-T is
    lower triangular with a positive diagonal: Sigma's Cholesky factor comes with the draw, and the
    sweep's other uses of Sigma factorise nothing (``CholeskyFactor``)."""
    k = scale.shape[-1]
    rows, cols = jnp.tril_indices(k, -1)
    B_T = jnp.diag(jnp.sqrt(chi2)).at[rows, cols].set(normals)
    return small_cholesky(scale) @ small_solve_lower(B_T, jnp.eye(k, dtype=scale.dtype))


#: Marsaglia-Tsang proposals drawn at once per gamma variate: all of them are rejected with
#: probability < 1e-4 (shape 1, the worst case), and then a loop draws more.
GAMMA_PROPOSALS = 3


def sample_gamma(key, shape):
    """Gamma(shape, 1) draws, one per entry of ``shape`` (an array), by Marsaglia & Tsang's (2000)
    exact rejection method, boosted for shape < 1 (Gamma(a) = Gamma(a + 1) U^(1/a)).

    Hand-written instead of ``jax.random.gamma`` for speed under vmap: that runs a loop of one
    proposal per iteration with a key split each time (a few iterations for thousands of chains,
    docs/performance.md); here ``GAMMA_PROPOSALS`` proposals per variate come from one draw and the
    first accepted is taken, which is the same rejection sampler, so the draws are exactly
    Gamma-distributed.  A variate whose proposals were all rejected takes more, batch by batch;
    its value does not depend on the other chains of a vmapped batch.
    """
    dtype = shape.dtype
    boost = shape < 1.0
    d = jnp.where(boost, shape + 1.0, shape) - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    k_first, k_more, k_boost = jax.random.split(key, 3)

    def propose(key):
        k_z, k_u = jax.random.split(key)
        z = draws.materialized(draws.normal(k_z, (GAMMA_PROPOSALS,) + shape.shape, dtype))
        log_u = jnp.log(draws.uniform(k_u, z.shape, dtype))
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (log_u < 0.5 * z * z + d - d * v + d * jnp.log(jnp.where(v > 0, v, 1.0)))
        # the first accepted proposal, by elementwise selects rather than reductions over the
        # proposals' axis: each reduction is a fusion of its own that generates the draws again
        found, value = ok[-1], v[-1]
        for i in reversed(range(GAMMA_PROPOSALS - 1)):
            found, value = found | ok[i], jnp.where(ok[i], v[i], value)
        return found, d * value

    def more(carry):
        # iteration 0 proposes under k_first, iteration i > 0 under fold_in(k_more, i - 1): the
        # first batch is drawn inside the loop so that ``propose`` (two random draws) is traced and
        # compiled once, not twice (measured: docs/performance.md)
        i, found, value = carry
        key = jnp.where(i == 0, k_first, jax.random.fold_in(k_more, i - 1))
        new_found, new_value = propose(key)
        return i + 1, found | new_found, jnp.where(found, value, new_value)

    start = (0, jnp.zeros(shape.shape, bool), jnp.zeros_like(shape))
    _, _, value = jax.lax.while_loop(lambda carry: (carry[0] == 0) | ~jnp.all(carry[1]), more, start)
    u = draws.uniform(k_boost, shape.shape, dtype, minval=jnp.finfo(dtype).tiny)
    return jnp.where(boost, value * u ** (1.0 / shape), value)
