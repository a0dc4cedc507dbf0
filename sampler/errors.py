"""User-facing errors: one line saying what is wrong and where.

The CLI exits with code 2 for bad input (``UserError``) and code 3 for an environmental failure: an
``OSError`` such as a full disk or a permission problem, raised anywhere in a command (also inside a
Ray actor, whose ``RayTaskError`` carries it as ``.cause``).  ``environment_failure`` turns one into the
message; ``os_error_with_path`` lets storage code name what it was writing when the OS did not.
"""
from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from typing import Optional


class UserError(Exception):
    """Bad input (config, data, run dir).  ``str(err)`` is the whole message, one line."""


#: errnos that are always environmental, whether or not the error names a file.
ENVIRONMENTAL = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
#: tensorstore (orbax's checkpoint writer) reports an OS failure as a ValueError ending in this.
_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")


def _chain(err: BaseException):
    """``err``, then what caused it: ``.cause`` (Ray's RayTaskError), ``__cause__``, ``__context__``."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__


def _os_error(err: BaseException) -> Optional[OSError]:
    """The first OSError in ``err``'s chain that names a file, else the first with an errno."""
    found = [e for e in _chain(err) if isinstance(e, OSError) and e.errno is not None]
    named = [e for e in found if e.filename is not None]
    return (named or found or [None])[0]


#: what fsspec's object-store clients raise when the store cannot be reached or refuses who we are
#: (botocore/aiobotocore for s3fs, aiohttp for gcsfs and adlfs, google-auth); none is an OSError.
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServerDisconnectedError", "NoCredentialsError", "PartialCredentialsError",
                "DefaultCredentialsError", "RefreshError"}


def _unreachable_store(err: BaseException, path) -> Optional[str]:
    for e in _chain(err):
        if type(e).__name__ in _UNREACHABLE:
            where = f"{path}: " if path is not None else ""
            detail = str(e).replace("\n", " ")
            return (f"{where}cannot use the object store ({type(e).__name__}: {detail}); check its endpoint "
                    "(AWS_ENDPOINT_URL, ...), credentials and network, then run the same command again "
                    "(a run resumes: completed blocks are kept)")
    return None


def environment_failure(err: BaseException, fallback_path=None) -> Optional[str]:
    """The one-line message for an environmental failure (without ``sampler: error:``), or None
    when ``err`` is not one (a bug: the traceback is the right report).  ``fallback_path``: named when
    the OSError carries no file name (e.g. the run dir)."""
    unreachable = _unreachable_store(err, fallback_path)
    if unreachable is not None:
        return unreachable
    os_err = _os_error(err)
    if os_err is None:
        return None
    path = os_err.filename if os_err.filename is not None else fallback_path
    if os_err.errno not in ENVIRONMENTAL and os_err.filename is None:
        return None
    reason = os_err.strerror or os.strerror(os_err.errno)
    if os_err.errno in _NO_SPACE:
        todo = "free space or move run.dir"
    elif os_err.errno in _PERMISSION:
        todo = "make it writable (or readable) for this user or choose another run.dir / data.path"
    else:
        todo = "fix the file system problem"
    todo += ", then run the same command again (a run resumes: completed blocks are kept)"
    where = f"{str(path)}: " if path is not None else ""
    return f"{where}{reason}; {todo}".replace("\n", " ")


def os_error_with_path(err: BaseException, path) -> Optional[OSError]:
    """An OSError naming ``path`` for ``err`` when it is an OS failure that names no file: an OSError
    without a file name, or tensorstore's ValueError with an ``os_error_code``; None otherwise."""
    if isinstance(err, OSError):
        if err.errno is None or err.filename is not None:
            return None
        return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))
    match = _TENSORSTORE_OS_ERROR.search(str(err))
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code), str(path))
    return None


@contextmanager
def naming_path(path):
    """Re-raise an OS failure inside the block as an OSError naming ``path`` (what was being written)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - only OS failures are replaced, the rest re-raised as is
        named = os_error_with_path(err, path)
        if named is None:
            raise
        raise named from err
