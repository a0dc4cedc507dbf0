"""The kernel interface: every algorithm is built from the table and has the same init/warmup/step
contract, including a warmup of zero steps (the chains start untuned at their initial positions)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import simulate
from sampler.core import kernels
from sampler.core.model import Model


@pytest.fixture(scope="module")
def target():
    model = Model(1, 2)
    y = jnp.asarray(simulate(1, T=20)["emissions"][0])[None]              # (M=1, T, D)
    anchor = model.initial_params(jax.random.PRNGKey(0), {})
    return kernels.Target(model, anchor, y, None)


def test_every_algorithm_is_built_from_the_table():
    assert set(kernels.ALGORITHMS) == {"nuts", "hmc", "chees", "gibbs"}
    for name in kernels.ALGORITHMS:
        kernel = kernels.build(name)
        assert kernel.name == name and kernel.cross_chain == (name == "chees")
        assert kernels.build(name) is kernel  # built once per settings
    with pytest.raises(ValueError, match="unknown algorithm 'mala'"):
        kernels.build("mala")


# hmc stands for nuts too: both take the same zero-step path (_with_zero_steps, one chain)
@pytest.mark.parametrize("name", ["hmc", "chees", "gibbs"])
def test_zero_warmup_steps_start_untuned_at_the_initial_position(target, name):
    settings = kernels.KernelSettings(initial_step_size=0.25)
    kernel = kernels.build(name, settings)
    position = target.model.to_position(target.anchor)
    start = jnp.stack([position, position + 0.1]) if kernel.cross_chain else position
    logdensity = target.logdensity_fn()
    if kernel.cross_chain:
        logdensity = jax.vmap(logdensity)

    @jax.jit  # one compile for the warmup and the reference log density
    def start_and_reference(q):
        return kernel.warmup(jax.random.PRNGKey(1), q, target, 0), logdensity(q)

    (state, tuning), expected_lp = start_and_reference(start)
    np.testing.assert_array_equal(state.position, start)
    if name == "gibbs":  # no states and no filter pass before the first sweep (gibbs.undrawn_states)
        assert np.isnan(state.logdensity) and np.all(np.isnan(state.latent))
    else:
        np.testing.assert_allclose(state.logdensity, expected_lp, rtol=1e-12)
    np.testing.assert_array_equal(tuning.inverse_mass_matrix, np.ones(position.shape[-1]))
    # Gibbs has no step size at all; the HMC family starts at the configured one
    assert np.isnan(tuning.step_size) if name == "gibbs" else float(tuning.step_size) == 0.25
    assert np.isnan(tuning.trajectory_length)


def test_a_gibbs_sweep_records_the_log_density_of_its_position():
    """The Gibbs kernel's recorded log density (the prior, Jacobian and position from the R factor the
    sweep draws, the likelihood from its FFBS filter) equals the model's log density at the position
    it ends at, in the chain's first sweep (R kept) and after it (R drawn).  D = 5 takes the LAPACK
    paths of the factorisations."""
    model = Model(2, 5)
    y = jnp.asarray(simulate(1, state_dim=2, emission_dim=5, T=30)["emissions"][0])[None]
    anchor = model.initial_params(jax.random.PRNGKey(0), {})
    target = kernels.Target.of(model, anchor, y, None)
    kernel = kernels.build("gibbs")
    logdensity = target.logdensity_fn()

    @jax.jit
    def two_sweeps(q):
        state, tuning = kernel.warmup(jax.random.PRNGKey(1), q, target, 0)
        first, _ = kernel.step(jax.random.PRNGKey(2), state, target, tuning, 0)
        second, _ = kernel.step(jax.random.PRNGKey(3), first, target, tuning, 1)
        return [(s.position, s.logdensity, logdensity(s.position)) for s in (first, second)]

    start = model.to_position(anchor)
    (q1, lp1, ref1), (q2, lp2, ref2) = two_sweeps(start)
    assert not np.allclose(q2, q1)
    for lp, ref in ((lp1, ref1), (lp2, ref2)):
        assert np.isfinite(float(ref)) and float(lp) == pytest.approx(float(ref), rel=1e-9)
