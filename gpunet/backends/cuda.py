"""The CUDA backend: CuPy arrays, with the hot operations in the custom kernels of gpunet.backends.kernels.

``CupyBackend`` inherits every operation of ``Backend`` written against
``self.xp`` (now CuPy) and overrides only the hot ones that have a kernel,
for float32 and float64; anything else (another dtype, a non-contiguous
array) takes the generic ``super()`` path, which is also what the kernels are
tested against. Importing this module never needs CuPy or a GPU: it is where
``get_backend`` asks, once per process, whether a usable device exists.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from gpunet.backends import kernels
from gpunet.nn import augment, layers
from gpunet.backends.base import Backend

try:  # optional: the CPU backend works without it
    import cupy
except ImportError:
    cupy = None

INSTALL_HINT = "install CuPy with: pip install 'gpunet[cuda12]' (or 'gpunet[cuda13]')"
DRIVER_HINT = "install the NVIDIA driver for the GPU (CUDA 12 or newer), or use --device cpu"
LIBRARY_HINT = ("install CuPy with its CUDA libraries: pip install 'gpunet[cuda12]' (or 'gpunet[cuda13]'), "
                "or use --device cpu")
# The probe's inputs: two samples' logits, their labels, and one image row (pixels 0 and 255).
PROBE_Z = np.array([[1.0, 0.0, 3.0], [2.0, 0.0, -1.0]], np.float32)  # largest: row 1, row 0 (a tie), row 0
PROBE_LABELS = np.array([1, 0, 1], np.int32)  # two right
PROBE_PIXELS = np.array([[0, 255]], np.uint8)
PROBE_DIGIT = np.arange(augment.SIDE ** 2, dtype=np.int64).reshape(1, -1).astype(np.uint8)  # pixels 0..255, 0..255, ...
PROBE_MAPS = np.array([2.0, -1.0, 0.5, 4.0, 3.0, 1.0], np.float32).reshape(1, 2, 3, 1)  # one 2x3 map


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when CUDA is usable, else one line saying what is missing.

    Asked once per process, by doing what training needs before choosing CUDA:
    CuPy can be installed where no usable GPU exists, and it loads NVRTC and
    cuBLAS only at the first kernel and the first matrix product, so a device
    count alone would choose CUDA and fail mid-run. Each check below runs only
    where the ones before it passed.
    """
    if cupy is None:
        return f"CuPy is not installed; {INSTALL_HINT}"
    for check in (_driver_problem, _nvrtc_problem, _cublas_problem, _kernel_problem):
        reason = check()
        if reason is not None:
            return reason
    return None


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _driver_problem() -> str | None:
    """The driver answers and has a device."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # the driver library is missing or refuses: say which
        return f"no usable CUDA driver ({_first_line(exc)}); {DRIVER_HINT}"
    if count == 0:
        return f"no CUDA device found; {DRIVER_HINT}"
    return None


def _nvrtc_problem() -> str | None:
    """NVRTC, which compiles the kernels at their first launch, loads."""
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:
        return f"CUDA's run-time compiler NVRTC cannot be loaded ({_first_line(exc)}); {LIBRARY_HINT}"
    return None


def _cublas_problem() -> str | None:
    """cuBLAS, which does every matrix product, loads and gives a handle on the current device."""
    try:
        cupy.cuda.device.get_cublas_handle()
    except Exception as exc:
        return f"cuBLAS cannot be loaded ({_first_line(exc)}); {LIBRARY_HINT}"
    return None


def _kernel_problem() -> str | None:
    """Every kernels/*.cu module compiles for the current device, loads, and computes a known answer."""
    try:
        right = _kernels_answer()
    except Exception as exc:  # NVRTC refuses the architecture, the driver refuses the cubin, ...
        return f"the gpunet kernels do not run on this device ({_first_line(exc)}); use --device cpu"
    if not right:
        return "the gpunet kernels run on this device but give wrong results; use --device cpu"
    return None


def _kernels_answer() -> bool:
    """Launch one kernel of each module on a few numbers; whether each gives the known answer."""
    Z = cupy.asarray(PROBE_Z)
    count = kernels.count_correct(Z, cupy.asarray(PROBE_LABELS))  # loss.cu
    product = kernels.matmul(Z, Z.T)  # matmul.cu: small integers, so exact
    mask = kernels.relu_backward(cupy.ones(PROBE_Z.shape, np.float32), Z)  # layers.cu
    pixels = kernels.gather_scaled(cupy.asarray(PROBE_PIXELS), None, np.float32)  # data.cu
    columns = kernels.im2col(cupy.asarray(PROBE_MAPS), 2, (0, 0))  # conv.cu
    pooled, _ = kernels.max_pool(cupy.asarray(PROBE_MAPS), 2)  # pool.cu
    dropped = kernels.dropout_mask(cupy.empty((2, 4), np.float32), 0.5, 0, 0, first_sample=3)  # dropout.cu
    unmoved = kernels.affine_augment(cupy.asarray(PROBE_DIGIT), None, cupy.asarray(augment.identity(1), np.float32),
                                     np.float32, augment.SIDE)  # augment.cu
    return (
        int(count) == 2
        and cupy.asnumpy(product).tolist() == (PROBE_Z @ PROBE_Z.T).tolist()
        and cupy.asnumpy(mask).tolist() == (PROBE_Z > 0).astype(np.float32).tolist()
        and cupy.asnumpy(pixels).tolist() == [[0.0], [1.0]]
        and cupy.asnumpy(columns).tolist() == layers.im2col(np, PROBE_MAPS, 2, (0, 0)).tolist()
        and cupy.asnumpy(pooled).tolist() == [[[[4.0]]]]
        and cupy.asnumpy(dropped).tolist() == layers.dropout_mask(np, (2, 4), 0.5, 0, 0, np.float32, 3).tolist()
        and cupy.asnumpy(unmoved).tolist() == (PROBE_DIGIT.T.astype(np.float32) * np.float32(1 / 255)).tolist()
    )


def _writable(out, dtype):
    """``out`` where a kernel can write it (a C-contiguous device array of ``dtype``), else None (a new array).

    The layer operations' ``out=`` is an offer (Backend's convention): the result MAY go there. Its shape is
    the result's, as layers.Scratch makes it; the kernel wrappers check that too.
    """
    if isinstance(out, cupy.ndarray) and out.flags.c_contiguous and out.dtype == np.dtype(dtype):
        return out
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
    # Each layer keeps its arrays from step to step (layers.Scratch), as on the CPU: a step then allocates
    # nothing, which a CUDA graph's replay needs, and CuPy's pool is not asked for megabytes every step.
    reuses_layer_arrays = True
    # --cuda-graph: each whole mini-batch step replayed as one captured CUDA graph (training/graph_epoch.py).
    cuda_graph = False
    # Whether the small products (kernels.SMALL_PRODUCT) run in gpunet's matmul kernel, not cuBLAS, which CuPy
    # refuses while capturing: on for a whole --cuda-graph run (``cuda_graph``), so that its eager steps and its
    # replayed ones do the same sums, or alone (tests compare such an eager run with the replayed one).
    own_products = False
    # While a replayed step is run or captured: its (first_step, step) device arrays, whose sum is the run's step
    # number that dropout's masks are drawn for (kernels.dropout_mask_at); None otherwise.
    device_step = None

    def __init__(self):
        if cupy is None:
            raise RuntimeError(f"CuPy is not installed; {INSTALL_HINT}")
        self.xp = cupy  # the module as it is now (the tests' CuPy stand-in replaces it after import)
        self.device = cupy.cuda.Device()

    def describe(self) -> str:
        """The device's name, compute capability and memory."""
        props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
        major, minor = props["major"], props["minor"]
        return (
            f"CUDA device {self.device.id}: {_text(props['name'])} (compute capability {major}.{minor}, "
            f"{props['totalGlobalMem'] / 2**30:.1f} GiB), CuPy {cupy.__version__}"
        )

    # -- moving data ---------------------------------------------------------
    def asarray(self, array, dtype=None):
        """Host array -> device array (one copy to the GPU)."""
        return cupy.asarray(array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        """Device array -> NumPy array (one copy back to the host)."""
        if isinstance(array, cupy.ndarray):
            return array.get()
        return np.asarray(array)

    def synchronize(self) -> None:
        """Wait for the device's queued work (for timings)."""
        cupy.cuda.get_current_stream().synchronize()

    def capture_graph(self, step):
        """``step()``'s launches captured on a side stream, where nothing runs: a ``cupy.cuda.Graph`` whose
        ``launch()`` replays them on the current stream. Whatever CUDA refuses while capturing (an allocation
        from the driver, a synchronisation, a copy to the host) raises here; the capture is ended either way."""
        stream = cupy.cuda.Stream(non_blocking=True)
        # CuPy's pool could hand the graph a block that is freed and reused after the capture (its default,
        # relaxed, capture mode lets it): a step that allocates is refused instead.
        with stream, cupy.cuda.using_allocator(_refuse_allocation):
            stream.begin_capture()
            try:
                step()
            finally:
                graph = stream.end_capture()
        return graph

    def captures_products(self) -> bool:
        """Whether a step's cuBLAS products can be captured into a graph here. CuPy refuses every cuBLAS call on a
        capturing stream (NotImplementedError, cupy_backends/cuda/libs/cublas.pyx: setStream; so in CuPy 14.2),
        and a step without its products is no step: a 1 x 1 product, captured and thrown away, finds out."""
        a, c = cupy.ones((1, 1), dtype=np.float32), cupy.empty((1, 1), dtype=np.float32)
        try:
            self.capture_graph(lambda: cupy.matmul(a, a, out=c))
        except Exception:  # NotImplementedError from CuPy's cuBLAS, or any refusal by CUDA
            return False
        return True

    # -- hot operations: kernels for float32/float64, the generic path otherwise --
    def matmul(self, A, B, out=None):
        """The matmul.cu kernel for a small product (at most kernels.SMALL_PRODUCT multiply-adds) while
        --cuda-graph (or ``own_products``) is on, so that the step can be captured; cuBLAS otherwise."""
        if (self.cuda_graph or self.own_products) and _kernel_product(A, B):
            return kernels.matmul(A, B, _writable(out, A.dtype))
        return super().matmul(A, B, out=out)

    def takes_products(self, network_layers, batch: int) -> bool:
        """Whether each product of a training step of ``network_layers`` (built layers, as cost_model.network_layers
        gives) on ``batch`` samples is small enough for the matmul kernel: then --cuda-graph captures the step
        where CuPy refuses cuBLAS. A convolution's products (its columns for the dense layer's inputs) stay with
        cuBLAS."""
        for layer in network_layers:
            if isinstance(layer, layers.Conv2D):
                columns = layer.fan_in * math.prod(layer.output_shape[1:])
            elif isinstance(layer, layers.Dense):
                columns = math.prod(layer.input_shape)
            else:
                continue
            if layer.outputs * columns * batch > kernels.SMALL_PRODUCT:  # W.A, dZ.A^T and W^T.dZ alike
                return False
        return True

    def gather_scaled(self, images, index, dtype, out=None):
        """The data.cu kernel for uint8 images on the device; the generic code otherwise."""
        if _kernel_takes_digits(images, dtype, out):
            return kernels.gather_scaled(images, index, dtype, out)
        if out is None:
            return super().gather_scaled(images, index, dtype)
        return super().gather_scaled(images, index, dtype, out=out)

    def bias_relu(self, Z, b):
        # Only b (units, 1): a (units,) or (1, units) b broadcasts along the samples in Z + b, not the units.
        """The layers.cu kernel for Z (units, m) and b (units, 1); the generic code otherwise."""
        if _on_device(Z, b) and Z.ndim == 2 and b.shape == (Z.shape[0], 1):
            return kernels.bias_relu(Z, b)
        return super().bias_relu(Z, b)

    def relu_backward(self, dA, A):
        """The layers.cu kernel for same-shaped device arrays; the generic code otherwise."""
        if _on_device(dA, A) and dA.shape == A.shape:
            return kernels.relu_backward(dA, A)
        return super().relu_backward(dA, A)

    def softmax_cross_entropy(self, Z, labels, out=None):
        """The fused loss.cu kernel where it applies; the generic code otherwise."""
        if _on_device(Z, *(out or ())) and Z.ndim == 2:
            return kernels.softmax_cross_entropy(Z, labels, out)
        if out is None:
            return super().softmax_cross_entropy(Z, labels)
        return super().softmax_cross_entropy(Z, labels, out=out)

    def softmax_cross_entropy_counted(self, Z, b, labels, counter, out=None):
        """The loss.cu kernel that adds the bias, counts and takes the loss in one launch; the generic steps
        otherwise."""
        if (_on_device(Z, b, *(out or ())) and Z.ndim == 2 and b.shape == (Z.shape[0], 1)
                and isinstance(counter, cupy.ndarray) and counter.shape == (1,) and counter.dtype == np.int32):
            return kernels.softmax_cross_entropy_counted(Z, b, labels, counter, out)
        return super().softmax_cross_entropy_counted(Z, b, labels, counter, out)

    def count_correct(self, Z, labels, out=None):
        """The loss.cu counting kernel where it applies (adding to ``out``, an int32 counter, where given); the
        count stays on the device."""
        if _on_device(Z) and Z.ndim == 2 and (out is None or isinstance(out, cupy.ndarray) and out.shape == (1,)
                                                and out.dtype == np.int32):
            return kernels.count_correct(Z, labels, out=out)
        return super().count_correct(Z, labels, out=out)

    # -- the layers' hot operations: conv.cu, pool.cu, dropout.cu ---------------
    def im2col(self, x, k: int, pads, out=None):
        """The conv.cu kernel for C-contiguous maps (C, H, W, m); the generic code otherwise."""
        if _on_device(x) and x.ndim == 4:
            return kernels.im2col(x, k, pads, _writable(out, x.dtype))
        return super().im2col(x, k, pads)

    def col2im(self, columns, input_shape, k: int, pads, out=None):
        """The conv.cu gather kernel for C-contiguous columns; the generic code otherwise."""
        if _on_device(columns) and columns.ndim == 2:
            return kernels.col2im(columns, input_shape, k, pads, _writable(out, columns.dtype))
        return super().col2im(columns, input_shape, k, pads)

    def max_pool(self, x, size: int, out=None, argmax_out=None):
        """The pool.cu kernel for C-contiguous maps (C, H, W, m); the generic code otherwise."""
        if _on_device(x) and x.ndim == 4 and 2 <= size <= 16:
            return kernels.max_pool(x, size, _writable(out, x.dtype), _writable(argmax_out, np.uint8))
        return super().max_pool(x, size)

    def max_pool_backward(self, dy, argmax, input_shape, size: int, out=None):
        """The pool.cu kernel for C-contiguous dy and its uint8 argmax; the generic code otherwise."""
        if (_on_device(dy) and dy.ndim == 4 and 2 <= size <= 16 and isinstance(argmax, cupy.ndarray)
                and argmax.dtype == np.uint8 and argmax.shape == dy.shape and argmax.flags.c_contiguous):
            return kernels.max_pool_backward(dy, argmax, input_shape, size, _writable(out, dy.dtype))
        return super().max_pool_backward(dy, argmax, input_shape, size)

    def optimizer_update(self, rule: str, params, grads, state, **scalars) -> bool:
        """The optimizers.cu kernel of ``rule``, one launch per (weights, biases) pair (one in all for a network's
        groups), where every array is a C-contiguous device array of one kernel dtype; else False."""
        arrays = [*params, *grads, *(a for group in state for a in group)]
        if (rule not in kernels.UPDATE_STATE or len(state) != kernels.UPDATE_STATE[rule] or len(params) % 2
                or len(grads) != len(params) or not arrays or not _on_device(*arrays)
                or any(len(group) != len(params) for group in state)
                or any(a.shape != p.shape for group in (grads, *state) for p, a in zip(params, group))):
            return False
        for i in range(0, len(params), 2):
            kernels.optimizer_update(rule, params[i:i + 2], grads[i:i + 2], [group[i:i + 2] for group in state],
                                     **scalars)
        return True

    def dropout_mask(self, shape, p: float, seed: int, step: int, dtype, first_sample: int = 0, out=None):
        """The dropout.cu kernel for float32/float64 masks (the generic mask's bits), written into ``out`` where it
        is a device array of that shape; the generic code otherwise."""
        if kernels.supports(dtype):
            mask = _writable(out, dtype)
            if mask is None or mask.shape != tuple(shape):
                mask = cupy.empty(shape, dtype=dtype)
            if self.device_step is not None:  # a replayed step: its number is on the device, not ``step``
                return kernels.dropout_mask_at(mask, p, seed, *self.device_step, first_sample=first_sample)
            return kernels.dropout_mask(mask, p, seed, step, first_sample=first_sample)
        return super().dropout_mask(shape, p, seed, step, dtype, first_sample)

    # -- augmentation: augment.cu ------------------------------------------------------------
    def gather_augmented(self, images, index, transforms, dtype, out=None):
        """The augment.cu kernel for uint8 images and their transforms on the device; the generic code otherwise."""
        if _kernel_takes_digits(images, dtype, out) and _on_device(transforms) and transforms.dtype == np.dtype(dtype):
            return kernels.affine_augment(images, index, transforms, dtype, augment.side_of(images), out)
        return super().gather_augmented(images, index, transforms, dtype)


class AllocationInCapture(RuntimeError):
    """A device allocation while a CUDA graph is captured."""


def _refuse_allocation(nbytes: int):
    raise AllocationInCapture("the step allocates device memory while it is captured")


def _kernel_product(A, B) -> bool:
    """Whether matmul.cu takes A . B: 2-D device arrays of one kernel dtype that multiply, each C-contiguous or a
    transposed view of one, and at most kernels.SMALL_PRODUCT multiply-adds."""
    if not (isinstance(A, cupy.ndarray) and isinstance(B, cupy.ndarray) and A.dtype == B.dtype
            and kernels.supports(A.dtype) and A.ndim == B.ndim == 2 and A.shape[1] == B.shape[0]):
        return False
    return (all(X.flags.c_contiguous or X.flags.f_contiguous for X in (A, B))
            and A.shape[0] * A.shape[1] * B.shape[1] <= kernels.SMALL_PRODUCT)


def _kernel_takes_digits(images, dtype, out) -> bool:
    """Whether data.cu's and augment.cu's kernels take these digits: a C-ordered uint8 (rows, pixels) array on
    the device, a dtype they are built for, and an ``out`` on the device of that dtype, if one is given."""
    return (kernels.supports(dtype) and isinstance(images, cupy.ndarray) and images.dtype == np.uint8
            and images.ndim == 2 and images.flags.c_contiguous
            and (out is None or _on_device(out) and out.dtype == np.dtype(dtype)))


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _version(number: int) -> str:
    """CUDA's 12090 -> '12.9'."""
    return f"{number // 1000}.{number % 1000 // 10}"


def device_report(compile_kernels: bool = True) -> list[str]:
    """Lines for ``gpunet info``, under its line saying whether CUDA is usable and if not, why:
    CuPy and CUDA versions, each device, and whether the kernels compile.

    Works without a GPU or driver: the kernels are compiled with NVRTC for the
    architectures the package claims that NVRTC supports (and each present device's).
    ``compile_kernels=False`` leaves that out (it takes tens of seconds) and says how to ask for it.
    """
    if cupy is None:
        return [f"CuPy: not installed; {INSTALL_HINT}"]
    lines = [f"CuPy {cupy.__version__}", "CUDA " + ", ".join(_versions())]
    device_targets = []
    if unavailable_reason() is not None:
        lines.append("CUDA devices: none usable")
    else:
        for device_id in range(cupy.cuda.runtime.getDeviceCount()):
            line, target = _device_line(device_id)
            lines += [line, _runs_line(device_id, target)]
            device_targets.append(target)
    lines.append(_kernels_line(device_targets) if compile_kernels else
                 "kernels: not compiled (gpunet info --kernels compiles them with NVRTC, no GPU needed)")
    return lines


def _versions() -> list[str]:
    """CUDA runtime, driver and NVRTC versions, each 'missing' or 'unknown' where it cannot be asked."""
    runtime = cupy.cuda.runtime
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
        versions.append(f"NVRTC missing ({_first_line(exc)})")
    return versions


def _device_line(device_id: int) -> tuple[str, tuple[str, int]]:
    """A device's line (name, compute capability, memory) and what it runs: ("cubin" or "ptx", arch)."""
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    major, minor = props["major"], props["minor"]
    line = (f"device {device_id}: {_text(props['name'])}, compute capability {major}.{minor}, "
            f"{props['totalGlobalMem'] / 2**30:.1f} GiB")
    try:
        return line, kernels.device_target(10 * major + minor)
    except kernels.KernelCompileError:  # no NVRTC: the kernels line says so
        return line, ("cubin", 10 * major + minor)


def _runs_line(device_id: int, target: tuple[str, int]) -> str:
    """Which build of the kernels a device runs: its cubin, or PTX that the driver JIT-compiles for it."""
    kind, arch = target
    if kind == "cubin":
        return f"device {device_id} runs the kernels as cubin sm_{arch} (machine code from NVRTC)"
    return (f"device {device_id} runs the kernels as PTX compute_{arch}, JIT-compiled by the driver: "
            f"the device is newer than this NVRTC's newest architecture, sm_{arch}")


def _kernels_line(device_targets) -> str:
    """Whether the kernels compile for the claimed architectures NVRTC supports and for each device's, and as
    PTX for NVRTC's newest architecture (what a device newer than NVRTC runs)."""
    try:
        archs, newest = list(kernels.compile_archs()), kernels.newest_arch()
    except kernels.KernelCompileError as exc:
        return f"kernels: do NOT compile: {str(exc).splitlines()[0]}"
    dropped = [arch for arch in kernels.ARCHS if arch not in archs]
    archs += [arch for kind, arch in device_targets if kind == "cubin" and arch not in archs]
    ptx_archs = [newest] + [arch for kind, arch in device_targets if kind == "ptx" and arch != newest]
    failure = kernels.compile_check(archs, ptx_archs)
    targets = ", ".join([f"sm_{arch}" for arch in archs] + [f"PTX compute_{arch}" for arch in ptx_archs])
    if failure is not None:
        return f"kernels: do NOT compile{' for ' + targets if archs else ''}: {failure}"
    line = f"kernels: compile with NVRTC for {targets}"
    if dropped:
        line += f" (this NVRTC does not support {', '.join(f'sm_{arch}' for arch in dropped)})"
    return line
