"""The filter entry points: ``marginal_log_prob`` and ``kalman_filter`` for every form.

Hand-written rather than taken from dynamax for two reasons:

* **Missing data.** dynamax's ``lgssm_filter`` has no notion of a missing observation; here a NaN
  entry of ``emissions`` is missing and that time step's update uses only the observed entries
  (a fully-NaN row skips the update).
* **Speed.** The information form (``information.py``) moves the emission-sized work out of the
  sequential loop; the parallel form (``parallel.py``) scans in O(log T) depth.

Conventions follow dynamax exactly (``x_1 ~ N(m0, S0)``; the transition into step ``t+1`` uses
input ``u_{t+1}``), so the value equals
``dynamax.linear_gaussian_ssm.lgssm_filter(params, emissions, inputs).marginal_loglik``.
"""
from __future__ import annotations

from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core.kalman.common import complete_params, with_gradient
from sampler.core.kalman.complete import (complete_filter, complete_loglik, complete_loglik_fn,
                                          complete_value_and_grad)
from sampler.core.kalman.covariance import covariance_filter
from sampler.core.kalman.information import information_filter
from sampler.core.kalman.linalg import UNROLL_MAX_DIM
from sampler.core.kalman.parallel import parallel_filter

Form = Literal["auto", "information", "covariance", "parallel"]
FORMS = ("auto", "information", "covariance", "parallel")


def resolve_form(form: Form, state_dim: int, emission_dim: int) -> str:
    """The concrete form ``auto`` stands for: information when ``emission_dim > state_dim`` (its
    saving is the emission-sized work), else covariance."""
    if form not in FORMS:
        raise ValueError(f"unknown Kalman form {form!r}; expected one of {', '.join(map(repr, FORMS))}")
    if form == "auto":
        return "information" if emission_dim > state_dim else "covariance"
    return form


def marginal_log_prob(params: ParamsLGSSM, emissions, inputs: Optional[jax.Array] = None, *,
                      form: Form = "auto", partial_missing: Optional[bool] = None):
    """log p(y_{1:T} | params) of one sequence under a linear Gaussian SSM.

    Drop-in for ``lgssm_filter(params, emissions, inputs).marginal_loglik`` with static (time-invariant)
    dynamax ``ParamsLGSSM``; jit, vmap and grad safe.

    Args:
        params: dynamax ``ParamsLGSSM`` with constrained values (full covariance matrices).
        emissions: (T, D) observations; NaN entries are missing.
        inputs: optional (T, U) inputs.
        form: ``"information"`` (cheaper when D > S), ``"covariance"`` (classic Kalman filter),
            ``"parallel"`` (information terms, parallel in time: an associative scan of O(log T)
            depth, for long series on accelerators; S x S work per element, so it assumes a
            positive definite dynamics covariance) or ``"auto"``: information form when
            ``emission_dim > state_dim``, else covariance.
        partial_missing: whether rows may be partly missing (some NaN entries, not all).
            ``None`` (default): exact either way, paying for partly missing rows only where there
            are some (``select_path``).  ``True``: each row uses exactly its observed entries (R
            restricted to them factored at every step: T factorisations of a D x D matrix).
            ``False``: one factorisation of R per sequence, and a row containing any NaN is treated
            as entirely missing.  The covariance form always handles both.

    The complete-row information path for state_dim <= 4 (``complete.py``) has a closed-form
    gradient (Fisher's identity through the RTS smoother) instead of reverse mode through its scan.

    Returns:
        Scalar log-likelihood.
    """
    T, D = emissions.shape
    params, inputs = complete_params(params, T, D, inputs, emissions.dtype)
    form = resolve_form(form, params.initial.mean.shape[-1], D)
    if form == "covariance":
        return covariance_filter(params, emissions, inputs)[0]
    run = information_filter if form == "information" else parallel_filter
    exact, fast = _leaf_loglik(params, run, True), _leaf_loglik(params, run, False)
    fast_vg = _autodiff_value_and_grad(fast)
    if form == "information" and params.initial.mean.shape[-1] <= UNROLL_MAX_DIM:
        fast, fast_vg = complete_loglik_fn, complete_value_and_grad
    args = (*_leaves(params), emissions, inputs)
    partial_missing = static_choice(partial_missing, emissions)
    if partial_missing is not None:
        if partial_missing:
            return exact(*args)
        return (complete_loglik if fast is complete_loglik_fn else fast)(*args)
    return _per_batch(exact, _autodiff_value_and_grad(exact), fast, fast_vg)(*args)


def _leaf_loglik(params: ParamsLGSSM, run, partial_missing: bool):
    """``run``'s log-likelihood as a function of the ``_leaves`` of ``params``, emissions, inputs."""
    def fn(m0, P0, F, b, Bw, Q, H, d, Dw, R, y, u):
        p = params._replace(
            initial=params.initial._replace(mean=m0, cov=P0),
            dynamics=params.dynamics._replace(weights=F, bias=b, input_weights=Bw, cov=Q),
            emissions=params.emissions._replace(weights=H, bias=d, input_weights=Dw, cov=R))
        return run(p, y, u, partial_missing)[0]
    return fn


def _autodiff_value_and_grad(fn):
    """``(primals, need) -> (value, gradients)`` of ``fn`` by reverse mode, covariance gradients
    symmetrised (as the closed-form path gives them)."""
    def value_and_grad(primals, need):
        argnums = tuple(i for i, n in enumerate(need) if n)
        if not argnums:
            return fn(*primals), (None,) * len(primals)
        value, grads = jax.value_and_grad(fn, argnums)(*primals)
        grads = iter(grads)
        sym = lambda i, g: 0.5 * (g + g.T) if i in (1, 5, 9) else g  # P0, Q, R
        return value, tuple(sym(i, next(grads)) if n else None for i, n in enumerate(need))
    return value_and_grad


def _per_batch(exact, exact_vg, fast, fast_vg):
    """The log-likelihood choosing ``exact`` or ``fast`` with ``lax.cond`` on ``batch_any`` (see
    ``select_path``).  Differentiation goes through ``with_gradient``: the cond picks between the two
    value-and-gradient computations, so reverse mode does not split the cond (which would make the
    fast branch write zeros for every residual of the exact one)."""
    pred = lambda args: batch_any(has_partial_rows(args[10]))
    value = lambda *args: jax.lax.cond(pred(args), exact, fast, *args)

    def value_and_grad(primals, need):
        return jax.lax.cond(pred(primals), lambda a: exact_vg(a, need), lambda a: fast_vg(a, need),
                            primals)
    return with_gradient(value, value_and_grad)


def kalman_filter(params: ParamsLGSSM, emissions, inputs: Optional[jax.Array] = None, *,
                  form: Form = "auto", partial_missing: Optional[bool] = None, moments=None,
                  emission_factor=None):
    """Kalman filter: log-likelihood and filtered moments (same arguments as ``marginal_log_prob``).

    ``moments``: ``row_moments(emissions, inputs)`` (inputs as (T, 0) zeros when there are none),
    for a caller that filters the same data many times; the complete-row path then skips its
    T x D x D product (the other paths ignore it).  ``emission_factor``: the emission covariance's
    ``CholeskyFactor`` if the caller has it; the complete-row path then does not factorise R.

    Returns:
        (log_likelihood (), filtered_means (T, S), filtered_covariances (T, S, S)).
    """
    T, D = emissions.shape
    params, inputs = complete_params(params, T, D, inputs, emissions.dtype)
    form = resolve_form(form, params.initial.mean.shape[-1], D)
    if form == "covariance":
        ll, (means, covs) = covariance_filter(params, emissions, inputs)
        return ll, means, covs
    run = information_filter if form == "information" else parallel_filter

    def path(partial):
        def one(p, y, u):
            if not partial and form == "information" and p.initial.mean.shape[-1] <= UNROLL_MAX_DIM:
                return complete_filter(*_leaves(p), y, u, moments, emission_factor)
            ll, (means, covs) = run(p, y, u, partial)
            return ll, means, covs
        return one
    return select_path(partial_missing, emissions, path(True), path(False), params, emissions, inputs)


def _leaves(p: ParamsLGSSM):
    dyn, em = p.dynamics, p.emissions
    return (p.initial.mean, p.initial.cov, dyn.weights, dyn.bias, dyn.input_weights, dyn.cov,
            em.weights, em.bias, em.input_weights, em.cov)


def has_partial_rows(emissions):
    """Whether some row of ``emissions`` (..., T, D) is partly missing (some NaN entries, not all)."""
    xp = jnp if isinstance(emissions, jax.core.Tracer) else np
    observed = xp.isfinite(emissions)
    return xp.any(xp.any(observed, axis=-1) & ~xp.all(observed, axis=-1))


@custom_vmap
def batch_any(flag):
    """``flag`` itself; under vmap, the ``any`` over the batch, unbatched (so that a ``lax.cond`` on
    it stays a branch for the whole batch instead of becoming a select that runs both branches)."""
    return flag


@batch_any.def_vmap
def _batch_any_vmap(axis_size, in_batched, flag):
    del axis_size
    return (batch_any(jnp.any(flag, axis=0)) if in_batched[0] else flag), False


def static_choice(partial_missing: Optional[bool], emissions) -> Optional[bool]:
    """``partial_missing`` if given, else whether concrete ``emissions`` have a partly missing row
    (checked on the host, free), else None: decide on device (``batch_any``)."""
    if partial_missing is None and not isinstance(emissions, jax.core.Tracer):
        return bool(has_partial_rows(np.asarray(emissions)))
    return partial_missing


def select_path(partial_missing, emissions, exact, fast, *operands):
    """``exact(*operands)`` if rows may be partly missing, else ``fast(*operands)``; both give the
    same value (to rounding) when no row is partly missing.

    ``partial_missing`` True / False picks statically.  ``None`` looks at the data: on the host when
    ``emissions`` is concrete (no cost), else with ``lax.cond`` on ``batch_any``: under jit one branch
    runs, and under vmap the choice is made once per batch, so the exact path runs for every
    sequence of a batch in which any sequence has a partly missing row (each value still exact;
    which branch ran can change results in the last bits).  Used by ``kalman_filter``; under grad
    the exact branch is rematerialised (``jax.checkpoint``) to keep the cond's residuals small.
    ``marginal_log_prob`` makes the same choice inside ``_per_batch``, cheaper under grad.
    """
    partial_missing = static_choice(partial_missing, emissions)
    if partial_missing is not None:
        return (exact if partial_missing else fast)(*operands)
    return jax.lax.cond(batch_any(has_partial_rows(emissions)), jax.checkpoint(exact), fast, *operands)
