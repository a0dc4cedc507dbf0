"""Scheduling at scale (issue: 1,000 shards over 2 workers): the driver's queue with Ray actors that
only sleep, one of them 100x slower than the other (a straggler).  Every shard runs exactly once, the
fast worker takes most of them (a static split would wait for the straggler's half), the driver polls
only running shards' checkpoints, and its memory stays flat."""
import time

import numpy as np
import psutil
import pytest
import ray

from helpers import simulate, write_config

NUM_SHARDS, NUM_DRAWS = 1000, 30
SLOW, FAST = 0.5, 0.005  # seconds per shard


@ray.remote(num_cpus=0)
class Ledger:
    """Hands out worker ranks and records which worker ran which shard."""

    def __init__(self):
        self.workers, self.ran = 0, []

    def rank(self) -> int:
        self.workers += 1
        return self.workers - 1

    def record(self, rank: int, shard: int) -> None:
        self.ran.append((rank, shard))

    def runs(self) -> list:
        return self.ran


@ray.remote
class SleepingWorker:
    """ShardWorker's interface; the first one started is the straggler."""

    def __init__(self, cfg, run_dir):
        self.ledger = ray.get_actor("ledger")
        self.rank = ray.get(self.ledger.rank.remote())

    def run(self, shard) -> int:
        time.sleep(SLOW if self.rank == 0 else FAST)
        ray.get(self.ledger.record.remote(self.rank, shard.index))
        return NUM_DRAWS


class RecordingProgress:
    """The driver's Progress interface: what was set, what was polled, the driver's RSS."""

    def __init__(self):
        self.done, self.polled, self.rss = {}, [], []

    def set_shard(self, index: int, draws_done: int) -> None:
        self.done[index] = draws_done

    def poll(self, run_dir, shards) -> None:
        self.polled.append(list(shards))
        self.rss.append(psutil.Process().memory_info().rss)


@pytest.mark.timeout(300)
def test_thousand_shards_two_workers_one_straggler(tmp_path):
    from sampler.execution import distributed
    from sampler.execution.runner import RunContext
    from sampler.storage import config
    np.savez(tmp_path / "d.npz", emissions=simulate(NUM_SHARDS, T=10)["emissions"])
    cfg = config.load(write_config(tmp_path / "c.toml", "d.npz", sampler={"num_draws": NUM_DRAWS},
                                   run={"shard_size": 1}))
    ctx = RunContext(cfg, cfg.run.dir)
    assert len(ctx.shards) == NUM_SHARDS
    # its own Ray: an earlier test in this process may have left the embedded one running (an
    # in-process CLI run with workers, tests/helpers.py: cli_here)
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ledger = Ledger.options(name="ledger").remote()
        progress = RecordingProgress()
        start = time.monotonic()
        distributed.run_shards(ctx, 2, progress, actor=SleepingWorker)
        wall = time.monotonic() - start
        runs = ray.get(ledger.runs.remote())
    finally:
        ray.shutdown()
    assert sorted(shard for _, shard in runs) == list(range(NUM_SHARDS))  # each exactly once
    assert progress.done == {i: NUM_DRAWS for i in range(NUM_SHARDS)}
    slow_share = sum(rank == 0 for rank, _ in runs) / NUM_SHARDS
    static_split = NUM_SHARDS / 2 * SLOW  # seconds, had each worker been given half the shards
    assert slow_share < 0.25, slow_share
    assert wall < static_split / 2, (wall, static_split)
    assert all(len(p) <= 2 for p in progress.polled)  # only the running shards, never all 1,000
    assert len(progress.rss) >= 3
    growth = max(progress.rss[1:]) - min(progress.rss[1:])
    assert growth < 64 * 2**20, growth
