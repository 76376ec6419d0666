"""The CUDA backend: CuPy arrays, with the hot operations in the custom kernels of gpunet.kernels.

``CupyBackend`` inherits every operation of ``Backend`` written against
``self.xp`` (now CuPy) and overrides only the hot ones that have a kernel,
for float32 and float64; anything else (another dtype, a non-contiguous
array) takes the generic ``super()`` path, which is also what the kernels are
tested against. Importing this module never needs CuPy or a GPU: it is where
``get_backend`` asks, once per process, whether a usable device exists.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gpunet import kernels
from gpunet.backend import Backend

try:  # optional: the CPU backend works without it
    import cupy
except ImportError:
    cupy = None

INSTALL_HINT = "install CuPy with: pip install 'gpunet[cuda12]' (or 'gpunet[cuda13]')"
DRIVER_HINT = "install the NVIDIA driver for the GPU (CUDA 12 or newer), or use --device cpu"


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when a CUDA device is usable, else one line saying what is missing.

    Asked once per process, by actually asking the driver for a device, because
    CuPy can be installed where no usable GPU exists.
    """
    if cupy is None:
        return f"CuPy is not installed; {INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # the driver library is missing or refuses: say which
        return (
            f"no usable CUDA driver ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            f"{DRIVER_HINT}"
        )
    if count == 0:
        return f"no CUDA device found; {DRIVER_HINT}"
    return None


def _on_device(*arrays) -> bool:
    """Whether the kernels can take these arrays: CuPy arrays, C-contiguous, one supported dtype."""
    first = arrays[0]
    return all(
        isinstance(a, cupy.ndarray) and a.flags.c_contiguous and a.dtype == first.dtype for a in arrays
    ) and kernels.supports(first.dtype)


class CupyBackend(Backend):
    """CuPy on the current CUDA device; hot operations in custom kernels."""

    name = "cuda"
    xp = cupy

    def __init__(self):
        if cupy is None:
            raise RuntimeError(f"CuPy is not installed; {INSTALL_HINT}")
        self.device = cupy.cuda.Device()

    def describe(self) -> str:
        props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
        major, minor = props["major"], props["minor"]
        return (
            f"CUDA device {self.device.id}: {_text(props['name'])} (compute capability {major}.{minor}, "
            f"{props['totalGlobalMem'] / 2**30:.1f} GiB), CuPy {cupy.__version__}"
        )

    # -- moving data ---------------------------------------------------------
    def asarray(self, array, dtype=None):
        return cupy.asarray(array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        if isinstance(array, cupy.ndarray):
            return array.get()
        return np.asarray(array)

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    # -- hot operations: kernels for float32/float64, the generic path otherwise --
    def gather_scaled(self, images, index, dtype, out=None):
        if (
            kernels.supports(dtype)
            and isinstance(images, cupy.ndarray)
            and images.dtype == np.uint8
            and images.ndim == 2
            and images.flags.c_contiguous
            and (out is None or _on_device(out) and out.dtype == np.dtype(dtype))
        ):
            return kernels.gather_scaled(images, index, dtype, out)
        if out is None:
            return super().gather_scaled(images, index, dtype)
        return super().gather_scaled(images, index, dtype, out=out)

    def bias_relu(self, Z, b):
        # Only b (units, 1): a (units,) or (1, units) b broadcasts along the samples in Z + b, not the units.
        if _on_device(Z, b) and Z.ndim == 2 and b.shape == (Z.shape[0], 1):
            return kernels.bias_relu(Z, b)
        return super().bias_relu(Z, b)

    def relu_backward(self, dA, A):
        if _on_device(dA, A) and dA.shape == A.shape:
            return kernels.relu_backward(dA, A)
        return super().relu_backward(dA, A)

    def softmax_cross_entropy(self, Z, labels, out=None):
        if _on_device(Z, *(out or ())) and Z.ndim == 2:
            return kernels.softmax_cross_entropy(Z, labels, out)
        if out is None:
            return super().softmax_cross_entropy(Z, labels)
        return super().softmax_cross_entropy(Z, labels, out=out)

    def count_correct(self, Z, labels):
        if _on_device(Z) and Z.ndim == 2:
            return kernels.count_correct(Z, labels)
        return super().count_correct(Z, labels)


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _version(number: int) -> str:
    """CUDA's 12090 -> '12.9'."""
    return f"{number // 1000}.{number % 1000 // 10}"


def device_report() -> list[str]:
    """Lines for ``gpunet info``, under its line saying whether CUDA is usable and if not, why:
    CuPy and CUDA versions, each device, and whether the kernels compile.

    Works without a GPU or driver: the kernels are compiled with NVRTC for the
    architectures the package claims (and each present device's).
    """
    if cupy is None:
        return [f"CuPy: not installed; {INSTALL_HINT}"]
    runtime = cupy.cuda.runtime
    lines = [f"CuPy {cupy.__version__}"]
    versions = []
    for what, ask in (("runtime", runtime.runtimeGetVersion), ("driver", runtime.driverGetVersion)):
        try:
            number = ask()
            versions.append(f"{what} {_version(number)}" if number else f"{what} none")
        except Exception as exc:
            versions.append(f"{what} unknown ({type(exc).__name__})")
    try:
        versions.append("NVRTC {}.{}".format(*kernels.nvrtc_version()))
    except Exception as exc:
        versions.append(f"NVRTC missing ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    lines.append("CUDA " + ", ".join(versions))
    archs = list(kernels.ARCHS)
    reason = unavailable_reason()
    if reason is not None:
        lines.append("CUDA devices: none usable")
    else:
        for device_id in range(runtime.getDeviceCount()):
            props = runtime.getDeviceProperties(device_id)
            major, minor = props["major"], props["minor"]
            lines.append(
                f"device {device_id}: {_text(props['name'])}, compute capability {major}.{minor}, "
                f"{props['totalGlobalMem'] / 2**30:.1f} GiB"
            )
            try:
                arch = kernels.nvrtc_arch(10 * major + minor)
            except Exception:  # NVRTC missing: compile_check below says so
                arch = 10 * major + minor
            if arch not in archs:
                archs.append(arch)
    targets = ", ".join(f"sm_{arch}" for arch in archs)
    failure = kernels.compile_check(archs)
    if failure is None:
        lines.append(f"kernels: compile with NVRTC for {targets}")
    else:
        lines.append(f"kernels: do NOT compile for {targets}: {failure}")
    return lines
