"""A stand-in for CuPy and the GPU, so that CupyBackend's own code runs on a machine without one.

:func:`stand_in_backend` returns a real ``CupyBackend`` (gpunet/backends/cuda.py,
unchanged) with three things swapped in for CuPy and the GPU:

* ``backend_cuda.cupy`` is ``HostCupy``: NumPy's functions, except that every
  array it makes is a ``DeviceArray``, the stand-in for ``cupy.ndarray``. A
  DeviceArray holds its NumPy memory privately and is no ``numpy.ndarray``:
  ``isinstance(x, np.ndarray)`` is false and ``np.asarray(x)`` raises CuPy's
  TypeError, so only CuPy's API reaches the data. As on CuPy, a host array
  mixed into device arithmetic raises TypeError (a host array used as an index
  is copied over, as CuPy does), reductions and scalar indexing give 0-d device
  arrays, and NumPy's ufuncs with ``out=`` device arrays (``np.multiply(g, lr,
  out=tmp)``) run through ``__array_ufunc__``.
* Both keep to CuPy's real API, read from the installed ``cupy`` package
  (importable without a driver): a ``cupy.<name>`` or ``ndarray.<name>`` that
  CuPy lacks raises AttributeError; a call whose arguments CuPy's function or
  ndarray method would not take raises TypeError (the methods' signatures are
  read from the docstrings Cython embeds, the one place CuPy states them); a
  ufunc keyword CuPy's ufuncs refuse (``where=``, ``order=``, ...) raises
  TypeError; so code that NumPy runs but CuPy would refuse fails here too.
* ``kernels._array_module`` maps a DeviceArray to HostCupy, as it maps a
  cupy.ndarray to cupy, so the wrappers allocate their results "on the device";
  ``kernels.cuda_launch`` is a :class:`DeviceLauncher`, which refuses a host
  array among a launch's arguments and hands the device arrays' memory to a
  ``HostWalk`` (tests/kernel_support.py): the kernel's .cu source, compiled for
  the host with AddressSanitizer, walked thread by thread over the launch's
  grid. The walk refuses a launch where an array the kernel writes overlaps
  another argument (``kernels.WRITES``).

Every device-to-host transfer is recorded in ``HostCupy.transfers`` with the
line that asked for it: ``.get()``, ``cupy.asnumpy``, ``float()``/``int()``/
``bool()``/``complex()`` of a device array, ``.item()``/``.tolist()``, printing
one, and the reads CuPy makes itself to size a result (boolean-mask indexing,
``nonzero``). So a test can assert that a training epoch waits for the device
only where the loop says it does.

Every launch and allocation is recorded in ``HostCupy.events`` (an :class:`Event` each, with
the line that asked): a custom kernel (``kernels.cuda_launch``), a CuPy elementwise kernel (a
ufunc, a fill, a copy, a gather), a reduction, a cuBLAS product (``matmul``), a device
allocation (a new array that owns its memory; views are none), and each transfer, device to
host or host to device (``cupy.asarray`` of a host array, a host index). tests/launch_count.py
counts a training step's from them (``scripts/bench.py --launches``).

Stream capture (``cupy.cuda.Stream.begin_capture``/``end_capture``, ``cupy.cuda.Graph.launch``) is
modelled as CUDA does it: while a stream captures, nothing runs; each launch (a custom kernel, an
elementwise or reduction kernel into a given ``out=``, a cuBLAS product, a fill or copy) is recorded
as a node of the graph, reading and writing the arrays it was given when the graph is launched. What
CUDA refuses while capturing raises CuPy's ``CUDARuntimeError`` (cudaErrorStreamCaptureUnsupported):
a synchronisation, a copy to the host, a copy from host memory. A cuBLAS product raises CuPy's own
NotImplementedError (``CUBLAS_IN_CAPTURE``: CuPy refuses every cuBLAS call on a capturing stream), unless
a test sets ``cublas_in_capture`` to model a step whose products could be captured. An allocation goes to the allocator
of ``cupy.cuda.using_allocator`` where one is set (gpunet sets one that refuses); with none it is
refused too, stricter than CuPy's default relaxed capture mode, whose pool may hand out a block that
is freed and reused after the capture while the graph still writes it. A graph launch is one event
(``GRAPH``), its nodes kept in ``Graph.nodes``.

Its one "device" has made-up properties (``DEVICE_PROPERTIES``), for
``describe()``, and made-up NVRTC and cuBLAS handles that a test can make fail.
What this cannot show: anything about CuPy itself or a real device (streams,
asynchrony, memory, the real NVRTC code generation, cuBLAS's matmul rounding).
tests/test_gpu.py runs the same tests on a real device where one is.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import re
import sys
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import cupy as real_cupy  # the API the stand-in keeps to; importing it needs no driver
import numpy as np
from cupy_backends.cuda.api.runtime import CUDARuntimeError

from gpunet.backends import cuda as backend_cuda, kernels

# The keywords CuPy's ufuncs take, per method (cupy/_core/_kernel.pyx: ufunc.__call__, .reduce, ...).
CUPY_UFUNC_KEYWORDS = {
    "__call__": {"dtype", "casting"},
    "reduce": {"axis", "dtype", "keepdims"},
    "accumulate": {"axis", "dtype"},
    "reduceat": {"axis", "dtype"},
    "outer": {"dtype"},
    "at": set(),
}
CUPY_NDARRAY_ATTRIBUTES = frozenset(dir(real_cupy.ndarray))
# cupy.ndarray attributes the stand-in does not model (each would hand out host memory or CuPy internals).
UNMODELLED = frozenset({"data", "flat", "cstruct", "mdspan", "reduced_view", "toDlpack", "device", "dump", "dumps"})
# CuPy's own words for np.asarray(device_array) (cupy/_core/core.pyx: __array__).
IMPLICIT_CONVERSION = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
)
# cupy functions and ndarray methods that take host arrays (data, or indices) and copy them to the device.
FROM_HOST = frozenset({"array", "asarray", "asanyarray", "take", "put", "compress"})
# cupy functions whose result size depends on the data: CuPy reads a count back from the device first.
SIZED_BY_DATA = frozenset({"nonzero", "argwhere", "flatnonzero", "compress", "unique", "extract"})
# cupy functions that give a 0-d device array where NumPy gives a Python bool.
DEVICE_BOOL = frozenset({"array_equal", "array_equiv", "allclose"})
STAND_IN_FILE = str(Path(__file__).resolve())


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One device-to-host transfer: what did it (``float()``, ``.get()``, ...) and the line that asked."""

    what: str
    where: str

    def __str__(self) -> str:
        return f"{self.what} at {self.where}"


# What the stand-in records of the work CuPy and gpunet would queue on a GPU (Event.kind).
GRAPH = "graph"  # a captured graph's launch: one launch, however many nodes it replays
LAUNCHES = ("kernel", "elementwise", "reduction", "cublas", GRAPH)  # one launch each
CAPTURE_UNSUPPORTED = 900  # cudaErrorStreamCaptureUnsupported: "operation not permitted when stream is capturing"
# CuPy's refusal of any cuBLAS call on a capturing stream (cupy_backends/cuda/libs/cublas.pyx, setStream, which
# every product calls first; in CuPy 14.2, the version installed here).
CUBLAS_IN_CAPTURE = "calling cuBLAS API during stream capture is currently unsupported"
ALLOCATION, D2H, H2D = "allocation", "d2h", "h2d"
# cupy functions and ndarray methods that reduce (one reduction kernel), that multiply matrices (cuBLAS),
# that only allocate, and that give a view where they can (no launch unless the result owns new memory).
REDUCTIONS = frozenset({"sum", "prod", "max", "min", "amax", "amin", "argmax", "argmin", "mean", "var", "std",
                        "any", "all", "count_nonzero", "nansum", "nanmax", "nanmin", "cumsum", "cumprod"})
PRODUCTS = frozenset({"matmul", "dot", "tensordot", "inner", "vdot"})
ALLOCATE_ONLY = frozenset({"empty", "empty_like"})
IN_PLACE = frozenset({"copyto", "put", "place", "putmask", "fill_diagonal", "fill", "sort"})  # None, a kernel
VIEWS = frozenset({"reshape", "view", "transpose", "swapaxes", "moveaxis", "squeeze", "expand_dims", "ravel",
                   "atleast_1d", "atleast_2d", "atleast_3d", "broadcast_to", "diagonal", "real", "imag"})


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing a GPU would do: a launch (``LAUNCHES``), an allocation or a transfer, and the line that asked.

    ``nbytes``: the bytes of the launch's array operands (each read or written once), of the allocation, or
    moved by the transfer; ``flops``: a product's 2.m.n.k (cuBLAS or kernels/matmul.cu; no other arithmetic is counted).
    """

    kind: str
    name: str
    nbytes: int
    flops: int
    where: str


def _nbytes(*values) -> int:
    """The bytes of the device arrays among ``values`` (each distinct array once)."""
    seen, total = set(), 0
    for value in values:
        if isinstance(value, (list, tuple)):
            for v in value:
                if isinstance(v, DeviceArray) and id(v._host) not in seen:
                    seen.add(id(v._host))
                    total += v._host.nbytes
        elif isinstance(value, DeviceArray) and id(value._host) not in seen:
            seen.add(id(value._host))
            total += value._host.nbytes
    return total


def _caller() -> str:
    """file:line of the innermost frame outside this file and outside NumPy."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename == STAND_IN_FILE or "/numpy/" in frame.f_code.co_filename
    ):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} ({frame.f_code.co_name})"


# -- CuPy's signatures ---------------------------------------------------------------------------------
_C_TYPES = r"(?:_ndarray_base|ndarray|Py_ssize_t|Py_ssize_t\[\]|bint|int|double|float|str|tuple|list|dict|object)"


@lru_cache(maxsize=None)
def cupy_method_signature(name: str) -> inspect.Signature | None:
    """The signature of ``cupy.ndarray.<name>``, self included, or None where CuPy does not state it.

    Cython methods have no introspectable signature; CuPy's are embedded as the
    docstring's first line, e.g. ``_ndarray_base.sum(self, axis=None, dtype=None,
    out=None, keepdims=False) -> _ndarray_base``, with C types before some names.
    """
    method = getattr(real_cupy.ndarray, name, None)
    if method is None:
        return None
    try:
        return inspect.signature(method)
    except (TypeError, ValueError):
        pass
    first = (method.__doc__ or "").strip().splitlines()[:1]
    match = re.match(rf"[\w.]*\b{re.escape(name)}\((.*)\)", first[0]) if first else None
    if match is None:
        return None
    parameters = re.sub(rf"\b{_C_TYPES}\s+(?=\w)", "", match.group(1))
    namespace = {}
    try:
        exec(f"def stated({parameters}): pass", namespace)  # noqa: S102 - CuPy's own stated parameter list
    except Exception:  # a default that names something (dtype=numpy.float64): not checked
        return None
    return inspect.signature(namespace["stated"])


def _check_call(what: str, signature: inspect.Signature | None, args, kwargs) -> None:
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{what}{signature} does not take this call: {exc}") from None


# -- the device array -------------------------------------------------------------------------------
class DeviceArray:
    """Stands for a ``cupy.ndarray``: NumPy memory on the "device", reached only through CuPy's API."""

    __slots__ = ("_host", "_device")
    __hash__ = None
    __array_priority__ = 100  # CuPy's

    def __init__(self, host: np.ndarray, device: HostCupy):
        assert type(host) is np.ndarray, type(host)
        self._host = host
        self._device = device

    # -- what CuPy has: NumPy's attribute, checked against CuPy's signature, on the device memory --
    def __getattr__(self, name):
        if name not in CUPY_NDARRAY_ATTRIBUTES:
            raise AttributeError(f"cupy.ndarray has no attribute {name!r}: this would fail on a GPU")
        if name.startswith("_") or name in UNMODELLED:
            raise AttributeError(f"the CuPy stand-in does not model cupy.ndarray.{name}")
        value = getattr(self._host, name)
        if not callable(value):
            return self._device._result(value)  # T, real, imag: device arrays; shape, dtype, flags: host values
        return self._device._method(self, name, value)

    def __dir__(self):
        return sorted(CUPY_NDARRAY_ATTRIBUTES)

    # -- the ways back to the host, each recorded -------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True) -> np.ndarray:
        """A NumPy copy, as cupy.ndarray.get()."""
        self._device._transferred(".get()", self._host.nbytes)
        if out is not None:
            np.copyto(out, self._host)
            return out
        return np.array(self._host, order=order)

    def set(self, arr, stream=None) -> None:
        """Copy a host array of the same shape and dtype in (host to device: nothing to record)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, not {type(arr).__name__}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(f"Shape or dtype mismatch: {arr.shape} {arr.dtype} vs {self.shape} {self.dtype}")
        self._device._uploaded(".set()", arr.nbytes)
        np.copyto(self._host, arr)

    def item(self):
        self._device._transferred(".item()", self._host.nbytes)
        return self._host.item()

    def tolist(self):
        self._device._transferred(".tolist()", self._host.nbytes)
        return self._host.tolist()

    def tobytes(self, order="C") -> bytes:
        self._device._transferred(".tobytes()", self._host.nbytes)
        return self._host.tobytes(order)

    def tofile(self, fid, sep="", format="%s") -> None:
        self._device._transferred(".tofile()", self._host.nbytes)
        self._host.tofile(fid, sep, format)

    def __float__(self):
        self._device._transferred("float()", self._host.nbytes)
        return float(self._host)

    def __int__(self):
        self._device._transferred("int()", self._host.nbytes)
        return int(self._host)

    def __complex__(self):
        self._device._transferred("complex()", self._host.nbytes)
        return complex(self._host)

    def __bool__(self):
        self._device._transferred("bool()", self._host.nbytes)
        return bool(self._host)

    def __bytes__(self):
        self._device._transferred("bytes()", self._host.nbytes)
        return bytes(self._host)

    def __repr__(self):
        self._device._transferred("repr()", self._host.nbytes)
        return repr(self._host)

    def __str__(self):
        self._device._transferred("str()", self._host.nbytes)
        return str(self._host)

    def __format__(self, spec):
        self._device._transferred("format()", self._host.nbytes)
        return format(self._host.item() if self._host.ndim == 0 else self._host, spec)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_CONVERSION)

    def __reduce__(self):
        raise TypeError("the CuPy stand-in does not model pickling a cupy.ndarray")

    # -- containers and indexing -----------------------------------------------------------------------
    def __len__(self):
        return len(self._host)

    def __iter__(self):
        if self._host.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._host)))

    def __getitem__(self, key):
        host_key = self._device._index(key)
        result = self._host[host_key]
        if isinstance(result, np.generic):  # an element: CuPy gives a 0-d view of it
            result = self._host[_with_ellipsis(host_key)]
        result = self._device._result(result)
        if _advanced(key):  # a gather into a new array: one elementwise kernel
            self._device._record("elementwise", "cupy.ndarray.__getitem__ (advanced)", _nbytes(self, result))
        return result

    def __setitem__(self, key, value):
        host_key = self._device._index(key)
        if isinstance(value, np.ndarray) and value.ndim and not _advanced(key):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")  # CuPy's fill of a view
        if isinstance(value, np.ndarray):
            self._device._uploaded("cupy.ndarray.__setitem__ (a host value)", value.nbytes)
        if self._device._captured("elementwise", "cupy.ndarray.__setitem__", _nbytes(self, value), 0,
                                  lambda: self._host.__setitem__(host_key, _unwrap(value))):
            return
        self._host[host_key] = value._host if isinstance(value, DeviceArray) else value
        self._device._record("elementwise", "cupy.ndarray.__setitem__", _nbytes(self[key] if not _advanced(key)
                                                                                 else self, value))

    def __copy__(self):
        self._device._record("elementwise", "copy", 2 * self._host.nbytes)
        return self._device._result(self._host.copy())

    def __deepcopy__(self, memo):
        self._device._record("elementwise", "copy", 2 * self._host.nbytes)
        return self._device._result(copy.deepcopy(self._host, memo))

    # -- arithmetic: NumPy's ufuncs, through __array_ufunc__ as CuPy's -----------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        """As CuPy: no implicit mixing with host arrays (NumPy scalars are fine), only CuPy's keywords."""
        if kwargs.get("where", False) is True:  # NumPy's default, passed on by some callers
            del kwargs["where"]
        refused = set(kwargs) - CUPY_UFUNC_KEYWORDS.get(method, set())
        if refused or not hasattr(getattr(real_cupy, ufunc.__name__, None), method):
            raise TypeError(f"cupy.{ufunc.__name__}.{method} does not take {sorted(refused) or 'this call'}")
        operands = inputs + (out or ())
        if any(isinstance(x, np.ndarray) for x in operands):
            raise TypeError(f"{ufunc.__name__}: a host numpy.ndarray mixed with device arrays")
        host_inputs = tuple(_unwrap(x) for x in inputs)
        if out is not None:
            kwargs["out"] = tuple(_unwrap(x) for x in out)
        if self._device.capture is not None:
            if out is None:  # its result is a new array: allocated while capturing
                self._device._allocated_in_capture(f"the result of cupy.{ufunc.__name__}")
            kind = "cublas" if ufunc is np.matmul else "reduction" if method == "reduce" else "elementwise"
            flops = 2 * out[0]._host.size * host_inputs[0].shape[-1] if kind == "cublas" else 0
            self._device._captured(kind, f"cupy.{ufunc.__name__}", _nbytes(*inputs, *out), flops,
                                   lambda: getattr(ufunc, method)(*host_inputs, **kwargs))
            return out[0] if len(out) == 1 else out
        result = getattr(ufunc, method)(*host_inputs, **kwargs)
        result = (out[0] if len(out) == 1 else out) if out is not None else self._device._result(result)
        nbytes = _nbytes(*inputs, *(result if isinstance(result, tuple) else (result,)))
        if ufunc is np.matmul and method == "__call__":
            a, b = host_inputs
            k = a.shape[-1] if a.ndim else 1
            self._device._record("cublas", "matmul", nbytes, 2 * int(np.prod(np.shape(_unwrap(result)))) * k)
        else:
            kind = "reduction" if method == "reduce" else "elementwise"
            self._device._record(kind, f"cupy.{ufunc.__name__}" + (f".{method}" if method != "__call__" else ""),
                                 nbytes)
        return result

    def __array_function__(self, func, types, args, kwargs):
        """``np.<function>(device_array)`` runs CuPy's function of that name, as CuPy does; others are refused."""
        if func.__module__ != "numpy" or not inspect.isfunction(getattr(real_cupy, func.__name__, None)):
            return NotImplemented
        return getattr(self._device, func.__name__)(*args, **kwargs)


def _operator(ufunc, reflected=False, in_place=False):
    if in_place:
        return lambda self, other: ufunc(self, other, out=(self,))
    if reflected:
        return lambda self, other: ufunc(other, self)
    return lambda self, other: ufunc(self, other)


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
    "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
    "lshift": np.left_shift, "rshift": np.right_shift, "divmod": np.divmod,
}  # fmt: skip
_COMPARISONS = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
                "gt": np.greater, "ge": np.greater_equal}
_UNARY = {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}


def _define_operators() -> None:
    """The operators cupy.ndarray has, each as NumPy's ufunc on DeviceArrays (so through __array_ufunc__).

    One CuPy lacks (``__imatmul__``, ``__index__``, ``__contains__``) is left out, so
    Python does what it does on CuPy: ``a @= b`` rebinds a to a new array, ``range(a)`` fails.
    """
    for name, ufunc in {**_BINARY, **_COMPARISONS}.items():
        for dunder, kind in ((f"__{name}__", {}), (f"__r{name}__", {"reflected": True}),
                             (f"__i{name}__", {"in_place": True})):
            if dunder in CUPY_NDARRAY_ATTRIBUTES:
                setattr(DeviceArray, dunder, _operator(ufunc, **kind))
    for name, ufunc in _UNARY.items():
        if f"__{name}__" in CUPY_NDARRAY_ATTRIBUTES:
            setattr(DeviceArray, f"__{name}__", lambda self, ufunc=ufunc: ufunc(self))


_define_operators()


def _unwrap(value):
    """A DeviceArray's memory (for NumPy to work on), lists and tuples of them too; anything else as it is."""
    if isinstance(value, DeviceArray):
        return value._host
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    return value


def _host_bytes(values) -> int:
    """The bytes of the host arrays among ``values`` (what CuPy copies to the device)."""
    total = 0
    for value in values:
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, (list, tuple)):
            total += _host_bytes(value)
    return total


def _holds_host_array(value) -> bool:
    if isinstance(value, np.ndarray):
        return True
    return isinstance(value, (list, tuple)) and any(_holds_host_array(v) for v in value)


def _key_parts(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _advanced(key) -> bool:
    """Whether an index is advanced (arrays or lists in it): CuPy then copies a host value over."""
    return any(isinstance(k, (DeviceArray, np.ndarray, list)) for k in _key_parts(key))


def _with_ellipsis(key):
    """The key with a trailing ``...``: NumPy then gives a 0-d view instead of a scalar."""
    parts = _key_parts(key)
    return parts if any(k is Ellipsis for k in parts) else (*parts, Ellipsis)


def _kernel_flops(launch: kernels.Launch) -> int:
    """A kernel's FLOPs where it does a product (matmul.cu: 2.M.N.K, as a cuBLAS product counts), else 0."""
    if launch.kernel != "matmul":
        return 0
    M, N, K = (int(n) for n in launch.args[3:6])
    return 2 * M * N * K


class DeviceLauncher:
    """``kernels.cuda_launch`` on the stand-in: a launch's device arrays handed to ``walk`` as their memory.

    A host NumPy array among the arguments is refused, as CuPy's RawKernel refuses one.
    """

    def __init__(self, walk, device: HostCupy | None = None):
        self.walk, self.device = walk, device

    def __call__(self, launch: kernels.Launch) -> None:
        for k, arg in enumerate(launch.args):
            if isinstance(arg, np.ndarray):
                raise TypeError(f"argument {k} of {launch.name} is a host numpy.ndarray: a kernel takes device arrays")
        walked = dataclasses.replace(launch, args=tuple(_unwrap(arg) for arg in launch.args))
        if self.device is not None:
            flops = _kernel_flops(launch)
            if self.device._captured("kernel", launch.name, _nbytes(*launch.args), flops, lambda: self.walk(walked)):
                return
            self.device._record("kernel", launch.name, _nbytes(*launch.args), flops)
        self.walk(walked)


# -- the namespace --------------------------------------------------------------------------------------
class HostCupy:
    """cupy's namespace as NumPy's; every array made here is a DeviceArray."""

    __name__ = "cupy"
    __version__ = real_cupy.__version__
    ndarray = DeviceArray
    # What cupy.cuda.runtime.getDeviceProperties says of the stand-in's one "device" (its driver: "12.9").
    DEVICE_PROPERTIES = {"name": b"CuPy stand-in (NumPy, kernels walked on the CPU)", "major": 8, "minor": 6,
                         "totalGlobalMem": 0}

    def __init__(self):
        self.synchronized = 0
        self.transfers: list[Transfer] = []
        self.events: list[Event] = []
        self.capture: list | None = None  # the nodes of the graph being captured, while a stream captures
        self.allocator = None  # cupy.cuda.using_allocator's, while one is set
        # Whether a cuBLAS product may be captured: CuPy refuses it (CUBLAS_IN_CAPTURE); a test that models a step
        # whose products could be captured (cuBLAS through another binding, or products as own kernels) says so.
        self.cublas_in_capture = False
        self.streams = [Stream(self, null=True)]  # the current stream last
        runtime = SimpleNamespace(
            getDeviceProperties=self._device_properties, getDeviceCount=lambda: 1,
            runtimeGetVersion=real_cupy.cuda.runtime.runtimeGetVersion, driverGetVersion=lambda: 12090,
        )  # fmt: skip
        self.cuda = SimpleNamespace(
            Device=lambda: SimpleNamespace(id=0), get_current_stream=lambda: self.streams[-1], runtime=runtime,
            Stream=lambda *args, **kwargs: Stream(self, *args, **kwargs), Graph=Graph,
            using_allocator=self._using_allocator,
            nvrtc=SimpleNamespace(getVersion=lambda: (12, 9)),  # NVRTC loads (the kernels are walked, not compiled)
            device=SimpleNamespace(get_cublas_handle=lambda: 1),  # so does cuBLAS
        )  # fmt: skip

    def _device_properties(self, device_id: int) -> dict:
        assert device_id == 0, f"the stand-in has one device, 0, not {device_id}"
        return dict(self.DEVICE_PROPERTIES)

    def _synchronize(self):
        self._refused_in_capture("a synchronisation")
        self.synchronized += 1

    # -- stream capture -------------------------------------------------------------------------------------
    def _refused_in_capture(self, what: str) -> None:
        """CuPy's CUDARuntimeError where a stream captures: CUDA refuses ``what`` then."""
        if self.capture is not None:
            raise CUDARuntimeError(CAPTURE_UNSUPPORTED)

    def _allocated_in_capture(self, what: str) -> None:
        """An allocation while capturing: the allocator of using_allocator decides, else it is refused."""
        if self.allocator is not None:
            self.allocator(0)
            return
        raise CUDARuntimeError(CAPTURE_UNSUPPORTED)

    def _captured(self, kind: str, name: str, nbytes: int, flops: int, run) -> bool:
        """While capturing: ``run`` kept as a graph node, not run (True); else False, to run it now."""
        if self.capture is None:
            return False
        if kind == "cublas" and not self.cublas_in_capture:
            raise NotImplementedError(CUBLAS_IN_CAPTURE)
        self.capture.append(Node(kind, name, int(nbytes), int(flops), run))
        return True

    @contextlib.contextmanager
    def _using_allocator(self, allocator=None):
        before, self.allocator = self.allocator, allocator
        try:
            yield
        finally:
            self.allocator = before

    def _transferred(self, what: str, nbytes: int = 0) -> None:
        self._refused_in_capture(what)
        where = _caller()
        self.transfers.append(Transfer(what, where))
        self.events.append(Event(D2H, what, nbytes, 0, where))

    def _record(self, kind: str, name: str, nbytes: int = 0, flops: int = 0) -> None:
        self.events.append(Event(kind, name, int(nbytes), int(flops), _caller()))

    def _uploaded(self, what: str, nbytes: int) -> None:
        """A host-to-device copy (``cupy.asarray`` of a host array, a host array as an index or value)."""
        self._refused_in_capture(what)
        self._record(H2D, what, nbytes)

    # -- moving data ------------------------------------------------------------------------------------
    def asarray(self, a, dtype=None, order=None, *, blocking=False):
        """A device array as it is (cast if asked); a host array copied over, as cupy.asarray does."""
        if isinstance(a, DeviceArray):
            result = self._result(np.asarray(a._host, dtype=dtype, order=order), (a,))
            if result is not a:
                self._record("elementwise", "cupy.asarray (a cast)", _nbytes(a, result))
            return result
        result = self._result(np.array(a, dtype=dtype, order=order))
        self._uploaded("cupy.asarray", result._host.nbytes)
        return result

    def asnumpy(self, a, stream=None, order="C", out=None, *, blocking=True):
        """A NumPy copy of a device array (recorded); a host array as it is."""
        if isinstance(a, DeviceArray):
            return a.get(order=order, out=out)
        return np.asarray(a, order=order)

    # -- every other function: NumPy's, held to CuPy's signature, on device memory -------------------------
    def __getattr__(self, name):
        real = getattr(real_cupy, name, None)
        if real is None:
            raise AttributeError(f"cupy has no attribute {name!r}: this would fail on a GPU")
        if not hasattr(np, name):
            raise AttributeError(f"the CuPy stand-in does not model cupy.{name}")
        attr = getattr(np, name)
        if not inspect.isfunction(real):  # ufuncs (checked by DeviceArray), dtypes, constants
            return attr
        signature = inspect.signature(real)

        def call(*args, **kwargs):
            _check_call(f"cupy.{name}", signature, args, kwargs)
            if name not in FROM_HOST and (_holds_host_array(args) or _holds_host_array(tuple(kwargs.values()))):
                raise TypeError(f"cupy.{name}: a host numpy.ndarray among its arguments (this would fail on a GPU)")
            if name in SIZED_BY_DATA:
                self._transferred(f"cupy.{name} (reads its result's size back)", 8)
            given = (*args, *kwargs.values())
            uploads = _host_bytes(given) if name in FROM_HOST else 0
            if uploads:
                self._uploaded(f"cupy.{name}", uploads)
            if self._deferred(f"cupy.{name}", name, attr, args, kwargs, given):
                return kwargs.get("out")
            result = attr(*_unwrap(args), **{key: _unwrap(value) for key, value in kwargs.items()})
            if name in DEVICE_BOOL:
                result = np.asarray(result)
            result = self._result(result, given)
            if not (name in ("array", "asarray", "asanyarray") and uploads):  # an upload alone launches nothing
                self._classify(f"cupy.{name}", name, given, result)
            return result

        return call

    def _deferred(self, what: str, name: str, function, args, kwargs, given) -> bool:
        """While capturing, a call that writes arrays it is given (in place, or into ``out=``) kept as a graph
        node (True). Any other call runs now: a view or a no-op runs as on CuPy, a new array is refused."""
        if self.capture is None or not (name in IN_PLACE or kwargs.get("out") is not None):
            return False
        host_args, host_kwargs = _unwrap(args), {key: _unwrap(value) for key, value in kwargs.items()}
        kind = "cublas" if name in PRODUCTS else "reduction" if name in REDUCTIONS else "elementwise"
        return self._captured(kind, what, _nbytes(*given), 0, lambda: function(*host_args, **host_kwargs))

    # -- shared by DeviceArray -----------------------------------------------------------------------------
    def _method(self, array: DeviceArray, name: str, method):
        """``array.<name>`` bound: CuPy's signature checked, NumPy's method run on the memory."""
        signature = cupy_method_signature(name)

        def call(*args, **kwargs):
            _check_call(f"cupy.ndarray.{name}", signature, (array, *args), kwargs)
            if name not in FROM_HOST and (_holds_host_array(args) or _holds_host_array(tuple(kwargs.values()))):
                raise TypeError(f"cupy.ndarray.{name}: a host numpy.ndarray among its arguments")
            if name in SIZED_BY_DATA:
                self._transferred(f"cupy.ndarray.{name} (reads its result's size back)", 8)
            given = (array, *args, *kwargs.values())
            uploads = _host_bytes(given) if name in FROM_HOST else 0
            if uploads:
                self._uploaded(f"cupy.ndarray.{name}", uploads)
            if self._deferred(f"cupy.ndarray.{name}", name, method, args, kwargs, given):
                return kwargs.get("out")
            result = method(*_unwrap(args), **{key: _unwrap(value) for key, value in kwargs.items()})
            result = self._result(result, given)
            self._classify(f"cupy.ndarray.{name}", name, given, result)
            return result

        return call

    def _index(self, key):
        """An index for the memory: device arrays in it unwrapped; a boolean mask recorded (CuPy counts it)."""
        parts = _key_parts(key)
        for part in parts:
            if isinstance(part, (DeviceArray, np.ndarray)) and part.dtype == np.bool_:
                self._transferred("boolean-mask index (CuPy reads the mask's count back)", 8)
            if isinstance(part, (np.ndarray, list)):
                self._uploaded("a host index", np.asarray(part).nbytes)
        host = tuple(_unwrap(part) for part in parts)
        return host if isinstance(key, tuple) else host[0]

    def _classify(self, what: str, name: str, given, result) -> None:
        """Record the launch a CuPy function or method ``name`` makes, judged by its kind and its result."""
        results = result if isinstance(result, tuple) else (result,)
        nbytes = _nbytes(*given, *results)
        if name in ALLOCATE_ONLY:
            return
        if name in PRODUCTS:
            a, b = (_unwrap(x) for x in given[:2])
            k = a.shape[-1] if np.ndim(a) else 1
            self._record("cublas", what, nbytes, 2 * int(np.prod(np.shape(_unwrap(results[0])))) * k)
        elif name in REDUCTIONS:
            self._record("reduction", what, nbytes)
        elif name in IN_PLACE:
            self._record("elementwise", what, nbytes)
        elif any(isinstance(r, DeviceArray) and not any(r is g for g in given)
                 and (name not in VIEWS or r._host.base is None) for r in results):
            self._record("elementwise", what, nbytes)  # a new array filled (a view or a given array: nothing)

    def _result(self, value, given=()):
        """NumPy's result as CuPy's: arrays and scalars on the device; a given array returned as itself."""
        if isinstance(value, tuple):
            return tuple(self._result(v, given) for v in value)
        for arg in given:  # out=, astype(copy=False), asarray of a device array: the same array, as CuPy
            if isinstance(arg, DeviceArray) and arg._host is value:
                return arg
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if type(value) is np.ndarray:
            if value.base is None:  # memory of its own, not a view
                if self.capture is not None:
                    self._allocated_in_capture(f"{value.dtype}{list(value.shape)}")
                self._record(ALLOCATION, f"{value.dtype}{list(value.shape)}", value.nbytes)
            return DeviceArray(value, self)
        return value


@dataclasses.dataclass(frozen=True)
class Node:
    """One launch a captured graph replays: its kind and name (as an Event's) and what runs it."""

    kind: str
    name: str
    nbytes: int
    flops: int
    run: object = dataclasses.field(repr=False)


class Stream:
    """``cupy.cuda.Stream`` on the stand-in: the current stream inside ``with``, and capture."""

    def __init__(self, device: HostCupy, null=False, non_blocking=False, ptds=False, priority=None):
        self.device, self.null, self.non_blocking = device, null, non_blocking
        self.capturing = False

    def __enter__(self):
        self.device.streams.append(self)
        return self

    def __exit__(self, *exc_info):
        assert self.device.streams.pop() is self
        return False

    def synchronize(self) -> None:
        self.device._synchronize()

    def is_capturing(self) -> bool:
        return self.capturing

    def begin_capture(self, mode=None) -> None:
        """Record from here on, run nothing (cudaStreamBeginCapture): not on the null stream, not twice."""
        if self.null or self.device.capture is not None:
            raise CUDARuntimeError(CAPTURE_UNSUPPORTED if self.device.capture is not None else 1)
        self.device.capture, self.capturing = [], True

    def end_capture(self) -> Graph:
        """The graph of what was recorded since begin_capture."""
        if not self.capturing:
            raise CUDARuntimeError(1)  # cudaErrorInvalidValue: this stream does not capture
        nodes, self.device.capture, self.capturing = self.device.capture, None, False
        return Graph(self.device, tuple(nodes))


class Graph:
    """``cupy.cuda.Graph`` on the stand-in: ``launch`` runs the recorded nodes in order, as one launch."""

    def __init__(self, device: HostCupy, nodes: tuple):
        self.device, self.nodes = device, nodes

    def launch(self, stream=None) -> None:
        self.device._refused_in_capture("a graph launch")
        self.device._record(GRAPH, f"graph of {len(self.nodes)} nodes", sum(n.nbytes for n in self.nodes),
                            sum(n.flops for n in self.nodes))
        for node in self.nodes:
            node.run()


def stand_in_backend(monkeypatch, launcher) -> backend_cuda.CupyBackend:
    """A real CupyBackend on HostCupy, its kernel launches sent to ``launcher`` (a HostWalk)."""
    host = HostCupy()
    monkeypatch.setattr(backend_cuda, "cupy", host)
    array_module = kernels._array_module
    monkeypatch.setattr(kernels, "_array_module", lambda a: host if isinstance(a, DeviceArray) else array_module(a))
    monkeypatch.setattr(kernels, "cuda_launch", DeviceLauncher(launcher, host))
    return backend_cuda.CupyBackend()
