"""Environmental failures (full disk, read-only dir): one line on stderr naming the path and what to do,
exit code 3, no traceback; nothing lost: a re-run with more space resumes and ends bitwise equal.

The full-disk and read-only tests mount a tmpfs (they need root and a kernel that allows it; else they
are skipped, saying why); the monkeypatched ones always run, in this process through ``sampler.cli.main``.
"""
from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import assert_same_draws, cli, cli_here, simulate, write_config

SMALL = {"sampler": {"num_chains": 2, "num_warmup": 20, "num_draws": 60, "seed": 0},
         "run": {"checkpoint_every": 5, "workers": 0}}


def _config(tmp_path: Path, run_dir: Path, name: str = "c.toml") -> Path:
    data = tmp_path / "d.npz"
    if not data.exists():
        np.savez(data, emissions=simulate(4)["emissions"])
    return write_config(tmp_path / name, str(data), sampler=SMALL["sampler"],
                        run={**SMALL["run"], "dir": str(run_dir)})


@contextmanager
def _tmpfs(where: Path, options: str):
    """A tmpfs mounted at ``where`` for the block (skips the test when mounting is not allowed)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _one_error_line(stderr: str) -> str:
    """The single ``sampler: error:`` line (the progress bar may share stderr); no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "sampler: error:" in line]
    assert len(errors) == 1, stderr
    line = errors[0][errors[0].index("sampler: error:"):]
    assert line == stderr.strip().splitlines()[-1][-len(line):], stderr  # the last thing said
    return line


def _all_arrays(run_dir: Path) -> dict:
    root = zarr.open_group(str(run_dir / "samples.zarr"), mode="r")
    return {f"{g}/{n}": a[...] for g in ("posterior", "sample_stats") for n, a in root[g].arrays()}


@pytest.mark.timeout(180)
def test_full_disk_one_line_exit_3_then_resume_bitwise(tmp_path):
    """The run on a full disk is a real process (its exit status and stderr); the resume and the
    reference run in this process, the reference reusing the resume's compiled programs."""
    with _tmpfs(tmp_path / "small", "size=400k") as mnt:
        run_dir = mnt / "run"
        cfg = _config(tmp_path, run_dir)
        res = cli("run", cfg, cwd=tmp_path, timeout=150)
        assert res.returncode == 3, res.stderr
        line = _one_error_line(res.stderr)
        assert line.startswith(f"sampler: error: {run_dir}"), line
        assert "No space left on device" in line and "free space or move run.dir" in line, line
        subprocess.run(["mount", "-o", "remount,size=200m", str(mnt)], check=True)
        res = cli_here("run", cfg, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "resuming" in res.stderr
        ref_dir = tmp_path / "ref"
        res = cli_here("run", _config(tmp_path, ref_dir, "ref.toml"), cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert_same_draws(run_dir, ref_dir)   # every draw finite, and equal
        got, want = _all_arrays(run_dir), _all_arrays(ref_dir)
        assert got.keys() == want.keys()
        for key in want:   # bitwise (NaN where a stat does not apply, e.g. Gibbs' energy)
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.timeout(120)
def test_read_only_run_dir_one_line_exit_3(tmp_path):
    parent = tmp_path / "ro"
    if os.geteuid() == 0:  # root ignores permission bits: a read-only mount
        with _tmpfs(parent, "ro,size=1m"):
            res = cli("run", _config(tmp_path, parent / "run"), cwd=tmp_path, timeout=100)
    else:
        parent.mkdir(mode=0o555)
        try:
            res = cli("run", _config(tmp_path, parent / "run"), cwd=tmp_path, timeout=100)
        finally:
            parent.chmod(0o755)
    assert res.returncode == 3, res.stderr
    line = _one_error_line(res.stderr)
    assert line.startswith(f"sampler: error: {parent / 'run'}"), line
    assert ("Read-only file system" in line or "Permission denied" in line) and "make it writable" in line, line


def _fail_chunk_writes(monkeypatch, group: str, error: OSError):
    """zarr's local store raises ``error`` (no file name, as zarr's own errors) on any chunk of ``group``."""
    import zarr.storage._local as local
    put = local._put

    def failing_put(path, value, exclusive=False):
        if group in Path(path).parts and "c" in Path(path).parts:
            raise error
        return put(path, value, exclusive)

    monkeypatch.setattr(local, "_put", failing_put)


@pytest.mark.timeout(60)
def test_enospc_in_process_names_the_run_dir(tmp_path, monkeypatch, capsys):
    """Through ``sampler.cli.main``: zarr fails (no file name) writing the observed data, before any
    sampling; the line names run.dir (what was being written)."""
    from sampler.cli import main
    run_dir = tmp_path / "run"
    _fail_chunk_writes(monkeypatch, "observed_data", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    cfg = write_config(tmp_path / "c.toml", "d.npz", run={"dir": str(run_dir), "checkpoint_every": 5})
    np.savez(tmp_path / "d.npz", emissions=simulate(2)["emissions"])
    assert main(["run", str(cfg)]) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"sampler: error: {run_dir}: No space left on device; free space or move run.dir, then run "
                    "the same command again (a run resumes: completed blocks are kept)"), line


@pytest.mark.timeout(60)
def test_block_writer_names_the_store(tmp_path, monkeypatch):
    """A failed block write (zarr's OSError names no file) raises an OSError naming the store."""
    from sampler.storage.store import BlockWriter
    path = tmp_path / "samples.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_group("posterior").create_array("x", shape=(1, 4, 2), chunks=(1, 2, 2), dtype="float64")
    root.create_group("sample_stats").create_array("lp", shape=(1, 4, 2), chunks=(1, 2, 2), dtype="float64")
    _fail_chunk_writes(monkeypatch, "posterior", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(OSError) as info:
        BlockWriter(path).write(0, 0, {"x": np.ones((1, 2, 2))}, {"lp": np.ones((1, 2, 2))})
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(path))


def test_environment_failure_messages():
    """The mapping itself: errnos, file names, Ray's wrapper (``.cause``), tensorstore's ValueError."""
    from sampler.errors import environment_failure, naming_path

    assert environment_failure(PermissionError(errno.EACCES, "Permission denied", "/x/run")).startswith(
        "/x/run: Permission denied; make it writable")
    assert environment_failure(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "/r").startswith(
        f"/r: {os.strerror(errno.EDQUOT)}; free space")
    assert environment_failure(OSError(errno.ENOENT, "No such file or directory", "/a")).startswith("/a: No such")
    assert environment_failure(ValueError("a bug")) is None
    assert environment_failure(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) is None  # no file: a bug

    class FakeRayTaskError(Exception):   # RayTaskError: the actor's exception as ``.cause``
        def __init__(self, cause):
            super().__init__("ray traceback ...")
            self.cause = cause

    wrapped = FakeRayTaskError(OSError(errno.ENOSPC, "No space left on device", "/c/shard-00001"))
    assert environment_failure(wrapped).startswith("/c/shard-00001: No space left on device; free space")
    with pytest.raises(OSError) as info, naming_path("/c/ckpt"):
        raise ValueError("RESOURCE_EXHAUSTED: ... Failed to write 259 bytes to file 15: No space left on device "
                         "[os_error_code='28'] [tensorstore_spec='{}']")
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, "/c/ckpt")
    with pytest.raises(ValueError), naming_path("/c/ckpt"):
        raise ValueError("not an OS failure")
