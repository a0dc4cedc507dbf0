"""The store's block writer and the run loop's order "draws stored, then checkpoint" when a write fails."""
import asyncio

import numpy as np
import pytest
import zarr

import sampler
from sampler.storage import store

from helpers import assert_same_draws, simulate, write_config

C, K, N = 2, 5, 3


def small_store(path):
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    for group, names in (("posterior", ("a", "b")), ("sample_stats", ("lp",))):
        g = root.create_group(group)
        for name in names:
            g.create_array(name, shape=(C, 2 * K, N), chunks=(C, K, N), dtype="float64", fill_value=np.nan)
    return root


def block(value: float):
    arr = np.full((C, K, N), value)
    return {"a": arr, "b": arr}, {"lp": arr}


def test_block_writer_writes_every_array(tmp_path):
    root = small_store(tmp_path / "s.zarr")
    writer = store.BlockWriter(tmp_path / "s.zarr")
    writer.write(K, 0, *block(1.0))
    for group, name in (("posterior", "a"), ("posterior", "b"), ("sample_stats", "lp")):
        values = root[group][name][...]
        assert np.isnan(values[:, :K]).all() and (values[:, K:] == 1.0).all(), name


def test_a_failed_chunk_write_raises_its_own_error_after_the_others_finish(tmp_path, monkeypatch):
    """One array's write fails: ``write`` raises that exception itself (not an ExceptionGroup), and
    only once the block's other writes are done (none is left running behind the caller)."""
    root = small_store(tmp_path / "s.zarr")
    writer = store.BlockWriter(tmp_path / "s.zarr")
    setitem, finished = zarr.AsyncArray.setitem, []

    async def a_fails_lp_is_slow(self, *args, **kwargs):
        if self.path == "posterior/a":
            raise OSError(28, "No space left on device")
        if self.path == "sample_stats/lp":
            await asyncio.sleep(0.2)  # still writing when the other array has failed
        await setitem(self, *args, **kwargs)
        finished.append(self.path)

    monkeypatch.setattr(zarr.AsyncArray, "setitem", a_fails_lp_is_slow)
    with pytest.raises(OSError, match="No space left on device"):
        writer.write(0, 0, *block(2.0))
    assert sorted(finished) == ["posterior/b", "sample_stats/lp"]
    assert (root["sample_stats"]["lp"][:, :K] == 2.0).all()
    assert np.isnan(root["posterior"]["a"][...]).all()


def test_write_failure_reaches_the_caller_and_nothing_is_checkpointed_past_it(tmp_path, monkeypatch):
    """A run whose third block fails to write raises the store's error; its checkpoints stop at the
    last block written (10 + 10 draws), and a plain re-run resumes from there to the uninterrupted
    run's draws, bitwise.  (The shapes are test_resume's: its compiled programs serve both.)"""
    np.savez(tmp_path / "d.npz", **simulate(4, T=30))
    cfg = write_config(tmp_path / "c.toml", "d.npz", sampler={"num_draws": 30, "num_warmup": 10},
                       run={"checkpoint_every": 10, "shard_size": 2})
    sampler.run(cfg, progress=False, run__dir=str(tmp_path / "reference"))
    write, calls = store.BlockWriter.write, []

    def fail_third(self, draw_start, *args):
        calls.append(draw_start)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return write(self, draw_start, *args)

    monkeypatch.setattr(store.BlockWriter, "write", fail_third)
    with pytest.raises(OSError, match="No space left on device"):
        sampler.run(cfg, progress=False, run__dir=str(tmp_path / "failed"))
    checkpoints = tmp_path / "failed" / "checkpoints"
    steps = sorted(int(p.name) for p in (checkpoints / "shard-00000").iterdir())
    assert steps == [10, 20], steps  # keep_checkpoints = 2: step 0 was rotated out
    assert not (checkpoints / "shard-00001").exists()  # the run stopped at the error
    lp = zarr.open_group(str(tmp_path / "failed" / "samples.zarr"), mode="r")["sample_stats"]["lp"][...]
    assert np.isfinite(lp[:, :20, :2]).all() and np.isnan(lp[:, 20:]).all() and np.isnan(lp[:, :, 2:]).all()
    monkeypatch.setattr(store.BlockWriter, "write", write)
    sampler.run(cfg, progress=False, run__dir=str(tmp_path / "failed"))
    assert_same_draws(tmp_path / "reference", tmp_path / "failed")
