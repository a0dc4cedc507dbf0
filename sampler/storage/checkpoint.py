"""Per-shard chain-state checkpoints with orbax.

One ``CheckpointManager`` per shard (``RunDir.checkpoints``); the step number is the
number of post-warmup draws already in the store (step 0 = warmup finished).  orbax writes each
checkpoint to a temporary directory and renames it when complete, so a killed save leaves no
half-written step; a damaged step (unreadable files) is skipped and the previous one restored.
"""
from __future__ import annotations

import logging
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from sampler.errors import naming_path

log = logging.getLogger(__name__)


class ShardCheckpoints:
    """Save / restore a pytree of arrays (the engine's ``Chains``) for one shard."""

    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
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

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore_latest(self, template) -> Optional[tuple[int, object]]:
        """(step, tree) from the newest readable checkpoint, or None when there is none."""
        leaves, treedef = jax.tree.flatten(template)
        abstract = self._to_dict(template)
        for step in reversed(self.steps()):
            try:
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

    def _discard(self, step: int) -> None:
        """Remove a damaged step (its draws are re-done, identically, from the previous one)."""
        shutil.rmtree(self.directory / str(step), ignore_errors=True)
        self._manager.reload()

    def close(self) -> None:
        self._manager.close()


def _drop_closed_loop_callback(unraisable) -> bool:
    """tensorstore's late callbacks into an orbax event loop closed by a failed save."""
    return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed")


@contextmanager
def _quiet_if_failing():
    """Hold orbax's ERROR logs (with tracebacks, one per writer thread) and tensorstore's 'Event loop
    is closed' reports while a save runs; on success they are emitted as usual, on failure dropped:
    the exception raised says it once (the CLI makes it one line).  After a failure, late 'Event
    loop is closed' reports stay dropped."""
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
        raise
    else:
        sys.unraisablehook = previous_hook
        for unraisable in held_unraisable:
            previous_hook(unraisable)
    finally:
        absl.removeFilter(hold_record)
    for record in held_records:
        absl.handle(record)
