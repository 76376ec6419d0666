"""Where the commands write, and what they may replace.

The rules (README, "Your files are safe"):

* A command replaces only a file of the kind it writes, told by its content (``kind_of``): ``train`` a
  gpunet model (a file whose metadata carries gpunet's format marker and a version this gpunet reads, not
  any zip with a ``metadata`` member), ``predict`` a Kaggle submission (a header of exactly ``ImageId,Label``
  and rows of two whole numbers), and at ``--probabilities`` a file of class probabilities (a header of exactly
  ``ImageId,p0,...,p9`` and rows of a whole number and ten decimal numbers); both read whole within one bound.
  Anything else at ``--out`` is refused before any work, as is an ``--out``
  that is one of the command's inputs; it is checked again just before the rename (``save_replacing_only``):
  a file that appeared meanwhile (another kind, or a write-protected or unreadable one) is kept, the new
  file goes beside it.
* A replaced model is never lost: the one it replaces is kept beside it as ``model.previous.npz`` (one
  generation, as ``cp --backup``), and where another run wrote ``--out`` after this one started, this one
  goes beside it (``model.completed.npz``) rather than over it.
* A run that did not finish well (interrupted, diverged, learned nothing)
  never replaces a file: it writes ``--out`` only where nothing is there yet,
  else a free name beside it (``model.interrupted.npz``), and says where.
* Every file appears whole or not at all: it is written under a temporary name in its folder, flushed to
  the disk (fsync), then renamed, and the folder flushed. Publishing is serialised between gpunet
  processes by a lock on the folder, so two runs writing one ``--out`` at once both keep their models.
  Temporary files of processes that died (SIGKILL, a power cut) are removed by the next save there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no folder lock; the checks just before the rename still hold
    fcntl = None

from gpunet.files.atomic_file import check_writable, fsync_file, fsync_folder
from gpunet.files.data import ZIP_ERRORS
from gpunet.errors import GpunetError, ModelFileError

MODEL, SUBMISSION, PNG = "a gpunet model", "a Kaggle submission", "a PNG image"
SUBMISSION_HEADER = b"ImageId,Label"
# A submission or a probabilities file is read whole to be recognised, up to this many bytes (some 1.5 million
# submission rows, some 70,000 probability rows; Kaggle's test set has 28,000 digits).
SUBMISSION_LIMIT = 16 << 20
PROBABILITIES = "a file of class probabilities"
CHECKPOINT = "a gpunet checkpoint"  # a resumable run's state (files/resume_file.py), written when a run is stopped
OTHER = "another kind of file"


def _csv_rule(header: bytes, row: bytes) -> re.Pattern:
    """The whole file: ``header`` alone on its first line, then lines that each match ``row`` (\\n or \\r\\n ends,
    the last line's end optional)."""
    return re.compile(re.escape(header) + rb"\r?\n(?:" + row + rb"\r?\n)*(?:" + row + rb"\r?)?")


WHOLE_NUMBER = rb"[0-9]{1,18}"
DECIMAL_NUMBER = rb"[0-9]{1,25}(?:\.[0-9]{0,25})?(?:[eE][-+]?[0-9]{1,3})?"  # as Python writes a float: 0.25, 1e-05
SUBMISSION_ROWS = _csv_rule(SUBMISSION_HEADER, WHOLE_NUMBER + b"," + WHOLE_NUMBER)
HEAD_BYTES = 64  # as much of a file as its kind is told from: the probabilities header (39 bytes) fits
MAX_BESIDE = 100  # model.interrupted.npz, model.interrupted-2.npz, ...
PREVIOUS = "previous"  # model.previous.npz: the model a completed run replaced

# Temporary files are named after this machine and process, so that the next save can tell a dead
# process's leftovers (removed) from a running one's (kept): .gpunet-HOST-PID-xxxx.new, and the
# atomic writer's ..gpunet-HOST-PID-xxxx.new.yyyy.tmp inside it.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
TEMPORARY = re.compile(r"\.{1,2}gpunet-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-.*\.(?:new|tmp)")


def probabilities_header(classes: int = 10) -> str:
    """The first line of ``predict --probabilities``'s CSV: ImageId,p0,...,p9 (p_k: the probability of class k)."""
    return ",".join(["ImageId", *(f"p{k}" for k in range(classes))])


PROBABILITIES_HEADER = probabilities_header().encode()
PROBABILITIES_ROWS = _csv_rule(PROBABILITIES_HEADER, WHOLE_NUMBER + (b"," + DECIMAL_NUMBER) * 10)
# (kind, its header, the rule its whole content follows), for the CSV files gpunet writes
CSV_KINDS = ((PROBABILITIES, PROBABILITIES_HEADER, PROBABILITIES_ROWS),
             (SUBMISSION, SUBMISSION_HEADER, SUBMISSION_ROWS))


def kind_of(path: Path) -> str | None:
    """What the file at ``path`` holds, in words; None where it is empty (nothing to lose)."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        if not head:
            return None
        for kind, header, rows in CSV_KINDS:  # the probabilities header starts ImageId too: tried first
            if head.startswith(header):
                return _csv_kind(head + f.read(SUBMISSION_LIMIT), kind, header, rows)
    if head.startswith(b"\x89PNG"):
        return PNG
    if head.startswith(b"PK"):
        return _zip_kind(path)
    return OTHER


def _csv_kind(content: bytes, kind: str, header: bytes, rows: re.Pattern) -> str:
    """``kind`` where the whole ``content`` (within the bound) follows ``rows``: the header exactly, then its rows."""
    start = header.decode()
    if len(content) > SUBMISSION_LIMIT:
        return f"a file starting {start} too large to be {kind} (over {SUBMISSION_LIMIT >> 20} MiB)"
    if rows.fullmatch(content) is None:
        what = ("rows of two whole numbers" if kind == SUBMISSION else
                "rows of a whole number and ten decimal numbers")
        return f"a file starting {start} that is not {kind} (a header of exactly {start}, then {what})"
    return kind


def _zip_kind(path: Path) -> str:
    """MODEL where the metadata (read by the model file's own reader, with its bounds) is gpunet's; CHECKPOINT
    where the file is a resumable checkpoint (read by its own reader, with its bounds)."""
    from gpunet.files.checkpoint import load_metadata
    from gpunet.files.resume_file import is_checkpoint

    try:  # bounded: the zip's directory is checked before zipfile reads it (a 200,000-member file costs nothing)
        load_metadata(path)
    except (ModelFileError, *ZIP_ERRORS):
        if is_checkpoint(path):
            return CHECKPOINT
        return "a zip archive that is not a gpunet model this version reads"
    return MODEL


def describe_model(path: Path) -> str:
    """The model at ``path`` in a few words: its architecture and validation accuracy, as its metadata says
    ("the model 784-16-16-10, validation accuracy 91.20%"; "a gpunet model with no validation accuracy recorded")."""
    from gpunet.files.checkpoint import load_metadata

    try:
        meta = load_metadata(path)
    except Exception:  # noqa: BLE001 - a file no reader can describe is still named, never a traceback
        return "a gpunet model"
    spec, sizes = meta.get("architecture"), meta.get("layer_sizes")
    if isinstance(spec, str) and len(spec) <= 200 and spec.isprintable() and spec.isascii():
        model = f"the model {spec}"
    elif isinstance(spec, str):
        model = "the model of a stack of layers"
    elif isinstance(sizes, list) and all(type(n) is int for n in sizes) and len(sizes) <= 100:
        model = f"the model {'-'.join(map(str, sizes))}"
    else:
        model = "a gpunet model"
    final = meta.get("final_metrics")
    accuracy = final.get("val_accuracy") if isinstance(final, dict) else None
    if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) and 0 <= accuracy <= 1:
        return f"{model}, validation accuracy {100 * accuracy:.2f}%"
    return f"{model} with no validation accuracy recorded"


def identity(path: Path):
    """What is at ``path`` now, to tell later whether anyone wrote it meanwhile; None where nothing is."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns


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
    reason = refusal(path, kind)
    if reason is not None:
        raise GpunetError(f"{option} {path}: {reason}; refusing to replace it, give another name")
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


def refusal(path: Path, kind: str) -> str | None:
    """Why a file of ``kind`` may not take the place of what is at ``path``, in words; None where it may (nothing
    there, an empty file, or a file of ``kind``). The one rule every writer asks, before its work and again just
    before its rename (``save_replacing_only``)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):  # replacing it would replace the link, not the file it points to
        return "is a symbolic link, not a file"
    if not stat.S_ISREG(mode):  # a folder, a device, a FIFO, a socket: never replaced by a file
        return "is not a regular file"
    if not mode & 0o222:  # root could replace it anyway; the user marked it read-only
        return "is write-protected"
    try:
        found = kind_of(path)
    except OSError as error:
        return f"cannot be read ({error.strerror or error}), so what it holds cannot be told"
    except Exception as error:  # noqa: BLE001 - any failure to tell a file's kind (a RecursionError, a GpunetError
        return f"what it holds cannot be told ({type(error).__name__})"  # from a hostile file): not ours to replace
    if found in (None, kind):
        return None
    # A kind's own name is said with what was wanted; a near miss ("a file starting ImageId,Label that is not a
    # Kaggle submission ...") already says what it is not.
    return (f"holds {found}, not {kind}" if found in (MODEL, SUBMISSION, PNG, PROBABILITIES, CHECKPOINT, OTHER)
            else f"holds {found}")


def names_beside(path: Path, tag: str):
    """``path`` itself, then model.TAG.npz, model.TAG-2.npz, ... beside it."""
    yield path
    yield path.with_name(f"{path.stem}.{tag}{path.suffix}")
    for n in range(2, MAX_BESIDE + 1):
        yield path.with_name(f"{path.stem}.{tag}-{n}{path.suffix}")


def previous_path(path: Path) -> Path:
    """Where a replaced model is kept: model.previous.npz beside model.npz."""
    return path.with_name(f"{path.stem}.{PREVIOUS}{path.suffix}")


@dataclass
class Saved:
    """Where a file went and what it took the place of (``save_replacing_only``)."""
    path: Path
    replaced: str | None = None  # what was at --out and is now at ``previous``, in words
    previous: Path | None = None
    beside_because: str | None = None  # why the file went beside --out rather than to it, in words


class SaveError(GpunetError):
    """A save that failed (a full disk, a folder gone): the message names the path and says what was kept, and
    what the command saved before it (``after``), if anything."""

    def __init__(self, path: Path, noun: str, reason: str, kept: str, saved_before: str | None = None):
        self.path, self.noun, self.reason, self.kept = path, noun, reason, kept
        saved = "nothing was saved" if saved_before is None else f"{noun} was not saved (only {saved_before})"
        super().__init__(f"{path}: could not save {noun}: {reason}; {saved}, {kept}")

    def after(self, saved_before: str) -> "SaveError":
        """The same failure, in a command that had saved ``saved_before`` (in words: "the probabilities, to p.csv")."""
        return SaveError(self.path, self.noun, self.reason, self.kept, saved_before)


UNCHECKED = object()


def save_without_replacing(path: Path, tag: str, save, noun: str = "the model") -> Path:
    """``save(p)`` writes a complete file at ``p``; publish it at ``path``, or beside it if taken.

    Never replaces a file, not even one another process creates meanwhile: the
    file is written under a temporary name and hard-linked to a free name
    (a link fails where the name exists, atomically).
    """
    return _save_then(path, save, lambda tmp: _publish_at_free_name(tmp, path, tag), noun)


def save_replacing_only(path: Path, kind: str, tag: str, save, *, found_at_start=UNCHECKED,
                        keep_previous: bool = False, refuse: bool = False, noun: str = "the model") -> Saved:
    """``save(p)`` writes a complete file at ``p``; publish it at ``path``, replacing only a file of ``kind``.

    ``path`` was checked before the work (``check_out_path``), but another file may have appeared there since:
    it is checked again once the new file is complete, just before the rename, and where it no longer holds
    ``kind`` the file goes beside it as ``save_without_replacing`` puts it (``refuse``: GpunetError instead).
    ``found_at_start``: ``identity(path)`` when the work began; where something else is there now (another
    run wrote it), the file goes beside it too. ``keep_previous``: the file replaced is kept as
    model.previous.npz (replacing only a model there, or nothing), and ``Saved`` says which it was.
    """
    def publish(tmp: Path) -> Saved:
        if not _holds(path, kind):
            reason = (f"a file gpunet does not replace (another kind, write-protected or unreadable) appeared at "
                      f"{path} while it ran")
            return _beside(tmp, reason)
        now = identity(path)
        if found_at_start is not UNCHECKED and now != found_at_start and now is not None and now[2] > 0:
            return _beside(tmp, f"another run wrote {path} after this one started")
        if not keep_previous or now is None or now[2] == 0:
            os.replace(tmp, path)
            return Saved(path)
        previous = previous_path(path)
        if not _holds(previous, kind):
            return _beside(tmp, f"{previous}, where the model at {path} would be kept, holds a file gpunet does "
                                "not replace")
        replaced = describe_model(path)
        _keep_as_previous(path, previous)
        os.replace(tmp, path)
        return Saved(path, replaced=replaced, previous=previous)

    def _beside(tmp: Path, reason: str) -> Saved:
        if refuse:
            raise GpunetError(f"{reason}; refusing to replace it, give another name")  # the reason names the path
        return Saved(_publish_at_free_name(tmp, path, tag), beside_because=reason)

    return _save_then(path, save, publish, noun)


def _keep_as_previous(path: Path, previous: Path) -> None:
    """Give the file at ``path`` the name ``previous`` too (a hard link, else a copy), replacing the one there."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".gpunet-{HOST}-{os.getpid()}-", suffix=".new")
    os.close(fd)
    tmp = Path(tmp)
    try:
        tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            import shutil

            shutil.copy2(path, tmp)
            fsync_file(tmp)
        os.replace(tmp, previous)
    finally:
        tmp.unlink(missing_ok=True)


def _holds(path: Path, kind: str) -> bool:
    """Whether replacing ``path`` loses nothing but a file of ``kind``: nothing there, an empty file, or that kind.

    As ``check_out_path`` rules at the start (``refusal``): a link, a folder, a FIFO, a write-protected file, and
    one whose kind cannot be told (unreadable, or a reader fails on it in any way) are never replaced: the new
    file goes beside it, never lost with a failed save."""
    return refusal(path, kind) is None


def _save_then(path: Path, save, publish, noun: str):
    """``save`` into a temporary file beside ``path``, flush it to the disk, then ``publish(temporary)`` while
    holding the folder's lock; no temporary file is left. An OSError is a SaveError naming ``path``."""
    remove_stale_temporaries(path.parent)
    existed = path.exists()
    try:
        # A short name of its own: ``save`` may write it through a temporary file named after it (atomic_file).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".gpunet-{HOST}-{os.getpid()}-", suffix=".new")
        os.close(fd)
        tmp = Path(tmp)
        try:
            save(tmp)
            fsync_file(tmp)
            with _folder_locked(path.parent) as folder:
                published = publish(tmp)
                fsync_folder(folder)
            return published
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        kept = f"{path} is as it was" if existed else f"nothing is at {path}"
        raise SaveError(path, noun, error.strerror or str(error), kept) from None


@contextlib.contextmanager
def _folder_locked(folder: Path):
    """The folder's descriptor, locked against other gpunet processes publishing there (where the system can;
    None where it cannot open a folder, as on Windows: the checks just before the rename still run)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield None
        return
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # a file system without locks: the checks still run
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files that gpunet processes of this machine left in ``folder`` when they died."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = TEMPORARY.fullmatch(entry.name)
        if match and match["host"] == HOST and not _alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


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
