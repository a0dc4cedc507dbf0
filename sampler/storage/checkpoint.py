"""Per-shard chain-state checkpoints with orbax.

One ``CheckpointManager`` per shard (``RunDir.checkpoints``); the step number is the
number of post-warmup draws already in the store (step 0 = warmup finished).  orbax writes each
checkpoint to a temporary directory and renames it when complete, so a killed save leaves no
half-written step; a damaged step (unreadable files) is skipped and the previous one restored.

On an object store the manager writes to a local staging directory and each finished step is
uploaded, then marked complete by a ``<step>.committed`` object (``rundir.committed_steps``); a step
is downloaded before it is restored.  orbax 0.12 writes ``gs://`` itself but not ``s3://`` (its
tensorstore paths are built for GCS only: "Checkpoint path should be absolute. Got s3:/..."), so
every object store takes this one path.
"""
from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from sampler.errors import naming_path
from sampler.storage.location import is_remote, location, remove_tree
from sampler.storage.rundir import COMMITTED, committed_steps

log = logging.getLogger(__name__)


class ShardCheckpoints:
    """Save / restore a pytree of arrays (the engine's ``Chains``) for one shard."""

    def __init__(self, directory: Path, keep: int = 2):
        self.directory = location(directory)
        self._keep = keep
        self._remote = is_remote(self.directory)
        if not self._remote:
            self.directory = Path(self.directory).absolute()
        self._staging = Path(tempfile.mkdtemp(prefix="sampler-ckpt-")) if self._remote else None
        self._manager = ocp.CheckpointManager(
            self._staging or self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False))

    @staticmethod
    def _to_dict(tree) -> dict:
        # orbax cannot store zero-size arrays; they are rebuilt from the template on restore
        leaves = jax.tree.leaves(tree)
        return {f"{i:03d}": np.asarray(x) for i, x in enumerate(leaves) if np.size(x) > 0}

    def save(self, step: int, tree) -> None:
        """A failed save (full disk, no permission) raises an OSError naming this shard's checkpoint dir."""
        with _quiet_if_failing(), naming_path(self.directory):
            self._manager.save(step, args=ocp.args.StandardSave(self._to_dict(tree)), force=True)
            self._manager.wait_until_finished()
            if self._remote:
                self._upload(step)

    def _upload(self, step: int) -> None:
        """The staged step's files, then its marker; then the steps past ``keep`` are removed."""
        self._discard(step, reload=False)  # a step saved again (force=True) replaces the old one
        self.directory.fs.put(str(self._staging / str(step)), (self.directory / str(step)).path, recursive=True)
        self.directory.fs.pipe_file((self.directory / f"{step}{COMMITTED}").path, b"")
        for old in self.steps()[:-self._keep]:
            self._discard(old)

    def steps(self) -> list[int]:
        return committed_steps(self.directory) if self._remote else sorted(self._manager.all_steps())

    def restore_latest(self, template) -> Optional[tuple[int, object]]:
        """(step, tree) from the newest readable checkpoint, or None when there is none."""
        leaves, treedef = jax.tree.flatten(template)
        abstract = self._to_dict(template)
        for step in reversed(self.steps()):
            try:
                if self._remote:
                    self._download(step)
                restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as err:  # noqa: BLE001 - any failure means this step is unusable
                log.warning("checkpoint %s step %d is unreadable (%s); removing it and trying the previous one",
                            self.directory, step, err)
                self._discard(step)
                continue
            out = [np.asarray(restored[f"{i:03d}"]) if np.size(x) > 0 else np.asarray(x)
                   for i, x in enumerate(leaves)]
            return step, jax.tree.unflatten(treedef, out)
        return None

    def _download(self, step: int) -> None:
        local = self._staging / str(step)
        remove_tree(local)
        self.directory.fs.get((self.directory / str(step)).path, str(local), recursive=True)
        self._manager.reload()

    def _discard(self, step: int, reload: bool = True) -> None:
        """Remove a damaged or surplus step (a damaged one's draws are re-done, identically, from
        the previous one); on an object store the marker goes first."""
        if self._remote:
            marker = self.directory / f"{step}{COMMITTED}"
            if marker.exists():
                marker.unlink()
        remove_tree(self.directory / str(step))
        if reload:
            if self._remote:
                remove_tree(self._staging / str(step))
            self._manager.reload()

    def close(self) -> None:
        self._manager.close()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)


def _drop_closed_loop_callback(unraisable) -> bool:
    """tensorstore's late callbacks into an orbax event loop closed by a failed save."""
    return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed")


def _drop_unretrieved_future(record) -> bool:
    """asyncio's report of a failed save's write future, garbage-collected unread (at any later
    time, even at exit): the save's exception already said it."""
    return not record.getMessage().startswith("Future exception was never retrieved")


@contextmanager
def _quiet_if_failing():
    """Hold orbax's ERROR logs (with tracebacks, one per writer thread) and tensorstore's 'Event loop
    is closed' reports while a save runs; on success they are emitted as usual, on failure dropped:
    the exception raised says it once (the CLI makes it one line).  After a failure, late 'Event
    loop is closed' reports and asyncio's 'Future exception was never retrieved' stay dropped."""
    held_records, held_unraisable = [], []
    absl = logging.getLogger("absl")
    previous_hook = sys.unraisablehook

    def hold_record(record):
        held_records.append(record)
        return False

    def hold_unraisable(unraisable):
        if _drop_closed_loop_callback(unraisable):
            held_unraisable.append(unraisable)
        else:
            previous_hook(unraisable)

    absl.addFilter(hold_record)
    sys.unraisablehook = hold_unraisable
    try:
        yield
    except BaseException:
        sys.unraisablehook = lambda u: None if _drop_closed_loop_callback(u) else previous_hook(u)
        logging.getLogger("asyncio").addFilter(_drop_unretrieved_future)
        raise
    else:
        sys.unraisablehook = previous_hook
        for unraisable in held_unraisable:
            previous_hook(unraisable)
    finally:
        absl.removeFilter(hold_record)
    for record in held_records:
        absl.handle(record)
