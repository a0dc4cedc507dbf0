"""Where a run dir or a data file lives: a local path, or an fsspec URL on an object store.

``file://`` URLs are local paths.  Other URLs (``s3://``, ``gs://``, ``az://``, ``memory://``) become
universal_pathlib ``UPath`` objects, which give them pathlib's API over fsspec; credentials and
endpoints come from each filesystem's usual environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for s3fs; ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs).

An object store has no rename, append or ``flock``; what the run dir uses instead:

* a small file (``run.json``, ``config.toml``) is written in one PUT, which object stores make atomic
  (readers see the old object or the new one, never part of one);
* the event log is rewritten whole by its one writer, the driver holding the run dir's lease;
* the store is created in place, ``run.json`` (written last) marking the run dir complete;
* the lock is a lease object (``sampler.storage.lease``);
* a checkpoint is staged locally by orbax and uploaded, a marker object written last
  (``sampler.storage.checkpoint``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from upath import UPath

PathLike = Union[str, os.PathLike]


def is_url(value: PathLike) -> bool:
    """Whether ``value`` names an object-store location (``file://`` is a local path)."""
    text = str(value)
    return "://" in text and not text.startswith("file://")


def location(value: PathLike) -> Path:
    """A ``pathlib.Path`` for a local path or ``file://`` URL, a ``UPath`` for any other URL."""
    if isinstance(value, (UPath, Path)):
        return value
    text = str(value)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return UPath(text) if is_url(text) else Path(text)


def is_remote(path: Path) -> bool:
    return isinstance(path, UPath) and is_url(str(path))


def exists(path: Path) -> bool:
    """``path.exists()``, except that on an object store a failure to ask (an unreachable endpoint,
    missing credentials, access denied) is raised instead of being taken for "no" (as fsspec does)."""
    if not is_remote(path):
        return path.exists()
    try:
        path.fs.info(path.path)
    except FileNotFoundError:
        return False
    return True


def remove_tree(path: Path) -> None:
    """Delete a directory (or a prefix of objects) and everything under it, if it exists."""
    if is_remote(path):
        if path.exists():
            path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def append_line(path: Path, line: str) -> None:
    """Append one line to a text file.  On an object store the object is rewritten whole: callers
    must be its only writer (the event log's is the driver holding the run dir's lease)."""
    if is_remote(path):
        old = path.read_text() if path.exists() else ""
        path.write_text(old + line + "\n")
    else:
        with open(path, "a") as f:
            f.write(line + "\n")


@contextmanager
def local_file(path: Path) -> Iterator[Path]:
    """``path`` itself when local, else a copy in a temporary directory (a file, or a directory such
    as a Zarr store) removed afterwards, for readers that need a local file (numpy, pandas, xarray)."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sampler-data-") as tmp:
        target = Path(tmp) / path.name
        path.fs.get(path.path, str(target), recursive=path.is_dir())
        yield target
