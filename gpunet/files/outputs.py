"""Where the commands write, and what they may replace.

The rules (README, "Your files are safe"):

* A command replaces only a file of the kind it writes: ``train`` a gpunet
  model, ``predict`` a Kaggle submission (and at ``--probabilities`` a file of class probabilities). Anything else at ``--out`` (a
  submission, an image, a model of another program) is refused before any
  work, as is an ``--out`` that is one of the command's inputs; a model is checked again just before it
  replaces one (``save_replacing_only``): a file that appeared meanwhile (another kind, or a write-protected or
  unreadable one) is kept, the model goes beside it.
* A run that did not finish well (interrupted, diverged, learned nothing)
  never replaces a file: it writes ``--out`` only where nothing is there yet,
  else a free name beside it (``model.interrupted.npz``), and says where.
* Every file appears whole or not at all (:mod:`gpunet.files.atomic_file`): two runs
  writing one ``--out`` at once leave one complete model.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import zipfile
from pathlib import Path

from gpunet.files.atomic_file import check_writable
from gpunet.files.data import ZIP_ERRORS
from gpunet.errors import GpunetError

MODEL, SUBMISSION, PNG = "a gpunet model", "a Kaggle submission", "a PNG image"
SUBMISSION_HEADER = b"ImageId,Label"
PROBABILITIES = "a file of class probabilities"
HEAD_BYTES = 64  # as much of a file as its kind is told from: the probabilities header (39 bytes) fits
MAX_BESIDE = 100  # model.interrupted.npz, model.interrupted-2.npz, ...


def kind_of(path: Path) -> str | None:
    """What the file at ``path`` holds, in words; None where it is empty (nothing to lose)."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        return None
    if holds_probabilities(head):
        return PROBABILITIES
    if head.startswith(SUBMISSION_HEADER):
        return SUBMISSION
    if head.startswith(b"\x89PNG"):
        return PNG
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                return MODEL if "metadata.npy" in archive.namelist() else "a zip archive that is not a gpunet model"
        except ZIP_ERRORS:
            return "a zip archive gpunet cannot read"
    return "another kind of file"


def probabilities_header(classes: int = 10) -> str:
    """The first line of ``predict --probabilities``'s CSV: ImageId,p0,...,p9 (p_k: the probability of class k)."""
    return ",".join(["ImageId", *(f"p{k}" for k in range(classes))])


def holds_probabilities(head: bytes) -> bool:
    """Whether a file's first bytes are the probabilities header, a whole line of it."""
    header = probabilities_header().encode()
    return head.startswith(header + b"\n") or head.startswith(header + b"\r\n")


def check_out_path(option: str, path: Path, kind: str, **inputs) -> Path:
    """Fail before any work if ``path`` cannot be written, is an input, or holds another kind of file.

    ``kind``: what the command writes (MODEL, SUBMISSION or PROBABILITIES); ``inputs``: the
    command's input files by option name (``data=...``; a tuple for an option given more than once).
    """
    if path.is_dir():
        raise GpunetError(f"{option} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise GpunetError(f"{option} {path}: folder '{path.parent}' does not exist")
    for name, sources in inputs.items():
        for source in sources if isinstance(sources, (tuple, list)) else (sources,):  # --model a --model b
            if source is not None and path.exists() and source.exists() and os.path.samefile(path, source):
                raise GpunetError(f"{option} {path}: is the --{name} file; writing it would destroy it, "
                                  "give another name")
    if path.is_symlink():  # replacing it would replace the link, not the file it points to: say so instead
        raise GpunetError(f"{option} {path}: is a symbolic link; give the name of a file, not a link")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # a device, a FIFO, a socket: never replaced by a file
            raise GpunetError(f"{option} {path}: is not a regular file; refusing to replace it, give another name")
        if not mode & 0o222:  # root could replace it anyway; the user marked it read-only
            raise GpunetError(f"{option} {path}: is write-protected; refusing to replace it, give another name")
        found = kind_of(path)
        if found not in (None, kind):
            raise GpunetError(f"{option} {path}: holds {found}, not {kind}; refusing to replace it, "
                              "give another name")
    try:
        # As long a name as the longest that may be written: a failed run's model.interrupted-100.npz.
        check_writable(path.parent, f"{path.stem}.interrupted-{MAX_BESIDE}{path.suffix}")
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:  # the name, not the folder
            beside = f".interrupted-{MAX_BESIDE}"
            raise GpunetError(f"{option} {path}: the name is too long for the file system with the {len(beside)} "
                              f"characters a failed run's name adds ({beside}); give a shorter name") from None
        raise GpunetError(f"{option} {path}: cannot write in folder '{path.parent}' ({error.strerror or error})") from None
    return path


def names_beside(path: Path, tag: str):
    """``path`` itself, then model.TAG.npz, model.TAG-2.npz, ... beside it."""
    yield path
    yield path.with_name(f"{path.stem}.{tag}{path.suffix}")
    for n in range(2, MAX_BESIDE + 1):
        yield path.with_name(f"{path.stem}.{tag}-{n}{path.suffix}")


def save_without_replacing(path: Path, tag: str, save) -> Path:
    """``save(p)`` writes a complete file at ``p``; publish it at ``path``, or beside it if taken.

    Never replaces a file, not even one another process creates meanwhile: the
    file is written under a temporary name and hard-linked to a free name
    (a link fails where the name exists, atomically).
    """
    return _save_then(path, save, lambda tmp: _publish_at_free_name(tmp, path, tag))


def save_replacing_only(path: Path, kind: str, tag: str, save) -> Path:
    """``save(p)`` writes a complete file at ``p``; publish it at ``path``, replacing only a file of ``kind``.

    ``path`` was checked before the work (``check_out_path``), but another file may have appeared there since:
    it is checked again once the new file is complete, just before the rename, and where it no longer holds
    ``kind`` the file goes beside it as ``save_without_replacing`` puts it. Returns where it went.
    """
    def publish(tmp: Path) -> Path:
        if not _holds(path, kind):
            return _publish_at_free_name(tmp, path, tag)
        os.replace(tmp, path)
        return path

    return _save_then(path, save, publish)


def _holds(path: Path, kind: str) -> bool:
    """Whether replacing ``path`` loses nothing but a file of ``kind``: nothing there, an empty file, or that kind.

    As ``check_out_path`` rules at the start: a link, a folder, a FIFO, a write-protected file, and one that
    cannot be read (so its kind cannot be told) are never replaced."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return True
    if not stat.S_ISREG(mode) or not mode & 0o222:
        return False
    try:
        return kind_of(path) in (None, kind)
    except OSError:  # unreadable: the model goes beside it rather than lost with a failed save
        return False


def _save_then(path: Path, save, publish) -> Path:
    """``save`` into a temporary file beside ``path``, then ``publish(temporary)``; no temporary file is left."""
    # A short name of its own: ``save`` may write it through a temporary file named after it (atomic_file).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gpunet-", suffix=".new")
    os.close(fd)
    tmp = Path(tmp)
    try:
        save(tmp)
        return publish(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def _publish_at_free_name(tmp: Path, path: Path, tag: str) -> Path:
    """Link ``tmp`` to ``path`` if free, else to the first free name beside it (model.TAG.npz, ...)."""
    for candidate in names_beside(path, tag):
        try:
            _publish(tmp, candidate)
            return candidate
        except FileExistsError:
            continue
    raise GpunetError(f"{path}: {MAX_BESIDE} earlier {tag} models are beside it; remove some and run again")


def _publish(tmp: Path, path: Path) -> None:
    """Give the complete file ``tmp`` the name ``path``; FileExistsError where that name is taken."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name first, then fill it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        try:
            os.replace(tmp, path)
        except BaseException:
            path.unlink(missing_ok=True)  # the empty placeholder is ours: leave nothing behind
            raise
