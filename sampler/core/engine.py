"""The batched engine: datasets x chains in one compiled program, split over the local devices.

Pure JAX: no files, no Ray.  The batch axis B enumerates (dataset, chain) pairs of a shard,
dataset-major (``b = d * num_chains + c``).  Every chain's randomness comes from its own key,
``fold_in(fold_in(PRNGKey(seed), dataset), chain)``, and every draw's from
``fold_in(fold_in(chain_key, DRAW), draw_index)`` (a burn-in run by the block program takes
``fold_in(chain_key, WARMUP)`` as its chain key: ``burn_in_keys``): results do not depend on how
datasets are split into shards, devices or interrupted blocks.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from dynamax.linear_gaussian_ssm import ParamsLGSSM

from sampler.core import kernels
from sampler.core.kernels import ChainState, StepStats, Tuning
from sampler.core.model import Model

# Stream tags under each chain key.
_INIT, _WARMUP, _DRAW = 0, 1, 2


class Batch(NamedTuple):
    """Per-chain data, leading axis B.

    dataset: (B,) global dataset index.  chain: (B,) chain index.
    emissions: (B, M, T, D) with NaN for missing.  inputs: (B, M, T, U) or None.
    init_values: dotted leaf name -> (B, *leaf_shape) given initial (or frozen) values.
    """
    dataset: jax.Array
    chain: jax.Array
    emissions: jax.Array
    inputs: Optional[jax.Array]
    init_values: dict


class Draws(NamedTuple):
    """One block of draws, leading axes (num_draws, B)."""
    params: ParamsLGSSM   # constrained
    lp: jax.Array         # log prior + log likelihood
    stats: StepStats
    step_size: jax.Array


class Chains(NamedTuple):
    """Everything needed to continue the chains (what a checkpoint holds, besides the draw index)."""
    state: ChainState     # leaves (B, ...)
    tuning: Tuning        # leaves (B, ...)
    anchor: ParamsLGSSM   # (B, ...) frozen / initial values


def chain_keys(seed: int, dataset, chain):
    """(B,) PRNG keys, one stream per (dataset, chain)."""
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda d, c: jax.random.fold_in(jax.random.fold_in(base, d), c))(dataset, chain)


def burn_in_keys(keys):
    """(B,) keys under which the block program runs a burn-in (``kernels.burns_in_with_steps``):
    each chain's warmup stream, apart from its draws' stream."""
    return jax.vmap(lambda k: jax.random.fold_in(k, _WARMUP))(keys)


# --- per-chain and per-dataset functions (vmapped below) ---------------------------------------------
def _initial_position(model: Model, key, emissions, init_values):
    anchor = model.initial_params(jax.random.fold_in(key, _INIT), init_values)
    anchor = jax.tree.map(lambda x: x.astype(emissions.dtype), anchor)
    return anchor, model.to_position(anchor)


def _init_one(model: Model, kernel: kernels.Kernel, num_warmup: int, key, emissions, inputs, init_values):
    """One chain: initial values, then its own warmup."""
    anchor, position = _initial_position(model, key, emissions, init_values)
    target = kernels.Target.of(model, anchor, emissions, inputs)
    state, tuning = kernel.warmup(jax.random.fold_in(key, _WARMUP), position, target, num_warmup)
    return Chains(state, tuning, anchor)


def _init_dataset(model: Model, kernel: kernels.Kernel, num_warmup: int, keys, emissions, inputs, init_values):
    """The C chains of one dataset (leading axis C on every argument), adapted together.

    The warmup's randomness comes from chain 0's key; the target uses chain 0's anchor, whose frozen
    leaves are the dataset's (the only part of the anchor the log density reads).
    """
    anchors, positions = jax.vmap(partial(_initial_position, model))(keys, emissions, init_values)
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    target = kernels.Target(model, first(anchors), emissions[0], None if inputs is None else inputs[0])
    states, tuning = kernel.warmup(jax.random.fold_in(keys[0], _WARMUP), positions, target, num_warmup)
    tuning = jax.tree.map(lambda x: jnp.broadcast_to(x, (keys.shape[0],) + x.shape), tuning)
    return Chains(states, tuning, anchors)


# --- a block of draws: one loop over the batch, each draw its vmapped step ---------------------------
def _sample_block(model: Model, kernel: kernels.Kernel, num_draws: int,
                  keys, chains: Chains, emissions, inputs, start, count):
    """A block of ``count <= num_draws`` draws of B chains (leading axis B on every argument but
    ``start`` and ``count``): draws (num_draws, B, ...), the slots past ``count`` zeros.

    The loop over draws runs over the batch, each draw a vmapped step, rather than a vmapped loop per
    chain: under ``vmap`` the ``cond`` that skips the slots past ``count`` traces its sweep branch twice
    (once to learn which outputs are batched, once to batch them), about a second of every process's
    start-up (docs/performance.md, "Start-up")."""
    per_chain = lambda fn: jax.vmap(fn, in_axes=(0,) * 6 + (None,))
    draw_keys = jax.vmap(lambda k: jax.random.fold_in(k, _DRAW))(keys)
    moments = jax.vmap(partial(kernels.Target.moments_of, model))(emissions, inputs)

    def advance_one(draw_key, state, anchor, tuning, y, u_and_moments, i):
        target = kernels.Target(model, anchor, y, *u_and_moments)
        state, stats = kernel.step(jax.random.fold_in(draw_key, start + i), state, target, tuning, start + i)
        params = model.to_params(state.position, anchor)
        lp = state.logdensity - model.log_det_jacobian(state.position)
        return state, Draws(params, lp, stats, tuning.step_size)

    def advance(state, i):
        return per_chain(advance_one)(draw_keys, state, chains.anchor, chains.tuning, emissions,
                                      (inputs, moments), i)

    def hold(state, i):
        # past ``count``: the chains stay, the draw slots are zeros, shaped from what the chains
        # already have rather than from ``eval_shape(advance)``, a second trace of the sweep (seconds
        # of every process's start-up: docs/performance.md)
        zeros = partial(jax.tree.map, jnp.zeros_like)
        B = state.logdensity.shape[0]
        stats = jax.tree.map(lambda z: jnp.broadcast_to(z, (B,)), StepStats.zeros(state.logdensity.dtype))
        return state, Draws(zeros(chains.anchor), zeros(state.logdensity), stats, zeros(chains.tuning.step_size))

    def one_draw(state, i):
        return jax.lax.cond(i < count, advance, hold, state, i)

    state, draws = jax.lax.scan(one_draw, chains.state, jnp.arange(num_draws))
    return chains._replace(state=state), draws


# --- batched, device-split programs ------------------------------------------------------------------
def device_count(num_datasets: int, limit: Optional[int] = None) -> int:
    """How many local devices a shard of ``num_datasets`` datasets is split over: all of them (at
    most ``limit``), but never more than it has datasets (a device would hold only padding).

    On a CPU host ``sampler`` presents one device per core (``sampler/__init__.py``), so a shard's
    chains run as that many concurrent programs: XLA:CPU runs the sweep's small kernels one at a
    time, and a single program leaves the other cores mostly idle (measured: docs/performance.md)."""
    n = jax.local_device_count() if limit is None else min(limit, jax.local_device_count())
    return max(1, min(n, num_datasets))


def _split_over_devices(fn, num_batched: int, num_replicated: int, num_devices: int, out_specs=P("batch")):
    """Run ``fn`` (batched args first, then replicated scalars) over the first ``num_devices`` local
    devices; ``out_specs`` names each output's batch axis (by default its leading one).

    With one device this is plain ``jit``.  With several, the batch axis is split over a 1-D mesh with
    ``shard_map`` so that every device runs its own loops (a vmapped NUTS ``while_loop`` does not wait
    for the longest trajectory on another device).  B must be a multiple of ``num_devices``.
    """
    if num_devices == 1:
        return jax.jit(fn)
    mesh = Mesh(np.array(jax.local_devices()[:num_devices]), ("batch",))
    in_specs = (P("batch"),) * num_batched + (P(),) * num_replicated
    split = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    # Shardings fixed in the signature, not inferred from the arguments: one compiled program then
    # serves host arrays, restored checkpoints, another program's outputs and shape-only lowering
    # (``runner.init_chains``'s head start), where inferred ones made the first call compile the block
    # program a second time (measured: docs/performance.md).
    batched, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    return jax.jit(split, in_shardings=(batched,) * num_batched + (replicated,) * num_replicated,
                   out_shardings=jax.tree.map(lambda spec: NamedSharding(mesh, spec), out_specs,
                                              is_leaf=lambda x: isinstance(x, P)))


@lru_cache(maxsize=None)
def init_program(model: Model, kernel: kernels.Kernel, num_warmup: int, num_chains: int, num_devices: int = 1):
    """Compiled ``(keys, emissions, inputs, init_values) -> Chains``: initial values + warmup, split
    over ``num_devices`` (``device_count``).

    A cross-chain kernel adapts each dataset's ``num_chains`` consecutive rows together, so every
    device's part of B must hold whole datasets (``pad_to_devices(..., group=num_chains)``).
    """
    if not kernel.cross_chain:
        return _split_over_devices(jax.vmap(partial(_init_one, model, kernel, num_warmup)), 4, 0, num_devices)
    per_dataset = jax.vmap(partial(_init_dataset, model, kernel, num_warmup))

    def grouped(*args):
        by_dataset = lambda x: x.reshape((x.shape[0] // num_chains, num_chains) + x.shape[1:])
        by_chain = lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
        return jax.tree.map(by_chain, per_dataset(*jax.tree.map(by_dataset, args)))
    return _split_over_devices(grouped, 4, 0, num_devices)


@lru_cache(maxsize=None)
def sample_program(model: Model, kernel: kernels.Kernel, num_draws: int, num_devices: int = 1):
    """Compiled ``(keys, chains, emissions, inputs, start, count) -> (chains, draws)`` for a block of
    ``count <= num_draws`` draws, split over ``num_devices``: one program serves every block, the
    shorter last one included (its chains advance ``count`` draws; draw slots past ``count`` are
    zeros, for the caller to drop).

    ``draws`` leaves come out as (num_draws, B, ...), the order in which the loop over draws stacks
    them: (B, num_draws, ...) cost a transpose of the whole block on the device, ~3% of a block's
    time (docs/performance.md), and the store's layout needs a host copy either way.
    """
    return _split_over_devices(partial(_sample_block, model, kernel, num_draws), 4, 2, num_devices,
                               out_specs=(P("batch"), P(None, "batch")))


def pad_to_devices(tree, batch: int, group: int = 1, num_devices: int = 1):
    """Pad the leading axis of every leaf from ``batch`` (a multiple of ``group``) to a multiple of
    ``group`` x ``num_devices`` by repeating the last ``group`` rows (a whole dataset's chains;
    padded chains are real computations whose results are discarded)."""
    n = num_devices * group
    padded = -(-batch // n) * n
    if padded == batch:
        return tree
    reps = (padded - batch) // group
    return jax.tree.map(lambda x: np.concatenate([x] + [x[-group:]] * reps), tree)
