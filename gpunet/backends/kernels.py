"""The custom CUDA kernels: where their sources are, how they compile, how they launch.

The CUDA sources are the ``kernels/*.cu`` files (installed as
``gpunet/kernel_sources/``). Each file becomes one ``cupy.RawModule``,
compiled by NVRTC the first time one of its kernels is launched and cached
for the process (CuPy also caches the binary on disk), with every template
instantiation the package launches listed as a ``name_expression``
(``"softmax_cross_entropy<float>"``, ``"softmax_cross_entropy<double>"``, ...).
Importing this module never needs CuPy or a GPU.

Each Python wrapper below validates shapes, dtypes and contiguity, allocates
its outputs with the array module of its inputs, and hands a :class:`Launch`
(kernel, template type, grid, block, arguments in the C signature's order and
types) to a launcher: by default :func:`cuda_launch`, which runs it on the
device. The tests hand the same Launch to a launcher that runs the kernel
source compiled for the CPU, thread by thread (``tests/kernel_host``), so the
wrappers' argument passing is checked without a GPU too.

:func:`compile_for_arch` compiles the sources with NVRTC for an explicit GPU
architecture without touching a device or driver: the tests and
``gpunet info`` use it to tell whether the kernels compile, for the
architectures of :func:`compile_archs` (those the package claims that the
installed NVRTC supports), and as PTX for the newest architecture NVRTC knows
(what a device newer than NVRTC runs: :func:`kernel_target`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpunet.nn import layers

# kernels/<file>.cu -> the __global__ templates it defines, each compiled for every CTYPES value.
MODULES: dict[str, tuple[str, ...]] = {
    "loss": ("softmax_cross_entropy", "count_correct", "softmax_cross_entropy_counted"),
    "layers": ("bias_relu", "relu_backward"),
    "data": ("gather_scaled", "transpose_scaled"),
    "conv": ("im2col", "col2im"),
    "pool": ("max_pool", "max_pool_backward"),
    "dropout": ("dropout_mask", "dropout_mask_at"),
    "augment": ("affine_augment",),
    "optimizers": ("sgd_update", "momentum_update", "adam_update", "sgd_update_at", "momentum_update_at",
                   "adam_update_at"),
    "step": ("batch_begin", "batch_end"),
    "matmul": ("matmul",),
}
# NumPy dtype -> the kernel templates' T. Other dtypes use the generic xp code.
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# GPU architectures the package claims. The kernels are compiled, tested and reported for
# those of them the installed NVRTC supports (compile_archs): NVRTC 13 dropped sm_70.
ARCHS = (70, 80, 90)
# Our NVRTC options. CuPy's RawModule adds the target architecture and the two
# options of CUPY_ADDED_OPTIONS; compile_for_arch adds the same, so the tests
# compile exactly what a GPU would.
NVRTC_OPTIONS = ("--std=c++17",)
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
# Each kernel's array parameters that it writes (the non-const pointers of its C signature).
# No other array argument of a launch may overlap one of them: a thread reads its inputs
# while other threads write, so an aliased launch gives a result that depends on timing.
WRITES: dict[str, tuple[int, ...]] = {
    "softmax_cross_entropy": (2, 3),
    "count_correct": (2,),
    "softmax_cross_entropy_counted": (0, 3, 4, 5),
    "bias_relu": (0,),
    "relu_backward": (0,),
    "gather_scaled": (2,),
    "transpose_scaled": (1,),
    "im2col": (1,),
    "col2im": (1,),
    "max_pool": (1, 2),
    "max_pool_backward": (2,),
    "dropout_mask": (0,),
    "dropout_mask_at": (0,),
    "affine_augment": (3,),
    "sgd_update": (0, 3),
    "momentum_update": (0, 2, 4, 6),
    "adam_update": (0, 2, 3, 5, 7, 8),
    "sgd_update_at": (0, 3),
    "momentum_update_at": (0, 2, 4, 6),
    "adam_update_at": (0, 2, 3, 5, 7, 8),
    "batch_begin": (3, 4),
    "batch_end": (1, 2),
    "matmul": (2,),
}
# The largest product (M.N.K multiply-adds) the matmul kernel takes in the backend (cuda.py): one thread per
# element of C, each adding its K terms in a row, is fine for the notes' network (16 x 784 . 784 x 64 = 0.8 M),
# not for a convolution's (32 x 25 . 25 x 73,728 = 59 M at batch 128), which stay with cuBLAS.
SMALL_PRODUCT = 1 << 22
# Threads per block; a grid of at most MAX_BLOCKS blocks covers any size with
# its grid-stride loop.
BLOCK = 256
MAX_BLOCKS = 8192
# Where GPUNET_KERNEL_DIR points, if set, replaces the packaged sources (for
# trying a changed kernel without touching the installed package).
KERNEL_DIR_ENV = "GPUNET_KERNEL_DIR"


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel source (the message holds its log), or NVRTC is missing."""


# -- sources ----------------------------------------------------------------
def source_dir() -> Path:
    """The folder that holds the ``.cu`` files: $GPUNET_KERNEL_DIR, the installed copy, or the checkout's."""
    override = os.environ.get(KERNEL_DIR_ENV)
    if override:
        return Path(override)
    package = Path(__file__).resolve().parents[1]  # gpunet/
    installed, checkout = package / "kernel_sources", package.parent / "kernels"
    for candidate in (installed, checkout):
        if (candidate / "loss.cu").is_file():
            return candidate
    raise FileNotFoundError(f"the CUDA kernel sources are missing: neither {installed} nor {checkout} holds loss.cu")


def source_path(module: str) -> Path:
    """The path of kernels/<module>.cu."""
    if module not in MODULES:
        raise KeyError(f"no kernel module {module!r}; there are {', '.join(MODULES)}")
    return source_dir() / f"{module}.cu"


def read_source(module: str) -> str:
    """The CUDA source of kernels/<module>.cu."""
    return source_path(module).read_text(encoding="utf-8")


def name_expressions(module: str) -> list[str]:
    """Every template instantiation of ``module`` the package launches, e.g. ``bias_relu<float>``."""
    return [f"{kernel}<{ctype}>" for kernel in MODULES[module] for ctype in CTYPES.values()]


def supports(dtype) -> bool:
    """Whether the kernels have an instantiation for ``dtype``."""
    try:
        return np.dtype(dtype) in CTYPES
    except TypeError:
        return False


# -- NVRTC, without a device ----------------------------------------------------
@dataclass
class Compiled:
    """One module compiled for one architecture."""

    module: str
    arch: int
    target: str  # "cubin" (machine code, what CuPy loads) or "ptx"
    lowered: dict[str, str]  # name expression -> mangled symbol
    size: int  # bytes of cubin or PTX
    log: str = ""
    binary: bytes = field(default=b"", repr=False)  # the cubin or PTX itself

    def warnings(self) -> list[str]:
        """Log lines that warn about the source (not NVRTC's note that old architectures are deprecated)."""
        return [
            line
            for line in self.log.splitlines()
            if "warning" in line.lower() and "are deprecated" not in line
        ]


def _nvrtc():
    """CuPy's NVRTC bindings, or KernelCompileError saying why there are none."""
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError as exc:
        raise KernelCompileError(f"NVRTC is not available: CuPy is not installed ({exc})") from None
    return nvrtc


def _ask_nvrtc(question: str):
    """``nvrtc.<question>()``; KernelCompileError where CuPy or libnvrtc itself is missing or unloadable."""
    nvrtc = _nvrtc()
    try:
        return getattr(nvrtc, question)()
    except Exception as exc:
        raise KernelCompileError(f"NVRTC is not usable: {type(exc).__name__}: {exc}") from None


def nvrtc_version() -> tuple[int, int]:
    """The installed NVRTC's (major, minor)."""
    return tuple(_ask_nvrtc("getVersion"))


def supported_archs() -> tuple[int, ...]:
    """The GPU architectures the installed NVRTC compiles for (nvrtcGetSupportedArchs), e.g. (75, 80, ...)."""
    return tuple(int(arch) for arch in _ask_nvrtc("getSupportedArchs"))


def compile_archs(claimed=ARCHS) -> tuple[int, ...]:
    """The ``claimed`` architectures that the installed NVRTC supports: those the kernels are compiled for."""
    supported = supported_archs()
    return tuple(arch for arch in claimed if arch in supported)


def newest_arch() -> int:
    """The newest GPU architecture the installed NVRTC compiles for: the PTX that newer devices run."""
    return max(supported_archs())


def kernel_target(capability: int, supported) -> tuple[str, int]:
    """How the kernels are built for a device of compute capability ``capability`` (e.g. 86 for 8.6)
    by an NVRTC that supports the architectures ``supported``: ``("cubin", arch)`` or ``("ptx", arch)``.

    A cubin (``-arch=sm_XY``, machine code) runs only on its own major
    architecture, at its minor version or above: sm_86 code runs on 8.6 and
    8.9, never on 9.0. So, as CuPy does (cupy/cuda/compiler.py), the cubin of
    the device's own architecture capped at NVRTC's newest, where that cap is
    of the device's major (sm_120 on a 12.1 device); on a device of a newer
    major than NVRTC knows (10.0 with CUDA 12.6's NVRTC, whose newest is
    sm_90), that cubin would not load, so PTX of NVRTC's newest
    (``-arch=compute_90``), which the driver JIT-compiles for the device when
    the module loads (CuPy builds no PTX unless CUPY_COMPILE_WITH_PTX=1).
    """
    newest = max(supported)
    arch = min(int(capability), newest)
    if arch // 10 == int(capability) // 10:
        return "cubin", arch
    return "ptx", newest


def device_target(capability: int) -> tuple[str, int]:
    """:func:`kernel_target` for a device of ``capability`` with the installed NVRTC."""
    return kernel_target(capability, supported_archs())


def compile_for_arch(arch: int, modules=None, target: str = "cubin") -> list[Compiled]:
    """Compile ``modules`` (default: all) with NVRTC for GPU architecture ``arch`` (e.g. 80).

    ``target="cubin"`` passes ``-arch=sm_<arch>``, ``"ptx"`` passes
    ``-arch=compute_<arch>`` (which of the two a device runs: :func:`kernel_target`). Calls NVRTC
    directly through CuPy's bindings: CuPy's own compile helpers ask the device
    for its architecture, this never touches a device or driver. Raises
    KernelCompileError with NVRTC's log when a source does not compile.
    """
    if target not in ("cubin", "ptx"):
        raise ValueError(f"target is 'cubin' or 'ptx', not {target!r}")
    nvrtc = _nvrtc()
    arch_option = f"-arch={'sm' if target == 'cubin' else 'compute'}_{int(arch)}"
    options = [*NVRTC_OPTIONS, *CUPY_ADDED_OPTIONS, arch_option]
    results = []
    for module in modules or MODULES:
        names = name_expressions(module)
        try:
            program = nvrtc.createProgram(read_source(module), f"{module}.cu", [], [])
        except Exception as exc:  # libnvrtc itself missing or unloadable
            raise KernelCompileError(f"NVRTC is not usable: {type(exc).__name__}: {exc}") from None
        try:
            for name in names:
                nvrtc.addNameExpression(program, name)
            try:
                nvrtc.compileProgram(program, options)
            except nvrtc.NVRTCError as exc:
                log = nvrtc.getProgramLog(program)
                raise KernelCompileError(
                    f"{module}.cu does not compile for {arch_option} ({exc}):\n{log}"
                ) from None
            log = nvrtc.getProgramLog(program)
            lowered = {name: nvrtc.getLoweredName(program, name) for name in names}
            binary = nvrtc.getCUBIN(program) if target == "cubin" else nvrtc.getPTX(program)
        finally:
            nvrtc.destroyProgram(program)
        results.append(Compiled(module, int(arch), target, lowered, len(binary), log, bytes(binary)))
    return results


def compile_check(archs=None, ptx_archs=None) -> str | None:
    """None when every kernel compiles for every arch in ``archs`` (cubin) and ``ptx_archs`` (PTX), else the
    first failure in one line.

    ``archs``: by default :func:`compile_archs`, the claimed ones the installed NVRTC supports;
    ``ptx_archs``: by default NVRTC's newest (:func:`newest_arch`), the PTX a newer device runs.
    """
    try:
        if archs is None:
            archs = compile_archs()
        if not archs:
            version = ".".join(map(str, nvrtc_version()))
            return f"NVRTC {version} supports none of {', '.join(f'sm_{arch}' for arch in ARCHS)}"
        if ptx_archs is None:
            ptx_archs = (newest_arch(),)
        for arch in archs:
            compile_for_arch(arch)
        for arch in ptx_archs:
            compile_for_arch(arch, target="ptx")
    except (KernelCompileError, FileNotFoundError) as exc:
        return str(exc).splitlines()[0]
    return None


# -- launching ------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``module.cu``'s ``kernel<ctype><<<grid, block>>>(*args)``.

    ``args`` are arrays and NumPy scalars in the order and C types of the
    kernel's parameters (every size is numpy.int64, a C long long).
    """

    module: str
    kernel: str
    ctype: str
    grid: int
    block: int
    args: tuple = field(default_factory=tuple)

    @property
    def name(self) -> str:
        """The kernel's name expression, e.g. 'bias_relu<float>'."""
        return f"{self.kernel}<{self.ctype}>"


def launch_shape(n: int) -> tuple[int, int]:
    """(blocks, threads per block) for n grid-stride items: one item per thread up to MAX_BLOCKS blocks."""
    return max(1, min(-(-n // BLOCK), MAX_BLOCKS)), BLOCK


class _LazyModule:
    """A RawModule compiled on first use; its functions looked up once."""

    def __init__(self, module: str):
        self.module = module
        self._raw = None
        self._functions = {}

    def function(self, name: str):
        """The compiled kernel for a name expression (the module compiles on first use)."""
        fn = self._functions.get(name)
        if fn is None:
            if name not in name_expressions(self.module):
                raise KeyError(f"{name} is not compiled in {self.module}.cu")
            if self._raw is None:
                self._load()  # a PTX module has every function looked up already
            fn = self._functions.get(name)
            if fn is None:
                fn = self._functions[name] = self._raw.get_function(name)
        return fn

    def _load(self) -> None:
        """Build the module for the current device: a cubin as CuPy builds it, or PTX (:func:`kernel_target`)."""
        import cupy

        target, arch = device_target(int(cupy.cuda.Device().compute_capability))
        if target == "cubin":
            self._raw = cupy.RawModule(
                code=read_source(self.module),
                options=NVRTC_OPTIONS,
                name_expressions=name_expressions(self.module),
            )
            return
        # PTX: compiled here, loaded from a file (RawModule loads a cubin or PTX by path), every kernel
        # looked up by its mangled symbol while the file exists.
        compiled = compile_for_arch(arch, [self.module], target="ptx")[0]
        with tempfile.TemporaryDirectory(prefix="gpunet-ptx-") as folder:
            path = Path(folder) / f"{self.module}.compute_{arch}.ptx"
            path.write_bytes(compiled.binary)
            self._raw = cupy.RawModule(path=str(path))
            self._functions = {name: self._raw.get_function(symbol) for name, symbol in compiled.lowered.items()}


_MODULES = {module: _LazyModule(module) for module in MODULES}


def cuda_launch(launch: Launch) -> None:
    """Run a Launch on the current CUDA device (asynchronously, on the current stream)."""
    fn = _MODULES[launch.module].function(launch.name)
    fn((launch.grid,), (launch.block,), launch.args)


def _run(launch: Launch, launcher) -> None:
    (launcher or cuda_launch)(launch)


def _array_module(array):
    if type(array).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _ctype(op: str, dtype) -> str:
    ctype = CTYPES.get(np.dtype(dtype))
    if ctype is None:
        raise ValueError(f"{op}: no kernel for dtype {np.dtype(dtype)} (float32 and float64 have one)")
    return ctype


def _require(ok: bool, op: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{op}: {message}")


def _sample_labels(op: str, xp, labels, m: int):
    """Labels as a contiguous int32 array of shape (m,) on the device of xp."""
    labels = xp.asarray(labels)
    _require(labels.shape == (m,), op, f"labels must have shape ({m},), not {labels.shape}")
    _require(labels.dtype.kind in "iu", op, f"labels must be integers, not {labels.dtype}")
    return xp.ascontiguousarray(labels.astype(np.int32, copy=False))


def _i64(n: int) -> np.int64:
    return np.int64(n)


# -- the kernels, one wrapper each ----------------------------------------------
def _output(op: str, xp, out, name: str, shape: tuple, dtype):
    """``out`` checked as a C-contiguous array of ``shape`` and ``dtype``, or a new one."""
    if out is None:
        return xp.empty(shape, dtype=dtype)
    _require(out.shape == shape, op, f"{name} must have shape {shape}, not {out.shape}")
    _require(out.dtype == dtype, op, f"{name} must be {np.dtype(dtype)}, not {out.dtype}")
    _require(out.flags.c_contiguous, op, f"{name} must be C-contiguous")
    return out


def _logits_and_labels(op: str, Z, labels):
    """Check logits Z (classes, m) and return (xp, ctype, classes, m, int32 labels)."""
    xp = _array_module(Z)
    ctype = _ctype(op, Z.dtype)
    _require(Z.ndim == 2 and Z.shape[0] >= 1, op, f"Z must be (classes, m), not {Z.shape}")
    _require(Z.flags.c_contiguous, op, "Z must be C-contiguous")
    classes, m = Z.shape
    return xp, ctype, classes, m, _sample_labels(op, xp, labels, m)


def softmax_cross_entropy(Z, labels, out=None, *, launcher=None):
    """(dZ, losses): dZ = (softmax(Z) - onehot(labels)) / m and per-sample losses, in one kernel.

    Z: logits (classes, m), float32 or float64, C-contiguous; labels: (m,)
    integers; out: optional (dZ, losses) arrays to write into.
    """
    op = "softmax_cross_entropy"
    xp, ctype, classes, m, labels = _logits_and_labels(op, Z, labels)
    dZ_out, losses_out = (None, None) if out is None else out
    dZ = _output(op, xp, dZ_out, "dZ", Z.shape, Z.dtype)
    losses = _output(op, xp, losses_out, "losses", (m,), Z.dtype)
    if m:
        grid, block = launch_shape(m)
        args = (Z, labels, dZ, losses, _i64(classes), _i64(m))
        _run(Launch("loss", op, ctype, grid, block, args), launcher)
    return dZ, losses


def count_correct(Z, labels, out=None, *, launcher=None):
    """How many columns of Z (classes, m) have their (first) largest logit at the label.

    A 0-d array on Z's device: reading it (int()) would wait for the GPU, so the caller decides when.
    ``out``: a one-element int32 array (a counter kept for an epoch) that the count is added to, not
    zeroed first; returned as a 0-d view.
    """
    op = "count_correct"
    xp, ctype, classes, m, labels = _logits_and_labels(op, Z, labels)
    if out is None:
        count = xp.zeros(1, dtype=np.int32)
    else:
        count = _output(op, xp, out, "out", (1,), np.dtype(np.int32))
    if m:
        grid, block = launch_shape(m)
        args = (Z, labels, count, _i64(classes), _i64(m))
        _run(Launch("loss", op, ctype, grid, block, args), launcher)
    return count[0]


def softmax_cross_entropy_counted(Z, b, labels, count, out=None, *, launcher=None):
    """The output layer's end of a step in one kernel: Z += b (in place), the correct columns added to
    ``count`` (a one-element int32 counter), and (dZ, losses) as softmax_cross_entropy of the biased Z.

    Z: logits without their bias (classes, m), C-contiguous; b: (classes, 1) of Z's dtype; labels: (m,)
    integers; out: optional (dZ, losses) arrays to write into. Returns (dZ, losses).
    """
    op = "softmax_cross_entropy_counted"
    xp, ctype, classes, m, labels = _logits_and_labels(op, Z, labels)
    _require(b.shape in ((classes, 1), (classes,)), op, f"b must be ({classes}, 1), not {b.shape}")
    _require(b.dtype == Z.dtype, op, f"b must be {Z.dtype} like Z, not {b.dtype}")
    b = xp.ascontiguousarray(b)
    count = _output(op, xp, count, "count", (1,), np.dtype(np.int32))
    dZ_out, losses_out = (None, None) if out is None else out
    dZ = _output(op, xp, dZ_out, "dZ", Z.shape, Z.dtype)
    losses = _output(op, xp, losses_out, "losses", (m,), Z.dtype)
    if m:
        grid, block = launch_shape(m)
        args = (Z, b, labels, dZ, losses, count, _i64(classes), _i64(m))
        _run(Launch("loss", op, ctype, grid, block, args), launcher)
    return dZ, losses


def bias_relu(Z, b, *, launcher=None):
    """Z = relu(Z + b) in place, for Z (units, m) and b (units, 1) of Z's dtype; returns Z."""
    op = "bias_relu"
    xp = _array_module(Z)
    ctype = _ctype(op, Z.dtype)
    _require(Z.ndim == 2, op, f"Z must be (units, m), not {Z.shape}")
    _require(Z.flags.c_contiguous, op, "Z must be C-contiguous (it is written in place)")
    units, m = Z.shape
    _require(b.shape in ((units, 1), (units,)), op, f"b must be ({units}, 1), not {b.shape}")
    _require(b.dtype == Z.dtype, op, f"b must be {Z.dtype} like Z, not {b.dtype}")
    b = xp.ascontiguousarray(b)
    if Z.size:
        grid, block = launch_shape(Z.size)
        _run(Launch("layers", op, ctype, grid, block, (Z, b, _i64(units), _i64(m))), launcher)
    return Z


def relu_backward(dA, A, *, launcher=None):
    """dA *= (A > 0) in place (dZ = dA * relu'(Z) with the mask read from A = relu(Z)); returns dA."""
    op = "relu_backward"
    ctype = _ctype(op, dA.dtype)
    _require(A.shape == dA.shape, op, f"A {A.shape} and dA {dA.shape} must have the same shape")
    _require(A.dtype == dA.dtype, op, f"A must be {dA.dtype} like dA, not {A.dtype}")
    _require(dA.flags.c_contiguous and A.flags.c_contiguous, op, "dA and A must be C-contiguous")
    if dA.size:
        grid, block = launch_shape(dA.size)
        _run(Launch("layers", op, ctype, grid, block, (dA, A, _i64(dA.size))), launcher)
    return dA


def gather_scaled(images, index, dtype, out=None, *, launcher=None):
    """A0 = images[index].T / 255 as ``dtype``, shape (features, batch), in one kernel.

    images: the uint8 data set (rows, features), C-contiguous; index: integer
    row numbers (batch,), or None for every row in order; out: optional
    (features, batch) array to write into. A row number outside [0, rows)
    gives a NaN column instead of reading out of bounds.
    """
    op = "gather_scaled"
    xp = _array_module(images)
    ctype = _ctype(op, dtype)
    _require(images.ndim == 2, op, f"images must be (rows, features), not {images.shape}")
    _require(images.dtype == np.uint8, op, f"images must be uint8, not {images.dtype}")
    _require(images.flags.c_contiguous, op, "images must be C-contiguous")
    rows, features = images.shape
    if index is None:
        A0 = _output(op, xp, out, "out", (features, rows), np.dtype(dtype))
        kernel, args = "transpose_scaled", (images, A0, _i64(rows), _i64(features))
    else:
        index = xp.asarray(index)
        _require(index.ndim == 1, op, f"index must be 1-D, not {index.shape}")
        _require(index.dtype.kind in "iu", op, f"index must be integers, not {index.dtype}")
        index = xp.ascontiguousarray(index.astype(np.int64, copy=False))
        A0 = _output(op, xp, out, "out", (features, index.size), np.dtype(dtype))
        kernel, args = op, (images, index, A0, _i64(rows), _i64(features), _i64(index.size))
    if A0.size:
        grid, block = launch_shape(A0.size)
        _run(Launch("data", kernel, ctype, grid, block, args), launcher)
    return A0


# -- the layers' kernels: convolution, pooling, dropout ------------------------------------------
def _maps(op: str, name: str, array):
    """Check maps (C, H, W, m), C-contiguous; return (xp, ctype)."""
    xp = _array_module(array)
    ctype = _ctype(op, array.dtype)
    _require(array.ndim == 4, op, f"{name} must be maps (C, H, W, m), not {array.shape}")
    _require(array.flags.c_contiguous, op, f"{name} must be C-contiguous")
    return xp, ctype


def _conv_sizes(op: str, input_shape, k: int, pads) -> tuple[int, int, int]:
    """(pad before, H_out, W_out) of a stride-1 convolution of k x k over maps ``input_shape`` padded by ``pads``."""
    _require(len(input_shape) == 4, op, f"the maps must be (C, H, W, m), not {tuple(input_shape)}")
    _require(int(k) >= 1, op, f"the kernel size must be at least 1, not {k}")
    before, after = (int(n) for n in pads)
    _require(before >= 0 and after >= 0, op, f"pads must be 0 or more, not {tuple(pads)}")
    H_out, W_out = (int(n) + before + after - int(k) + 1 for n in input_shape[1:3])
    _require(H_out >= 1 and W_out >= 1, op, f"a {k}x{k} kernel does not fit in the maps {tuple(input_shape)}")
    return before, H_out, W_out


def _conv_args(shape, k, before, H_out, W_out) -> tuple:
    C, H, W, m = shape
    return tuple(_i64(n) for n in (C, H, W, m, k, before, H_out, W_out))


def im2col(x, k: int, pads, out=None, *, launcher=None):
    """The k x k patches of maps x (C, H, W, m), padded by ``pads`` (before, after), as columns
    (C.k.k, H_out.W_out.m), one thread per column entry: gpunet.nn.layers.im2col. ``out``: the columns'
    array to write (every entry is written), or None for a new one."""
    op = "im2col"
    xp, ctype = _maps(op, "x", x)
    before, H_out, W_out = _conv_sizes(op, x.shape, k, pads)
    C, H, W, m = x.shape
    columns = _output(op, xp, out, "out", (C * k * k, H_out * W_out * m), x.dtype)
    if columns.size:
        grid, block = launch_shape(columns.size)
        _run(Launch("conv", op, ctype, grid, block, (x, columns, *_conv_args(x.shape, k, before, H_out, W_out))),
             launcher)
    return columns


def col2im(columns, input_shape, k: int, pads, out=None, *, launcher=None):
    """The gradient of im2col: maps ``input_shape`` (C, H, W, m), each element the sum of the column entries
    that copied it, one thread per element gathering them (no atomics): gpunet.nn.layers.col2im. ``out``: the
    maps' array to write (every element is written), or None for a new one."""
    op = "col2im"
    xp = _array_module(columns)
    ctype = _ctype(op, columns.dtype)
    input_shape = tuple(int(n) for n in input_shape)
    before, H_out, W_out = _conv_sizes(op, input_shape, k, pads)
    C, H, W, m = input_shape
    expected = (C * k * k, H_out * W_out * m)
    _require(columns.shape == expected, op, f"columns must be {expected} for maps {input_shape}, not {columns.shape}")
    _require(columns.flags.c_contiguous, op, "columns must be C-contiguous")
    dx = _output(op, xp, out, "out", input_shape, columns.dtype)
    if dx.size:
        grid, block = launch_shape(dx.size)
        _run(Launch("conv", op, ctype, grid, block, (columns, dx, *_conv_args(input_shape, k, before, H_out, W_out))),
             launcher)
    return dx


def _pool_size(op: str, size: int) -> int:
    _require(2 <= int(size) <= 16, op, f"the window size must be from 2 to 16 (argmax is uint8), not {size}")
    return int(size)


def max_pool(x, size: int, out=None, argmax_out=None, *, launcher=None):
    """(y, argmax) of size x size windows, stride ``size``, of maps x (C, H, W, m), one thread per output:
    gpunet.nn.layers.max_pool (argmax uint8, the first largest entry; NaN pools to NaN). ``out``,
    ``argmax_out``: arrays to write them into (every entry is written), or None for new ones."""
    op = "max_pool"
    xp, ctype = _maps(op, "x", x)
    size = _pool_size(op, size)
    C, H, W, m = x.shape
    shape = (C, H // size, W // size, m)
    y = _output(op, xp, out, "out", shape, x.dtype)
    argmax = _output(op, xp, argmax_out, "argmax_out", shape, np.dtype(np.uint8))
    if y.size:
        grid, block = launch_shape(y.size)
        args = (x, y, argmax, *(_i64(n) for n in (C, H, W, m, size, shape[1], shape[2])))
        _run(Launch("pool", op, ctype, grid, block, args), launcher)
    return y, argmax


def max_pool_backward(dy, argmax, input_shape, size: int, out=None, *, launcher=None):
    """dx of maps ``input_shape``: each window's dy at its argmax entry, 0 elsewhere, one thread per input
    element (no atomics): gpunet.nn.layers.max_pool_backward. ``out``: dx's array to write (every element is
    written), or None for a new one."""
    op = "max_pool_backward"
    xp, ctype = _maps(op, "dy", dy)
    size = _pool_size(op, size)
    input_shape = tuple(int(n) for n in input_shape)
    _require(len(input_shape) == 4, op, f"input_shape must be (C, H, W, m), not {input_shape}")
    C, H, W, m = input_shape
    shape = (C, H // size, W // size, m)
    _require(dy.shape == shape, op, f"dy must be {shape} for maps {input_shape}, not {dy.shape}")
    _require(argmax.shape == shape, op, f"argmax must be {shape} like dy, not {argmax.shape}")
    _require(argmax.dtype == np.uint8, op, f"argmax must be uint8, not {argmax.dtype}")
    _require(argmax.flags.c_contiguous, op, "argmax must be C-contiguous")
    dx = _output(op, xp, out, "out", input_shape, dy.dtype)
    if dx.size:
        grid, block = launch_shape(dx.size)
        args = (dy, argmax, dx, *(_i64(n) for n in (C, H, W, m, size, shape[1], shape[2])))
        _run(Launch("pool", op, ctype, grid, block, args), launcher)
    return dx


def dropout_mask(mask, p: float, seed: int, step: int, *, first_sample: int = 0, launcher=None):
    """Fill ``mask`` (C-contiguous, (units..., k)) with inverted dropout's mask of (seed, step) for k samples from
    ``first_sample`` on: gpunet.nn.layers.dropout_mask, bit for bit (unit u, sample s kept where SplitMix64's output
    number (first_sample + s).units + u from dropout_key(seed, step) has its top 32 bits at least round(p.2^32)).
    Returns mask."""
    op = "dropout_mask"
    ctype = _ctype(op, mask.dtype)
    _require(mask.flags.c_contiguous, op, "mask must be C-contiguous (it is written)")
    _require(0.0 <= float(p) < 1.0, op, f"the drop probability must be at least 0 and below 1, not {p}")
    _require(int(first_sample) >= 0, op, f"the first sample must be 0 or more, not {first_sample}")
    key = np.uint64(layers.dropout_key(int(seed), int(step)))
    threshold = np.uint64(round(float(p) * 2**32))
    scale = mask.dtype.type(1.0 / (1.0 - float(p)))  # as the generic mask's, rounded once to T
    samples = int(mask.shape[-1]) if mask.ndim else 1
    if mask.size:
        grid, block = launch_shape(mask.size)
        args = (mask, key, threshold, scale, _i64(mask.size // samples), _i64(samples), _i64(first_sample))
        _run(Launch("dropout", op, ctype, grid, block, args), launcher)
    return mask


def dropout_mask_at(mask, p: float, seed: int, first_step, step, *, first_sample: int = 0, launcher=None):
    """``dropout_mask`` for the run's step ``first_step[0] + step[0]``, read on the device ((1,) int64 arrays:
    the epoch's first step and the step within it, kernels/step.cu): one captured launch serves every step."""
    op = "dropout_mask_at"
    ctype = _ctype(op, mask.dtype)
    _require(mask.flags.c_contiguous, op, "mask must be C-contiguous (it is written)")
    _require(0.0 <= float(p) < 1.0, op, f"the drop probability must be at least 0 and below 1, not {p}")
    _require(int(first_sample) >= 0, op, f"the first sample must be 0 or more, not {first_sample}")
    _step_counter(op, first_step)
    _step_counter(op, step)
    state = np.uint64(layers.dropout_seed_state(int(seed)))
    threshold = np.uint64(round(float(p) * 2**32))
    scale = mask.dtype.type(1.0 / (1.0 - float(p)))
    samples = int(mask.shape[-1]) if mask.ndim else 1
    if mask.size:
        grid, block = launch_shape(mask.size)
        args = (mask, state, first_step, step, threshold, scale, _i64(mask.size // samples), _i64(samples),
                _i64(first_sample))
        _run(Launch("dropout", op, ctype, grid, block, args), launcher)
    return mask


# -- augmentation -------------------------------------------------------------------------------------
def affine_augment(images, index, transforms, dtype, side: int, out=None, *, launcher=None):
    """A0 (side.side, batch): digits ``images[index]`` each drawn through its inverse map ``transforms[index]``,
    bilinear, scaled by 1/255, one thread per output element: gpunet.nn.augment.affine_sample.

    images: the uint8 data set (rows, side.side), C-contiguous; index: integer row numbers (batch,), or None for
    every row in order; transforms: (rows, 6) of ``dtype``, C-contiguous; out: optional (side.side, batch) array
    to write into. A row number outside [0, rows) gives a NaN column instead of reading out of bounds.
    """
    op = "affine_augment"
    xp = _array_module(images)
    dtype = np.dtype(dtype)
    ctype = _ctype(op, dtype)
    side = int(side)
    _require(side >= 1, op, f"the side must be at least 1, not {side}")
    _require(images.ndim == 2 and images.shape[1] == side * side, op,
             f"images must be (rows, {side * side}), not {images.shape}")
    _require(images.dtype == np.uint8, op, f"images must be uint8, not {images.dtype}")
    _require(images.flags.c_contiguous, op, "images must be C-contiguous")
    rows = images.shape[0]
    _require(transforms.shape == (rows, 6), op, f"transforms must be ({rows}, 6), not {transforms.shape}")
    _require(transforms.dtype == dtype, op, f"transforms must be {dtype}, not {transforms.dtype}")
    _require(transforms.flags.c_contiguous, op, "transforms must be C-contiguous")
    if index is None:
        index = xp.arange(rows, dtype=np.int64)
    index = xp.asarray(index)
    _require(index.ndim == 1, op, f"index must be 1-D, not {index.shape}")
    _require(index.dtype.kind in "iu", op, f"index must be integers, not {index.dtype}")
    index = xp.ascontiguousarray(index.astype(np.int64, copy=False))
    A0 = _output(op, xp, out, "out", (side * side, index.size), dtype)
    if A0.size:
        grid, block = launch_shape(A0.size)
        args = (images, index, transforms, A0, _i64(rows), _i64(side), _i64(index.size))
        _run(Launch("augment", op, ctype, grid, block, args), launcher)
    return A0


# -- the optimizers' updates: one kernel for every parameter -----------------------------------------
def _update_arrays(op: str, params, *per_parameter):
    """Check a (weights, biases) pair and the arrays shaped like each (gradients, state); return (ctype, sizes).

    ``per_parameter``: pairs (name, (for the weights, for the biases)), each array shaped and typed as its
    parameter and C-contiguous (each is read and written as a flat run of elements).
    """
    _require(len(params) == 2, op, f"params must be a (weights, biases) pair, not {len(params)} arrays")
    dtype = params[0].dtype
    ctype = _ctype(op, dtype)
    for name, pair in (("params", params), *per_parameter):
        _require(len(pair) == 2, op, f"{name} must be a pair like params, not {len(pair)} arrays")
        for array, param in zip(pair, params):
            _require(array.shape == param.shape, op, f"{name} must be shaped {param.shape}, not {array.shape}")
            _require(array.dtype == dtype, op, f"{name} must be {dtype} like the parameters, not {array.dtype}")
            _require(array.flags.c_contiguous, op, f"{name} must be C-contiguous")
    return ctype, (_i64(params[0].size), _i64(params[1].size))


def _launch_update(op: str, ctype: str, sizes, args, launcher) -> None:
    n = int(sizes[0] + sizes[1])
    if n:
        grid, block = launch_shape(n)
        _run(Launch("optimizers", op, ctype, grid, block, args), launcher)


def sgd_update(params, grads, decay, lr, *, launcher=None) -> None:
    """Gradient descent on (weights, biases) in one kernel: W <- W.decay, then p <- p - lr.g for both;
    gpunet.nn.optimizers.GradientDescent. ``decay`` and ``lr`` are rounded to the parameters' dtype."""
    op = "sgd_update"
    ctype, (n_w, n_b) = _update_arrays(op, params, ("grads", grads))
    t = params[0].dtype.type
    (w, b), (dw, db) = params, grads
    _launch_update(op, ctype, (n_w, n_b), (w, dw, n_w, b, db, n_b, t(decay), t(lr)), launcher)


def momentum_update(params, grads, velocity, decay, lr, beta, *, launcher=None) -> None:
    """Momentum on (weights, biases) in one kernel: W <- W.decay; v <- beta.v + g; p <- p - lr.v;
    gpunet.nn.optimizers.Momentum."""
    op = "momentum_update"
    ctype, (n_w, n_b) = _update_arrays(op, params, ("grads", grads), ("velocity", velocity))
    t = params[0].dtype.type
    (w, b), (dw, db), (v_w, v_b) = params, grads, velocity
    args = (w, dw, v_w, n_w, b, db, v_b, n_b, t(decay), t(lr), t(beta))
    _launch_update(op, ctype, (n_w, n_b), args, launcher)


def adam_update(params, grads, mean, square, decay, beta1, beta2, step_size, eps, *, launcher=None) -> None:
    """Adam on (weights, biases) in one kernel: W <- W.decay; the moments; p <- p - step_size.m/(sqrt(s) + eps),
    with both bias corrections in ``step_size``; gpunet.nn.optimizers.Adam."""
    op = "adam_update"
    ctype, (n_w, n_b) = _update_arrays(op, params, ("grads", grads), ("mean", mean), ("square", square))
    t = params[0].dtype.type
    (w, b), (dw, db), (m_w, m_b), (s_w, s_b) = params, grads, mean, square
    scalars = (t(decay), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(step_size), t(eps))
    args = (w, dw, m_w, s_w, n_w, b, db, m_b, s_b, n_b, *scalars)
    _launch_update(op, ctype, (n_w, n_b), args, launcher)


# The rules of gpunet.nn.optimizers that optimizers.cu has, and how many per-parameter state lists each keeps.
UPDATE_STATE = {"sgd": 0, "momentum": 1, "adam": 2}


def optimizer_update(rule: str, params, grads, state, *, decay, lr, launcher=None, **scalars) -> None:
    """One optimizer step of ``rule`` on a (weights, biases) pair in one kernel; ``state``: the pair's state
    arrays as the optimizer keeps them ((velocity,) or (mean, square), each a pair); ``scalars``: the rule's
    own (beta; beta1, beta2, step_size, eps)."""
    _require(rule in UPDATE_STATE, "optimizer_update", f"no kernel for the rule {rule!r}")
    _require(len(state) == UPDATE_STATE[rule], "optimizer_update",
             f"{rule} keeps {UPDATE_STATE[rule]} state lists, not {len(state)}")
    if rule == "sgd":
        sgd_update(params, grads, decay, lr, launcher=launcher)
    elif rule == "momentum":
        momentum_update(params, grads, state[0], decay, lr, scalars["beta"], launcher=launcher)
    else:
        adam_update(params, grads, state[0], state[1], decay, scalars["beta1"], scalars["beta2"],
                    scalars["step_size"], scalars["eps"], launcher=launcher)


# -- a step replayed as a CUDA graph: its per-step numbers read from device memory (kernels/step.cu) -------
# Each rule's per-step numbers, in the order of a row of the *_update_at kernels' table.
UPDATE_SCALARS = {
    "sgd": ("decay", "lr"),
    "momentum": ("decay", "lr", "beta"),
    "adam": ("decay", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "step_size", "eps"),
}


def update_scalars(rule: str, dtype, *, decay, lr, **scalars) -> np.ndarray:
    """One row of the *_update_at kernels' table: the numbers ``optimizer_update(rule, ...)`` passes its kernel,
    each rounded to ``dtype`` as that wrapper rounds it (so a replayed step computes the eager step's bits)."""
    _require(rule in UPDATE_SCALARS, "update_scalars", f"no kernel for the rule {rule!r}")
    t = np.dtype(dtype).type
    given = {"decay": decay, "lr": lr, **scalars}
    if rule == "adam":
        given["one_minus_beta1"], given["one_minus_beta2"] = 1 - scalars["beta1"], 1 - scalars["beta2"]
    return np.array([t(given[name]) for name in UPDATE_SCALARS[rule]], dtype=np.dtype(dtype))


def optimizer_update_at(rule: str, params, grads, state, table, step, *, launcher=None) -> None:
    """``optimizer_update`` with the per-step numbers read on the device: row ``step[0]`` of ``table``
    (steps, len(UPDATE_SCALARS[rule])) of the parameters' dtype; ``step``: a (1,) int64 device array."""
    op = f"{rule}_update_at"
    _require(rule in UPDATE_STATE, "optimizer_update_at", f"no kernel for the rule {rule!r}")
    _require(len(state) == UPDATE_STATE[rule], op, f"{rule} keeps {UPDATE_STATE[rule]} state lists, not {len(state)}")
    names = ("velocity",) if rule == "momentum" else ("mean", "square")
    ctype, (n_w, n_b) = _update_arrays(op, params, ("grads", grads), *zip(names, state))
    width = len(UPDATE_SCALARS[rule])
    _require(table.ndim == 2 and table.shape[1] == width, op, f"table must be (steps, {width}), not {table.shape}")
    _require(table.dtype == params[0].dtype and table.flags.c_contiguous, op,
             f"table must be C-contiguous {params[0].dtype}")
    _require(step.shape == (1,) and step.dtype == np.int64, op, "step must be a (1,) int64 array")
    (w, b), (dw, db) = params, grads
    if rule == "sgd":
        args = (w, dw, n_w, b, db, n_b, table, step)
    elif rule == "momentum":
        (v_w, v_b), = state
        args = (w, dw, v_w, n_w, b, db, v_b, n_b, table, step)
    else:
        (m_w, m_b), (s_w, s_b) = state
        args = (w, dw, m_w, s_w, n_w, b, db, m_b, s_b, n_b, table, step)
    _launch_update(op, ctype, (n_w, n_b), args, launcher)


def _step_counter(op: str, step) -> None:
    _require(step.shape == (1,) and step.dtype == np.int64 and step.flags.c_contiguous, op,
             "step must be a (1,) int64 array")


def batch_begin(order, labels, step, index, batch_labels, dtype, *, launcher=None) -> None:
    """index[j] <- order[k.batch + j] and batch_labels[j] <- labels[index[j]] for the step k = step[0]: the
    replayed step's batch (kernels/step.cu). order: (m,) int64; labels: the data set's int32 labels; dtype: the
    step's (the kernel's T, which it does not use: the instantiation launched is the step's own)."""
    op = "batch_begin"
    ctype = _ctype(op, dtype)
    _step_counter(op, step)
    _require(order.ndim == 1 and order.dtype == np.int64 and order.flags.c_contiguous, op,
             "order must be a C-contiguous (m,) int64 array")
    _require(labels.ndim == 1 and labels.dtype == np.int32 and labels.flags.c_contiguous, op,
             "labels must be a C-contiguous int32 array")
    batch = index.size
    _require(index.shape == (batch,) and index.dtype == np.int64 and index.flags.c_contiguous, op,
             "index must be a C-contiguous (batch,) int64 array")
    _require(batch_labels.shape == (batch,) and batch_labels.dtype == np.int32 and batch_labels.flags.c_contiguous,
             op, f"batch_labels must be a C-contiguous ({batch},) int32 array")
    if batch:
        grid, block = launch_shape(batch)
        args = (order, labels, step, index, batch_labels, _i64(batch), _i64(order.size))
        _run(Launch("step", op, ctype, grid, block, args), launcher)


def batch_end(batch_losses, losses, step, *, launcher=None) -> None:
    """losses[k.batch + j] <- batch_losses[j], then step[0] <- k + 1, for k = step[0], on one thread
    (kernels/step.cu)."""
    op = "batch_end"
    _step_counter(op, step)
    ctype = _ctype(op, losses.dtype)
    _require(batch_losses.ndim == 1 and batch_losses.dtype == losses.dtype and batch_losses.flags.c_contiguous, op,
             f"batch_losses must be a C-contiguous 1-D {losses.dtype} array")
    _require(losses.ndim == 1 and losses.flags.c_contiguous, op, "losses must be a C-contiguous 1-D array")
    args = (batch_losses, losses, step, _i64(batch_losses.size), _i64(losses.size))
    _run(Launch("step", op, ctype, 1, 1, args), launcher)


# -- small products without cuBLAS (matmul.cu) ----------------------------------------------------------------
def _operand(op: str, name: str, X):
    """(array to pass, row stride, column stride) in elements for a 2-D operand that is C-contiguous or the
    transpose of a C-contiguous array (so ``W.T`` and ``A.T`` are read in place)."""
    _require(X.ndim == 2, op, f"{name} must be 2-D, not {X.shape}")
    rows, cols = X.shape
    if X.flags.c_contiguous:
        return X, cols, 1
    if X.T.flags.c_contiguous:
        return X.T, 1, rows
    raise ValueError(f"{op}: {name} must be C-contiguous or the transpose of a C-contiguous array")


def matmul(A, B, out=None, *, launcher=None):
    """C = A . B for 2-D A (M, K) and B (K, N) of one kernel dtype, each C-contiguous or a transposed view of
    a C-contiguous array; ``out``: a C-contiguous (M, N) array to write C into (not overlapping A or B).

    One thread per element of C, adding its K products in order with fma (matmul.cu): the same bits whatever
    the launch shape, against BLAS within the rounding of a K-term sum.
    """
    op = "matmul"
    xp = _array_module(A)
    ctype = _ctype(op, A.dtype)
    _require(B.dtype == A.dtype, op, f"B must be {A.dtype} like A, not {B.dtype}")
    _require(A.ndim == 2 and B.ndim == 2 and A.shape[1] == B.shape[0], op,
             f"A {A.shape} and B {B.shape} do not multiply")
    (M, K), N = A.shape, B.shape[1]
    a, a_row, a_col = _operand(op, "A", A)
    b, b_row, b_col = _operand(op, "B", B)
    C = _output(op, xp, out, "out", (M, N), A.dtype)
    if C.size:
        grid, block = launch_shape(C.size)
        args = (a, b, C, _i64(M), _i64(N), _i64(K), _i64(a_row), _i64(a_col), _i64(b_row), _i64(b_col))
        _run(Launch("matmul", op, ctype, grid, block, args), launcher)
    return C
