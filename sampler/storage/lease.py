"""The run-dir lock on an object store: a lease object, since object stores have no ``flock``.

``DIR/.lock`` holds ``{"owner", "host", "pid", "expires"}``.  A driver takes it with a conditional
create (fsspec's ``mode="create"``: S3's ``If-None-Match: *``, GCS's ``ifGenerationMatch=0``), so of
two drivers starting at once exactly one succeeds; it renews the lease every ``ttl / 4`` seconds and
deletes it when the run ends.  A lease that has expired (its driver died: no renewal), or that was
written by a process of this host that no longer exists (a killed driver, resumed on the same
machine), is taken over, on S3 conditionally on the ETag read (``If-Match``), so of two drivers
taking over the same stale lease one wins.  Other stores take over with a plain overwrite; that race
(two drivers starting within the same instant on a stale lease) is documented in docs/cluster.md.

A driver that cannot renew its lease for a whole ``ttl`` (the store unreachable), or finds it taken
over, stops the run as SIGTERM does (completed blocks kept, exit 143): another driver may be writing.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from sampler.errors import UserError

log = logging.getLogger(__name__)

#: seconds a lease lasts without renewal ($SAMPLER_LEASE_SECONDS overrides).
DEFAULT_TTL = 60.0


def _ttl() -> float:
    return float(os.environ.get("SAMPLER_LEASE_SECONDS", DEFAULT_TTL))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _precondition_failed(err: OSError) -> bool:
    """Whether a conditional write failed its condition (s3fs: FileExistsError for If-None-Match, an
    OSError "At least one of the pre-conditions you specified did not hold" for If-Match)."""
    return isinstance(err, FileExistsError) or "precondition" in str(err).lower().replace("-", "")


class Lease:
    """One driver's lease on ``path`` (a ``UPath`` on an object store)."""

    def __init__(self, path: Path, run_dir: Path):
        self.path, self.run_dir = path, run_dir
        self.ttl = _ttl()
        self.owner = uuid.uuid4().hex
        self._etag: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def _fs(self):
        return self.path.fs

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.ttl}).encode()

    def _write(self, **conditions) -> None:
        response = self._fs.pipe_file(self.path.path, self._body(), **conditions)
        # s3fs returns S3's PutObject response: the ETag of what we wrote, for the next If-Match
        self._etag = response.get("ETag") if isinstance(response, dict) else None

    def _if_match(self, etag: Optional[str]) -> dict:
        """A conditional overwrite where the store supports one (S3's If-Match on PUT)."""
        return {"IfMatch": etag} if etag and self.path.protocol in ("s3", "s3a") else {}

    def acquire(self) -> None:
        """Take the lease or raise ``UserError`` naming who holds it; then renew it in a thread."""
        try:
            self._write(mode="create")
        except FileExistsError:
            self._take_over()
        self._thread = threading.Thread(target=self._renew_loop, name="sampler-lease", daemon=True)
        self._thread.start()

    def _take_over(self) -> None:
        info = self._fs.info(self.path.path)
        held = json.loads(self._fs.cat_file(self.path.path))
        gone = held["host"] == socket.gethostname() and not _pid_alive(held["pid"])
        left = held["expires"] - time.time()
        if left > 0 and not gone:
            raise UserError(f"{self.run_dir}: another sampler process is running on this run dir (host "
                            f"{held['host']}, pid {held['pid']}; its lease expires in {left:.0f} s unless renewed)")
        try:
            self._write(**self._if_match(info.get("ETag")))
        except OSError as err:
            if not _precondition_failed(err):
                raise
            raise UserError(f"{self.run_dir}: another sampler process took over this run dir's lease") from None
        log.info("took over the lease of %s (%s)", self.run_dir, "its process is gone" if gone else "expired")

    def _renew_loop(self) -> None:
        last = time.time()
        while not self._stop.wait(self.ttl / 4):
            try:
                held = json.loads(self._fs.cat_file(self.path.path))
                if held["owner"] != self.owner:
                    return self._lost("another driver took it over")
                self._write(**self._if_match(self._etag))
                last = time.time()
            except Exception as err:  # noqa: BLE001 - a store hiccup: retry until the lease would expire
                if time.time() - last > self.ttl:
                    return self._lost(f"it could not be renewed for {self.ttl:.0f} s ({err})")

    def _lost(self, why: str) -> None:
        log.error("%s: lost the run dir's lease: %s; stopping at the next block", self.run_dir, why)
        os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if json.loads(self._fs.cat_file(self.path.path))["owner"] == self.owner:
                self._fs.rm_file(self.path.path)
        except (OSError, ValueError, KeyError):
            pass  # gone or unreadable: nothing of ours to delete
