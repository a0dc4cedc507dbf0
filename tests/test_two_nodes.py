"""Two Ray nodes on this machine: a head and a second raylet joined to it (loopback only, free ports,
Ray's token authentication on), one CPU each, so the two `ShardWorker` actors of a 2-worker run land
one on each node.  `sampler submit` runs a job over both; `sampler run --address` loses the second
node (its whole process tree, SIGKILL) mid-run and completes on the head with the store bitwise equal
to the in-process run.  Both nodes are stopped through their own pids afterwards."""
import json
import shutil
import tempfile

import numpy as np
import pytest

from helpers import (assert_same_draws, busy_workers, cli, cli_process, finish, read_store, shard_steps,
                     sharded_problem, wait_while_running)
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
    seen = set()

    def on_both_nodes():
        seen.update(name for name in ("head", "second") if busy_workers(two_nodes[name].pid))
        return len(seen) == 2

    with cli_process("submit", cfg, "--address", two_nodes["dashboard"], "--run-dir", run_dir, "--workers", "2",
                     "--wait", "--set", "sampler.num_draws=60", cwd=root, env=ray_env(two_nodes["temp_dir"])) as proc:
        wait_while_running(proc, on_both_nodes, what=f"shards ran on {seen} only")
        out, err = finish(proc, 400)
    assert proc.returncode == 0, err[-3000:]
    job_id = out.strip()
    assert job_id.startswith("raysubmit_")
    # submit found and sent the cluster's token, so its hints carry token mode
    assert f"RAY_AUTH_MODE=token ray job logs --follow {job_id} --address {two_nodes['dashboard']}" in err
    assert f"sampler status {run_dir}" in err
    status = json.loads(cli("status", run_dir, "--json").stdout)
    assert all(r["draws_done"] == 60 and r["failures"] == 0 for r in status)
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
    with cli_process("run", cfg, "--run-dir", run_dir, "--address", two_nodes["gcs"], "--workers", "2",
                     cwd=root, env=ray_env(two_nodes["temp_dir"])) as proc:
        def both_nodes_past_20():
            steps = shard_steps(run_dir)
            return (min(steps.get(0, 0), steps.get(1, 0)) >= 20 and busy_workers(two_nodes["second"].pid)
                    and busy_workers(two_nodes["head"].pid))
        wait_while_running(proc, both_nodes_past_20)
        kill_node(two_nodes["second"])
        assert max(shard_steps(run_dir).values()) < NUM_DRAWS
        _, err = finish(proc, 500)
    assert proc.returncode == 0, err[-3000:]
    assert "worker died on shard" in err
    assert_same_draws(root / "reference", run_dir)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["shard_failed"], events
    assert events[0]["shard"] in (0, 1) and events[0]["resume_from"] >= 20
    status = json.loads(cli("status", run_dir, "--json").stdout)
    assert all(r["draws_done"] == NUM_DRAWS for r in status)
