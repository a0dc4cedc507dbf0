"""The driver: validates, prepares the run dir, and runs every shard in-process or on Ray actors."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from sampler import runner
from sampler.config import Config
from sampler.runner import RunContext, Shard

log = logging.getLogger(__name__)
EVENTS = "events.jsonl"


def record_event(run_dir: Path, **event) -> None:
    """Append one JSON line to ``DIR/events.jsonl`` (shard failures and retries, for ``sampler status``)."""
    event["time"] = time.time()
    with open(Path(run_dir) / EVENTS, "a") as f:
        f.write(json.dumps(event) + "\n")


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
            self.done.update({p["shard"]: p["draws_done"] for p in shard_progress(ctx.run_dir)})
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

    def poll(self, run_dir: Path) -> None:
        """Update every shard from its checkpoints (used while Ray workers run the shards)."""
        for p in shard_progress(run_dir):
            self.set_shard(p["shard"], p["draws_done"])

    def close(self) -> None:
        self.bar.close()


def _run_in_process(ctx: RunContext, progress: Progress) -> None:
    """Every shard, one after the other, in this process."""
    for shard in ctx.shards:
        done = 0

        def on_draws(k: int) -> None:  # run_shard reports the draws it resumed from, then each block
            nonlocal done
            done += k
            progress.set_shard(shard.index, done)

        runner.run_shard(ctx, shard, on_draws=on_draws)


def execute(cfg: Config, *, workers: Optional[int] = None, address: Optional[str] = None,
            progress: bool = True) -> Path:
    """Sample every dataset of ``cfg`` (resuming an existing run dir).  Returns the run dir.

    ``workers = 0`` and no ``address``: in this process; otherwise on that many Ray actors (at least
    one), on an embedded local Ray or the cluster at ``address``.
    """
    run_dir = Path(cfg.run.dir)
    workers = cfg.run.workers if workers is None else workers
    use_ray = workers > 0 or address is not None
    if use_ray:  # before JAX starts its threads: Ray forks helper processes
        from sampler import distributed
        distributed.start_ray(address, workers)
    ctx = RunContext(cfg, run_dir)          # validates config and data: nothing written yet
    runner.check_run_dir(run_dir)
    with runner.run_lock(run_dir):
        resumed = runner.prepare_run_dir(ctx)
        tracker = Progress(ctx, resumed, enabled=progress)
        try:
            if use_ray:
                distributed.run_shards(ctx, max(workers, 1), tracker)
            else:
                _run_in_process(ctx, tracker)
        finally:
            tracker.close()
    return run_dir


def shard_progress(run_dir: Path) -> list[dict]:
    """Per shard: draws done, checkpoint steps, failures (from checkpoints and the event log)."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / runner.RUN_FILE).read_text())
    failures: dict[int, int] = {}
    events = run_dir / EVENTS
    if events.exists():
        for line in events.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("kind") == "shard_failed":
                failures[ev["shard"]] = failures.get(ev["shard"], 0) + 1
    out = []
    for s in info["shards"]:
        shard = Shard(**s)
        cdir = run_dir / "checkpoints" / f"shard-{shard.index:05d}"
        steps = sorted(int(p.name) for p in cdir.iterdir() if p.name.isdigit()) if cdir.exists() else []
        out.append({"shard": shard.index, "datasets": [shard.start, shard.stop],
                    "warmup_done": bool(steps), "draws_done": steps[-1] if steps else 0,
                    "checkpoints": steps, "failures": failures.get(shard.index, 0)})
    return out

