"""A stand-in for CuPy and the GPU, so that CupyBackend's own code runs on a machine without one.

:func:`stand_in_backend` returns a real ``CupyBackend`` (gpunet/backend_cuda.py,
unchanged) with three things swapped in for CuPy and the GPU:

* ``backend_cuda.cupy`` is ``HostCupy``: NumPy's functions, except that every
  array it makes is a ``DeviceArray``, the stand-in for ``cupy.ndarray`` (a
  NumPy array with ``.get()``). A DeviceArray mixed with a plain NumPy array in
  a ufunc (arithmetic, matmul, reductions) raises TypeError, as CuPy does, so
  host arrays that leak into device arithmetic are caught (not those used as
  an index or by copyto), and ``isinstance(a, cupy.ndarray)`` means something.
* Both keep to CuPy's real API, read from the installed ``cupy`` package
  (importable without a driver): a ``cupy.<name>`` or ``ndarray.<name>`` that
  CuPy lacks raises AttributeError, a call whose arguments CuPy's function
  would not take raises TypeError, and a ufunc keyword CuPy's ufuncs refuse
  (``where=``, ``order=``, ...) raises TypeError; so code that NumPy runs but
  CuPy would refuse on a GPU fails here too.
* ``kernels._array_module`` maps a DeviceArray to HostCupy, as it maps a
  cupy.ndarray to cupy, so the wrappers allocate their results "on the device".
* ``kernels.cuda_launch`` is ``HostWalk`` (tests/kernel_support.py): each launch
  the wrappers build runs the kernel's .cu source, compiled for the host with
  AddressSanitizer, thread by thread over the launch's grid.

Its one "device" has made-up properties (``DEVICE_PROPERTIES``), for
``describe()``. What this cannot show: anything about CuPy itself or a real
device (streams, asynchrony, memory, the real NVRTC code generation, cuBLAS's
matmul rounding). tests/test_gpu.py runs the same tests on a real device where
one is.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import cupy as real_cupy  # the API the stand-in keeps to; importing it needs no driver
import numpy as np

from gpunet import backend_cuda, kernels

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


class DeviceArray(np.ndarray):
    """A NumPy array standing for a ``cupy.ndarray``: on the "device", read back with ``.get()``."""

    def get(self) -> np.ndarray:
        return np.array(self)  # a plain ndarray copy, as cupy.ndarray.get()

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in CUPY_NDARRAY_ATTRIBUTES:
            raise AttributeError(f"cupy.ndarray has no attribute {name!r}: this would fail on a GPU")
        return super().__getattribute__(name)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        """As CuPy: no implicit mixing with host arrays (NumPy scalars are fine), only CuPy's keywords."""
        if kwargs.get("where", False) is True:  # NumPy's array methods pass the default where=True
            del kwargs["where"]
        refused = set(kwargs) - CUPY_UFUNC_KEYWORDS.get(method, set())
        if refused or not hasattr(getattr(real_cupy, ufunc.__name__, None), method):
            raise TypeError(f"cupy.{ufunc.__name__}.{method} does not take {sorted(refused) or 'this call'}")
        operands = inputs + (out or ())
        if any(type(x) is np.ndarray for x in operands):
            raise TypeError(f"{ufunc.__name__}: a host numpy.ndarray mixed with device arrays")
        inputs = tuple(x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs)
        if out is not None:
            kwargs["out"] = tuple(x.view(np.ndarray) for x in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)


def _refused_operator(name):
    def refused(self, *args):
        raise TypeError(f"cupy.ndarray has no {name}: this would fail on a GPU")

    return refused


# Operators NumPy arrays have and CuPy's lack (``@=``, ``in``, use as an index); Python looks
# them up on the type, past __getattribute__. NumPy's own protocol hooks are left alone.
for _name in set(dir(np.ndarray)) - set(dir(real_cupy.ndarray)):
    if _name.startswith("__") and not _name.startswith(("__array", "__setstate")):
        setattr(DeviceArray, _name, _refused_operator(_name))


def _device(result):
    if isinstance(result, tuple):
        return tuple(_device(r) for r in result)
    return result.view(DeviceArray) if type(result) is np.ndarray else result


class HostCupy:
    """cupy's namespace as NumPy's; every array made here is a DeviceArray."""

    __name__ = "cupy"
    __version__ = real_cupy.__version__
    ndarray = DeviceArray
    # What cupy.cuda.runtime.getDeviceProperties says of the stand-in's one "device" (its driver: "12.9").
    DEVICE_PROPERTIES = {"name": b"CuPy stand-in (NumPy, kernels walked on the CPU)", "major": 8, "minor": 6,
                         "totalGlobalMem": 0}
    MAKERS = frozenset({
        "array", "ascontiguousarray", "asfortranarray", "empty", "zeros", "ones", "full",
        "empty_like", "zeros_like", "ones_like", "full_like", "arange",
    })  # fmt: skip

    def __init__(self):
        self.synchronized = 0
        stream = SimpleNamespace(synchronize=self._synchronize)
        runtime = SimpleNamespace(
            getDeviceProperties=self._device_properties, getDeviceCount=lambda: 1,
            runtimeGetVersion=real_cupy.cuda.runtime.runtimeGetVersion, driverGetVersion=lambda: 12090,
        )  # fmt: skip
        self.cuda = SimpleNamespace(Device=lambda: SimpleNamespace(id=0), get_current_stream=lambda: stream,
                                    runtime=runtime)

    def _device_properties(self, device_id: int) -> dict:
        assert device_id == 0, f"the stand-in has one device, 0, not {device_id}"
        return dict(self.DEVICE_PROPERTIES)

    def _synchronize(self):
        self.synchronized += 1

    def asarray(self, a, dtype=None):
        """A device array as it is (cast if asked); a host array copied over, as cupy.asarray does."""
        if isinstance(a, DeviceArray):
            return _device(np.asarray(a.view(np.ndarray), dtype=dtype))
        return _device(np.array(a, dtype=dtype))

    def __getattr__(self, name):
        real = getattr(real_cupy, name, None)
        if real is None:
            raise AttributeError(f"cupy has no attribute {name!r}: this would fail on a GPU")
        attr = getattr(np, name)
        if not inspect.isfunction(real):  # ufuncs (checked by DeviceArray), dtypes, constants
            return attr
        signature = inspect.signature(real)

        def call(*args, **kwargs):
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"cupy.{name}{signature} does not take this call: {exc}") from None
            result = attr(*args, **kwargs)
            return _device(result) if name in self.MAKERS else result

        return call


def stand_in_backend(monkeypatch, launcher) -> backend_cuda.CupyBackend:
    """A real CupyBackend on HostCupy, its kernel launches sent to ``launcher`` (a HostWalk)."""
    host = HostCupy()
    monkeypatch.setattr(backend_cuda, "cupy", host)
    array_module = kernels._array_module
    monkeypatch.setattr(kernels, "_array_module", lambda a: host if isinstance(a, DeviceArray) else array_module(a))
    monkeypatch.setattr(kernels, "cuda_launch", launcher)
    backend = backend_cuda.CupyBackend()
    backend.xp = host  # the class binds the real cupy module at import
    return backend
