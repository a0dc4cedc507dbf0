"""Atomic file writes: readers see the old file or the new one, never a partial one.  Locally a
temporary file beside the target, then ``os.replace``; on an object store one PUT, which is atomic
there (``sampler.storage.location``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from sampler.storage.location import PathLike, is_remote, location


def atomic_write(path: PathLike, content: Union[str, bytes]) -> None:
    """Replace ``path`` with ``content`` (text or bytes) atomically."""
    path = location(path)
    data = content if isinstance(content, bytes) else content.encode()
    if is_remote(path):
        path.write_bytes(data)
        return
    tmp = Path(path).with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
