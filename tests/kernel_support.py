"""What the kernel tests share: the host walk that runs a kernel launch on the CPU, and test inputs.

``HostWalk`` is a launcher for gpunet.backends.kernels' wrappers: given a
:class:`gpunet.backends.kernels.Launch`, it runs that kernel's .cu source, compiled for
the host (tests/kernel_host/walk.cpp, built by :func:`build_walk` with
AddressSanitizer and UBSan), thread by thread over the launch's grid, and
copies the results back into the launch's arrays. conftest.py makes it the
``walk`` fixture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gpunet.backends import kernels

HOST_DIR = Path(__file__).parent / "kernel_host"


def tolerance(dtype, scale=1.0):
    """assert_allclose tolerances from the dtype's eps; ``scale`` is the size of the values compared."""
    eps = float(np.finfo(dtype).eps)
    return {"rtol": 100 * eps, "atol": 100 * eps * scale}


# -- the host walk ------------------------------------------------------------------
class WalkProcess:
    """One ``walk --serve`` process, started on first use, taking launches one a line.

    A launch that fails (a sanitizer report, a wrong argument type) ends the
    process; its stderr becomes the AssertionError and the next launch starts
    a new one.
    """

    def __init__(self, exe: Path, workdir: Path):
        self.exe = exe
        self.process = None
        self.stderr_path = workdir / "walk.stderr"
        # The arguments travel as files: in memory where /dev/shm is (7x faster to write than a disk)
        self._arguments = tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else workdir)
        self.workdir = Path(self._arguments.name)

    def run(self, words: list[str]) -> str | None:
        """Run one launch; None when done, else the failure (exit status and stderr)."""
        if self.process is None:
            env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1")
            # stderr to a file, not a pipe: a long sanitizer report must not block the walk
            with open(self.stderr_path, "wb") as stderr:
                self.process = subprocess.Popen(
                    [str(self.exe), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=stderr, text=True, env=env,
                )  # fmt: skip
        self.process.stdin.write("\t".join(words) + "\n")
        self.process.stdin.flush()
        if self.process.stdout.readline() == "done\n":
            return None
        code = self._end()
        return f"exit {code}:\n{self.stderr_path.read_text(errors='replace')[-4000:]}"

    def _end(self) -> int:
        """Close the process's input (a served walk then exits), wait for it, close its pipes: its exit status."""
        process, self.process = self.process, None
        try:
            process.stdin.close()
        except BrokenPipeError:  # it has already died
            pass
        code = process.wait(timeout=120)
        process.stdout.close()
        return code

    def close(self) -> None:
        if self.process is not None:
            self._end()
        self._arguments.cleanup()


class HostWalk:
    """A launcher for gpunet.backends.kernels' wrappers that runs the kernel on the CPU.

    ``grid``/``block`` replace the wrapper's launch shape when given (a small
    grid makes every thread go round its grid-stride loop); ``order`` walks the
    threads forward or in reverse. Every launch is recorded in ``launches``; a
    launch where an array the kernel writes overlaps another argument is refused
    (AssertionError), unrecorded.
    """

    def __init__(self, process: WalkProcess, grid=None, block=None, order="forward"):
        self.process = process
        self.grid, self.block, self.order = grid, block, order
        self.launches: list[kernels.Launch] = []

    def shaped(self, grid=None, block=None, order="forward") -> HostWalk:
        return HostWalk(self.process, grid, block, order)

    def words(self, launch: kernels.Launch) -> list[str]:
        """The walk's words for ``launch``: KERNEL CTYPE GRID BLOCK ORDER ARG..., arrays written to files."""
        grid = self.grid or launch.grid
        block = self.block or launch.block
        words = [launch.kernel, launch.ctype, str(grid), str(block), self.order]
        for k, arg in enumerate(launch.args):
            code = np.dtype(arg.dtype).str[1:]  # 'f4', 'i8', 'u1', ...
            if isinstance(arg, np.ndarray):
                assert arg.flags.c_contiguous, f"argument {k} of {launch.name} is not C-contiguous"
                path = self.process.workdir / f"arg{k}.bin"
                arg.tofile(path)
                words.append(f"A:{code}:{arg.size}:{path}")
            else:
                assert isinstance(arg, np.generic), f"argument {k} of {launch.name} is a {type(arg)}"
                words.append(f"S:{code}:{arg.item()!r}")
        return words

    def __call__(self, launch: kernels.Launch) -> None:
        overlaps = overlapping_arguments(launch)
        assert not overlaps, f"{launch.name}: " + "; ".join(
            f"argument {w}, which the kernel writes, overlaps argument {k}" for w, k in overlaps
        )  # the walk copies each argument, so an aliased launch would pass here and race on a GPU
        self.launches.append(launch)
        words = self.words(launch)
        failure = self.process.run(words)
        if failure is not None:
            raise AssertionError(f"host walk of {launch.name}<<<{words[2]}, {words[3]}>>> failed, {failure}")
        for k, arg in enumerate(launch.args):
            if isinstance(arg, np.ndarray):
                arg[...] = np.fromfile(self.process.workdir / f"arg{k}.bin", dtype=arg.dtype).reshape(arg.shape)


def overlapping_arguments(launch: kernels.Launch) -> list[tuple[int, int]]:
    """(written, other) argument pairs of a launch whose memory overlaps (kernels.WRITES says which are written)."""
    arrays = {k: arg for k, arg in enumerate(launch.args) if isinstance(arg, np.ndarray)}
    return [
        (w, k)
        for w in kernels.WRITES[launch.kernel]
        for k in arrays
        if k != w and w in arrays and np.shares_memory(arrays[w], arrays[k])
    ]


def build_walk(folder: Path) -> Path:
    """tests/kernel_host/walk.cpp + kernels/*.cu built for the host into ``folder``, with ASan and UBSan."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    assert cxx, "the host walk needs a C++ compiler: install g++ (apt-get install g++)"
    exe = folder / "walk"
    command = [
        cxx, "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-ffp-contract=off",
        "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
        f"-I{kernels.source_dir()}", str(HOST_DIR / "walk.cpp"), "-o", str(exe),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"the kernels do not compile for the host:\n{done.stderr}"
    return exe


def logits(rng, classes, m, dtype):
    """Random logits: ordinary columns, wide ones, and columns holding +/-1e4."""
    Z = rng.standard_normal((classes, m)) * rng.choice([1.0, 30.0, 1e4], size=m)
    Z[:, ::5] = rng.choice([-1e4, 0.0, 1e4], size=Z[:, ::5].shape)
    if m > 2:
        Z[:, 1] = 1e4  # a column of equal, huge logits
        Z[:, 2] = -1e4
    return Z.astype(dtype)
