"""Conjugate Gibbs sampler for structural models, non-centred in the sds (one chain; vmapped above).

Emissions are independent given their parameters, so a sweep runs per emission (vmapped).  For one
emission, with states x_{1:T} of every sequence:

1. ``x | y, params``: Durbin-Koopman simulation smoother (``smoother.py``).
2. Non-centring (Frühwirth-Schnatter & Wagner 2010): write ``x_t = F^{t-1} x_1 + sum_j sd_j z^j_t``,
   where z^j is the state's response to sd j's unit disturbances (``z^j_t = F z^j_{t-1} + eta^j_t``,
   ``z^j_1 = 0``).  Given z, ``y_t = (h' F^{t-1}) x_1 + sum_j sd_j (h' z^j_t) + beta' u_t + eps_t`` is
   a linear regression in (x_1 of each sequence, the signed sds, beta), whose normal prior
   (initial-state prior, ``sd_j ~ N(0, scale_j^2)`` = a half-normal on |sd_j|, beta's) makes the
   conditional normal: one draw.  An sd near zero is then an ordinary regression coefficient near
   zero, which the chain leaves as easily as it reaches; the centred conditional of a variance
   (inverse-gamma given the disturbances) sticks there.  Only |sd| is identified (the sign of sd_j
   with z^j is), so the sweep starts from sd > 0 and reports |sd|.
3. ``obs_sd | rest``: independence Metropolis with proposal obs_sd^2 ~ IG(n/2, SS/2) (the likelihood
   times 1/obs_sd), accepted by the half-normal prior ratio times obs_sd's ratio.
4. ``damping`` and AR coefficients given the centred path rebuilt from step 2's draw: their
   conditional is a normal (the regression of the slope / AR state on its past) restricted to (0, 1)
   / the stationary region; proposing the unrestricted normal and accepting when inside is an exact
   Metropolis step with that target.

Why hand-written: no library has a batched structural Gibbs sampler (tfp.sts' covers local
level/trend + regression, dynamax's has no components, missing data or batching).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sampler.core.structural.model import StructuralModel, is_stationary
from sampler.core.structural.smoother import simulation_smoother


def _normal_draw(key, precision, shift):
    """theta ~ N(precision^-1 shift, precision^-1)."""
    L = jnp.linalg.cholesky(precision)
    mean = jax.scipy.linalg.cho_solve((L, True), shift)
    xi = jax.random.normal(key, shift.shape, shift.dtype)
    return mean + jax.scipy.linalg.solve_triangular(L, xi, lower=True, trans="T")


def _unit_responses(F, eta):
    """z (M, T, J, S): z_1 = 0, z_t = F z_{t-1} + eta_{t-1} for eta (M, T-1, J, S)."""
    M, _, J, S = eta.shape

    def step(z, e):
        z = z @ F.T + e
        return z, z

    z0 = jnp.zeros((M, J, S), F.dtype)
    _, rest = jax.lax.scan(step, z0, jnp.swapaxes(eta, 0, 1))
    return jnp.concatenate([z0[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)


def _initial_loadings(F, h, T):
    """g (T, S): g_t = h' F^{t-1}, the loading of x_1 in y_t."""
    def step(g, _):
        return g @ F, g
    _, g = jax.lax.scan(step, h, None, length=T)
    return g


def _centred_path(F, x1, increments):
    """x (M, T, S) from x_1 (M, S) and x_t - F x_{t-1} (M, T-1, S)."""
    def step(x, e):
        x = x @ F.T + e
        return x, x
    _, rest = jax.lax.scan(step, x1, jnp.swapaxes(increments, 0, 1))
    return jnp.concatenate([x1[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)


def _regression(key, model: StructuralModel, p: dict, z, y, u, observed, sds_names):
    """Step 2: (x_1 (M, S), signed sds (J,), beta (U,)) | z, y, obs_sd."""
    M, T, J, S = z.shape
    U = model.input_dim
    F, h = model.transition(p), jnp.asarray(model.observation, y.dtype)
    g = _initial_loadings(F, h, T)                               # (T, S)
    w = z @ h                                                    # (M, T, J)
    initial = jnp.einsum("mn,ts->mtns", jnp.eye(M, dtype=y.dtype), g).reshape(M, T, M * S)
    X = jnp.concatenate([initial, w, u], axis=-1) * observed[..., None]
    X, target = X.reshape(M * T, -1), jnp.where(observed, y, 0.0).reshape(M * T)
    scales = {q.name: q.prior for q in model.parameters}
    beta_sd = [scales[c.variable("coefficients")] for c in model.components if c.kind == "regression"]
    prior_sd = jnp.concatenate([jnp.tile(jnp.asarray(model.initial_sds, y.dtype), M),
                                jnp.asarray([scales[n] for n in sds_names], y.dtype).reshape(J),
                                jnp.full((U,), beta_sd[0] if beta_sd else 1.0, y.dtype)])
    r = p["obs_sd"] ** 2
    theta = _normal_draw(key, jnp.diag(prior_sd ** -2) + X.T @ X / r, X.T @ target / r)
    resid = jnp.where(observed, y - (X @ theta).reshape(M, T), 0.0)
    return theta[:M * S].reshape(M, S), theta[M * S:M * S + J], theta[M * S + J:], resid


def _obs_sd(key, model: StructuralModel, current, resid, observed):
    """Step 3: independence Metropolis for obs_sd (see the module docstring)."""
    kg, ka = jax.random.split(key)
    n = jnp.sum(observed).astype(resid.dtype)
    ss = jnp.sum(resid ** 2)
    proposal = jnp.sqrt(0.5 * ss / jax.random.gamma(kg, 0.5 * n, dtype=resid.dtype))
    s2 = model.obs_sd_scale ** 2
    log_ratio = -(proposal ** 2 - current ** 2) / (2 * s2) + jnp.log(proposal) - jnp.log(current)
    ok = (jnp.log(jax.random.uniform(ka, (), resid.dtype)) < log_ratio) & jnp.isfinite(proposal) & (proposal > 0)
    return jnp.where(ok, proposal, current)


def _restricted_regression(key, response, regressors, noise_sd, prior_mean, prior_sd, inside, current):
    """Step 4: coefficients of response = regressors @ c + N(0, noise_sd^2) under a N(prior_mean,
    prior_sd^2) prior restricted by ``inside``: the unrestricted conditional's draw if inside."""
    kd, _ = jax.random.split(key)
    var = jnp.maximum(noise_sd ** 2, jnp.finfo(response.dtype).tiny)
    precision = jnp.diag(jnp.broadcast_to(prior_sd ** -2, current.shape)) + regressors.T @ regressors / var
    shift = jnp.broadcast_to(prior_mean / prior_sd ** 2, current.shape) + regressors.T @ response / var
    proposal = _normal_draw(kd, precision, shift)
    ok = inside(proposal) & jnp.all(jnp.isfinite(proposal))
    return jnp.where(ok, proposal, current)


def _dynamics(key, model: StructuralModel, p: dict, x, new: dict):
    """Step 4 for every damped trend and AR component, given the centred path x (M, T, S)."""
    keys = jax.random.split(key, len(model.components))
    for c, offset, k in zip(model.components, model.offsets, keys):
        if c.kind == "damped_trend":
            name, s = c.variable("damping"), offset + 1
            mean, sd = c.prior("damping")
            phi = _restricted_regression(
                k, x[:, 1:, s].reshape(-1), x[:, :-1, s].reshape(-1, 1), new[c.variable("slope_sd")],
                mean, sd, lambda v: (v[0] > 0) & (v[0] < 1), p[name][None])
            new[name] = phi[0]
        elif c.kind == "ar":
            name = c.variable("coefficients")
            past = x[:, :-1, offset:offset + c.order].reshape(-1, c.order)
            new[name] = _restricted_regression(
                k, x[:, 1:, offset].reshape(-1), past, new[c.variable("sd")], 0.0, c.prior("coefficients"),
                is_stationary, p[name])
    return new


def emission_sweep(key, model: StructuralModel, p: dict, y, u):
    """One sweep for one emission.  p: name -> () or (k,); y (M, T) (NaN missing); u (M, T, U)."""
    M, T = y.shape
    k_x, k_reg, k_obs, k_dyn = jax.random.split(key, 4)
    dtype = y.dtype
    F, h = model.transition(p), jnp.asarray(model.observation, dtype)
    q, r = model.disturbance_variances(p), p["obs_sd"] ** 2
    offset = u @ model.regression_coefficients(p)
    s0 = jnp.asarray(model.initial_sds, dtype)
    x = jax.vmap(lambda k, yy, o: simulation_smoother(k, F, q, h, r, jnp.zeros_like(s0), s0, yy, o))(
        jax.random.split(k_x, M), y, offset)

    names, sel = model.disturbance_selection
    sel = jnp.asarray(sel, dtype)
    sds = jnp.stack([p[n] for n in names]) if names else jnp.zeros((0,), dtype)
    increments = x[:, 1:] - x[:, :-1] @ F.T                                  # (M, T-1, S)
    eta = increments[:, :, None, :] * sel / jnp.where(sds > 0, sds, 1.0)[:, None]  # unit disturbances
    observed = jnp.isfinite(y)
    x1, signed, beta, resid = _regression(k_reg, model, p, _unit_responses(F, eta), y, u, observed, names)

    new = {n: jnp.abs(s) for n, s in zip(names, signed)}
    new["obs_sd"] = _obs_sd(k_obs, model, p["obs_sd"], resid, observed)
    for c in model.components:
        if c.kind == "regression":
            new[c.variable("coefficients")] = beta
    path = _centred_path(F, x1, jnp.einsum("mtjs,j->mts", eta, signed))
    new = _dynamics(k_dyn, model, p, path, new)
    return {q.name: new[q.name] for q in model.parameters}


def gibbs_sweep(key, model: StructuralModel, params: dict, emissions, inputs=None):
    """One sweep for every emission.  params: name -> (D, ...); emissions (M, T, D); inputs (M, T, U)."""
    M, T, D = emissions.shape
    u = jnp.zeros((M, T, 0), emissions.dtype) if inputs is None else inputs
    sweep = jax.vmap(lambda k, p, y: emission_sweep(k, model, p, y, u), in_axes=(0, 0, 2))
    return sweep(jax.random.split(key, D), params, emissions)

