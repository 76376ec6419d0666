"""Shared fixtures: every backend-generic test runs once per backend.

The CUDA backend's parameter is marked ``gpu`` and skipped, with the reason
shown, where no usable GPU exists; the CPU backend runs everywhere.
"""

from pathlib import Path

import numpy as np
import pytest

from gpunet.backends.devices import get_backend
from gpunet.files.data import load_sample
from gpunet.frontends.cli import main


def pytest_configure(config):
    # .ci/run runs these a second time under another BLAS kernel (OPENBLAS_CORETYPE): `pytest -m paths`
    config.addinivalue_line("markers", "paths: compares results of two computation paths or runs (layouts, threads, "
                                       "compiled or not, devices), which BLAS's kernel choice can change")


def cuda_skip_reason():
    from gpunet.backends import cuda as backend_cuda

    return backend_cuda.unavailable_reason()


BACKEND_PARAMS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu]),
    pytest.param("cuda-stand-in", id="cuda-stand-in", marks=[pytest.mark.kernels]),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """The CPU backend; the CUDA one on a device; the CUDA one on the CuPy stand-in (kernels walked on the CPU)."""
    if request.param == "cuda-stand-in":
        return request.getfixturevalue("stand_in_cuda")
    if request.param == "cuda":
        reason = cuda_skip_reason()
        if reason is not None:
            pytest.skip(f"CUDA backend: {reason}")
    return get_backend(request.param)[0]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's parsed-data cache."""
    monkeypatch.setenv("GPUNET_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def run(capsys, *args):
    """Run ``gpunet ARGS`` in-process through the real entry point; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def sample_npz(folder: Path, count: int) -> Path:
    """The bundled sample's first ``count`` labeled digits as ``folder``/digits.npz: a data file for quick runs."""
    sample = load_sample()
    path = folder / "digits.npz"
    np.savez(path, images=sample.images[:count], labels=sample.labels[:count])
    return path


# -- the CUDA kernels without a GPU (tests/kernel_support.py, tests/cupy_stand_in.py) -------------
@pytest.fixture(scope="session")
def walk_exe(tmp_path_factory) -> Path:
    """The host-walk binary: the kernels built for the CPU with AddressSanitizer and UBSan, once per session."""
    from tests.kernel_support import build_walk

    return build_walk(tmp_path_factory.mktemp("walk"))


@pytest.fixture
def walk(walk_exe, tmp_path):
    """A launcher that runs each kernel launch on the CPU, thread by thread, recording the launches."""
    from tests.kernel_support import HostWalk, WalkProcess

    process = WalkProcess(walk_exe, tmp_path)
    yield HostWalk(process)
    process.close()


@pytest.fixture
def stand_in_cuda(walk, monkeypatch):
    """A real CupyBackend on the CuPy stand-in, its kernels walked on the CPU (tests/cupy_stand_in.py)."""
    from tests.cupy_stand_in import stand_in_backend

    return stand_in_backend(monkeypatch, walk)
