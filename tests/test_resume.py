"""Kill and resume, refusal to resume a changed config, the run-dir lock, and independence of the
draws from shards and devices: all compared bitwise on the Zarr store."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import sampler

from helpers import ARRAYS, assert_same_draws, cli, cli_here, read_store, simulate, write_config


def draws_done(run_dir: Path) -> int:
    ck = run_dir / "checkpoints"
    steps = [int(p.name) for p in ck.glob("shard-*/*") if p.name.isdigit()] if ck.exists() else []
    return max(steps, default=-1)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    np.savez(root / "d.npz", **simulate(4, T=30))
    cfg = write_config(root / "c.toml", "d.npz", sampler={"num_draws": 150, "num_warmup": 10},
                       run={"checkpoint_every": 10, "shard_size": 2})
    res = cli("run", cfg, "--run-dir", root / "reference", cwd=root)
    assert res.returncode == 0, res.stderr
    return root, cfg


def test_sigkill_then_resume_equals_uninterrupted(problem):
    root, cfg = problem
    run_dir = root / "killed"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "sampler", "run", str(cfg), "--run-dir", str(run_dir)],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while draws_done(run_dir) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads(cli_here("status", run_dir, "--json").stdout)
    assert any(r["draws_done"] < 150 for r in status)
    # damage the newest checkpoint of one shard: resume must fall back to the previous one
    shard = sorted((run_dir / "checkpoints").glob("shard-*"))[0]
    steps = sorted((p for p in shard.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if len(steps) >= 2:
        for f in steps[-1].rglob("*"):
            if f.is_file():
                f.write_bytes(b"garbage")
    res = cli_here("run", cfg, "--run-dir", run_dir, cwd=root)
    assert res.returncode == 0, res.stderr
    assert_same_draws(root / "reference", run_dir)


# SIGTERM runs the same handler; it is sent to a driver with Ray workers in test_distributed.py
@pytest.mark.parametrize("signum, code", [pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow),
                                          (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_run_at_a_block_and_it_resumes(problem, signum, code):
    """SIGTERM (preemption, ``ray job stop``) or SIGINT mid-run: the driver stops after the block it is
    writing, within seconds, exit 128 + signal, one line on stderr saying how to resume, the lock
    released; the completed blocks are checkpointed and a re-run ends bitwise equal to the reference."""
    root, cfg = problem
    run_dir = root / f"stopped-{signum.name}"
    proc = subprocess.Popen([sys.executable, "-m", "sampler", "run", str(cfg), "--run-dir", str(run_dir)],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while draws_done(run_dir) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be stopped; make it longer"
    sent = time.time()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert time.time() - sent < 30
    assert proc.returncode == code, err
    lines = [line for line in err.strip().splitlines() if line.startswith("sampler:")]
    assert len(lines) == 1 and signum.name in lines[0] and "resume" in lines[0], err
    assert "Traceback" not in err
    assert 20 <= draws_done(run_dir) < 150
    res = cli_here("run", cfg, "--run-dir", run_dir, cwd=root)   # the lock was released
    assert res.returncode == 0, res.stderr
    assert_same_draws(root / "reference", run_dir)


def test_changed_config_refuses_to_resume(problem):
    root, cfg = problem
    before = read_store(root / "reference")
    res = cli_here("run", cfg, "--run-dir", root / "reference", "--set", "sampler.seed=1", cwd=root)
    assert res.returncode == 2
    assert "sampler.seed" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    after = read_store(root / "reference")
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    # a setting that does not change the draws may change (and a finished run just re-reports)
    res = cli_here("run", cfg, "--run-dir", root / "reference", "--workers", "0", cwd=root)
    assert res.returncode == 0, res.stderr


def test_lock_blocks_second_driver(problem):
    root, cfg = problem
    run_dir = root / "reference"
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        res = cli_here("run", cfg, "--run-dir", run_dir, cwd=root)  # flock: another open file, refused as another process's
    finally:
        os.close(fd)
    assert res.returncode == 2 and "another sampler process" in res.stderr


def test_a_short_last_block_runs_the_same_program(problem, monkeypatch):
    """num_draws = 145 with checkpoint_every = 10, in this process: the last block (5 draws) runs the
    10-draw program (no second compile), and the draws, lp included, equal the first 145 of the CLI's
    150-draw reference bitwise (a float32 module constant once made the CLI's lp differ by 1e-7)."""
    from sampler.core import engine
    root, cfg = problem
    sizes, program = [], engine.sample_program
    monkeypatch.setattr(engine, "sample_program", lambda m, k, n, d=1: sizes.append(n) or program(m, k, n, d))
    sampler.run(cfg, progress=False, sampler__num_draws=145, run__dir=str(root / "short"))
    assert set(sizes) == {10}
    short, reference = read_store(root / "short"), read_store(root / "reference")
    for key in short:
        np.testing.assert_array_equal(short[key], reference[key][:, :145], err_msg=key)


def test_a_larger_num_draws_extends_the_run(problem):
    """A finished 45-draw run (its last block short) re-run with num_draws = 150: the 45 draws stay
    bitwise the same, the store grows to 150 draws and equals the 150-draw reference bitwise, xarray
    sees the new length; a smaller num_draws is refused naming the key, and nothing changes."""
    from sampler.errors import UserError
    root, cfg = problem
    run_dir = root / "extended"
    sampler.run(cfg, progress=False, sampler__num_draws=45, run__dir=str(run_dir))
    first = read_store(run_dir)
    sampler.run(cfg, progress=False, sampler__num_draws=150, run__dir=str(run_dir))
    extended, reference = read_store(run_dir), read_store(root / "reference")
    for key in first:
        assert first[key].shape[1] == 45
        np.testing.assert_array_equal(extended[key][:, :45], first[key], err_msg=key)
        np.testing.assert_array_equal(extended[key], reference[key], err_msg=key)
    assert sampler.open_run(run_dir)["posterior"].sizes["draw"] == 150
    with pytest.raises(UserError, match="sampler.num_draws"):
        sampler.run(cfg, progress=False, sampler__num_draws=100, run__dir=str(run_dir))
    for key, value in read_store(run_dir).items():
        np.testing.assert_array_equal(value, reference[key], err_msg=key)


@pytest.mark.slow  # long; the default run compares sharded Ray and in-process runs (test_distributed.py)
def test_draws_independent_of_shards(problem):
    root, cfg = problem
    res = cli("run", cfg, "--run-dir", root / "one_shard", "--set", "run.shard_size=4", cwd=root)
    assert res.returncode == 0, res.stderr
    assert_same_draws(root / "reference", root / "one_shard")
    # the shard size changes the store's chunking, so resuming with another one is refused
    res = cli("run", cfg, "--run-dir", root / "one_shard", cwd=root)
    assert res.returncode == 2 and "run.shard_size" in res.stderr


@pytest.mark.slow
def test_draws_independent_of_device_count(problem):
    """Same random streams and same math on 4 devices (one shard of 4 datasets, one per device) as in
    the reference.  Bitwise on this project's AMD machine; on an AVX-512 machine XLA compiled the
    shard_map'd per-device program with other vectorisation choices than the single-device one,
    which moved the last bits (measured: 3e-12 relative after 150 Gibbs draws), hence the tolerance."""
    root, cfg = problem
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    res = cli("run", cfg, "--run-dir", root / "four_devices", "--set", "run.shard_size=4", cwd=root, env=env)
    assert res.returncode == 0, res.stderr
    assert_same_draws(root / "reference", root / "four_devices", rtol=1e-8)


def test_one_cpu_device_per_core_draws_as_one_device(problem):
    """By default a CPU host is one XLA device per core and a shard is split over them
    (``sampler/__init__.py``, ``engine.device_count``); the draws are the same, bitwise, as on one
    device (the reference ran with the default)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: the default is one device already")
    root, cfg = problem
    res = cli("run", cfg, "--run-dir", root / "one_device", cwd=root,
              env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert res.returncode == 0, res.stderr
    assert_same_draws(root / "reference", root / "one_device")


@pytest.mark.slow  # the default run covers Ray workers in test_distributed.py
def test_ray_workers_equal_in_process(problem):
    """workers = 2 (an embedded local Ray, one actor per worker, shards from a queue) writes the same
    draws as the in-process run: each actor runs the same compiled shard program on one device."""
    root, cfg = problem
    res = cli("run", cfg, "--run-dir", root / "ray", "--workers", "2", cwd=root)
    assert res.returncode == 0, res.stderr
    assert_same_draws(root / "reference", root / "ray")
    status = json.loads(cli("status", root / "ray", "--json").stdout)
    assert all(r["draws_done"] == 150 and r["failures"] == 0 for r in status)


@pytest.fixture(scope="module")
def chees_reference(tmp_path_factory):
    """A ChEES run (3 datasets, 2 per shard), in-process."""
    root = tmp_path_factory.mktemp("chees")
    np.savez(root / "d.npz", **simulate(3, T=30))
    cfg = write_config(root / "c.toml", "d.npz",
                       sampler={"algorithm": "chees", "num_draws": 30, "num_warmup": 20},
                       run={"checkpoint_every": 10, "shard_size": 2})
    return root, cfg, sampler.run(cfg, run__dir=str(root / "reference"), progress=False)


def test_chees_resumes_exactly(chees_reference):
    """A shard resumed from an earlier checkpoint rewrites exactly the draws it lost (in-process, so
    the resume reuses the reference's compiled programs)."""
    root, cfg, reference = chees_reference
    resumed = root / "resumed"
    subprocess.run(["cp", "-r", str(reference), str(resumed)], check=True)
    for step in (resumed / "checkpoints" / "shard-00000").iterdir():
        if step.name.isdigit() and int(step.name) > 10:
            subprocess.run(["rm", "-r", str(step)], check=True)
    store = zarr.open_group(str(resumed / "samples.zarr"), mode="r+")
    for group, name in ARRAYS:
        store[group][name][:, 10:, 0:2] = np.nan
    sampler.run(cfg, run__dir=str(resumed), progress=False)
    assert_same_draws(reference, resumed)


@pytest.mark.slow
def test_chees_groups_whole_datasets_over_devices(chees_reference):
    """ChEES adapts each dataset's chains together: its draws must not depend on how datasets are
    split into shards or over devices (3 datasets on 4 devices pads a whole dataset).  Across device
    counts the last-bit differences of the compiled programs (see above) grow along leapfrog
    trajectories (measured: 1.2e-7 relative after 30 draws), hence the tolerance."""
    root, cfg, reference = chees_reference
    res = cli("run", cfg, "--run-dir", root / "devices", "--set", "run.shard_size=3", cwd=root,
              env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert res.returncode == 0, res.stderr
    assert_same_draws(reference, root / "devices", rtol=1e-5)
