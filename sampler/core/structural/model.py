"""A structural time-series model: a sum of components per emission, compiled to an LG-SSM.

Every emission e has its own parameters and is independent of the others given them:
``y_{t,e} = h' x_{t,e} + beta_e' u_t + N(0, obs_sd_e^2)``, ``x_{t,e} = F_e x_{t-1,e} + N(0, Q_e)``,
``x_{1,e} ~ N(0, diag(initial_sd^2))`` (``components.py``).  The parameters are a dict
``variable name -> (D,)`` or ``(D, p)`` (``variables``): ``<name>_<parameter>`` and ``obs_sd``.

Priors: sds half-normal (``components.DEFAULT_PRIORS``, ``OBS_SD_SCALE``); damping a normal truncated
to (0, 1); AR coefficients normal restricted to the stationary region (unnormalised: ``lp`` is up to
a constant there); regression coefficients normal.

The position HMC sees is unconstrained: log sd, logit damping, AR coefficients through their partial
autocorrelations (``tanh``, Durbin-Levinson; Barndorff-Nielsen & Schou 1973), regression
coefficients as they are.  The log density marginalises the states with the Kalman filter of each
emission's own (state S_e, one emission) LG-SSM; ``lgssm`` is the block-diagonal whole, which the
forecasts and everything else built for the general model use.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from dynamax.linear_gaussian_ssm import ParamsLGSSM, ParamsLGSSMDynamics, ParamsLGSSMEmissions, ParamsLGSSMInitial

from sampler.core.model import Model, missingness
from sampler.core.structural import smoother
from sampler.core.structural.components import OBS_SD_SCALE, Component
from sampler.core.structural.transition import Transition

#: the chains' starting values (each jittered by exp(N(0, 0.5^2)) per chain): sds, damping.
START_SD, START_OBS_SD, START_DAMPING, START_JITTER = 0.1, 0.5, 0.9, 0.5


@dataclass(frozen=True)
class Parameter:
    """One posterior variable: name, kind (``sd``, ``damping``, ``ar``, ``regression``), the
    component it belongs to (index; -1 for ``obs_sd``), length of its trailing axis (0: none)."""
    name: str
    kind: str
    component: int
    size: int = 0
    prior: object = None

    @property
    def dims(self) -> tuple[str, ...]:
        return ("emission",) + (() if not self.size else ("lag",) if self.kind == "ar" else ("input",))


def pacf_to_ar(r):
    """AR coefficients (p,) from partial autocorrelations r (p,) in (-1, 1) (Durbin-Levinson)."""
    phi = r[:1]
    for k in range(1, r.shape[0]):
        phi = jnp.concatenate([phi - r[k] * phi[::-1], r[k:k + 1]])
    return phi


def ar_to_pacf(phi):
    """Partial autocorrelations of AR coefficients phi (p,) (the step-down recursion); the process
    is stationary iff every one is in (-1, 1)."""
    out = []
    for k in range(phi.shape[0] - 1, -1, -1):
        r = phi[k]
        out.append(r)
        if k:
            phi = (phi[:k] + r * phi[:k][::-1]) / (1 - r ** 2)
    return jnp.stack(out[::-1])


def is_stationary(phi):
    r = ar_to_pacf(phi)
    return jnp.all(jnp.isfinite(r) & (jnp.abs(r) < 1))


def _half_normal_logpdf(x, scale):
    return 0.5 * jnp.log(2 / jnp.pi) - jnp.log(scale) - 0.5 * (x / scale) ** 2


def _normal_logpdf(x, mean, sd):
    return -0.5 * jnp.log(2 * jnp.pi) - jnp.log(sd) - 0.5 * ((x - mean) / sd) ** 2


def _truncated_normal_logpdf(x, mean, sd, low=0.0, high=1.0):
    mass = jax.scipy.special.ndtr((high - mean) / sd) - jax.scipy.special.ndtr((low - mean) / sd)
    return _normal_logpdf(x, mean, sd) - jnp.log(mass)


@dataclass(frozen=True)
class StructuralModel:
    """Structural components for every one of ``emission_dim`` emissions.

    Attributes mirror ``sampler.core.model.Model``'s where they mean the same (the engine, kernels
    and predictive passes take either): emission_dim, input_dim, kalman_form, partial_missing,
    has_missing; ``state_dim`` is the compiled LG-SSM's (D x S_e).
    """
    components: tuple[Component, ...]
    emission_dim: int
    input_dim: int = 0
    kalman_form: str = "auto"
    partial_missing: bool = False
    has_missing: bool = False
    obs_sd_scale: float = OBS_SD_SCALE
    #: variables held at their given value (``initial_params``' ``init_values``): not in the
    #: position, not moved by any Gibbs block, no prior term (conditioning on them).
    frozen: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, model_cfg, emissions: Optional[np.ndarray] = None) -> "StructuralModel":
        """The model of a ``[model]`` section with ``components`` (``sampler.storage.config.ModelConfig``)."""
        has_missing, partial_missing = (False, False) if emissions is None else missingness(emissions)
        components = tuple(c.component(model_cfg.input_dim) for c in model_cfg.components)
        return cls(components, model_cfg.emission_dim, model_cfg.input_dim, model_cfg.kalman,
                   partial_missing, has_missing, frozen=tuple(model_cfg.frozen))

    # --- structure ------------------------------------------------------------------------------
    @cached_property
    def parameters(self) -> tuple[Parameter, ...]:
        out = [Parameter(c.variable(name), kind, i, size, c.prior(name))
               for i, c in enumerate(self.components) for name, kind, size in c.parameters()]
        out.append(Parameter("obs_sd", "sd", -1, 0, self.obs_sd_scale))
        return tuple(out)

    @cached_property
    def free_parameters(self) -> tuple[Parameter, ...]:
        """The sampled parameters: all but the ``frozen`` ones, in order."""
        return tuple(p for p in self.parameters if p.name not in self.frozen)

    @property
    def variables(self) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
        """Posterior variable -> (shape per dataset, dim names)."""
        D = self.emission_dim
        return {p.name: ((D,) + ((p.size,) if p.size else ()), p.dims) for p in self.parameters}

    @property
    def identified(self) -> tuple[str, ...]:
        """Every sampled variable: the likelihood identifies them all (|sd|, not its sign)."""
        return tuple(p.name for p in self.free_parameters)

    @staticmethod
    def variable_values(params: dict) -> dict:
        return params

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start of each component's block in an emission's state."""
        return tuple(int(x) for x in np.cumsum([0] + [c.state_dim for c in self.components])[:-1])

    @property
    def component_state_dim(self) -> int:
        """S_e: one emission's state size."""
        return sum(c.state_dim for c in self.components)

    @property
    def state_dim(self) -> int:
        return self.emission_dim * self.component_state_dim

    @cached_property
    def observation(self) -> np.ndarray:
        """h (S_e,)."""
        return np.concatenate([c.observation() for c in self.components])

    @cached_property
    def disturbance_selection(self) -> tuple[tuple[str, ...], np.ndarray]:
        """(sd parameter names J, selection (J, S_e)): which states each component sd drives."""
        names, rows = [], []
        for c, offset in zip(self.components, self.offsets):
            for d in c.disturbances:
                row = np.zeros(self.component_state_dim)
                row[[offset + s for s in d.states]] = 1.0
                names.append(c.variable(d.parameter))
                rows.append(row)
        return tuple(names), np.array(rows).reshape(len(rows), self.component_state_dim)

    @cached_property
    def initial_sds(self) -> np.ndarray:
        return np.concatenate([c.initial_sds() for c in self.components])

    def transition(self, p: dict) -> Transition:
        """F_e of one emission's parameters ``p`` (name -> () or (k,)), applied without forming it
        (``Transition.dense`` forms it)."""
        values = {i: p[c.variable("damping" if c.kind == "damped_trend" else "coefficients")]
                  for i, c in enumerate(self.components) if c.kind in ("damped_trend", "ar")}
        return Transition(self.components, values)

    @cached_property
    def loaded_states(self) -> np.ndarray:
        """The states with h = 1 (h is 0/1): y_t = sum of them + regression + noise."""
        return np.flatnonzero(self.observation)

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    @property
    def regression_flags(self) -> tuple[bool, ...]:
        return tuple(c.kind == "regression" for c in self.components)

    @property
    def component_loadings(self) -> np.ndarray:
        """(K, D, D x S_e): component k's part of the compiled H (emission e's block, k's states)."""
        S, D = self.component_state_dim, self.emission_dim
        out = np.zeros((len(self.components), D, D * S))
        for k, (c, offset) in enumerate(zip(self.components, self.offsets)):
            for e in range(D):
                out[k, e, e * S + offset:e * S + offset + c.state_dim] = c.observation()
        return out

    def regression_coefficients(self, p: dict) -> jax.Array:
        """beta_e (U,) of one emission (zeros without a regression component)."""
        for c in self.components:
            if c.kind == "regression":
                return p[c.variable("coefficients")]
        return jnp.zeros((self.input_dim,), p["obs_sd"].dtype)

    def disturbance_variances(self, p: dict) -> jax.Array:
        """diag(Q_e) (S_e,)."""
        names, sel = self.disturbance_selection
        sds = jnp.stack([p[n] for n in names]) if names else jnp.zeros((0,), p["obs_sd"].dtype)
        return jnp.asarray(sel.T, sds.dtype) @ sds ** 2

    def emission_lgssm(self, p: dict) -> ParamsLGSSM:
        """One emission's LG-SSM (state S_e, one emission, inputs U)."""
        S, U = self.component_state_dim, self.input_dim
        dtype = p["obs_sd"].dtype
        return ParamsLGSSM(
            initial=ParamsLGSSMInitial(mean=jnp.zeros(S, dtype), cov=jnp.diag(jnp.asarray(self.initial_sds ** 2, dtype))),
            dynamics=ParamsLGSSMDynamics(weights=self.transition(p).dense(dtype), bias=jnp.zeros(S, dtype),
                                         input_weights=jnp.zeros((S, U), dtype),
                                         cov=jnp.diag(self.disturbance_variances(p))),
            emissions=ParamsLGSSMEmissions(weights=jnp.asarray(self.observation, dtype)[None], bias=jnp.zeros(1, dtype),
                                           input_weights=self.regression_coefficients(p)[None],
                                           cov=p["obs_sd"][None, None] ** 2))

    def lgssm(self, params: dict) -> ParamsLGSSM:
        """The whole model as one LG-SSM: emission blocks on the diagonal (state D x S_e)."""
        one = jax.vmap(self.emission_lgssm)(params)  # leaves (D, ...)
        block = jax.scipy.linalg.block_diag
        blocks = lambda x: block(*[x[e] for e in range(self.emission_dim)])
        S, D, U = self.state_dim, self.emission_dim, self.input_dim
        return ParamsLGSSM(
            initial=ParamsLGSSMInitial(mean=one.initial.mean.reshape(-1), cov=blocks(one.initial.cov)),
            dynamics=ParamsLGSSMDynamics(weights=blocks(one.dynamics.weights), bias=one.dynamics.bias.reshape(-1),
                                         input_weights=one.dynamics.input_weights.reshape(S, U),
                                         cov=blocks(one.dynamics.cov)),
            emissions=ParamsLGSSMEmissions(weights=blocks(one.emissions.weights), bias=one.emissions.bias.reshape(-1),
                                           input_weights=one.emissions.input_weights.reshape(D, U),
                                           cov=blocks(one.emissions.cov)))

    # --- filter form of the posterior-predictive passes: the general model's policy ---------------
    predictive_form = Model.predictive_form

    # --- initial values -------------------------------------------------------------------------
    def initial_params(self, key, init_values: Optional[dict] = None) -> dict:
        """A chain's starting values: ``init_values[name]`` where given (the value of a frozen
        variable), else sds START_SD (obs_sd START_OBS_SD), damping START_DAMPING, coefficients 0,
        each sd and the damping's odds jittered by exp(N(0, START_JITTER^2))."""
        D = self.emission_dim
        out = {}
        for p, k in zip(self.parameters, jax.random.split(key, len(self.parameters))):
            jitter = jnp.exp(START_JITTER * jax.random.normal(k, (D,)))
            if init_values and p.name in init_values:
                out[p.name] = jnp.asarray(init_values[p.name])
            elif p.kind == "sd":
                out[p.name] = (START_OBS_SD if p.component < 0 else START_SD) * jitter
            elif p.kind == "damping":
                odds = START_DAMPING / (1 - START_DAMPING) * jitter
                out[p.name] = odds / (1 + odds)
            else:
                out[p.name] = jnp.zeros((D, p.size))
        return out

    # --- position <-> params --------------------------------------------------------------------
    @property
    def dim(self) -> int:
        D = self.emission_dim
        return sum(D * max(p.size, 1) for p in self.free_parameters)

    def _unconstrain(self, p: Parameter, value):
        if p.kind == "sd":
            return jnp.log(value)
        if p.kind == "damping":
            return jnp.log(value) - jnp.log1p(-value)
        if p.kind == "ar":
            return jnp.arctanh(jax.vmap(ar_to_pacf)(value))
        return value

    def _constrain(self, p: Parameter, unc):
        if p.kind == "sd":
            return jnp.exp(unc)
        if p.kind == "damping":
            return jax.nn.sigmoid(unc)
        if p.kind == "ar":
            return jax.vmap(lambda u: pacf_to_ar(jnp.tanh(u)))(unc)
        return unc

    def _log_det(self, p: Parameter, unc):
        if p.kind == "sd":
            return jnp.sum(unc)
        if p.kind == "damping":
            return jnp.sum(jax.nn.log_sigmoid(unc) + jax.nn.log_sigmoid(-unc))
        if p.kind == "ar":
            jac = jax.vmap(jax.jacfwd(lambda u: pacf_to_ar(jnp.tanh(u))))(unc)
            return jnp.sum(jnp.linalg.slogdet(jac)[1])
        return jnp.zeros((), unc.dtype)

    def _split(self, position):
        D, out, i = self.emission_dim, {}, 0
        for p in self.free_parameters:
            n = D * max(p.size, 1)
            out[p] = position[i:i + n].reshape((D, p.size) if p.size else (D,))
            i += n
        return out

    def to_position(self, params: dict) -> jax.Array:
        return jnp.concatenate([jnp.ravel(self._unconstrain(p, params[p.name])) for p in self.free_parameters])

    def to_params(self, position, anchor: Optional[dict] = None) -> dict:
        """Free variables from ``position``, frozen ones from ``anchor`` (a chain's initial params)."""
        free = {p.name: self._constrain(p, unc) for p, unc in self._split(position).items()}
        return {p.name: free[p.name] if p.name in free else jnp.asarray(anchor[p.name], position.dtype)
                for p in self.parameters}

    def log_det_jacobian(self, position) -> jax.Array:
        return sum(self._log_det(p, unc) for p, unc in self._split(position).items())

    # --- densities ------------------------------------------------------------------------------
    def log_prior(self, params: dict) -> jax.Array:
        """log p of the free variables (a frozen one is conditioned on: no term)."""
        total = 0.0
        for p in self.free_parameters:
            x = params[p.name]
            if p.kind == "sd":
                total = total + jnp.sum(_half_normal_logpdf(x, p.prior))
            elif p.kind == "damping":
                total = total + jnp.sum(_truncated_normal_logpdf(x, *p.prior))
            else:  # ar: normal restricted to the stationary region (its normaliser omitted)
                total = total + jnp.sum(_normal_logpdf(x, 0.0, p.prior))
        return total

    def log_likelihood(self, params: dict, emissions, inputs=None) -> jax.Array:
        """Sum over sequences and emissions of log p(y | params).  emissions (M, T, D).

        Each emission's scalar filter (``smoother.log_likelihood``); ``kalman_form`` does not apply
        (tests: it equals ``sampler.kalman.marginal_log_prob`` of ``lgssm`` and statsmodels')."""
        M, T, _ = emissions.shape
        u = jnp.zeros((M, T, 0), emissions.dtype) if inputs is None else inputs
        s0 = jnp.asarray(self.initial_sds, emissions.dtype)

        def one(p, y, uu):  # one emission, one sequence: y (T,)
            return smoother.log_likelihood(self.transition(p), self.disturbance_variances(p), self.loaded_states,
                                           p["obs_sd"] ** 2, jnp.zeros_like(s0), s0, y,
                                           uu @ self.regression_coefficients(p))

        per_seq = jax.vmap(one, in_axes=(None, 0, 0))
        per_emission = jax.vmap(per_seq, in_axes=(0, 2, None))
        return jnp.sum(per_emission(params, emissions, u))

    def log_joint(self, params: dict, emissions, inputs=None) -> jax.Array:
        return self.log_prior(params) + self.log_likelihood(params, emissions, inputs)

    def logdensity(self, position, anchor, emissions, inputs=None) -> jax.Array:
        return self.log_joint(self.to_params(position, anchor), emissions, inputs) + self.log_det_jacobian(position)

    def logdensity_fn(self, anchor, emissions, inputs=None):
        return lambda position: self.logdensity(position, anchor, emissions, inputs)
