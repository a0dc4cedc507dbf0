"""Posterior-predictive maths per parameter draw (pure JAX): smoothing, forecasting, moments
combined over draws, and the data log-likelihood at many draws.

For one draw and one sequence: the Kalman filter (``sampler.core.kalman.kalman_filter``, so NaN entries
are missing), an RTS backward pass, and a ``horizon``-step forecast from the last filtered state, each
mapped to emission space (mean ``H x + d + D u``, variance ``diag(H P H^T + R)``) as dynamax's
``posterior_predictive`` and ``forecast`` do in the seed notebook.  Draws are combined by the law of
total variance, ``mean = E[mean_i]``, ``var = E[var_i] + Var[mean_i]``, with Chan's merge of block
means and sums of squared deviations (``Moments``), so any number of draws is a sum of fixed-size passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core.kalman import kalman_filter, predict, small_cholesky, small_solve_lower
from sampler.core.leaves import set_leaf
from sampler.core.model import Model


def rts_smoother(filtered_means, filtered_covs, params: ParamsLGSSM, inputs):
    """Rauch-Tung-Striebel backward pass (dynamax's ``lgssm_smoother`` conventions).

    Args:
        filtered_means: (T, S).  filtered_covs: (T, S, S).  inputs: (T, U); the transition into
            step t+1 uses ``inputs[t+1]``.

    Returns:
        smoothed means (T, S) and covariances (T, S, S).
    """
    eye = jnp.eye(filtered_means.shape[-1], dtype=filtered_means.dtype)

    def step(carry, xs):
        m_next, P_next = carry
        m, P, u_next = xs
        m_pred, P_pred = predict(m, P, params, u_next)
        L_inv = small_solve_lower(small_cholesky(P_pred), eye)  # unrolled for small S: no LAPACK call per draw
        G = P @ params.dynamics.weights.T @ (L_inv.T @ L_inv)  # P F^T P_pred^-1
        m_s = m + G @ (m_next - m_pred)
        P_s = P + G @ (P_next - P_pred) @ G.T
        P_s = 0.5 * (P_s + P_s.T)
        return (m_s, P_s), (m_s, P_s)

    last = (filtered_means[-1], filtered_covs[-1])
    _, (means, covs) = jax.lax.scan(step, last, (filtered_means[:-1], filtered_covs[:-1], inputs[1:]),
                                    reverse=True)
    return (jnp.concatenate([means, last[0][None]]), jnp.concatenate([covs, last[1][None]]))


def forecast_states(mean, cov, params: ParamsLGSSM, future_inputs):
    """Predictive state moments of the steps after the last one.

    Args:
        mean: (S,) and cov: (S, S), the filtered state at the last observed step.
        future_inputs: (H, U), the inputs of forecast steps 1..H.

    Returns:
        means (H, S) and covariances (H, S, S).
    """
    def step(carry, u):
        m, P = predict(*carry, params, u)
        return (m, P), (m, P)

    _, out = jax.lax.scan(step, (mean, cov), future_inputs)
    return out


def emission_moments(means, covs, params: ParamsLGSSM, inputs):
    """State moments (N, S), (N, S, S) and inputs (N, U) -> emission mean and variance, each (N, D)."""
    H, d, Dw, R = (params.emissions.weights, params.emissions.bias, params.emissions.input_weights,
                   params.emissions.cov)
    mean = means @ H.T + d + inputs @ Dw.T
    var = jnp.einsum("ds,nsr,dr->nd", H, covs, H) + jnp.diagonal(R)
    return mean, var


def smooth_and_forecast(params: ParamsLGSSM, emissions, inputs, future_inputs, *,
                        form: str = "auto", partial_missing: bool = True):
    """Smoothed and forecast emission moments of one sequence under one parameter draw.

    Args:
        emissions: (T, D), NaN = missing.  inputs: (T, U).  future_inputs: (H, U).
        form, partial_missing: passed to ``sampler.kalman.kalman_filter``.

    Returns:
        mean (T + H, D) and variance (T + H, D): smoothed for the first T steps, forecast after.
    """
    _, fm, fP = kalman_filter(params, emissions, inputs, form=form, partial_missing=partial_missing)
    sm, sP = rts_smoother(fm, fP, params, inputs)
    xm, xP = forecast_states(fm[-1], fP[-1], params, future_inputs)
    s_mean, s_var = emission_moments(sm, sP, params, inputs)
    f_mean, f_var = emission_moments(xm, xP, params, future_inputs)
    return jnp.concatenate([s_mean, f_mean]), jnp.concatenate([s_var, f_var])


def smoothed_components(params: ParamsLGSSM, emissions, inputs, future_inputs, *, loadings, regression,
                        form: str = "auto", partial_missing: bool = True):
    """Each structural component's smoothed contribution to y_t, for one sequence and draw.

    Args:
        loadings: (K, D, S) numpy: component k's part of H (zero outside its states).
        regression: (K,) static bools: component k is the regression ``D u_t`` (no state).
        future_inputs: ignored (the signature of ``smooth_and_forecast``).

    Returns:
        mean (T, K, D) and variance (T, K, D); summed over k the means are the smoothed emission mean.
    """
    _, fm, fP = kalman_filter(params, emissions, inputs, form=form, partial_missing=partial_missing)
    sm, sP = rts_smoother(fm, fP, params, inputs)
    L = jnp.asarray(loadings, sm.dtype)
    mean = jnp.einsum("kds,ts->tkd", L, sm)
    mean = mean + jnp.asarray(regression, sm.dtype)[None, :, None] * (inputs @ params.emissions.input_weights.T)[:, None]
    return mean, jnp.einsum("kds,tsr,kdr->tkd", L, sP, L)


@dataclass
class Moments:
    """Running law-of-total-variance statistics: count, mean of means, M2 of means, mean of variances."""
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    mean_var: np.ndarray

    def merge(self, other: "Moments") -> "Moments":
        """Chan et al.'s pairwise update (numerically stable for any block sizes)."""
        if self.count == 0:
            return other
        n = self.count + other.count
        frac = other.count / n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * frac, self.m2 + other.m2 + delta ** 2 * self.count * frac,
                       self.mean_var + (other.mean_var - self.mean_var) * frac)

    def std(self) -> np.ndarray:
        """sqrt(E[var] + Var[mean]) with the population variance of the means (as the seed's jnp.var)."""
        return np.sqrt(self.mean_var + self.m2 / self.count)


jax.tree_util.register_dataclass(Moments, data_fields=["count", "mean", "m2", "mean_var"], meta_fields=[])


def pass_moments(values: Mapping[str, jax.Array], emissions, inputs, future_inputs, weights, *,
                 to_lgssm: Callable = Model.lgssm, per_sequence: Callable = smooth_and_forecast):
    """Weighted moments over a block of K draws of n datasets (one compiled pass).

    Args:
        values: posterior variable -> (K, n, *shape) constrained draws.
        to_lgssm: one draw's variables -> ``ParamsLGSSM`` (the model's ``lgssm``).
        per_sequence: (params, y, u, future u) -> (mean, variance) of one sequence and draw
            (``smooth_and_forecast`` or ``smoothed_components`` with their settings bound).
        emissions: (n, M, T, D).  inputs: (n, M, T, U).  future_inputs: (n, M, H, U).
        weights: (K,) 1 for a draw to count, 0 for padding.

    Returns:
        ``Moments`` with count () and mean, m2, mean_var each (n, M, ...) (``smooth_and_forecast``:
        (n, M, T + H, D)): the weighted mean of the per-draw means, the weighted sum of their squared
        deviations, the mean per-draw variance.
    """
    per_dataset = jax.vmap(per_sequence, in_axes=(None, 0, 0, 0))       # sequences
    per_draw = jax.vmap(lambda v, *data: per_dataset(to_lgssm(v), *data))  # datasets
    batched = jax.vmap(per_draw, in_axes=(0, None, None, None))          # draws
    mean, var = batched(values, emissions, inputs, future_inputs)  # (K, n, M, ...)
    w = weights.astype(mean.dtype)
    count = jnp.sum(w)
    wx = w.reshape((-1,) + (1,) * (mean.ndim - 1))
    mu = jnp.sum(wx * mean, axis=0) / count
    m2 = jnp.sum(wx * (mean - mu) ** 2, axis=0)
    return Moments(count, mu, m2, jnp.sum(wx * var, axis=0) / count)


@lru_cache(maxsize=None)
def compiled_pass(model, components: bool = False):
    """jit of ``pass_moments`` for ``model`` (either kind): the emissions' smoothed and forecast
    moments, or (a structural model, ``components``) each component's smoothed contribution."""
    settings = dict(form=model.predictive_form, partial_missing=model.partial_missing)
    per_sequence = (partial(smoothed_components, loadings=model.component_loadings,
                            regression=model.regression_flags, **settings) if components
                    else partial(smooth_and_forecast, **settings))
    return jax.jit(partial(pass_moments, to_lgssm=model.lgssm, per_sequence=per_sequence))


@lru_cache(maxsize=None)
def compiled_forecast(model):
    """jit: variables (K, n, ...) and windows (n, M, L, D), inputs (n, M, L, U), future (n, M, H, U) ->
    per-draw H-step predictive emission mean and variance from the last step, each (K, n, M, H, D)."""

    form, partial_missing, to_lgssm = model.predictive_form, model.partial_missing, model.lgssm

    def one(params, y, u, fu):
        _, fm, fP = kalman_filter(params, y, u, form=form, partial_missing=partial_missing)
        xm, xP = forecast_states(fm[-1], fP[-1], params, fu)
        return emission_moments(xm, xP, params, fu)

    seqs = jax.vmap(one, in_axes=(None, 0, 0, 0))
    sets = jax.vmap(lambda v, *data: seqs(to_lgssm(v), *data))
    draws = jax.vmap(sets, in_axes=(0, None, None, None))
    return jax.jit(draws)


def log_likelihoods(model: Model, params: dict[str, np.ndarray], emissions: np.ndarray,
                    inputs: Optional[np.ndarray], chunk: int = 256) -> np.ndarray:
    """log p(y_n | params_{n, l}) for every dataset n and parameter set l.

    Args:
        params: dotted leaf -> (N, L, *leaf_shape).
        emissions: (N, M, T, D) with NaN for missing.  inputs: (N, M, T, U) or None.
        chunk: datasets per compiled call (the last call is padded: one compilation).

    Returns:
        (N, L).
    """
    template = model.initial_params(jax.random.PRNGKey(0), {})

    def one(leaves, y, u):
        p = template
        for leaf, value in leaves.items():
            p = set_leaf(p, leaf, value)
        return model.log_likelihood(p, y, u)

    per_draw = jax.vmap(one, in_axes=(0, None, None))
    fn = jax.jit(jax.vmap(per_draw))
    N = emissions.shape[0]
    chunk = min(chunk, N)
    out = []
    for a in range(0, N, chunk):
        idx = np.minimum(np.arange(a, a + chunk), N - 1)
        sub = {leaf: v[idx] for leaf, v in params.items()}
        u = None if inputs is None else inputs[idx]
        out.append(np.asarray(fn(sub, emissions[idx], u))[: min(chunk, N - a)])
    return np.concatenate(out)
