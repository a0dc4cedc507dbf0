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
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core.kalman.common import complete_params
from sampler.core.kalman.covariance import covariance_filter
from sampler.core.kalman.information import information_filter
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
                      form: Form = "auto", partial_missing: bool = True):
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
        partial_missing: whether rows may be partly missing (some NaN entries, not all).  With
            ``False`` the information form precomputes one factorisation of R for the sequence and
            treats any row containing a NaN as entirely missing; with ``True`` (the safe default) each
            row uses exactly its observed entries.  The covariance form always handles both.

    Returns:
        Scalar log-likelihood.
    """
    return kalman_filter(params, emissions, inputs, form=form, partial_missing=partial_missing)[0]


def kalman_filter(params: ParamsLGSSM, emissions, inputs: Optional[jax.Array] = None, *,
                  form: Form = "auto", partial_missing: bool = True):
    """Kalman filter: log-likelihood and filtered moments (same arguments as ``marginal_log_prob``).

    Returns:
        (log_likelihood (), filtered_means (T, S), filtered_covariances (T, S, S)).
    """
    T, D = emissions.shape
    params, inputs = complete_params(params, T, D, inputs, emissions.dtype)
    form = resolve_form(form, params.initial.mean.shape[-1], D)
    if form == "information":
        ll, (means, covs) = information_filter(params, emissions, inputs, partial_missing)
    elif form == "covariance":
        ll, (means, covs) = covariance_filter(params, emissions, inputs)
    else:
        ll, (means, covs) = parallel_filter(params, emissions, inputs, partial_missing)
    return ll, means, covs
