"""The Bayesian LG-SSM: dynamax parameter tree, conjugate priors, frozen leaves, flat unconstrained position.

A chain's position is one flat vector holding the *free* leaves in unconstrained space (dynamax
bijectors: PSD matrices are stored as their unconstrained lower-triangular vector).  Frozen leaves are
not part of the position at all, so they can never move; their values come from an *anchor*
``ParamsLGSSM`` that also carries each dataset's initial values.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from dynamax.linear_gaussian_ssm import (LinearGaussianConjugateSSM, ParamsLGSSM, ParamsLGSSMDynamics,
                                         ParamsLGSSMEmissions, ParamsLGSSMInitial, lgssm_filter)
from dynamax.parameters import ParameterProperties
from dynamax.utils.bijectors import RealToPSDBijector
from tensorflow_probability.substrates.jax import bijectors as tfb

from sampler.core import priors
from sampler.core.kalman import marginal_log_prob, small_cholesky
from sampler.core.leaves import LEAVES, TABLE, get_leaf, is_covariance, leaf_shape, set_leaf, store_name


def _to_cholesky_factor(bijector):
    """dynamax's ``RealToPSDBijector`` = Chain([CholeskyOuterProduct, TransformDiagonal(Exp),
    FillTriangular]) without its outer product: unconstrained vector <-> lower Cholesky factor."""
    return tfb.Chain(bijector.bijectors[1:])


def params_from_leaves(values: Mapping[str, object]) -> ParamsLGSSM:
    """dynamax ``ParamsLGSSM`` from dotted leaf name -> value (every leaf of ``LEAVES``)."""
    v = values
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=v["initial.mean"], cov=v["initial.cov"]),
        dynamics=ParamsLGSSMDynamics(weights=v["dynamics.weights"], bias=v["dynamics.bias"],
                                     input_weights=v["dynamics.input_weights"], cov=v["dynamics.cov"]),
        emissions=ParamsLGSSMEmissions(weights=v["emissions.weights"], bias=v["emissions.bias"],
                                       input_weights=v["emissions.input_weights"], cov=v["emissions.cov"]))


def missingness(emissions: np.ndarray) -> tuple[bool, bool]:
    """(whether any entry is NaN, whether some row is partly but not entirely NaN) of emissions (..., D)."""
    missing = np.isnan(emissions)
    return bool(missing.any()), bool(np.any(missing.any(-1) & ~missing.all(-1)))


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

    @classmethod
    def from_config(cls, model_cfg, emissions: Optional[np.ndarray] = None) -> "Model":
        """The model of a config's ``[model]`` section (``sampler.storage.config.ModelConfig``), with
        the missing-data flags of ``emissions`` (N, M, T, D) when given (else none missing)."""
        has_missing, partial_missing = (False, False) if emissions is None else missingness(emissions)
        return cls(model_cfg.state_dim, model_cfg.emission_dim, model_cfg.input_dim, tuple(model_cfg.frozen),
                   model_cfg.kalman, partial_missing, has_missing)

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
        return leaf_shape(leaf, self.state_dim, self.emission_dim, self.input_dim)

    # --- posterior variables (what the store holds; shared with ``StructuralModel``) -------------
    @property
    def variables(self) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
        """Posterior variable (a leaf's store name) -> (shape per dataset, dim names)."""
        return {store_name(leaf): (self.leaf_shape(leaf), TABLE[leaf].dims) for leaf in LEAVES}

    #: structural components (none: see ``StructuralModel.component_names``).
    component_names = ()

    #: variables the likelihood identifies (the others move along its invariant directions, so
    #: their R-hat says nothing about convergence): the default of ``sampler summary``.
    identified = ("emissions_cov",)

    @staticmethod
    def variable_values(params: ParamsLGSSM) -> dict:
        """Store name -> value of every leaf of ``params`` (any leading axes)."""
        return {store_name(leaf): get_leaf(params, leaf) for leaf in LEAVES}

    @staticmethod
    def lgssm(values: Mapping[str, jax.Array]) -> ParamsLGSSM:
        """dynamax ``ParamsLGSSM`` of one draw's variables (store name -> value)."""
        return params_from_leaves({leaf: values[store_name(leaf)] for leaf in LEAVES})

    # --- filter forms: the one policy for which Kalman form computes what ------------------------
    @property
    def moments_form(self) -> str:
        """Form of our filter where sampling needs filtered moments (Gibbs' FFBS): the configured one;
        ``dynamax`` (its filter is a reference for the log density only: no missing data) means auto."""
        return "auto" if self.kalman_form == "dynamax" else self.kalman_form

    @property
    def predictive_form(self) -> str:
        """Form of the posterior-predictive passes (forecast, backtest), vmapped over many draws: a
        sequential form as configured, else auto (the parallel scan is the slower one at large batch,
        docs/performance.md)."""
        return self.kalman_form if self.kalman_form in ("information", "covariance") else "auto"

    # --- initial values -------------------------------------------------------------------------
    def initial_params(self, key, init_values: dict[str, jax.Array]) -> ParamsLGSSM:
        """Constrained initial parameters of one chain, as dynamax's ``initialize`` draws them.

        Args:
            key: the chain's PRNG key (dynamax draws ``emissions.weights`` from it).
            init_values: dotted leaf name -> value overriding dynamax's default.
        """
        kwargs = {TABLE[leaf].init_kwarg: value for leaf, value in init_values.items()}
        params, _ = self.ssm.initialize(key, **kwargs)
        return params

    # --- position <-> params --------------------------------------------------------------------
    @staticmethod
    def _bijector(leaf):
        """dynamax's constrainer of a leaf (a new instance; see ``ssm``): PSD for covariances."""
        return RealToPSDBijector() if is_covariance(leaf) else None

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

    def to_position(self, params: ParamsLGSSM, cholesky: Optional[Mapping[str, jax.Array]] = None) -> jax.Array:
        """Flat unconstrained vector (dim,) of the free leaves of ``params``.  ``cholesky``: leaf name ->
        lower Cholesky factor, for covariance leaves whose factor the caller has (the bijector's first
        step, the factorisation, is then skipped)."""
        parts = []
        for leaf in self.free:
            value = get_leaf(params, leaf)
            bij = self._bijector(leaf)
            if bij is not None and cholesky and leaf in cholesky:
                bij, value = _to_cholesky_factor(bij), cholesky[leaf]
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

    def covariance_cholesky(self, position: jax.Array, anchor: ParamsLGSSM, leaf: str) -> jax.Array:
        """The lower Cholesky factor of covariance ``leaf``: read from the position where the leaf is
        free (the constrained value is its outer product), factorised from the anchor where frozen."""
        if leaf not in self.free:
            return small_cholesky(get_leaf(anchor, leaf))
        return _to_cholesky_factor(self._bijector(leaf)).forward(self._split(position)[leaf])

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
            one = lambda y, u: lgssm_filter(params, y, u).marginal_loglik
        else:
            one = lambda y, u: marginal_log_prob(
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
