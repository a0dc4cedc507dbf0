"""Atomic file writes: a temporary file beside the target, then ``os.replace`` (readers see the old
file or the new one, never a partial one)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def atomic_write(path: Union[str, Path], content: Union[str, bytes]) -> None:
    """Replace ``path`` with ``content`` (text or bytes) atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)
