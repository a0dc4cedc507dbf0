"""The run directory: every path in it, its lock, and the read-only queries about a run.

Layout (SPEC): ``config.toml`` (the resolved config), ``run.json`` (written last when a run dir is
created: its presence marks a complete, resumable run dir; it holds the result fingerprint and the
shards), ``samples.zarr``, ``checkpoints/shard-XXXXX/<draws done>`` (orbax), ``events.jsonl`` (shard
failures and retries), ``plots/``, ``.lock``.  A calibration study adds ``simulated.npz`` and
``calibration.json``; a backtest dir (``BacktestDir``) holds ``windows.npz``, the run dir ``run/``
and ``backtest.json``.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from sampler.errors import UserError
from sampler.storage import config as config_mod
from sampler.storage import location
from sampler.storage.files import atomic_write
from sampler.storage.lease import Lease


@dataclass(frozen=True)
class Shard:
    """Datasets [start, stop) of a run; ``index`` names its checkpoints."""
    index: int
    start: int
    stop: int


def plan_shards(num_datasets: int, shard_size: int) -> list[Shard]:
    size = shard_size or num_datasets
    return [Shard(i, a, min(a + size, num_datasets)) for i, a in enumerate(range(0, num_datasets, size))]


class RunDir:
    """One run directory (it need not exist yet)."""

    RUN_FILE = "run.json"
    CONFIG = "config.toml"
    STORE = "samples.zarr"
    EVENTS = "events.jsonl"
    LOCK = ".lock"

    def __init__(self, path: Union[str, Path]):
        self.path = location.location(path)  # a local path, or a UPath on an object store

    @property
    def is_remote(self) -> bool:
        return location.is_remote(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- paths ---------------------------------------------------------------------------------------
    @property
    def run_file(self) -> Path:
        return self.path / self.RUN_FILE

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def store(self) -> Path:
        return self.path / self.STORE

    @property
    def events(self) -> Path:
        return self.path / self.EVENTS

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def simulated(self) -> Path:
        """A calibration study's simulated datasets (its data file)."""
        return self.path / "simulated.npz"

    @property
    def calibration_report(self) -> Path:
        return self.path / "calibration.json"

    def checkpoints(self, shard: int) -> Path:
        return self.path / "checkpoints" / f"shard-{shard:05d}"

    def scratch(self, name: str) -> Path:
        """A hidden sibling path for staging ``name`` before it is renamed into place."""
        return self.path / f".{name}"

    # --- state -------------------------------------------------------------------------------------
    def is_run_dir(self) -> bool:
        return location.exists(self.run_file) if self.is_remote else self.run_file.is_file()

    def require(self) -> "RunDir":
        """This run dir, or a ``UserError`` when it is not one."""
        if not self.is_run_dir():
            raise UserError(f"{self.path}: not a sampler run dir (no {self.RUN_FILE})")
        return self

    def check_usable(self) -> None:
        """Refuse a directory that exists, is not empty and is not a run dir (before writing anything);
        what an interrupted creation of a run dir leaves (its lock, store, config) is not refused."""
        if self.is_run_dir() or not location.exists(self.path):
            return
        ours = {self.LOCK, self.scratch(self.STORE + ".tmp").name, self.STORE, self.CONFIG, "plots"}
        if any(p.name not in ours for p in self.path.iterdir()):
            raise UserError(f"{self.path}: exists and is not a sampler run dir (no {self.RUN_FILE}); "
                            "choose an empty or new dir")

    def info(self) -> dict:
        """``run.json``: {"fingerprint", "num_datasets", "shards", "algorithm"}."""
        return json.loads(self.run_file.read_text())

    def record_fingerprint(self, fingerprint: dict) -> None:
        """Replace ``run.json``'s fingerprint (after an extension), atomically."""
        info = self.info()
        if info["fingerprint"] != fingerprint:
            atomic_write(self.run_file, json.dumps({**info, "fingerprint": fingerprint}, indent=1))

    def config(self) -> "config_mod.Config":
        return config_mod.load(self.config_file)

    def shards(self) -> list[Shard]:
        return [Shard(**s) for s in self.info()["shards"]]

    #: the one result setting a resume may change: more draws extend the run (every draw's random
    #: stream depends on its index alone, so the extended run equals one started with the larger
    #: number, and the draws already written stay as they are).
    EXTENDABLE = "sampler.num_draws"

    def check_resumable(self, fingerprint: dict) -> None:
        """Raise ``UserError`` naming the first result-changing setting that differs from this run's
        (a larger ``sampler.num_draws`` is not a difference: it extends the run)."""
        old = self.info()["fingerprint"]
        for key in sorted(set(old) | set(fingerprint)):
            if key not in old and fingerprint[key] == config_mod.field_default(key):
                continue  # a key added after this run dir was made, at its default: same results
            if key == self.EXTENDABLE and fingerprint.get(key, 0) > old.get(key, 0):
                continue
            if old.get(key) != fingerprint.get(key):
                what = "the data file's content" if key == "data.sha256" else key
                raise UserError(f"{self.path}: cannot resume: {what} changed (was {old.get(key)!r}, now "
                                f"{fingerprint.get(key)!r}); use a new --run-dir or restore the setting")

    def checkpoint_steps(self, shard: int) -> list[int]:
        return committed_steps(self.checkpoints(shard))

    def draws_done(self, shard: int) -> int:
        """Draws of ``shard`` in the store: its newest checkpoint's step (0 before the first)."""
        return (self.checkpoint_steps(shard) or [0])[-1]

    def shard_progress(self) -> list[dict]:
        """Per shard: datasets, warmup done, draws done, checkpoint steps, failures (from the
        checkpoints and the event log)."""
        failures: dict[int, int] = {}
        if self.events.exists():
            for line in self.events.read_text().splitlines():
                ev = json.loads(line)
                if ev.get("kind") == "shard_failed":
                    failures[ev["shard"]] = failures.get(ev["shard"], 0) + 1
        out = []
        for shard in self.shards():
            steps = self.checkpoint_steps(shard.index)
            out.append({"shard": shard.index, "datasets": [shard.start, shard.stop],
                        "warmup_done": bool(steps), "draws_done": steps[-1] if steps else 0,
                        "checkpoints": steps, "failures": failures.get(shard.index, 0)})
        return out

    def draws_available(self) -> int:
        """Draws stored for every dataset: the minimum over shards of draws checkpointed (a checkpoint
        is saved only after its draws are in the store)."""
        return min(p["draws_done"] for p in self.shard_progress())

    # --- writes ------------------------------------------------------------------------------------
    def record_event(self, **event) -> None:
        """Append one JSON line to the event log (shard failures and retries, for ``sampler status``)."""
        event["time"] = time.time()
        location.append_line(self.events, json.dumps(event))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock on the run dir for one driver; released even if the process is killed (on
        an object store: a lease, ``sampler.storage.lease``, which a killed driver's successor takes
        over)."""
        if self.is_remote:
            with Lease(self.path / self.LOCK, self.path):
                yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.path}: another sampler process is running on this run dir") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)

    @contextmanager
    def group_lock(self, group: str) -> Iterator[None]:
        """Lock serialising writers of one derived store group (``forecast``): blocking locally, a
        lease on an object store (a second writer is refused)."""
        if self.is_remote:
            with Lease(self.scratch(f"{group}.lock"), self.path):
                yield
            return
        with open(self.scratch(f"{group}.lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield


#: on an object store, the marker object written after a checkpoint's files (``<step>.committed``,
#: beside the step's directory): locally orbax renames a finished checkpoint into place instead.
COMMITTED = ".committed"


def committed_steps(directory: Path) -> list[int]:
    """The complete checkpoints in a shard's checkpoint directory, oldest first."""
    if not directory.exists():
        return []
    names = [p.name for p in directory.iterdir()]
    if location.is_remote(directory):
        names = [n[:-len(COMMITTED)] for n in names if n.endswith(COMMITTED)]
    return sorted(int(n) for n in names if n.isdigit())


def format_status(run_dir: RunDir) -> str:
    """``sampler status``: one row per shard (datasets, warmup, draws done of the total, checkpoint
    steps, failures) and how many shards are complete."""
    rows = run_dir.shard_progress()
    total = run_dir.config().sampler.num_draws
    lines = [f"{'shard':>5} {'datasets':>15} {'warmup':>6} {'draws':>13} {'checkpoints':>20} {'failures':>8}"]
    for r in rows:
        a, b = r["datasets"]
        lines.append(f"{r['shard']:>5} {f'{a}-{b - 1}':>15} {'done' if r['warmup_done'] else '-':>6} "
                     f"{r['draws_done']:>6}/{total:<6} {','.join(map(str, r['checkpoints'])) or '-':>20} "
                     f"{r['failures']:>8}")
    done = sum(r["draws_done"] == total for r in rows)
    lines.append(f"{done} of {len(rows)} shards complete")
    return "\n".join(lines)


class BacktestDir:
    """A backtest's directory: the windows' data file, their run dir, the report and plots."""

    REPORT = "backtest.json"

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    @property
    def windows(self) -> Path:
        return self.path / "windows.npz"

    @property
    def run(self) -> RunDir:
        return RunDir(self.path / "run")

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def check_usable(self) -> None:
        if self.path.exists() and any(self.path.iterdir()) and not self.windows.exists():
            raise UserError(f"{self.path}: exists and is not a backtest dir (no windows.npz); "
                            "choose an empty or new dir")
