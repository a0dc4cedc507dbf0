"""The host loop of one shard: warmup -> blocks of draws -> store -> checkpoint.

Knows files, not Ray.  ``run_shard`` is the unit of work a Ray actor (or the in-process loop) calls;
``iter_blocks`` is the shard's sampling loop on its own, which the benchmarks drive without a store.
"""
from __future__ import annotations

import itertools
import json
import os
import threading
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import jax
import numpy as np

from sampler.core import engine, kernels, models
from sampler.core.precision import configure_jax, numpy_dtype
from sampler.execution.stop import StopRequest
from sampler.errors import UserError
from sampler.storage import config as config_mod
from sampler.storage import data as data_mod
from sampler.storage import store
from sampler.storage.checkpoint import ShardCheckpoints
from sampler.storage.config import Config
from sampler.storage.files import atomic_write
from sampler.storage.location import remove_tree
from sampler.storage.rundir import RunDir, Shard, plan_shards


class RunContext:
    """A validated config with its model, data and kernel: everything ``run_shard`` needs."""

    def __init__(self, cfg: Config, run_dir: Path, max_devices: Optional[int] = None):
        configure_jax(cfg.sampler.dtype)
        self.cfg = cfg
        self.max_devices = max_devices
        self.run_dir = RunDir(run_dir)
        self.data = data_mod.load(cfg)
        self.model = models.from_config(cfg.model, self.data.emissions)
        if self.model.dim == 0:
            raise UserError("model.frozen: every leaf is frozen; nothing to sample")

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> "RunContext":
        """Rebuild the context of an existing run from ``DIR/config.toml`` (used by workers)."""
        rd = RunDir(run_dir)
        return cls(rd.config(), rd.path)

    @property
    def algorithm(self) -> str:
        return self.cfg.resolved_algorithm()

    @cached_property
    def kernel(self) -> kernels.Kernel:
        s = self.cfg.sampler
        return kernels.build(self.algorithm, kernels.KernelSettings(
            num_integration_steps=s.num_integration_steps, max_num_doublings=s.max_num_doublings,
            target_acceptance_rate=s.target_acceptance_rate, initial_step_size=s.initial_step_size))

    @property
    def dtype(self) -> type:
        return numpy_dtype(self.cfg.sampler.dtype)

    @property
    def shards(self) -> list[Shard]:
        return plan_shards(self.data.num_datasets, self.shard_size)

    @property
    def shard_size(self) -> int:
        n = self.data.num_datasets
        return min(self.cfg.run.shard_size or n, n)

    @property
    def num_devices(self) -> int:
        """Local devices a shard is split over (``engine.device_count``; at most ``max_devices``)."""
        return engine.device_count(self.shard_size, self.max_devices)


# --- run directory -----------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("sampler", "jax", "jaxlib", "dynamax", "blackjax", "orbax-checkpoint", "zarr", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _fingerprint(ctx: RunContext) -> dict:
    fp = config_mod.result_fingerprint(ctx.cfg)
    fp.pop("data.path", None)  # the content hash below is what matters, not where the file lives
    fp["data.sha256"] = ctx.data.sha256
    return fp


def prepare_run_dir(ctx: RunContext) -> bool:
    """Create the run dir (config, store), or check that an existing one may be resumed.

    Returns True when resuming.  Raises ``UserError`` (and writes nothing) when the existing run's
    result-changing settings differ, naming the first differing key.
    """
    rd, cfg, data = ctx.run_dir, ctx.cfg, ctx.data
    fp = _fingerprint(ctx)
    if rd.is_run_dir():
        rd.check_resumable(fp)
        # a larger num_draws extends the run: the store's draw axis first, then run.json; both are
        # idempotent and done on every resume, so an interrupted extension is finished (or, resumed
        # with the old number, undone: no draw past it was written) by the next run
        store.set_num_draws(rd.store, cfg.sampler.num_draws, config_mod.to_toml(cfg))
        rd.record_fingerprint(fp)
        # the same results, but maybe a moved data file or other workers: later commands read this
        atomic_write(rd.config_file, config_mod.to_toml(cfg))
        return True
    rd.check_usable()
    rd.path.mkdir(parents=True, exist_ok=True)
    # locally the store is built beside the run dir's and renamed into place; an object store has
    # no rename, so it is built in place (an interrupted creation is overwritten by the next run)
    new_store = rd.store if rd.is_remote else rd.scratch(RunDir.STORE + ".tmp")
    remove_tree(new_store)
    store.create(new_store, ctx.model, num_chains=cfg.sampler.num_chains, num_draws=cfg.sampler.num_draws,
                 num_datasets=data.num_datasets, draws_per_chunk=min(cfg.run.checkpoint_every, cfg.sampler.num_draws),
                 datasets_per_chunk=ctx.shard_size, emissions=data.emissions, inputs=data.inputs,
                 has_sequences=data.has_sequences, center=data.center, scale=data.scale, labels=data.labels,
                 attrs={"sampler_algorithm": ctx.algorithm, "kalman": ctx.model.kalman_form,
                        "identified": list(ctx.model.identified),
                        "frozen": list(cfg.model.frozen),
                        "num_warmup": cfg.sampler.num_warmup, "seed": cfg.sampler.seed,
                        "dtype": cfg.sampler.dtype, "versions": _versions(),
                        "config": config_mod.to_toml(cfg)})
    if new_store != rd.store:
        remove_tree(rd.store)  # left by a creation interrupted after its rename (no run.json yet)
        os.replace(new_store, rd.store)
    atomic_write(rd.config_file, config_mod.to_toml(cfg))
    rd.plots.mkdir(exist_ok=True)
    # run.json last: its presence marks a complete, resumable run dir
    atomic_write(rd.run_file, json.dumps({"fingerprint": fp, "num_datasets": data.num_datasets,
                                          "shards": [s.__dict__ for s in ctx.shards],
                                          "algorithm": ctx.algorithm}, indent=1))
    return False


# --- one shard ---------------------------------------------------------------------------------------
class ShardInputs(NamedTuple):
    """What the compiled programs of one shard take: the padded batch, its keys, the real chain count."""
    batch: engine.Batch
    keys: jax.Array
    num_real: int          # leading rows of the batch that are the shard's own (dataset, chain) pairs


class Block(NamedTuple):
    """One block of draws of a shard: its first draw index, its number of draws, the draws (device
    arrays, leading axes (block size, B): the slots past ``count`` are padding) and the chains after it."""
    start: int
    count: int
    draws: engine.Draws
    chains: engine.Chains

    def host_draws(self) -> engine.Draws:
        """The block's ``count`` draws as numpy arrays (count, B, ...)."""
        return jax.tree.map(lambda x: np.asarray(x)[:self.count], self.draws)


def shard_inputs(ctx: RunContext, shard: Shard) -> ShardInputs:
    """Batch arrays for a shard, padded to the full shard size (one compiled program for all shards)
    and to a multiple of the device count."""
    C = ctx.cfg.sampler.num_chains
    ds = np.arange(shard.start, shard.start + ctx.shard_size)
    ds = np.minimum(ds, shard.stop - 1)  # padded datasets repeat the shard's last one
    idx = np.repeat(ds, C)
    dtype = ctx.dtype
    batch = engine.Batch(
        dataset=idx.astype(np.int32),
        chain=np.tile(np.arange(C), len(ds)).astype(np.int32),
        emissions=ctx.data.emissions[idx].astype(dtype),
        inputs=None if ctx.data.inputs is None else ctx.data.inputs[idx].astype(dtype),
        init_values={k: v[idx].astype(dtype) for k, v in ctx.data.init_values.items()})
    batch = engine.pad_to_devices(batch, len(idx), group=C, num_devices=ctx.num_devices)
    return ShardInputs(batch, engine.chain_keys(ctx.cfg.sampler.seed, batch.dataset, batch.chain),
                       (shard.stop - shard.start) * C)


def init_program(ctx: RunContext):
    """The compiled initial values + warmup of a run (no sweeps when ``burns_in_with_steps``: its
    burn-in runs on the block program)."""
    s = ctx.cfg.sampler
    num_warmup = 0 if kernels.burns_in_with_steps(ctx.kernel, ctx.model) else s.num_warmup
    return engine.init_program(ctx.model, ctx.kernel, num_warmup, s.num_chains, ctx.num_devices)


def init_chains(ctx: RunContext, inputs: ShardInputs) -> engine.Chains:
    """Initial values and warmup of every chain of a shard (device arrays).

    The block program (``iter_blocks``) compiles meanwhile in a background thread: XLA compiles
    without the GIL, so its compile overlaps the warmup program's compile and run instead of
    following them (measured: docs/performance.md), and ``iter_blocks`` finds it in JAX's cache.
    The warmup program is traced only once the block program is lowered: tracing holds the GIL, so
    two traces at once both finish late, and the block program's compile is the longer one.
    Where the warmup is burn-in (Gibbs on the general LG-SSM), its ``num_warmup`` sweeps then run
    on that block program under each chain's warmup keys, their draws dropped: the sweep is compiled
    once per run instead of once in each program (docs/performance.md, "Start-up")."""
    b = inputs.batch
    traced = threading.Event()
    ahead = threading.Thread(target=_compile_block_program, args=(ctx, inputs, traced), daemon=True)
    ahead.start()
    traced.wait()
    try:
        chains = init_program(ctx)(inputs.keys, b.emissions, b.inputs, b.init_values)
    finally:
        ahead.join()
    if kernels.burns_in_with_steps(ctx.kernel, ctx.model):
        burn_in = inputs._replace(keys=engine.burn_in_keys(inputs.keys))
        for block in iter_blocks(ctx, burn_in, chains, total=ctx.cfg.sampler.num_warmup, overlap=False):
            chains = block.chains
    return chains


def _compile_block_program(ctx: RunContext, inputs: ShardInputs, traced: threading.Event) -> None:
    """Lower the block program, set ``traced`` (also on failure), then compile it.  Any failure is
    dropped: this is only a head start, and the program's own first call reports it."""
    b = inputs.batch
    try:
        chains = jax.eval_shape(init_program(ctx), inputs.keys, b.emissions, b.inputs, b.init_values)
        lowered = _block_program(ctx).lower(inputs.keys, chains, b.emissions, b.inputs, np.int32(0), np.int32(0))
    except Exception:  # noqa: BLE001
        return
    finally:
        traced.set()
    try:
        lowered.compile()
    except Exception:  # noqa: BLE001
        pass


def _block_program(ctx: RunContext):
    """The one compiled program of every block (the last, shorter one included)."""
    size = min(ctx.cfg.run.checkpoint_every, ctx.cfg.sampler.num_draws)
    return engine.sample_program(ctx.model, ctx.kernel, size, ctx.num_devices)


def chains_template(ctx: RunContext, inputs: ShardInputs) -> engine.Chains:
    """Zeros shaped like ``init_chains``'s result (what a checkpoint is restored into)."""
    b = inputs.batch
    shapes = jax.eval_shape(init_program(ctx), inputs.keys, b.emissions, b.inputs, b.init_values)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def iter_blocks(ctx: RunContext, inputs: ShardInputs, chains: engine.Chains, start: int = 0, *,
                total: Optional[int] = None, overlap: bool = True) -> Iterator[Block]:
    """Blocks of ``run.checkpoint_every`` draws (the last one shorter) from draw ``start`` to
    ``total`` (default ``sampler.num_draws``), continuing ``chains``.

    With ``overlap`` a block is yielded only once the next one is dispatched, so the device computes
    while the caller writes; without, each block is yielded as soon as it is dispatched.
    """
    b = inputs.batch
    total = ctx.cfg.sampler.num_draws if total is None else total
    size = min(ctx.cfg.run.checkpoint_every, ctx.cfg.sampler.num_draws)  # the block program's
    program = _block_program(ctx)
    pending, done = None, start
    while done < total:
        k = min(size, total - done)
        chains, draws = program(inputs.keys, chains, b.emissions, b.inputs, np.int32(done), np.int32(k))
        if pending is not None:
            yield pending
        pending = Block(done, k, draws, chains)
        if not overlap:
            yield pending
            pending = None
        done += k
    if pending is not None:
        yield pending


def to_store_layout(x, n: int, C: int) -> np.ndarray:
    """(K, B, ...) draws of dataset-major batch rows -> (C, K, n, ...) for the n real datasets."""
    x = np.asarray(x)[:, : n * C]
    x = x.reshape(x.shape[:1] + (n, C) + x.shape[2:])
    return np.moveaxis(x, 2, 0)


def _write_draws(ctx: RunContext, shard: Shard, start: int, draws: engine.Draws,
                 writer: store.BlockWriter) -> None:
    n, C = shard.stop - shard.start, ctx.cfg.sampler.num_chains
    params = {k: to_store_layout(v, n, C) for k, v in ctx.model.variable_values(draws.params).items()}
    stats = {"lp": draws.lp, "acceptance_rate": draws.stats.acceptance_rate,
             "diverging": draws.stats.diverging, "n_steps": draws.stats.n_steps,
             "energy": draws.stats.energy, "step_size": draws.step_size}
    stats = {k: to_store_layout(v, n, C) for k, v in stats.items()}
    writer.write(start, shard.start, params, stats)


def run_shard(ctx: RunContext, shard: Shard, on_draws: Optional[Callable[[int], None]] = None,
              stop: Optional[StopRequest] = None) -> int:
    """Sample one shard to completion, resuming from its latest checkpoint.

    Each block is written while the next one computes (``iter_blocks``); a checkpoint is saved only
    after its draws are stored.  ``on_draws(k)`` is told the draws resumed from, then each block's.
    ``stop`` is checked after each checkpoint (``Stopped`` is raised there: the block in flight is
    dropped, everything before it kept).

    Returns the number of draws done (= num_draws).
    """
    inputs = shard_inputs(ctx, shard)
    ckpt = ShardCheckpoints(ctx.run_dir.checkpoints(shard.index), ctx.cfg.run.keep_checkpoints)
    try:
        restored = ckpt.restore_latest(chains_template(ctx, inputs))
        done, chains = (0, init_chains(ctx, inputs)) if restored is None else restored
        if on_draws and done:
            on_draws(done)
        writer = store.BlockWriter(ctx.run_dir.store)
        blocks = iter_blocks(ctx, inputs, chains, done)
        if restored is None:
            # step 0 (warmup done, no draws) is saved once the first blocks are dispatched: the
            # device samples them meanwhile instead of idling through the save
            blocks = itertools.chain([next(blocks)], blocks)
            ckpt.save(0, chains)
        check_stop = stop.check if stop is not None else (lambda: None)
        check_stop()  # a stop during the warmup ends here, the warmup checkpointed
        for block in blocks:
            _write_draws(ctx, shard, block.start, block.host_draws(), writer)
            ckpt.save(block.start + block.count, block.chains)
            done = block.start + block.count
            if on_draws:
                on_draws(block.count)
            check_stop()
        return done
    finally:
        ckpt.close()
