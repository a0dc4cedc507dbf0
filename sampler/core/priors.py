"""dynamax's conjugate priors (NIW, MNIW), written out in plain jax.numpy.

Same densities and hyperparameters as ``LinearGaussianConjugateSSM.log_prior`` (tested equal), but
without tensorflow-probability objects in the traced code: tfp bijectors memoise their inputs, which
leaks tracers between nested jit traces (NUTS inside ``while_loop`` hit it), and they compile slowly.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import multigammaln
from dynamax.linear_gaussian_ssm import ParamsLGSSM

#: a Python float, not a jnp constant: made at import, which in the CLI precedes enabling float64, a
#: jnp constant would stay float32 and shift every lp by ~1e-7 (CLI against in-process runs)
_LOG_2PI = math.log(2.0 * math.pi)


def _logdet_chol(L):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))


def inverse_wishart_log_prob(Sigma, df, scale):
    """log IW(Sigma | df, scale) = log |scale|^{df/2} |Sigma|^{-(df+k+1)/2} exp(-tr(scale Sigma^-1)/2) / Z."""
    k = Sigma.shape[-1]
    L = jnp.linalg.cholesky(Sigma)
    Ls = jnp.linalg.cholesky(scale)
    A = solve_triangular(L, Ls, lower=True)  # tr(scale Sigma^-1) = ||L^-1 Ls||_F^2
    return (0.5 * df * _logdet_chol(Ls) - 0.5 * df * k * jnp.log(2.0) - multigammaln(0.5 * df, k)
            - 0.5 * (df + k + 1) * _logdet_chol(L) - 0.5 * jnp.sum(A * A))


def matrix_normal_log_prob(W, loc, row_cov, col_precision):
    """log MN(W | loc, row_cov, col_precision^-1) for W (k, p)."""
    k, p = W.shape
    L = jnp.linalg.cholesky(row_cov)
    Lp = jnp.linalg.cholesky(col_precision)
    E = solve_triangular(L, W - loc, lower=True) @ Lp  # tr(Lam E^T Sigma^-1 E) = ||L^-1 E Lp||_F^2
    return (-0.5 * k * p * _LOG_2PI - 0.5 * p * _logdet_chol(L) + 0.5 * k * _logdet_chol(Lp)
            - 0.5 * jnp.sum(E * E))


def mniw_log_prob(Sigma, W, prior):
    return (inverse_wishart_log_prob(Sigma, prior.df, prior.scale)
            + matrix_normal_log_prob(W, prior.loc, Sigma, prior.col_precision))


def log_prior(ssm, params: ParamsLGSSM):
    """``ssm.log_prior(params)`` for a dynamax ``LinearGaussianConjugateSSM`` with biases."""
    ip, dp, ep = ssm.initial_prior, ssm.dynamics_prior, ssm.emission_prior
    S = params.initial.cov
    lp = inverse_wishart_log_prob(S, ip.df, ip.scale)
    kappa = jnp.asarray(ip.mean_concentration, S.dtype)
    lp += matrix_normal_log_prob(params.initial.mean[:, None], ip.loc[:, None], S, jnp.reshape(kappa, (1, 1)))
    Wd = jnp.column_stack((params.dynamics.weights, params.dynamics.input_weights, params.dynamics.bias))
    We = jnp.column_stack((params.emissions.weights, params.emissions.input_weights, params.emissions.bias))
    return lp + mniw_log_prob(params.dynamics.cov, Wd, dp) + mniw_log_prob(params.emissions.cov, We, ep)


def sample_inverse_wishart(key, df, scale):
    """One draw of IW(df, scale) by the Bartlett decomposition (k x k)."""
    k = scale.shape[-1]
    k_chi, k_norm = jax.random.split(key)
    dtype = scale.dtype
    chi2 = 2.0 * jax.random.gamma(k_chi, 0.5 * (df - jnp.arange(k, dtype=dtype)), dtype=dtype)
    A = jnp.tril(jax.random.normal(k_norm, (k, k), dtype), -1) + jnp.diag(jnp.sqrt(chi2))
    # W = K^-T A A^T K^-1 ~ Wishart(df, scale^-1) with scale = K K^T; Sigma = W^-1 = G G^T, G = K A^-T
    K = jnp.linalg.cholesky(scale)
    G = K @ solve_triangular(A, jnp.eye(k, dtype=dtype), lower=True).T
    return G @ G.T
