"""Run dirs and data on an object store: an S3-compatible server (moto's standalone server, as s3fs's
own tests use) on 127.0.0.1, started by this module and stopped through its pid.

`sampler run` with `s3://` run dir and data: the driver SIGKILLed mid-run while a second driver is
refused by the lease; the re-run takes the dead driver's lease over and the store equals the local
in-process run bitwise; status and forecast (with a plot) work on the URL; an unreachable store is one
line and exit 3."""
import io
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_draws, cli, cli_here, cli_process, finish, simulate, wait_while_running, write_config

NUM_DRAWS = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(env for commands, s3fs filesystem): a bucket `bkt` on a local moto server."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        import s3fs
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "moto server did not start"
                time.sleep(0.2)
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]}, key="test", secret="test")
        fs.mkdir("bkt")
        yield env, fs
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def problem(s3, tmp_path_factory):
    """The data on S3, a config whose run dir is on S3, and the local in-process reference run."""
    _, fs = s3
    root = tmp_path_factory.mktemp("object_store")
    data = simulate(4, T=30)
    np.savez(root / "d.npz", **data)
    buf = io.BytesIO()
    np.savez(buf, **data)
    fs.pipe("bkt/data/d.npz", buf.getvalue())
    settings = dict(sampler={"num_draws": NUM_DRAWS, "num_warmup": 10}, run={"checkpoint_every": 10, "shard_size": 2})
    local = write_config(root / "local.toml", "d.npz", **settings)
    res = cli_here("run", local, "--run-dir", root / "reference", cwd=root)  # its compiled programs serve the resume
    assert res.returncode == 0, res.stderr
    cfg = write_config(root / "s3.toml", "s3://bkt/data/d.npz", **settings)
    return root, cfg


def _download(fs, url: str, to: Path) -> Path:
    """A local copy of a run dir's store (``assert_same_draws`` reads ``DIR/samples.zarr``)."""
    to.mkdir(parents=True)
    fs.get(url.removeprefix("s3://") + "/samples.zarr", str(to / "samples.zarr"), recursive=True)
    return to


def _steps(fs, url: str) -> list[int]:
    """Newest committed checkpoint step of each shard that has one."""
    out = []
    for shard in fs.ls(url.removeprefix("s3://") + "/checkpoints", refresh=True) if fs.exists(url + "/checkpoints") else []:
        steps = [int(p.rsplit("/", 1)[1].split(".")[0]) for p in fs.ls(shard, refresh=True) if p.endswith(".committed")]
        out.append(max(steps, default=0))
    return out


@pytest.mark.timeout(600)
def test_killed_driver_resumes_bitwise_and_a_second_driver_is_refused(s3, problem, monkeypatch):
    """The killed driver is a real process; the second driver, the resume, status and forecast run in
    this process (with the same endpoint settings)."""
    env, fs = s3
    root, cfg = problem
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    url = "s3://bkt/runs/killed"
    with cli_process("run", cfg, "--run-dir", url, cwd=root, env=env) as proc:
        wait_while_running(proc, lambda: min(_steps(fs, url), default=0) >= 20)
        second = cli_here("run", cfg, "--run-dir", url, cwd=root)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"sampler: error: {url}: another sampler process is running on this run dir (host "
            f"{socket.gethostname()}, pid {proc.pid};"), lines
        proc.send_signal(signal.SIGKILL)
        finish(proc, 60)
        assert min(_steps(fs, url)) < NUM_DRAWS
    assert fs.exists("bkt/runs/killed/.lock")  # the killed driver's lease is left behind...
    res = cli_here("run", cfg, "--run-dir", url, cwd=root)
    assert res.returncode == 0, res.stderr  # ...and taken over: its process is gone
    assert not fs.exists("bkt/runs/killed/.lock")
    assert_same_draws(root / "reference", _download(fs, url, root / "killed_copy"))

    status = cli_here("status", url, cwd=root)
    assert "2 of 2 shards complete" in status.stdout, status.stderr
    forecast = cli_here("forecast", url, "--horizon", "5", "--plot", "0", cwd=root)
    assert forecast.returncode == 0, forecast.stderr
    assert fs.exists("bkt/runs/killed/plots/forecast_0.png"), fs.ls("bkt/runs/killed/plots")
    import zarr
    group = zarr.open_group(str(_download(fs, url, root / "forecast_copy") / "samples.zarr"), mode="r")["forecast"]
    assert group["forecast_mean"].shape == (4, 5, 2)
    for name in group.array_keys():
        assert np.isfinite(group[name][...]).all(), name


@pytest.mark.timeout(300)
def test_unreachable_store_is_one_line(problem):
    root, cfg = problem
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    for args in (["run", cfg, "--run-dir", "s3://bkt/runs/unreachable"], ["status", "s3://bkt/runs/unreachable"]):
        res = cli(*args, cwd=root, env=env, timeout=200)
        assert res.returncode == 3, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sampler: error: "), res.stderr
        assert "cannot use the object store (EndpointConnectionError" in lines[0], lines[0]


@pytest.mark.timeout(120)
def test_lease_of_another_host(s3, monkeypatch):
    """A lease written by another host is refused while it lasts and taken over once expired; a
    released lease is deleted."""
    import json
    from sampler.storage.lease import Lease
    from sampler.storage.location import location
    from sampler.errors import UserError
    env, fs = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    run_dir = location("s3://bkt/runs/leased")
    held = {"owner": "x", "host": "another-host", "pid": 1, "expires": time.time() + 600}
    fs.pipe("bkt/runs/leased/.lock", json.dumps(held).encode())
    with pytest.raises(UserError, match="another sampler process is running on this run dir \\(host another-host"):
        Lease(run_dir / ".lock", run_dir).acquire()
    fs.pipe("bkt/runs/leased/.lock", json.dumps({**held, "expires": time.time() - 1}).encode())
    lease = Lease(run_dir / ".lock", run_dir)
    lease.acquire()
    assert json.loads(fs.cat("bkt/runs/leased/.lock"))["owner"] == lease.owner
    lease.release()
    assert not fs.exists("bkt/runs/leased/.lock")


def test_file_urls_are_local_paths(tmp_path):
    """``file://`` URLs in the config and on the command line are the local paths they name."""
    from sampler.storage import config
    from sampler.storage.rundir import RunDir
    cfg = config.load(write_config(tmp_path / "c.toml", f"file://{tmp_path}/d.npz",
                                   run={"dir": f"file://{tmp_path}/run"}))
    assert (cfg.data.path, cfg.run.dir) == (str(tmp_path / "d.npz"), str(tmp_path / "run"))
    assert RunDir(f"file://{tmp_path}/run").path == tmp_path / "run"
    assert not RunDir(f"file://{tmp_path}/run").is_remote
    cfg = config.load(write_config(tmp_path / "c.toml", "d.npz", run={"dir": "s3://bkt/x"}))
    assert (cfg.data.path, cfg.run.dir) == (str(tmp_path / "d.npz"), "s3://bkt/x")
    assert RunDir("s3://bkt/x").is_remote
