"""Shared fixtures: every backend-generic test runs once per backend.

The CUDA backend's parameter is marked ``gpu`` and skipped, with the reason
shown, where no usable GPU exists; the CPU backend runs everywhere.
"""

import numpy as np
import pytest

from gpunet.backend import get_backend
from gpunet.cli import main


def cuda_skip_reason():
    from gpunet import backend_cuda

    return backend_cuda.unavailable_reason()


BACKEND_PARAMS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu]),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    if request.param == "cuda":
        reason = cuda_skip_reason()
        if reason is not None:
            pytest.skip(f"CUDA backend: {reason}")
    return get_backend(request.param)[0]


def tolerance(dtype) -> float:
    """A relative tolerance from the dtype: a few hundred ulps, room for sums over ~1000 terms."""
    return float(np.finfo(dtype).eps) * 256


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
