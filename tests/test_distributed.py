"""Ray workers: a worker process killed mid-shard is replaced and its shard resumes from its last
checkpoint, then SIGTERM stops the driver and its workers (the resumed store equals the uninterrupted
run); the aggregated progress bar over resumed runs; submit's and run's bad-input lines.

Two Ray nodes on this machine: a head and a second raylet joined to it (loopback only, free ports,
Ray's token authentication on), one CPU each, so the two `ShardWorker` actors of a 2-worker run land
one on each node.  `sampler submit` runs a job over both; `sampler run --address` loses the second
node (its whole process tree, SIGKILL) mid-run and completes on the head with the store bitwise equal
to the in-process run.  Both nodes are stopped through their own pids afterwards."""
import json
import shutil
import signal
import tempfile
import time

import numpy as np
import psutil
import pytest

from helpers import (assert_same_draws, busy_workers, cli_here, cli_process, finish, read_store, shard_steps,
                     sharded_problem, wait_while_running)
from ray_nodes import free_port, kill_node, ray_env, start_head, start_worker_node, stop_node, wait_for_nodes

NUM_DRAWS = 300


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """3 shards of 2 datasets, and the in-process reference run."""
    return sharded_problem(tmp_path_factory.mktemp("distributed"), NUM_DRAWS)


@pytest.mark.timeout(600)
def test_killed_worker_is_replaced_then_sigterm_stops_driver_and_workers(problem):
    """A Ray worker process SIGKILLed mid-shard is replaced and its shard re-queued; then, with a shard
    under way, SIGTERM to the driver: exit 143 within 30 s with one line saying how to resume,
    no traceback, every actor process gone.  The re-run (in-process: the same draws) ends bitwise
    equal to the reference, with the one failure in the event log and in `sampler status`."""
    root, cfg = problem
    run_dir = root / "worker_killed"
    with cli_process("run", cfg, "--run-dir", run_dir, "--workers", "2", cwd=root) as proc:
        def both_past_20():  # the first two shards, one per worker
            steps = shard_steps(run_dir)
            return min(steps.get(0, 0), steps.get(1, 0)) >= 20 and busy_workers(proc.pid)
        wait_while_running(proc, both_past_20)
        busy_workers(proc.pid)[0].send_signal(signal.SIGKILL)
        # the failure recorded and the shards handed out again; a shard is under way
        wait_while_running(proc, lambda: (run_dir / "events.jsonl").exists() and busy_workers(proc.pid))
        workers = busy_workers(proc.pid, idle_too=True)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = finish(proc, 120)
    assert time.time() - sent < 30
    assert proc.returncode == 143, err
    assert "worker died on shard" in err
    lines = [line for line in err.strip().splitlines() if line.startswith("sampler:")]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "resume" in lines[0], err
    assert "Traceback" not in err
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, alive
    assert min(shard_steps(run_dir).values(), default=0) < NUM_DRAWS
    res = cli_here("run", cfg, "--run-dir", run_dir, "--workers", "0", cwd=root)
    assert res.returncode == 0, res.stderr
    assert_same_draws(root / "reference", run_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and events[0]["kind"] == "shard_failed", events
    assert events[0]["shard"] in (0, 1) and events[0]["resume_from"] >= 20
    status = json.loads(cli_here("status", run_dir, "--json").stdout)
    assert [r["failures"] for r in status] == [int(r["shard"] == events[0]["shard"]) for r in status]
    assert all(r["draws_done"] == NUM_DRAWS for r in status)


def test_progress_counts_resumed_draws_as_initial(problem, monkeypatch):
    """On resume the bar starts at the draws already stored (so draws/s and ETA cover this session
    only) and ends at datasets x draws, fed by run_shard's callbacks (in-process) or by polling the
    checkpoints (Ray)."""
    from sampler.execution import driver, runner
    root, _ = problem
    run_dir = root / "progress"
    shutil.copytree(root / "reference", run_dir)
    # shard 1 loses its newest checkpoint: its last 10 draws are to be re-done
    shutil.rmtree(run_dir / "checkpoints" / "shard-00001" / str(NUM_DRAWS))
    ctx = runner.RunContext.from_run_dir(run_dir)

    def fake_run_shard(ctx, shard, on_draws, stop=None):  # what run_shard reports: resumed draws, then blocks
        done = shard_steps(run_dir)[shard.index]
        on_draws(done)
        for _ in range(done, NUM_DRAWS, 10):
            on_draws(10)

    monkeypatch.setattr(runner, "run_shard", fake_run_shard)
    progress = driver.Progress(ctx, resumed=True)
    assert (progress.bar.initial, progress.bar.n) == (6 * NUM_DRAWS - 2 * 10, 6 * NUM_DRAWS - 2 * 10)
    driver._run_in_process(ctx, progress)
    assert progress.bar.n == progress.bar.total == 6 * NUM_DRAWS
    progress.close()

    fresh = driver.Progress(ctx, resumed=False)
    assert fresh.bar.initial == 0
    fresh.poll(ctx.run_dir, [0, 1, 2])  # Ray path: from the running shards' checkpoints
    assert fresh.bar.n == 6 * NUM_DRAWS - 2 * 10
    fresh.close()


def test_submit_bad_input_is_one_line_and_submits_nothing(problem):
    root, cfg = problem
    res = cli_here("submit", cfg, "--address", "http://127.0.0.1:9", "--set", 'data.path="missing.npz"', cwd=root)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"sampler: error: data.path: file not found: {root / 'missing.npz'}"]
    res = cli_here("submit", cfg, "--address", f"http://127.0.0.1:{free_port()}", "--run-dir", root / "x", cwd=root)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "cannot reach a Ray dashboard" in res.stderr
    assert not (root / "x").exists()


def test_bad_worker_gpus_is_one_line_and_writes_nothing(problem, monkeypatch):
    root, cfg = problem
    monkeypatch.setenv("SAMPLER_WORKER_GPUS", "one")
    res = cli_here("run", cfg, "--run-dir", root / "bad_gpus", "--workers", "1", cwd=root)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "sampler: error: $SAMPLER_WORKER_GPUS='one': expected the number of GPUs per worker, e.g. 1"]
    assert not (root / "bad_gpus").exists()


# --- two Ray nodes on this machine ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_nodes():
    """{"head", "second": Popen, "dashboard", "gcs": addresses, "temp_dir"}; stopped by their pids at the end."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix socket paths must fit
    nodes = {"temp_dir": temp_dir}
    try:
        nodes["head"], nodes["dashboard"], nodes["gcs"] = start_head(temp_dir, num_cpus=1)
        nodes["second"] = start_worker_node(temp_dir, nodes["gcs"], num_cpus=1)
        wait_for_nodes(temp_dir, nodes["gcs"], 2)
        yield nodes
    finally:
        for name in ("second", "head"):
            if name in nodes and nodes[name].poll() is None:
                stop_node(nodes[name])
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(600)
def test_submit_runs_on_both_nodes(problem, two_nodes):
    """A submitted run puts a worker on each node and ends equal to the in-process run.  Which shards
    each worker samples is the driver's to choose as workers come up: with the programs already in the
    compilation cache one worker can finish every shard in seconds, before the other is up (seen
    once in CI: the run ended before a shard had been seen busy on both nodes), so the test looks
    for the workers (``idle_too``), which live from their start to the run's end."""
    root, cfg = problem
    run_dir = root / "submitted"
    seen = set()

    def on_both_nodes():
        seen.update(name for name in ("head", "second") if busy_workers(two_nodes[name].pid, idle_too=True))
        return len(seen) == 2

    with cli_process("submit", cfg, "--address", two_nodes["dashboard"], "--run-dir", run_dir, "--workers", "2",
                     "--wait", "--set", "sampler.num_draws=60", cwd=root, env=ray_env(two_nodes["temp_dir"])) as proc:
        wait_while_running(proc, on_both_nodes, what="the run ended before a worker was up on each node")
        out, err = finish(proc, 400)
    assert proc.returncode == 0, err[-3000:]
    job_id = out.strip()
    assert job_id.startswith("raysubmit_")
    # submit found and sent the cluster's token, so its hints carry token mode
    assert f"RAY_AUTH_MODE=token ray job logs --follow {job_id} --address {two_nodes['dashboard']}" in err
    assert f"sampler status {run_dir}" in err
    status = json.loads(cli_here("status", run_dir, "--json").stdout)
    assert all(r["draws_done"] == 60 and r["failures"] == 0 for r in status)
    got, want = read_store(run_dir), read_store(root / "reference")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key][:, :60], err_msg=key)


@pytest.mark.timeout(600)
def test_losing_a_node_mid_run(problem, two_nodes):
    """The second node (raylet, agents, its actor) is killed while its actor is past 20 draws of a
    shard: the driver sees the actor die, re-queues its shard, and the head's actor finishes every
    shard; the lost shard resumes from its checkpoint, the store equals the in-process run.

    The two actors start and compile at their own pace, so their shards need not overlap: the head's
    actor is paused (SIGSTOP) once it has a shard, and a shard that moves while it is paused is the
    second node's.  It is resumed (SIGCONT) after the kill."""
    root, cfg = problem
    run_dir = root / "node_lost"
    paused = []
    with cli_process("run", cfg, "--run-dir", run_dir, "--address", two_nodes["gcs"], "--workers", "2",
                     cwd=root, env=ray_env(two_nodes["temp_dir"])) as proc:
        try:
            wait_while_running(proc, lambda: busy_workers(two_nodes["head"].pid))
            paused = busy_workers(two_nodes["head"].pid)
            for p in paused:
                p.suspend()
            before = shard_steps(run_dir)

            def second_node_mid_shard():  # a shard that moved while the head was paused, not yet done
                moved = [k for k, s in shard_steps(run_dir).items() if s > before.get(k, 0) and 20 <= s < NUM_DRAWS]
                return moved and busy_workers(two_nodes["second"].pid)
            wait_while_running(proc, second_node_mid_shard)
            kill_node(two_nodes["second"])
        finally:
            for p in paused:
                p.resume()
        _, err = finish(proc, 500)
    assert proc.returncode == 0, err[-3000:]
    assert "worker died on shard" in err
    assert_same_draws(root / "reference", run_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["shard_failed"], events
    assert 20 <= events[0]["resume_from"] < NUM_DRAWS  # the lost node's shard was mid-run
    status = json.loads(cli_here("status", run_dir, "--json").stdout)
    assert [r["failures"] for r in status] == [int(r["shard"] == events[0]["shard"]) for r in status]
    assert all(r["draws_done"] == NUM_DRAWS for r in status)
