"""Choosing the backend for ``--device auto|cpu|cuda``.

Apart from both backends so that neither imports the other: the CUDA backend
builds on :class:`gpunet.backends.base.Backend`, and this module alone knows both.
"""

from __future__ import annotations

from gpunet.backends.cpu import CpuBackend
from gpunet.errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")


def get_backend(device: str):
    """Return ``(backend, notice)`` for ``--device auto|cpu|cuda``.

    ``cuda`` that cannot be used raises DeviceError naming what is missing;
    ``auto`` falls back to the CPU and returns a one-line notice saying why,
    where CuPy is installed (whoever installed it expects the GPU); without
    CuPy, ``auto`` is the CPU and there is nothing to say.
    """
    if device not in DEVICES:
        raise DeviceError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return CpuBackend(), None
    from gpunet.backends import cuda as backend_cuda  # imports CuPy: only where a GPU is asked for

    if device == "auto" and backend_cuda.cupy is None:
        return CpuBackend(), None
    reason = backend_cuda.unavailable_reason()  # probed once per process: a device, NVRTC, cuBLAS, the kernels
    if reason is None:
        return backend_cuda.CupyBackend(), None
    if device == "cuda":
        raise DeviceError(f"--device cuda: {reason}")
    short_reason = reason.split(";")[0].split(" (")[0]  # the gist; `gpunet info` gives the details
    return CpuBackend(), f"CUDA is not usable ({short_reason}); running on the CPU"


def follow_cost_model(device: str, backend, step, graph: bool = False):
    """``(backend, line)``: for ``--device auto`` where CUDA is usable, the CUDA backend where the cost model
    (gpunet.backends.cost_model) predicts one training ``step`` faster on this device than on the CPU, else a
    CpuBackend, and the banner's line saying which and why; any other case ``(backend, None)`` unchanged
    (``--device cuda`` forces the GPU).
    """
    if device != "auto" or backend.name != "cuda":
        return backend, None
    from gpunet.backends import cost_model
    from gpunet.backends import cuda as backend_cuda

    gpu = cost_model.gpu_from_properties(backend_cuda.cupy.cuda.runtime.getDeviceProperties(backend.device.id))
    choice = cost_model.choose(step, gpu, graph=graph)
    return (backend if choice.device == "cuda" else CpuBackend()), choice.line()
