"""The Bayesian LG-SSM: dynamax parameter tree, conjugate priors, frozen leaves, flat unconstrained position.

A chain's position is one flat vector holding the *free* leaves in unconstrained space (dynamax
bijectors: PSD matrices are stored as their unconstrained lower-triangular vector).  Frozen leaves are
not part of the position at all, so they can never move; their values come from an *anchor*
``ParamsLGSSM`` that also carries each dataset's initial values.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from dynamax.linear_gaussian_ssm import LinearGaussianConjugateSSM, ParamsLGSSM
from dynamax.parameters import ParameterProperties
from dynamax.utils.bijectors import RealToPSDBijector

from sampler import kalman, priors

#: dynamax leaf names, in ParamsLGSSM order.
LEAVES: tuple[str, ...] = (
    "initial.mean", "initial.cov",
    "dynamics.weights", "dynamics.bias", "dynamics.input_weights", "dynamics.cov",
    "emissions.weights", "emissions.bias", "emissions.input_weights", "emissions.cov",
)
#: keyword of ``LinearGaussianSSM.initialize`` for each leaf.
_INIT_KWARG = {
    "initial.mean": "initial_mean", "initial.cov": "initial_covariance",
    "dynamics.weights": "dynamics_weights", "dynamics.bias": "dynamics_bias",
    "dynamics.input_weights": "dynamics_input_weights", "dynamics.cov": "dynamics_covariance",
    "emissions.weights": "emission_weights", "emissions.bias": "emission_bias",
    "emissions.input_weights": "emission_input_weights", "emissions.cov": "emission_covariance",
}
#: leaves whose dynamax default initial value is random (drawn from the chain's key).
RANDOM_DEFAULT = frozenset({"emissions.weights"})


def store_name(leaf: str) -> str:
    """Zarr / data-file name of a leaf: ``emissions.weights`` -> ``emissions_weights``."""
    return leaf.replace(".", "_")


def get_leaf(tree, leaf: str):
    group, field = leaf.split(".")
    return getattr(getattr(tree, group), field)


def set_leaf(tree, leaf: str, value):
    group, field = leaf.split(".")
    return tree._replace(**{group: getattr(tree, group)._replace(**{field: value})})


@dataclass(frozen=True)
class Model:
    """A ``LinearGaussianConjugateSSM`` with some leaves frozen.

    Attributes:
        state_dim: S.  emission_dim: D.  input_dim: U.
        frozen: dotted leaf names held at their anchor value.
        kalman_form: ``"auto" | "information" | "covariance" | "parallel"`` (see ``sampler.kalman``) or
            ``"dynamax"`` for dynamax's own filter (reference; no missing data).
        partial_missing: whether some emission rows are partly NaN (static; picks the Kalman path).
        has_missing: whether any emission entry is NaN (static; Gibbs then imputes missing entries).
    """
    state_dim: int
    emission_dim: int
    input_dim: int = 0
    frozen: tuple[str, ...] = ()
    kalman_form: str = "auto"
    partial_missing: bool = False
    has_missing: bool = False

    # dynamax models and tfp bijectors are built afresh on every access, never cached on this
    # (hashable, reused) object: tfp bijectors memoise their inputs, and a value memoised inside one
    # jit trace would leak as a tracer into the next.
    @property
    def ssm(self) -> LinearGaussianConjugateSSM:
        """dynamax model: priors, sampling, reference filter."""
        return LinearGaussianConjugateSSM(self.state_dim, self.emission_dim, self.input_dim)

    @property
    def props(self) -> ParamsLGSSM:
        """dynamax ``ParameterProperties`` tree (trainable flags, bijectors)."""
        _, props = self.ssm.initialize(jax.random.PRNGKey(0))
        for leaf in self.frozen:
            prop = get_leaf(props, leaf)
            props = set_leaf(props, leaf, ParameterProperties(trainable=False, constrainer=prop.constrainer))
        return props

    @property
    def free(self) -> tuple[str, ...]:
        return tuple(leaf for leaf in LEAVES if leaf not in self.frozen)

    def leaf_shape(self, leaf: str) -> tuple[int, ...]:
        S, D, U = self.state_dim, self.emission_dim, self.input_dim
        return {
            "initial.mean": (S,), "initial.cov": (S, S),
            "dynamics.weights": (S, S), "dynamics.bias": (S,), "dynamics.input_weights": (S, U),
            "dynamics.cov": (S, S),
            "emissions.weights": (D, S), "emissions.bias": (D,), "emissions.input_weights": (D, U),
            "emissions.cov": (D, D),
        }[leaf]

    # --- initial values -------------------------------------------------------------------------
    def initial_params(self, key, init_values: dict[str, jax.Array]) -> ParamsLGSSM:
        """Constrained initial parameters of one chain, as dynamax's ``initialize`` draws them.

        Args:
            key: the chain's PRNG key (dynamax draws ``emissions.weights`` from it).
            init_values: dotted leaf name -> value overriding dynamax's default.
        """
        kwargs = {_INIT_KWARG[leaf]: value for leaf, value in init_values.items()}
        params, _ = self.ssm.initialize(key, **kwargs)
        return params

    # --- position <-> params --------------------------------------------------------------------
    @staticmethod
    def _bijector(leaf):
        """dynamax's constrainer of a leaf (a new instance; see ``ssm``): PSD for covariances."""
        return RealToPSDBijector() if leaf.endswith(".cov") else None

    @cached_property
    def _unconstrained_shapes(self) -> dict[str, tuple[int, ...]]:
        out = {}
        for leaf in self.free:
            shape = self.leaf_shape(leaf)
            bij = self._bijector(leaf)
            out[leaf] = shape if bij is None else (shape[0] * (shape[0] + 1) // 2,)
        return out

    @property
    def dim(self) -> int:
        """Length of the flat unconstrained position vector."""
        return int(sum(np.prod(s, dtype=int) for s in self._unconstrained_shapes.values()))

    def to_position(self, params: ParamsLGSSM) -> jax.Array:
        """Flat unconstrained vector (dim,) of the free leaves of ``params``."""
        parts = []
        for leaf in self.free:
            value = get_leaf(params, leaf)
            bij = self._bijector(leaf)
            parts.append(jnp.ravel(value if bij is None else bij.inverse(value)))
        return jnp.concatenate(parts) if parts else jnp.zeros((0,))

    def _split(self, position):
        out, i = {}, 0
        for leaf, shape in self._unconstrained_shapes.items():
            n = int(np.prod(shape, dtype=int))
            out[leaf] = position[i:i + n].reshape(shape)
            i += n
        return out

    def to_params(self, position: jax.Array, anchor: ParamsLGSSM) -> ParamsLGSSM:
        """Constrained parameters: free leaves from ``position``, frozen leaves from ``anchor``."""
        params = anchor
        for leaf, unc in self._split(position).items():
            bij = self._bijector(leaf)
            params = set_leaf(params, leaf, unc if bij is None else bij.forward(unc))
        return params

    def log_det_jacobian(self, position: jax.Array) -> jax.Array:
        """log |d constrained / d unconstrained| of the free leaves (dynamax's ``log_det_jac_constrain``)."""
        total = jnp.zeros((), position.dtype)
        for leaf, unc in self._split(position).items():
            bij = self._bijector(leaf)
            if bij is not None:
                total = total + jnp.sum(bij.forward_log_det_jacobian(unc))
        return total

    # --- densities ------------------------------------------------------------------------------
    def log_likelihood(self, params: ParamsLGSSM, emissions, inputs=None) -> jax.Array:
        """Sum over sequences of log p(y | params).  emissions: (M, T, D); inputs: (M, T, U) or None."""
        if self.kalman_form == "dynamax":
            from dynamax.linear_gaussian_ssm import lgssm_filter
            one = lambda y, u: lgssm_filter(params, y, u).marginal_loglik
        else:
            one = lambda y, u: kalman.marginal_log_prob(
                params, y, u, form=self.kalman_form, partial_missing=self.partial_missing)
        if inputs is None:
            return jnp.sum(jax.vmap(lambda y: one(y, None))(emissions))
        return jnp.sum(jax.vmap(one)(emissions, inputs))

    def log_joint(self, params: ParamsLGSSM, emissions, inputs=None) -> jax.Array:
        """log prior + log likelihood at constrained params (the seed's ``lps``)."""
        return priors.log_prior(self.ssm, params) + self.log_likelihood(params, emissions, inputs)

    def logdensity(self, position, anchor: ParamsLGSSM, emissions, inputs=None) -> jax.Array:
        """Log density of the unconstrained position: log joint + log-det-Jacobian (what HMC samples)."""
        params = self.to_params(position, anchor)
        return self.log_joint(params, emissions, inputs) + self.log_det_jacobian(position)

    def logdensity_fn(self, anchor: ParamsLGSSM, emissions, inputs: Optional[jax.Array] = None):
        """Closure position -> log density for one dataset (for blackjax)."""
        return lambda position: self.logdensity(position, anchor, emissions, inputs)
