"""The driver: validates, prepares the run dir, and runs every shard in-process or on Ray actors."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional

from tqdm import tqdm

from sampler.execution import runner
from sampler.execution.runner import RunContext
from sampler.execution.stop import StopRequest, stop_on_signals
from sampler.storage.config import Config
from sampler.storage.rundir import RunDir

log = logging.getLogger(__name__)


class Progress:
    """One progress bar over every shard of a run: dataset-draws done / total, draws/s and ETA.

    Draws already done when a run resumes are the bar's starting value, not progress of this
    session, so the rate and ETA measure only the sampling done now.  ``set_shard`` takes the
    draws a shard has done so far (from a callback or its checkpoints) and only moves forward.
    """

    def __init__(self, ctx: RunContext, resumed: bool, enabled: bool = True):
        self.sizes = {s.index: s.stop - s.start for s in ctx.shards}
        self.done = {i: 0 for i in self.sizes}
        if resumed:
            self.done.update({p["shard"]: p["draws_done"] for p in ctx.run_dir.shard_progress()})
        cfg = ctx.cfg
        self.bar = tqdm(total=cfg.sampler.num_draws * ctx.data.num_datasets,
                        initial=sum(d * self.sizes[i] for i, d in self.done.items()),
                        unit="draw", unit_scale=True, disable=not enabled, dynamic_ncols=True,
                        desc=("resuming " if resumed else "sampling ") + f"{ctx.data.num_datasets} datasets x "
                             f"{cfg.sampler.num_chains} chains ({ctx.algorithm})")

    def set_shard(self, index: int, draws_done: int) -> None:
        """Shard ``index`` has ``draws_done`` draws in the store."""
        if draws_done > self.done[index]:
            self.bar.update((draws_done - self.done[index]) * self.sizes[index])
            self.done[index] = draws_done

    def poll(self, run_dir: RunDir, shards: Iterable[int]) -> None:
        """Update the given (running) shards from their checkpoints (used while Ray workers run them)."""
        for index in shards:
            self.set_shard(index, run_dir.draws_done(index))

    def close(self) -> None:
        self.bar.close()


def _run_in_process(ctx: RunContext, progress: Progress, stop: Optional[StopRequest] = None) -> None:
    """Every shard, one after the other, in this process."""
    for shard in ctx.shards:
        done = 0

        def on_draws(k: int) -> None:  # run_shard reports the draws it resumed from, then each block
            nonlocal done
            done += k
            progress.set_shard(shard.index, done)

        runner.run_shard(ctx, shard, on_draws=on_draws, stop=stop)


def start_ray_if_requested(workers: int, address: Optional[str]) -> bool:
    """Start or join Ray when the run uses actors (``workers > 0`` or an ``address``); returns whether
    it does.  Call before JAX starts its threads: Ray forks helper processes."""
    if workers <= 0 and address is None:
        return False
    # imported here, not at the top: importing Ray costs seconds, and in-process runs never need it
    from sampler.execution import distributed
    distributed.start_ray(address, workers)
    return True


def execute(cfg: Config, *, workers: Optional[int] = None, address: Optional[str] = None,
            progress: bool = True) -> Path:
    """Sample every dataset of ``cfg`` (resuming an existing run dir).  Returns the run dir.

    ``workers = 0`` and no ``address``: in this process; otherwise on that many Ray actors (at least
    one), on an embedded local Ray or the cluster at ``address``.  SIGTERM / SIGINT stop it at the
    next block boundary with ``stop.Stopped`` (``sampler.execution.stop``).
    """
    workers = cfg.run.workers if workers is None else workers
    use_ray = start_ray_if_requested(workers, address)
    ctx = RunContext(cfg, cfg.run.dir)   # validates config and data: nothing written yet
    run_dir = ctx.run_dir
    run_dir.check_usable()
    with run_dir.lock(), stop_on_signals() as stop:
        resumed = runner.prepare_run_dir(ctx)
        tracker = Progress(ctx, resumed, enabled=progress)
        try:
            if use_ray:
                from sampler.execution import distributed
                distributed.run_shards(ctx, max(workers, 1), tracker, stop)
            else:
                _run_in_process(ctx, tracker, stop)
        finally:
            tracker.close()
    return run_dir.path

