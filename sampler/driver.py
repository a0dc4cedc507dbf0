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


def execute(cfg: Config, *, workers: Optional[int] = None, address: Optional[str] = None,
            progress: bool = True) -> Path:
    """Sample every dataset of ``cfg`` (resuming an existing run dir).  Returns the run dir."""
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
        total = cfg.sampler.num_draws * ctx.data.num_datasets
        bar = tqdm(total=total, unit="draw", unit_scale=True, disable=not progress,
                   desc=("resuming " if resumed else "sampling ") + f"{ctx.data.num_datasets} datasets x "
                        f"{cfg.sampler.num_chains} chains ({ctx.algorithm})", dynamic_ncols=True)
        try:
            if not use_ray:
                for shard in ctx.shards:
                    n = shard.stop - shard.start
                    runner.run_shard(ctx, shard, on_draws=lambda k, n=n: bar.update(k * n))
            else:
                distributed.run_shards(ctx, max(workers, 1), bar)
        finally:
            bar.close()
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

