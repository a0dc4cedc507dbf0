"""Pieces every filter form shares: the transition step, the observed block of R, default leaves."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core.kalman.linalg import lsum, small_matmul

LOG_2PI = math.log(2.0 * math.pi)


def observed_noise(R, observed):
    """Emission covariance restricted to the observed entries of each time step.

    Args:
        R: (D, D) emission covariance.
        observed: (T, D) boolean mask.

    Returns:
        (T, D, D) matrices equal to R on observed x observed entries and to the identity on missing
        ones, so that factoring them gives the observed block's factor and a unit block whose log
        determinant is zero.
    """
    m = observed.astype(R.dtype)
    eye = jnp.eye(R.shape[-1], dtype=R.dtype)
    return R[None] * m[:, :, None] * m[:, None, :] + eye[None] * (1.0 - m)[:, None, :]


def predict(mean, cov, params: ParamsLGSSM, u_next):
    """One transition: (S,), (S, S), input (U,) of the next step -> predicted (S,), (S, S)."""
    F, b, B, Q = (params.dynamics.weights, params.dynamics.bias,
                  params.dynamics.input_weights, params.dynamics.cov)
    mm = small_matmul
    return mm(F, mean) + B @ u_next + b, mm(mm(F, cov), F.T) + Q


def complete_params(params: ParamsLGSSM, T: int, D: int, inputs, dtype):
    """``params`` with zero biases and input weights where dynamax leaves them None or sized for
    other inputs, and inputs as (T, U) (zeros of width 0 when None)."""
    S = params.initial.mean.shape[-1]
    if inputs is None:
        inputs = jnp.zeros((T, 0), dtype)
    B = params.dynamics.input_weights
    Dw = params.emissions.input_weights
    if B is None or B.shape[-1] != inputs.shape[-1]:
        B = jnp.zeros((S, inputs.shape[-1]), dtype)
    if Dw is None or Dw.shape[-1] != inputs.shape[-1]:
        Dw = jnp.zeros((D, inputs.shape[-1]), dtype)
    b = params.dynamics.bias if params.dynamics.bias is not None else jnp.zeros(S, dtype)
    d = params.emissions.bias if params.emissions.bias is not None else jnp.zeros(D, dtype)
    params = params._replace(
        dynamics=params.dynamics._replace(input_weights=B, bias=b),
        emissions=params.emissions._replace(input_weights=Dw, bias=d))
    return params, inputs


def with_gradient(value_fn, value_and_grad_fn):
    """``value_fn`` (positional array arguments -> scalar) as a ``custom_jvp`` whose tangent is
    <gradient, tangent>, with ``value_and_grad_fn(primals, need) -> (value, gradients)`` giving the
    gradients of the arguments flagged in ``need`` (those with a nonzero tangent).

    All of the rule's work is on primals, so under reverse mode nothing is split into a forward and
    a transposed part: a ``lax.cond`` inside ``value_and_grad_fn`` stays one branch with outputs of
    parameter size (no residuals of the branch not taken, as differentiating through a cond has).
    """
    fn = jax.custom_jvp(value_fn)

    def rule(primals, tangents):
        need = tuple(not isinstance(t, SymbolicZero) for t in tangents)
        value, grads = value_and_grad_fn(primals, need)
        out = [jnp.sum(g * t) for g, t, n in zip(grads, tangents, need) if n]
        return value, lsum(out) if out else jnp.zeros_like(value)

    fn.defjvp(rule, symbolic_zeros=True)
    return fn
