"""MCMC kernels for one chain, blackjax underneath, behind one interface.

A ``Kernel`` is built once from its build-time settings (``build_<algorithm>(settings)``, looked up
in ``BUILDERS``) and exposes pure functions the engine vmaps over datasets x chains without knowing
which algorithm runs:

* ``init(position, target) -> ChainState``: the state at a position, no adaptation;
* ``warmup(key, position, target, num_steps) -> (ChainState, Tuning)``: adaptation or burn-in of
  ``num_steps >= 0`` steps (0: ``init`` and the untuned settings).  For a cross-chain kernel
  (``Kernel.cross_chain``) ``position`` holds all C chains of one dataset, (C, dim), and the states
  come back batched (C, ...) with one Tuning shared by the dataset's chains;
* ``step(key, state, target, tuning, draw) -> (ChainState, StepStats)``, ``draw`` the global
  post-warmup draw index.

``target`` is one dataset's posterior (``Target``).  The chain state is blackjax's ``HMCState``
(position, logdensity, logdensity_grad) for the gradient-based kernels and a ``GibbsState``
(position, logdensity, latent states) for Gibbs; the engine reads ``position`` and ``logdensity``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple, Optional

import blackjax
import jax
import jax.numpy as jnp
import optax
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.mcmc.hmc import HMCState as ChainState
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core import gibbs, priors
from sampler.core.kalman import RowMoments
from sampler.core.model import Model
from sampler.core.structural import gibbs as structural_gibbs
from sampler.core.structural.model import StructuralModel


class Target(NamedTuple):
    """One dataset's posterior: the model, the chain's anchor (frozen values) and the data."""
    model: Model | StructuralModel
    anchor: ParamsLGSSM | dict
    emissions: jax.Array             # (M, T, D)
    inputs: Optional[jax.Array]      # (M, T, U) or None
    #: the general Gibbs sweep's statistics of the data (``gibbs.data_moments``), or None
    moments: Optional[RowMoments] = None

    @classmethod
    def of(cls, model, anchor, emissions, inputs) -> "Target":
        """The target with the data's moments (``moments_of``)."""
        return cls(model, anchor, emissions, inputs, cls.moments_of(model, emissions, inputs))

    @staticmethod
    def moments_of(model, emissions, inputs) -> Optional[RowMoments]:
        """The data's moments for the general LG-SSM, None for a structural model: computed once,
        outside a program's loop over draws, they spare every Gibbs sweep two T x D x D products (a
        kernel that reads none of them leaves them to XLA's dead-code elimination)."""
        return None if isinstance(model, StructuralModel) else gibbs.data_moments(emissions, inputs)

    def logdensity_fn(self):
        return self.model.logdensity_fn(self.anchor, self.emissions, self.inputs)


class Tuning(NamedTuple):
    """Adapted kernel parameters of one chain."""
    step_size: jax.Array            # ()
    inverse_mass_matrix: jax.Array  # (dim,) diagonal
    trajectory_length: jax.Array    # () mean leapfrog path length (ChEES); NaN for the others


class StepStats(NamedTuple):
    """Per-draw statistics, stored in the ``sample_stats`` group.  Every kernel's ``step`` returns
    them as scalars of these types: acceptance_rate and energy in the chain's dtype, diverging bool,
    n_steps int32 (so ``zeros`` is built without tracing a step)."""
    acceptance_rate: jax.Array
    diverging: jax.Array
    n_steps: jax.Array
    energy: jax.Array

    @classmethod
    def zeros(cls, dtype) -> "StepStats":
        zero = jnp.zeros((), dtype)
        return cls(zero, jnp.zeros((), bool), jnp.zeros((), jnp.int32), zero)


class Kernel(NamedTuple):
    """One algorithm's pure functions (see the module docstring for their signatures)."""
    name: str
    init: Callable
    warmup: Callable
    step: Callable
    #: the warmup adapts all chains of a dataset together (positions (C, dim) in, shared Tuning out)
    cross_chain: bool = False


class KernelSettings(NamedTuple):
    """Build-time settings (``[sampler]`` keys); each builder reads the ones it uses."""
    num_integration_steps: int = 5
    max_num_doublings: int = 10
    target_acceptance_rate: float = 0.8
    initial_step_size: float = 0.1


def _untuned(position, step_size) -> Tuning:
    """Tuning of a chain that had no warmup: ``step_size``, unit mass, no trajectory length."""
    nan = jnp.full((), jnp.nan, position.dtype)
    return Tuning(jnp.asarray(step_size, position.dtype), jnp.ones(position.shape[-1:], position.dtype), nan)


def _hmc_init(position, target: Target) -> ChainState:
    return blackjax.hmc.init(position, target.logdensity_fn())


def _with_zero_steps(adapt: Callable, init: Callable, step_size, cross_chain: bool) -> Callable:
    """``warmup`` from an adaptation that needs at least one step: with ``num_steps == 0`` (static)
    the chains start at their initial positions with the untuned settings."""
    def warmup(key, position, target: Target, num_steps: int):
        if num_steps > 0:
            return adapt(key, position, target, num_steps)
        if cross_chain:
            return jax.vmap(lambda q: init(q, target))(position), _untuned(position[0], step_size)
        return init(position, target), _untuned(position, step_size)
    return warmup


def _window_adapted(algorithm, settings: KernelSettings, name: str, **extra) -> Kernel:
    """A blackjax kernel with per-chain window adaptation of step size and diagonal mass matrix."""
    def adapt(key, position, target: Target, num_steps: int):
        adaptation = blackjax.window_adaptation(
            algorithm, target.logdensity_fn(), target_acceptance_rate=settings.target_acceptance_rate,
            adaptation_info_fn=get_filter_adapt_info_fn(), **extra)
        (state, parameters), _ = adaptation.run(key, position, num_steps=num_steps)
        return state, Tuning(jnp.asarray(parameters["step_size"], position.dtype),
                             parameters["inverse_mass_matrix"], jnp.full((), jnp.nan, position.dtype))

    def step(key, state, target: Target, tuning: Tuning, draw):
        kernel = algorithm(target.logdensity_fn(), tuning.step_size, tuning.inverse_mass_matrix, **extra)
        new_state, info = kernel.step(key, state)
        n_steps = getattr(info, "num_integration_steps", settings.num_integration_steps)
        return new_state, StepStats(info.acceptance_rate, info.is_divergent,
                                    jnp.asarray(n_steps, jnp.int32), info.energy)

    warmup = _with_zero_steps(adapt, _hmc_init, settings.initial_step_size, cross_chain=False)
    return Kernel(name, _hmc_init, warmup, step)


def build_nuts(settings: KernelSettings) -> Kernel:
    """NUTS (blackjax) with window adaptation; ``max_num_doublings`` bounds its trajectories."""
    return _window_adapted(blackjax.nuts, settings, "nuts", max_num_doublings=settings.max_num_doublings)


def build_hmc(settings: KernelSettings) -> Kernel:
    """HMC (blackjax) with ``num_integration_steps`` leapfrog steps and window adaptation (the seed's)."""
    return _window_adapted(blackjax.hmc, settings, "hmc", num_integration_steps=settings.num_integration_steps)


#: ChEES: leapfrog steps per transition are capped here (blackjax's default budget).
CHEES_MAX_LEAPFROG_STEPS = 1000
#: Adam learning rate of the trajectory-length optimiser (the value of blackjax's ChEES example).
CHEES_LEARNING_RATE = 0.025


def chees_num_steps(draw, tuning: Tuning):
    """Leapfrog steps of draw ``draw``: ``ceil(u * trajectory_length / step_size)`` with ``u`` the
    base-2 Halton (van der Corput) point number ``draw + 1`` (0.5, 0.25, 0.75, ...), the same for
    every chain and dataset (so vmapped chains wait only for datasets with longer trajectories, never
    for a chain's bad luck), clipped to [1, CHEES_MAX_LEAPFROG_STEPS] (an untuned chain,
    num_warmup = 0, takes one step).  Deterministic in the draw index, so resume is exact."""
    u = blackjax.mcmc.dynamic_hmc.halton_sequence(jnp.asarray(draw, jnp.int32), 30)
    n = jnp.ceil(u * tuning.trajectory_length / tuning.step_size)
    return jnp.clip(jnp.nan_to_num(n, nan=1.0), 1, CHEES_MAX_LEAPFROG_STEPS).astype(jnp.int32)


def build_chees(settings: KernelSettings) -> Kernel:
    """Jittered HMC whose step size, diagonal mass matrix and trajectory length are adapted across
    the chains of a dataset by blackjax's ChEES (Hoffman, Radul & Sountsov 2021).

    Sampling uses the same jittered trajectory lengths as blackjax's ``dynamic_hmc`` but takes the
    jitter from the global draw index (``chees_num_steps``) instead of a per-chain counter, so the
    chain state stays blackjax's ``HMCState``.
    """
    def adapt(key, positions, target: Target, num_steps: int):
        num_chains = positions.shape[0]
        adaptation = blackjax.chees_adaptation(
            target.logdensity_fn(), num_chains, mass_matrix_estimation="diagonal",
            max_leapfrog_steps=CHEES_MAX_LEAPFROG_STEPS, adaptation_info_fn=get_filter_adapt_info_fn())
        (states, parameters), _ = adaptation.run(
            key, positions, jnp.asarray(0.1, positions.dtype), optax.adam(CHEES_LEARNING_RATE), num_steps)
        step_size = jnp.asarray(parameters["step_size"], positions.dtype)
        num_leapfrog = parameters["integration_steps_params"][0]
        tuning = Tuning(step_size, parameters["inverse_mass_matrix"].astype(positions.dtype),
                        jnp.asarray(num_leapfrog * step_size, positions.dtype))
        return ChainState(states.position, states.logdensity, states.logdensity_grad), tuning

    hmc_kernel = blackjax.mcmc.hmc.build_kernel()

    def step(key, state, target: Target, tuning: Tuning, draw):
        n_steps = chees_num_steps(draw, tuning)
        new_state, info = hmc_kernel(key, state, target.logdensity_fn(), tuning.step_size,
                                     tuning.inverse_mass_matrix, n_steps)
        return new_state, StepStats(info.acceptance_rate, info.is_divergent, n_steps, info.energy)

    warmup = _with_zero_steps(adapt, _hmc_init, settings.initial_step_size, cross_chain=True)
    return Kernel("chees", _hmc_init, warmup, step, cross_chain=True)


#: warmup sweeps below which the Gibbs warmup's variance estimate is not used (unit variances).
MIN_VARIANCE_SWEEPS = 20


def _warmup_variance(path, position):
    """Per-coordinate variance of the second half of a warmup's positions (num_steps, dim), floored
    at 1e-4; ones when the warmup is shorter than MIN_VARIANCE_SWEEPS.  A structural model's Gibbs
    sweep scales its marginal Metropolis moves by it; the general sweep does not read it."""
    if path.shape[0] < MIN_VARIANCE_SWEEPS:
        return jnp.ones_like(position)
    return jnp.maximum(jnp.var(path[path.shape[0] // 2:], axis=0), 1e-4)


class GibbsState(NamedTuple):
    """A Gibbs chain: its position, the log density there, and the latent states drawn given it
    ((M, T, S) for the general LG-SSM, whose sweep draws the parameters given them, NaN before its
    first sweep; empty for a structural model, whose sweep draws its own)."""
    position: jax.Array
    logdensity: jax.Array
    latent: jax.Array


def build_gibbs(settings: KernelSettings) -> Kernel:
    """Blocked Gibbs: ``sampler.core.gibbs`` for the general LG-SSM, ``sampler.core.structural.gibbs``
    for a structural model; no step size or gradients; warmup is burn-in.

    Its stats: acceptance_rate 1, never diverging, n_steps 1 (one sweep), energy and step_size NaN.
    Its tuning's ``inverse_mass_matrix`` is the warmup's variance of each coordinate (the posterior
    variance, as HMC's), which scales a structural sweep's marginal moves.  Its state is a
    ``GibbsState``; on the general LG-SSM ``init`` draws no states and leaves the log density NaN
    (unknown until the first sweep, which draws the states and computes it).
    """
    def init(position, target: Target) -> GibbsState:
        model = target.model
        if isinstance(model, StructuralModel):
            return GibbsState(position, target.logdensity_fn()(position), jnp.zeros((0,), position.dtype))
        # no states yet and no filter pass: the first sweep draws them (``gibbs.undrawn_states``), so
        # the init program compiles no FFBS beside the block program's (docs/performance.md)
        return GibbsState(position, jnp.full((), jnp.nan, position.dtype),
                          gibbs.undrawn_states(model, target.emissions))

    def sweep(key, state: GibbsState, target: Target, tuning: Optional[Tuning]) -> GibbsState:
        model = target.model
        params = model.to_params(state.position, target.anchor)
        if isinstance(model, StructuralModel):
            step_sd = None if tuning is None else structural_gibbs.proposal_sd(jnp.sqrt(tuning.inverse_mass_matrix))
            params = structural_gibbs.gibbs_sweep(key, model, params, target.emissions, target.inputs, step_sd)
            position = model.to_position(params)
            return GibbsState(position, target.logdensity_fn()(position), state.latent)
        params, latent, log_likelihood, R_factor = gibbs.gibbs_sweep(
            key, model, params, state.latent, target.emissions, target.inputs, target.moments,
            model.covariance_cholesky(state.position, target.anchor, "emissions.cov"))
        position = model.to_position(params, {"emissions.cov": R_factor.chol})
        return GibbsState(position, _log_density(model, position, params, log_likelihood, R_factor), latent)

    def step(key, state, target: Target, tuning: Tuning, draw):
        state = sweep(key, state, target, tuning)
        nan = jnp.full((), jnp.nan, state.position.dtype)
        stats = StepStats(jnp.ones((), nan.dtype), jnp.zeros((), bool), jnp.ones((), jnp.int32), nan)
        return state, stats

    def warmup(key, position, target: Target, num_steps: int):
        def one(state, k):
            state = sweep(k, state, target, None)
            return state, state.position
        nan = jnp.full((), jnp.nan, position.dtype)
        state = init(position, target)
        if num_steps == 0:  # static: no sweep in the program (see ``burns_in_with_steps``)
            return state, Tuning(nan, jnp.ones_like(position), nan)
        state, path = jax.lax.scan(one, state, jax.random.split(key, num_steps))
        return state, Tuning(nan, _warmup_variance(path, state.position), nan)

    return Kernel("gibbs", init, warmup, step)


def burns_in_with_steps(kernel: Kernel, model: Model | StructuralModel) -> bool:
    """Whether ``kernel``'s warmup on ``model`` is plain steps whose tuning nothing reads: Gibbs on
    the general LG-SSM, whose warmup is burn-in.  The engine then runs those sweeps with its block
    program (``runner.init_chains``) instead of compiling the sweep a second time into the warmup
    program.  A structural model's sweep reads the warmup's variances, so its warmup stays whole."""
    return kernel.name == "gibbs" and not isinstance(model, StructuralModel)


def _log_density(model: Model, position, params, log_likelihood, emission_factor):
    """The log density of ``position`` given its parameters' log-likelihood and the emission
    covariance's ``CholeskyFactor`` (``Model.logdensity`` without the filter pass or R's factorisation)."""
    return (priors.log_prior(model.ssm, params, emission_factor) + log_likelihood
            + model.log_det_jacobian(position))


BUILDERS: dict[str, Callable[[KernelSettings], Kernel]] = {
    "nuts": build_nuts, "hmc": build_hmc, "chees": build_chees, "gibbs": build_gibbs}
ALGORITHMS = tuple(BUILDERS)


@lru_cache(maxsize=None)
def build(name: str, settings: KernelSettings = KernelSettings()) -> Kernel:
    """The kernel of algorithm ``name`` (one of ``ALGORITHMS``), built once per settings."""
    if name not in BUILDERS:
        raise ValueError(f"unknown algorithm {name!r}; expected one of {ALGORITHMS}")
    return BUILDERS[name](settings)
