"""CuPy backend (placeholder until the CUDA issue lands): only the availability probe."""

from __future__ import annotations

from functools import lru_cache

INSTALL_HINT = "install CuPy with: pip install 'gpunet[cuda12]' (or 'gpunet[cuda13]')"


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when a CUDA device is usable, else one line saying what is missing.

    Asked once per process, by actually asking the driver for a device, because
    CuPy can be installed where no usable GPU exists.
    """
    try:
        import cupy
    except ImportError:
        return f"CuPy is not installed; {INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # the driver library is missing or refuses: say which
        return f"no usable CUDA driver ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if count == 0:
        return "no CUDA device found"
    return "the CUDA backend is not built yet"


class CupyBackend:  # pragma: no cover - replaced by the CUDA issue
    def __init__(self):
        raise RuntimeError("CupyBackend is not implemented yet")
