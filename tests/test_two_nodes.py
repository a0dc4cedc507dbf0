"""Two Ray nodes on this machine: a head and a second raylet joined to it (loopback only, free ports,
Ray's token authentication on), one CPU each, so the two `ShardWorker` actors of a 2-worker run land
one on each node.  `sampler submit` runs a job over both; `sampler run --address` loses the second
node (its whole process tree, SIGKILL) mid-run and completes on the head with the store bitwise equal
to the in-process run.  Both nodes are stopped through their own pids afterwards."""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_draws, busy_workers, cli, read_store, shard_steps, sharded_problem
from ray_nodes import kill_node, ray_env, start_head, start_worker_node, stop_node, wait_for_nodes

NUM_DRAWS = 300


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    return sharded_problem(tmp_path_factory.mktemp("two_nodes"), NUM_DRAWS)


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
    root, cfg = problem
    run_dir = root / "submitted"
    proc = subprocess.Popen([sys.executable, "-m", "sampler", "submit", str(cfg), "--address",
                             two_nodes["dashboard"], "--run-dir", str(run_dir), "--workers", "2", "--wait",
                             "--set", "sampler.num_draws=60"],
                            cwd=root, env=ray_env(two_nodes["temp_dir"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    try:
        while proc.poll() is None and len(seen) < 2:
            seen |= {name for name in ("head", "second") if busy_workers(two_nodes[name].pid)}
            time.sleep(0.05)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert seen == {"head", "second"}, f"shards ran on {seen} only"
    assert "RAY_AUTH_MODE=token ray job logs" in err  # submit found and sent the cluster's token
    got, want = read_store(run_dir), read_store(root / "reference")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key][:, :60], err_msg=key)


@pytest.mark.timeout(600)
def test_losing_a_node_mid_run(problem, two_nodes):
    """The second node (raylet, agents, its actor) is killed while both nodes run a shard past 20
    draws: the driver sees the actor die, re-queues its shard, and the head's actor finishes every
    shard; the lost shard resumes from its checkpoint, the store equals the in-process run."""
    root, cfg = problem
    run_dir = root / "node_lost"
    proc = subprocess.Popen([sys.executable, "-m", "sampler", "run", str(cfg), "--run-dir", str(run_dir),
                             "--address", two_nodes["gcs"], "--workers", "2"],
                            cwd=root, env=ray_env(two_nodes["temp_dir"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = two_nodes["second"]
    try:
        deadline, killed = time.time() + 400, False
        while time.time() < deadline and proc.poll() is None:
            steps = shard_steps(run_dir) if (run_dir / "checkpoints").exists() else {}
            if (min(steps.get(0, 0), steps.get(1, 0)) >= 20 and busy_workers(second.pid)
                    and busy_workers(two_nodes["head"].pid)):
                kill_node(second)
                killed = True
                break
            time.sleep(0.05)
        assert killed, "the second node was not killed mid-run; make the run longer"
        assert max(steps.values()) < NUM_DRAWS
        out, err = proc.communicate(timeout=500)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "worker died on shard" in err
    assert_same_draws(root / "reference", run_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["shard_failed"], events
    assert events[0]["shard"] in (0, 1) and events[0]["resume_from"] >= 20
    status = json.loads(cli("status", run_dir, "--json").stdout)
    assert all(r["draws_done"] == NUM_DRAWS for r in status)
