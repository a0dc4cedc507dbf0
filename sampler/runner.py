"""Run directories and the host loop: shards -> warmup -> blocks of draws -> store -> checkpoint.

Knows files, not Ray.  ``run_shard`` is the unit of work a Ray actor (or the in-process loop) calls.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from sampler import config as config_mod
from sampler.config import Config
from sampler.errors import UserError
from sampler.files import atomic_write

RUN_FILE = "run.json"
STORE = "samples.zarr"


@dataclass(frozen=True)
class Shard:
    """Datasets [start, stop) of a run; ``index`` names its checkpoints."""
    index: int
    start: int
    stop: int


def plan_shards(num_datasets: int, shard_size: int) -> list[Shard]:
    size = shard_size or num_datasets
    return [Shard(i, a, min(a + size, num_datasets)) for i, a in enumerate(range(0, num_datasets, size))]


def configure_jax(dtype: str) -> None:
    """Process-wide JAX settings for a run (call before any model is built): precision, and a
    persistent compilation cache (``$JAX_COMPILATION_CACHE_DIR``, default ``~/.cache/sampler/xla``)
    so that resuming or re-running a config does not pay the compile again."""
    import jax
    jax.config.update("jax_enable_x64", dtype == "float64")
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path.home() / ".cache" / "sampler" / "xla")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


class RunContext:
    """A validated config with its model, data and kernel: everything ``run_shard`` needs."""

    def __init__(self, cfg: Config, run_dir: Path):
        from sampler import data as data_mod
        from sampler.model import Model
        configure_jax(cfg.sampler.dtype)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        probe = Model(cfg.model.state_dim, cfg.model.emission_dim, cfg.model.input_dim,
                      tuple(cfg.model.frozen), cfg.model.kalman)
        self.data = data_mod.load(cfg, probe)
        self.model = Model(cfg.model.state_dim, cfg.model.emission_dim, cfg.model.input_dim,
                           tuple(cfg.model.frozen), cfg.model.kalman, self.data.partial_missing,
                           self.data.has_missing)
        if self.model.dim == 0:
            raise UserError("model.frozen: every leaf is frozen; nothing to sample")

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> "RunContext":
        """Rebuild the context of an existing run from ``DIR/config.toml`` (used by workers)."""
        run_dir = Path(run_dir)
        return cls(config_mod.load(run_dir / "config.toml"), run_dir)

    @property
    def algorithm(self) -> str:
        return self.cfg.resolved_algorithm()

    @cached_property
    def kernel(self):
        from sampler import kernels
        s = self.cfg.sampler
        return kernels.build(self.algorithm, num_integration_steps=s.num_integration_steps,
                             max_num_doublings=s.max_num_doublings,
                             target_acceptance_rate=s.target_acceptance_rate)

    @property
    def shards(self) -> list[Shard]:
        return plan_shards(self.data.num_datasets, self.shard_size)

    @property
    def shard_size(self) -> int:
        n = self.data.num_datasets
        return min(self.cfg.run.shard_size or n, n)

    @property
    def store_path(self) -> Path:
        return self.run_dir / STORE


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
    from sampler import store
    run_dir = ctx.run_dir
    fp = _fingerprint(ctx)
    run_file = run_dir / RUN_FILE
    if run_file.exists():
        old = json.loads(run_file.read_text())["fingerprint"]
        for key in sorted(set(old) | set(fp)):
            if key not in old and fp[key] == config_mod.field_default(key):
                continue  # a key added after this run dir was made, at its default: same results
            if old.get(key) != fp.get(key):
                what = "the data file's content" if key == "data.sha256" else key
                raise UserError(f"{run_dir}: cannot resume: {what} changed (was {old.get(key)!r}, now "
                                f"{fp.get(key)!r}); use a new --run-dir or restore the setting")
        # the same results, but maybe a moved data file or other workers: later commands read this
        atomic_write(run_dir / "config.toml", config_mod.to_toml(ctx.cfg))
        return True
    check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg, data = ctx.cfg, ctx.data
    tmp_store = run_dir / (STORE + ".tmp")
    shutil.rmtree(tmp_store, ignore_errors=True)
    store.create(tmp_store, ctx.model, num_chains=cfg.sampler.num_chains, num_draws=cfg.sampler.num_draws,
                 num_datasets=data.num_datasets, draws_per_chunk=min(cfg.run.checkpoint_every, cfg.sampler.num_draws),
                 datasets_per_chunk=ctx.shard_size, emissions=data.emissions, inputs=data.inputs,
                 has_sequences=data.has_sequences, center=data.center, scale=data.scale,
                 attrs={"sampler_algorithm": ctx.algorithm, "kalman": ctx.model.kalman_form,
                        "frozen": list(cfg.model.frozen),
                        "num_warmup": cfg.sampler.num_warmup, "seed": cfg.sampler.seed,
                        "dtype": cfg.sampler.dtype, "versions": _versions(),
                        "config": config_mod.to_toml(cfg)})
    os.replace(tmp_store, ctx.store_path)
    atomic_write(run_dir / "config.toml", config_mod.to_toml(cfg))
    (run_dir / "plots").mkdir(exist_ok=True)
    # run.json last: its presence marks a complete, resumable run dir
    atomic_write(run_file, json.dumps({"fingerprint": fp, "num_datasets": data.num_datasets,
                                         "shards": [s.__dict__ for s in ctx.shards],
                                         "algorithm": ctx.algorithm}, indent=1))
    return False


def check_run_dir(run_dir: Path) -> None:
    """Refuse a directory that exists, is not empty and is not a run dir (before writing anything)."""
    if (run_dir / RUN_FILE).exists() or not run_dir.exists():
        return
    if any(p.name != ".lock" for p in run_dir.iterdir()):
        raise UserError(f"{run_dir}: exists and is not a sampler run dir (no {RUN_FILE}); choose an empty or new dir")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on the run dir for one driver; released even if the process is killed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{run_dir}: another sampler process is running on this run dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


# --- one shard ---------------------------------------------------------------------------------------
def _shard_batch(ctx: RunContext, shard: Shard):
    """Batch arrays for a shard, padded to the full shard size (one compiled program for all shards)
    and to a multiple of the device count."""
    from sampler import engine
    C = ctx.cfg.sampler.num_chains
    n = shard.stop - shard.start
    ds = np.arange(shard.start, shard.start + ctx.shard_size)
    ds = np.minimum(ds, shard.stop - 1)  # padded datasets repeat the shard's last one
    idx = np.repeat(ds, C)
    dtype = np.float64 if ctx.cfg.sampler.dtype == "float64" else np.float32
    batch = engine.Batch(
        dataset=idx.astype(np.int32),
        chain=np.tile(np.arange(C), len(ds)).astype(np.int32),
        emissions=ctx.data.emissions[idx].astype(dtype),
        inputs=None if ctx.data.inputs is None else ctx.data.inputs[idx].astype(dtype),
        init_values={k: v[idx].astype(dtype) for k, v in ctx.data.init_values.items()})
    return engine.pad_to_devices(batch, len(idx), group=C), n * C


def _to_store_layout(x: np.ndarray, n: int, C: int) -> np.ndarray:
    """(B, K, ...) dataset-major batch -> (C, K, n, ...)."""
    x = np.asarray(x)[: n * C]
    x = x.reshape((n, C) + x.shape[1:])
    return np.moveaxis(x, 0, 2)


def _write_draws(ctx: RunContext, shard: Shard, start: int, draws) -> None:
    from sampler import store
    from sampler.model import LEAVES, get_leaf, store_name
    n, C = shard.stop - shard.start, ctx.cfg.sampler.num_chains
    params = {store_name(leaf): _to_store_layout(get_leaf(draws.params, leaf), n, C) for leaf in LEAVES}
    stats = {"lp": draws.lp, "acceptance_rate": draws.stats.acceptance_rate,
             "diverging": draws.stats.diverging, "n_steps": draws.stats.n_steps,
             "energy": draws.stats.energy, "step_size": draws.step_size}
    stats = {k: _to_store_layout(v, n, C) for k, v in stats.items()}
    store.write_block(ctx.store_path, start, shard.start, params, stats)


def run_shard(ctx: RunContext, shard: Shard, on_draws: Optional[Callable[[int], None]] = None) -> int:
    """Sample one shard to completion, resuming from its latest checkpoint.

    Each block of ``checkpoint_every`` draws is dispatched before the previous block is written, so
    the device computes while the host writes; a checkpoint is saved only after its draws are stored.

    Returns the number of draws done (= num_draws).
    """
    import jax
    from sampler import engine
    from sampler.checkpoint import ShardCheckpoints, shard_dir

    cfg = ctx.cfg.sampler
    batch, _ = _shard_batch(ctx, shard)
    keys = engine.chain_keys(cfg.seed, batch.dataset, batch.chain)
    ckpt = ShardCheckpoints(shard_dir(ctx.run_dir, shard.index), ctx.cfg.run.keep_checkpoints)
    try:
        init = engine.init_program(ctx.model, ctx.kernel, cfg.num_warmup, cfg.initial_step_size, cfg.num_chains)
        template = jax.eval_shape(init, keys, batch.emissions, batch.inputs, batch.init_values)
        template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
        restored = ckpt.restore_latest(template)
        if restored is None:
            chains = init(keys, batch.emissions, batch.inputs, batch.init_values)
            ckpt.save(0, chains)
            done = 0
        else:
            done, chains = restored
        if on_draws and done:
            on_draws(done)
        pending = None
        while done < cfg.num_draws:
            k = min(ctx.cfg.run.checkpoint_every, cfg.num_draws - done)
            program = engine.sample_program(ctx.model, ctx.kernel, k)
            chains, draws = program(keys, chains, batch.emissions, batch.inputs, np.int32(done))
            if pending is not None:
                _finish_block(ctx, shard, ckpt, *pending, on_draws)
            pending = (done, draws, chains)
            done += k
        if pending is not None:
            _finish_block(ctx, shard, ckpt, *pending, on_draws)
        return done
    finally:
        ckpt.close()


def _finish_block(ctx, shard, ckpt, start, draws, chains, on_draws):
    draws = jax_to_numpy(draws)
    _write_draws(ctx, shard, start, draws)
    k = draws.lp.shape[1]
    ckpt.save(start + k, chains)
    if on_draws:
        on_draws(k)


def jax_to_numpy(tree):
    import jax
    return jax.tree.map(np.asarray, tree)
