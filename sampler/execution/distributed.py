"""Ray layer: one actor per worker runs whole shards through ``runner.run_shard``; the driver keeps a
queue of shards (faster workers take more), replaces a worker that dies and re-queues its shard, which
resumes from the shard's last checkpoint (so no draw is lost or duplicated)."""
from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Optional

import ray

from sampler.errors import UserError
from sampler.execution import runner
from sampler.execution.runner import RunContext
from sampler.execution.stop import StopRequest
from sampler.storage.config import Config
from sampler.storage.rundir import Shard

log = logging.getLogger(__name__)
MAX_SHARD_RETRIES = 3
GPUS_ENV = "SAMPLER_WORKER_GPUS"


@ray.remote
class ShardWorker:
    """Holds a run's context (model, data, compiled programs) and samples the shards it is given."""

    def __init__(self, cfg: Config, run_dir: str):
        # JAX hygiene: do not grab all GPU memory (several actors may share a host); Ray sets
        # CUDA_VISIBLE_DEVICES to the GPU it assigned, so JAX sees only that one
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        # the driver's config, not DIR/config.toml: a resumed run may read its data from a new path;
        # an actor holds one CPU (``_new_worker``), so on a CPU node its shards run on one device
        self.ctx = RunContext(cfg, run_dir, max_devices=1)

    def run(self, shard: Shard) -> int:
        return runner.run_shard(self.ctx, shard)


def start_ray(address: Optional[str], workers: int) -> None:
    """Join the cluster at ``address`` (or at ``$RAY_ADDRESS``, which Ray sets inside a Ray Job), or
    start an embedded local Ray (dashboard off)."""
    if ray.is_initialized():
        return
    # Ray fork+execs its helpers; JAX's at-fork warning is about forks that keep running Python
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    # Ray >= 2.5x enables token auth on local clusters with a warning line on stderr; keep stderr for
    # our own messages (bad input must read as one line)
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    worker_gpus()  # a bad $SAMPLER_WORKER_GPUS fails here, before the run dir is touched


def worker_gpus() -> float:
    """GPUs per actor: ``$SAMPLER_WORKER_GPUS`` when set (e.g. 1 on an autoscaling cluster whose GPU
    nodes are not up yet, so that actors wait for them instead of running on CPU), else 1 when the
    cluster has GPUs now, else 0."""
    value = os.environ.get(GPUS_ENV)
    if value is None:
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    try:
        gpus = float(value)
    except ValueError:
        gpus = -1.0
    if gpus < 0:
        raise UserError(f"${GPUS_ENV}={value!r}: expected the number of GPUs per worker, e.g. 1")
    return gpus


def _new_worker(actor, ctx: RunContext, gpus: float):
    """A fresh actor with one CPU and ``gpus`` GPUs, never restarted by Ray (the queue replaces it and
    re-queues its shard)."""
    return actor.options(num_gpus=gpus, num_cpus=1, max_restarts=0).remote(ctx.cfg, str(ctx.run_dir.path))


def run_shards(ctx: RunContext, workers: int, progress, stop: Optional[StopRequest] = None,
               actor=None) -> None:
    """Run every shard of ``ctx`` on ``workers`` Ray actors (Ray already started), updating
    ``progress`` (the driver's ``Progress``) from the running shards' checkpoints, at most once a
    second, so the driver's work per second is bounded by the workers, not the shards.  ``actor``:
    the actor class (``ShardWorker``; a scheduling test passes one that only sleeps).

    Workers take shards from one queue as they finish, so a slow worker (a straggler) holds up only
    the shard it is running.
    A worker that dies (process killed, node lost) is replaced by a new actor and its shard goes back
    to the front of the queue; the shard resumes from its last checkpoint.  A shard goes only to an
    actor that is up: after a node is lost its replacement may wait for resources that left with
    the node (or for the autoscaler), and meanwhile the surviving workers take the queue.  Each
    failure is appended to ``DIR/events.jsonl`` (``sampler status`` counts them); a shard that fails
    more than ``MAX_SHARD_RETRIES`` times stops the run.  When ``stop`` is set (a signal to the
    driver) every actor is killed, its block in flight dropped, and ``Stopped`` raised: each shard
    resumes from its last checkpoint next time.
    """
    gpus = worker_gpus()
    if gpus and GPUS_ENV not in os.environ:  # an actor waiting for a GPU that is not there would hold its shard
        fit = int(ray.cluster_resources()["GPU"] // gpus)
        if workers > fit:
            log.warning("%d workers requested but the cluster has %d GPUs; using %d", workers, fit, fit)
            workers = fit
    pool = _WorkerPool(ctx, gpus, actor or ShardWorker)
    queue = list(ctx.shards)
    retries: dict[int, int] = {}
    for _ in range(min(workers, len(queue))):
        pool.start()
    running: dict = {}  # object ref -> (worker, shard)
    polled = 0.0
    try:
        while queue or running:
            if stop is not None and stop.signum is not None:
                pool.kill_all([w for w, _ in running.values()])
                stop.check()
            while queue and pool.idle:
                worker, shard = pool.idle.pop(), queue.pop(0)
                running[worker.run.remote(shard)] = (worker, shard)
            ready, _ = ray.wait(list(running) + list(pool.starting), num_returns=1, timeout=1.0)
            for ref in ready:
                if pool.started(ref):
                    continue
                worker, shard = running.pop(ref)
                try:
                    progress.set_shard(shard.index, ray.get(ref))
                    pool.idle.append(worker)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                    _record_failure(ctx.run_dir, shard, err, retries)
                    ray.kill(worker, no_restart=True)
                    pool.start()
                    queue.insert(0, shard)
            if time.monotonic() - polled >= 1.0:
                progress.poll(ctx.run_dir, [shard.index for _, shard in running.values()])
                polled = time.monotonic()
    finally:
        pool.kill_all([])  # replacements still waiting for a node, and the idle workers


def _record_failure(run_dir, shard: Shard, err: BaseException, retries: dict[int, int]) -> None:
    """Count a lost worker's shard failure in the event log; give up past ``MAX_SHARD_RETRIES``."""
    retries[shard.index] = retries.get(shard.index, 0) + 1
    resume_from = run_dir.draws_done(shard.index)
    run_dir.record_event(kind="shard_failed", shard=shard.index, error=type(err).__name__,
                         retry=retries[shard.index], resume_from=resume_from)
    if retries[shard.index] > MAX_SHARD_RETRIES:
        raise RuntimeError(f"shard {shard.index} failed {retries[shard.index]} times; giving up") from err
    log.warning("worker died on shard %d (%s); replacing it and resuming the shard from draw %d",
                shard.index, type(err).__name__, resume_from)


class _WorkerPool:
    """The run's actors: ``starting`` (ready ref -> actor not yet up) and ``idle`` (up, no shard)."""

    def __init__(self, ctx: RunContext, gpus: float, actor):
        self._ctx, self._gpus, self._actor = ctx, gpus, actor
        self.starting: dict = {}
        self.idle: list = []
        self._failed_starts = 0

    def start(self) -> None:
        worker = _new_worker(self._actor, self._ctx, self._gpus)
        self.starting[worker.__ray_ready__.remote()] = worker

    def started(self, ref) -> bool:
        """Whether ``ref`` is a start-up; an actor that is up becomes idle, one that died starting
        (its node lost) is started again, at most ``MAX_SHARD_RETRIES`` times in a run."""
        worker = self.starting.pop(ref, None)
        if worker is None:
            return False
        try:
            ray.get(ref)
            self.idle.append(worker)
        except ray.exceptions.RayActorError as err:
            self._failed_starts += 1
            if self._failed_starts > MAX_SHARD_RETRIES:
                raise RuntimeError(f"{self._failed_starts} workers failed to start; giving up") from err
            log.warning("a worker failed to start (%s); starting another", type(err).__name__)
            self.start()
        return True

    def kill_all(self, busy: list) -> None:
        for worker in busy + self.idle + list(self.starting.values()):
            ray.kill(worker, no_restart=True)
        self.idle, self.starting = [], {}
