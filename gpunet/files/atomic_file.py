"""Writing a file so that readers see the old contents or the new, never half of either, even after a crash."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: Path, name: str = "gpunet") -> None:
    """Raise OSError where ``write_atomically`` could not write ``name`` into ``folder``: it tries what that does.

    The trial file's name is as long as the temporary file's would be (a name too long for the
    file system fails here, not after the work). Callers check before long work (training).
    """
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".tmp"):
        pass


def fsync_file(path: Path) -> None:
    """Flush the file's contents to the disk: a rename after it never publishes a file a power cut would empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder) -> None:
    """Flush a folder's entries (a rename in it) to the disk; ``folder`` a path, an open descriptor or None.
    Where the system cannot (some file systems refuse a folder's fsync), the rename stands as it is."""
    if folder is None:
        return
    try:
        fd = folder if isinstance(folder, int) else os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a system that cannot open a folder (Windows)
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        if fd is not folder:
            os.close(fd)


def write_atomically(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to the disk, then rename it over ``path``.

    A crash or an exception midway leaves any existing file at ``path`` untouched
    and no temporary file behind. The result gets the permissions a plain
    ``open(path, "w")`` would give (mkstemp alone would make it owner-only).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C and SystemExit too; missing_ok: a failure here must not hide the first one
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
