"""Graceful stop: SIGTERM (preemption, ``ray job stop``, a Kubernetes eviction) or SIGINT (Ctrl-C)
ends a run at the next block boundary, with every completed block stored and checkpointed.

The driver installs the handlers (``stop_on_signals``) and hands the ``StopRequest`` to the shard
loops, which call ``check`` after each block's draws and checkpoint are written; Ray actors are
killed instead (a block in flight is dropped; its shard resumes from its last checkpoint, as after
any lost worker).  A second signal acts as it would have without us: SIGTERM kills at once, SIGINT
raises ``KeyboardInterrupt``.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class Stopped(Exception):
    """The run stopped on signal ``signum`` at a block boundary; its exit code is 128 + signum."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The signal received, if any (set by the handler, read between blocks)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def check(self) -> None:
        """Raise ``Stopped`` if a stop was requested."""
        if self.signum is not None:
            raise Stopped(self.signum)


@contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[StopRequest]:
    """Within the block, the first of ``signals`` requests a stop instead of ending the process.
    Signal handlers belong to the main thread: elsewhere (a run started from another thread) the
    request is never set and the signals act as usual."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, frame):
        request.signum = signum
        for s, h in previous.items():  # a second signal is not ours to soften
            signal.signal(s, h)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
