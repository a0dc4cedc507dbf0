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
   times 1/obs_sd), accepted by the half-normal prior ratio times obs_sd's ratio.  Then each
   component sd again, the same way, given the centred path (x_t - F x_{t-1} held fixed): the
   ancillarity-sufficiency interweaving of Yu & Meng (2011) (for DLMs: Simpson, Niemi & Roy 2017).
   The non-centred draw is efficient where an sd is small against the noise, the centred one where
   it is large; interweaving both is at least as good as the better one.
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
import numpy as np

from sampler.core.structural.model import StructuralModel, is_stationary
from sampler.core.structural.smoother import simulation_smoother
from sampler.core.structural.transition import Transition


def _normal_draw(key, precision, shift):
    """theta ~ N(precision^-1 shift, precision^-1)."""
    L = jnp.linalg.cholesky(precision)
    mean = jax.scipy.linalg.cho_solve((L, True), shift)
    xi = jax.random.normal(key, shift.shape, shift.dtype)
    return mean + jax.scipy.linalg.solve_triangular(L, xi, lower=True, trans="T")


def _transitioned(tr: Transition, x):
    """F x_i for every state vector x_i on the last axis of x (..., S): x @ F'."""
    return jnp.moveaxis(tr.apply(jnp.moveaxis(x, -1, 0)), 0, -1)


def _unit_responses(tr: Transition, eta):
    """z (M, T, J, S): z_1 = 0, z_t = F z_{t-1} + eta_{t-1} for eta (M, T-1, J, S)."""
    M, _, J, S = eta.shape

    def step(z, e):
        z = _transitioned(tr, z) + e
        return z, z

    z0 = jnp.zeros((M, J, S), eta.dtype)
    _, rest = jax.lax.scan(step, z0, jnp.swapaxes(eta, 0, 1))
    return jnp.concatenate([z0[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)


def _initial_loadings(tr: Transition, h, T):
    """g (T, S): g_t = h' F^{t-1}, the loading of x_1 in y_t."""
    def step(g, _):
        return tr.apply_transposed(g), g
    _, g = jax.lax.scan(step, h, None, length=T)
    return g


def _centred_path(tr: Transition, x1, increments):
    """x (M, T, S) from x_1 (M, S) and x_t - F x_{t-1} (M, T-1, S)."""
    def step(x, e):
        x = _transitioned(tr, x) + e
        return x, x
    _, rest = jax.lax.scan(step, x1, jnp.swapaxes(increments, 0, 1))
    return jnp.concatenate([x1[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)


def _regression(key, model: StructuralModel, p: dict, z, y, u, observed, sds_names):
    """Step 2: (x_1 (M, S), signed sds (J,), beta (U,)) | z, y, obs_sd."""
    M, T, J, S = z.shape
    U = model.input_dim
    g = _initial_loadings(model.transition(p), jnp.asarray(model.observation, y.dtype), T)   # (T, S)
    w = jnp.sum(z[..., model.loaded_states], axis=-1)            # (M, T, J): h' z
    initial = jnp.einsum("mn,ts->mtns", jnp.eye(M, dtype=y.dtype), g).reshape(M, T, M * S)
    X = jnp.concatenate([initial, w, u], axis=-1) * observed[..., None]
    X, target = X.reshape(M * T, -1), jnp.where(observed, y, 0.0).reshape(M * T)
    scales = {q.name: q.prior for q in model.parameters}
    beta_sd = [scales[c.variable("coefficients")] for c in model.components if c.kind == "regression"]
    prior_sd = jnp.concatenate([jnp.tile(jnp.asarray(model.initial_sds, y.dtype), M),
                                jnp.asarray([scales[n] for n in sds_names], y.dtype).reshape(J),
                                jnp.full((U,), beta_sd[0] if beta_sd else 1.0, y.dtype)])
    # frozen sds / regression coefficients are known: their part of y leaves the target
    frozen = set(model.frozen)
    regression = [c.variable("coefficients") for c in model.components if c.kind == "regression"]
    free = np.flatnonzero(np.concatenate([np.ones(M * S, bool), [n not in frozen for n in sds_names],
                                          np.full(U, not (regression and regression[0] in frozen))]))
    known = jnp.concatenate([jnp.zeros(M * S, y.dtype), jnp.asarray([p[n] for n in sds_names], y.dtype).reshape(J),
                             model.regression_coefficients(p)]).at[free].set(0.0)
    r = p["obs_sd"] ** 2
    Xf = X[:, free]
    theta_free = _normal_draw(key, jnp.diag(prior_sd[free] ** -2) + Xf.T @ Xf / r, Xf.T @ (target - X @ known) / r)
    theta = known.at[free].set(theta_free)
    resid = jnp.where(observed, y - (X @ theta).reshape(M, T), 0.0)
    return theta[:M * S].reshape(M, S), theta[M * S:M * S + J], theta[M * S + J:], resid


def _sd_given_residuals(key, current, n, ss, scale):
    """sd | n residuals with sum of squares ss, half-normal(scale) prior: independence Metropolis
    with proposal sd^2 ~ IG(n/2, ss/2) (the likelihood times 1/sd), accepted with the prior ratio
    times sd's ratio."""
    kg, ka = jax.random.split(key)
    proposal = jnp.sqrt(0.5 * ss / jax.random.gamma(kg, 0.5 * n, dtype=ss.dtype))
    log_ratio = -(proposal ** 2 - current ** 2) / (2 * scale ** 2) + jnp.log(proposal) - jnp.log(current)
    ok = (jnp.log(jax.random.uniform(ka, (), ss.dtype)) < log_ratio) & jnp.isfinite(proposal) & (proposal > 0)
    return jnp.where(ok, proposal, current)


def _centred_sds(key, model: StructuralModel, increments, sds, sel):
    """Step 3b, the interweaving (ASIS) half: each component sd given the centred path's increments
    (M, T-1, S), as ``_sd_given_residuals`` with the disturbances of its states."""
    M, T1, _ = increments.shape
    ss = jnp.einsum("mts,js->j", increments ** 2, sel)
    n = (M * T1 * jnp.sum(sel, axis=1)).astype(sds.dtype)
    scales = {q.name: q.prior for q in model.parameters}
    names, _ = model.disturbance_selection
    prior = jnp.asarray([scales[nm] for nm in names], sds.dtype).reshape(sds.shape)
    return jax.vmap(_sd_given_residuals)(jax.random.split(key, sds.shape[0]), sds, n, ss, prior)


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
    """Step 4 for every damped trend and AR component not frozen, given the centred path x (M, T, S)."""
    keys = jax.random.split(key, len(model.components))
    for c, offset, k in zip(model.components, model.offsets, keys):
        if c.kind == "damped_trend" and c.variable("damping") not in model.frozen:
            name, s = c.variable("damping"), offset + 1
            mean, sd = c.prior("damping")
            phi = _restricted_regression(
                k, x[:, 1:, s].reshape(-1), x[:, :-1, s].reshape(-1, 1), new[c.variable("slope_sd")],
                mean, sd, lambda v: (v[0] > 0) & (v[0] < 1), p[name][None])
            new[name] = phi[0]
        elif c.kind == "ar" and c.variable("coefficients") not in model.frozen:
            name = c.variable("coefficients")
            past = x[:, :-1, offset:offset + c.order].reshape(-1, c.order)
            new[name] = _restricted_regression(
                k, x[:, 1:, offset].reshape(-1), past, new[c.variable("sd")], 0.0, c.prior("coefficients"),
                is_stationary, p[name])
    return new


def emission_sweep(key, model: StructuralModel, p: dict, y, u):
    """One sweep for one emission.  p: name -> () or (k,); y (M, T) (NaN missing); u (M, T, U)."""
    M, T = y.shape
    k_x, k_reg, k_obs, k_asis, k_dyn = jax.random.split(key, 5)
    dtype = y.dtype
    tr = model.transition(p)
    q, r = model.disturbance_variances(p), p["obs_sd"] ** 2
    offset = u @ model.regression_coefficients(p)
    s0 = jnp.asarray(model.initial_sds, dtype)
    x = jax.vmap(lambda k, yy, o: simulation_smoother(k, tr, q, model.loaded_states, r, jnp.zeros_like(s0), s0,
                                                      yy, o))(jax.random.split(k_x, M), y, offset)

    names, sel = model.disturbance_selection
    sel = jnp.asarray(sel, dtype)
    sds = jnp.stack([p[n] for n in names]) if names else jnp.zeros((0,), dtype)
    increments = x[:, 1:] - _transitioned(tr, x[:, :-1])                     # (M, T-1, S)
    eta = increments[:, :, None, :] * sel / jnp.where(sds > 0, sds, 1.0)[:, None]  # unit disturbances
    observed = jnp.isfinite(y)
    x1, signed, beta, resid = _regression(k_reg, model, p, _unit_responses(tr, eta), y, u, observed, names)

    new = {"obs_sd": _sd_given_residuals(k_obs, p["obs_sd"], jnp.sum(observed).astype(dtype),
                                         jnp.sum(resid ** 2), model.obs_sd_scale)}
    for c in model.components:
        if c.kind == "regression":
            new[c.variable("coefficients")] = beta
    increments = jnp.einsum("mtjs,j->mts", eta, signed)
    new.update(zip(names, _centred_sds(k_asis, model, increments, jnp.abs(signed), sel)))
    new.update({n: p[n] for n in model.frozen})           # the blocks below condition on them
    new = _dynamics(k_dyn, model, p, _centred_path(tr, x1, increments), new)
    return {q.name: new[q.name] for q in model.parameters}


#: random-walk Metropolis steps on the marginal posterior per sweep (see ``marginal_moves``).
MARGINAL_STEPS = 8
#: their proposal sd per unconstrained coordinate, before the warmup has measured the posterior's.
UNTUNED_PROPOSAL_SD = 0.1


def proposal_sd(posterior_sd):
    """Random-walk proposal sd (dim,) from the posterior sds of the unconstrained coordinates: the
    optimal scaling 2.38 / sqrt(dim) of Roberts, Gelman & Gilks (1997)."""
    return 2.38 / jnp.sqrt(posterior_sd.shape[0]) * posterior_sd


def marginal_moves(key, model: StructuralModel, params: dict, emissions, inputs, step_sd):
    """Random-walk Metropolis on the unconstrained parameters with the states integrated out (the
    log density NUTS samples), proposal sds ``step_sd`` (dim,).  The Gibbs blocks trade the sds
    against each other only through the states, slowly where the data barely separate them; a move
    on the marginal posterior crosses that ridge directly, for one Kalman filter per step."""
    logdensity = model.logdensity_fn(params, emissions, inputs)   # frozen values from params
    position = model.to_position(params)

    def step(carry, k):
        x, lp = carry
        kp, ka = jax.random.split(k)
        proposal = x + step_sd * jax.random.normal(kp, x.shape, x.dtype)
        lp_new = logdensity(proposal)
        ok = jnp.log(jax.random.uniform(ka, (), x.dtype)) < lp_new - lp
        return (jnp.where(ok, proposal, x), jnp.where(ok, lp_new, lp)), None

    (position, _), _ = jax.lax.scan(step, (position, logdensity(position)), jax.random.split(key, MARGINAL_STEPS))
    return model.to_params(position, params)


def gibbs_sweep(key, model: StructuralModel, params: dict, emissions, inputs=None, step_sd=None):
    """One sweep for every emission, then ``MARGINAL_STEPS`` marginal moves with proposal sds
    ``step_sd`` (dim,) (default ``UNTUNED_PROPOSAL_SD``).  params: name -> (D, ...); emissions
    (M, T, D); inputs (M, T, U) or None."""
    M, T, D = emissions.shape
    k_gibbs, k_move = jax.random.split(key)
    u = jnp.zeros((M, T, 0), emissions.dtype) if inputs is None else inputs
    sweep = jax.vmap(lambda k, p, y: emission_sweep(k, model, p, y, u), in_axes=(0, 0, 2))
    params = sweep(jax.random.split(k_gibbs, D), params, emissions)
    if step_sd is None:
        step_sd = jnp.full((model.dim,), UNTUNED_PROPOSAL_SD, emissions.dtype)
    return marginal_moves(k_move, model, params, emissions, inputs, step_sd)

