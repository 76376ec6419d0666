"""The CPU backend: NumPy, with what pays on a CPU (sample-major layouts, both cores, numba where installed)."""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from gpunet.backends.base import Backend
from gpunet.nn import augment

SAMPLE_MAJOR_FROM = 128  # samples; see CpuBackend.empty_layer
FULL_BATCH_CHUNK = 512  # samples: 1.6 MB of float32 pixels, inside a core's 2 MB L2 cache


class CpuBackend(Backend):
    """NumPy on the CPU, with what pays there: sample-major layouts, both cores, compiled loops where numba is."""

    name = "cpu"
    xp = np
    reuses_layer_arrays = True  # fresh arrays of megabytes cost page faults at every step

    def __init__(self, compiled: bool | None = None):
        """``compiled``: use the compiled CPU path (:mod:`gpunet.backends.cpu_fused`) where it applies.

        None (the default): wherever numba is installed. False: the NumPy path always.
        """
        self.compiled = compiled

    def describe(self) -> str:
        """NumPy's version and the CPU path the steps take."""
        return f"CPU (NumPy {np.__version__}; {self.cpu_path()})"

    def cpu_path(self) -> str:
        """Which CPU path mini-batch and full-batch steps take: compiled (numba) or NumPy's array calls."""
        if self.compiled is not False and _cpu_fused() is not None:
            import numba

            return f"steps compiled with numba {numba.__version__}"
        reason = "turned off" if self.compiled is False else _not_compiled_because("numba or scipy")
        return f"steps as NumPy array calls ({reason})"

    def layers_path(self) -> str:
        """How a layer stack's hot operations run: compiled passes (numba), or NumPy's array calls and why."""
        if self.compiled is not False and _cpu_layers() is not None:
            import numba

            return f"layer passes compiled with numba {numba.__version__}"
        reason = "turned off" if self.compiled is False else _not_compiled_because("numba")
        return f"layer passes as NumPy array calls ({reason})"

    def compiled_path(self, network, optimizer=None):
        """The module :mod:`gpunet.backends.cpu_fused` if its compiled loops run this network (and optimizer), else None.

        The NumPy operations stay the reference: the compiled path gives
        their results up to the order of summation (tests/test_fused_cpu.py).
        """
        if self.compiled is False:
            return None
        cpu_fused = _cpu_fused()
        return cpu_fused if cpu_fused is not None and cpu_fused.supports(network, optimizer) else None

    def empty_layer(self, units: int, m: int, dtype):
        """An uninitialised (units, m) array for one layer's values on m samples.

        For batches of SAMPLE_MAJOR_FROM samples or more it is laid out sample
        by sample (the transpose of an (m, units) C array): OpenBLAS multiplies
        a 16-row W by such a batch about twice as fast into that layout.
        """
        if m >= SAMPLE_MAJOR_FROM:
            return np.empty((m, units), dtype=dtype).T
        return super().empty_layer(units, m, dtype)

    def empty_batch(self, features: int, m: int, dtype):
        """An uninitialised (features, m) array for ``gather_scaled(..., out=)``.

        Laid out as gather_scaled lays out a batch it allocates: sample by
        sample, the rows of the data set (``images[index].T``).
        """
        return np.empty((m, features), dtype=dtype).T

    def full_batch_chunk(self, m: int) -> int:
        """Chunks whose float copy stays in a core's cache."""
        return FULL_BATCH_CHUNK

    def parallel_parts(self) -> int:
        """One part per core, where threadpoolctl can hold BLAS to one thread per part."""
        return _cores() if _blas_threads() is not None else 1

    def parallel_map(self, fn, items) -> list:
        """[fn(item) for item in items], on a pool of threads, one per core, with BLAS held to one thread.

        NumPy and BLAS release the GIL while they work. The results have the
        bits of one after another with BLAS on one thread (not of BLAS on several
        threads, which sums in another order). Without threadpoolctl: one after another.
        """
        items = list(items)
        blas = _blas_threads()
        if len(items) < 2 or blas is None:
            return super().parallel_map(fn, items)
        errors = np.geterr()  # NumPy's error handling is per thread: the caller's holds in the pool's too

        def with_callers_errors(item):
            with np.errstate(**errors):
                return fn(item)

        with blas.limit(limits=1):
            return list(_thread_pool().map(with_callers_errors, items))

    def compute_threads(self):
        """A context for the mini-batch training loop: BLAS on one thread.

        A mini-batch's products are too small to share between cores: a second
        BLAS thread gains little on an idle machine, and on a busy one its
        waiting for a core can make each product many times slower.
        """
        if self.compiled is not False:
            _cpu_fused()  # loads SciPy's BLAS, which the compiled path calls, before threadpoolctl looks
        blas = _blas_threads()
        return blas.limit(limits=1) if blas is not None else super().compute_threads()

    def gather_augmented(self, images, index, transforms, dtype, out=None):
        """The compiled pass of cpu_augment.py where numba is (NumPy's calls take half a CNN step); else the generic code."""
        passes = _cpu_augment() if self.compiled is not False else None
        if passes is not None and passes.takes(images, index, transforms, dtype):
            return passes.affine_sample(images, index, transforms, dtype, augment.side_of(images), out)
        return super().gather_augmented(images, index, transforms, dtype)

    # -- the layers' hot operations: compiled passes where numba is (cpu_layers.py) ------------------------
    def _layer_passes(self, *arrays):
        """:mod:`gpunet.backends.cpu_layers` where its kernels take these arrays and may run, else None."""
        if self.compiled is False:
            return None
        passes = _cpu_layers()
        return passes if passes is not None and passes.takes(*arrays) else None

    def im2col(self, x, k: int, pads, out=None):
        passes = self._layer_passes(x)
        return passes.im2col(x, k, pads, out) if passes else super().im2col(x, k, pads)

    def col2im(self, columns, input_shape, k: int, pads, out=None):
        passes = self._layer_passes(columns)
        return passes.col2im(columns, input_shape, k, pads, out) if passes else \
            super().col2im(columns, input_shape, k, pads)

    def max_pool(self, x, size: int, out=None, argmax_out=None):
        passes = self._layer_passes(x)
        return passes.max_pool(x, size, out, argmax_out) if passes else super().max_pool(x, size)

    def max_pool_backward(self, dy, argmax, input_shape, size: int, out=None):
        passes = self._layer_passes(dy) if argmax.dtype == np.uint8 and argmax.flags.c_contiguous else None
        return passes.max_pool_backward(dy, argmax, input_shape, size, out) if passes else \
            super().max_pool_backward(dy, argmax, input_shape, size)

    def bias_relu(self, Z, b):
        passes = self._layer_passes(Z, b) if Z.ndim == 2 and b.shape == (Z.shape[0], 1) else None
        return passes.bias_relu(Z, b) if passes else super().bias_relu(Z, b)

    def relu_backward(self, dA, A):
        passes = self._layer_passes(dA, A) if dA.ndim >= 1 and dA.shape == A.shape else None
        return passes.relu_backward(dA, A) if passes else super().relu_backward(dA, A)


@lru_cache(maxsize=1)
def _blas_threads():
    """threadpoolctl's handle on the BLAS libraries loaded for NumPy, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    blas = ThreadpoolController().select(user_api="blas")
    return blas if blas.lib_controllers else None


@lru_cache(maxsize=1)
def _cpu_fused():
    """gpunet.backends.cpu_fused where numba imports, else None (imported on first use: numba takes 0.3 s to import)."""
    if importlib.util.find_spec("numba") is None:
        return None
    from gpunet.backends import cpu_fused  # loads SciPy's BLAS, which numba's np.dot calls

    if not cpu_fused.available():
        return None
    _blas_threads.cache_clear()  # so that threadpoolctl sees SciPy's BLAS too
    return cpu_fused


def _not_compiled_because(needed: str) -> str:
    """Why the compiled passes cannot run where they were not turned off: what they need is not installed, or
    numba is there but does not import (built for another NumPy)."""
    from gpunet.backends import numba_jit

    if numba_jit.IMPORT_ERROR is not None and importlib.util.find_spec("numba") is not None:
        return f"numba is installed but does not import: {numba_jit.IMPORT_ERROR}"
    return f"{needed} is not installed"


@lru_cache(maxsize=1)
def _cpu_layers():
    """gpunet.backends.cpu_layers where numba imports, else None."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        from gpunet.backends import cpu_layers
    except ImportError:  # numba is there but does not import (built for another NumPy): numba_jit says why
        return None
    return cpu_layers


@lru_cache(maxsize=1)
def _cpu_augment():
    """gpunet.backends.cpu_augment where numba imports, else None."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        from gpunet.backends import cpu_augment
    except ImportError:  # numba is there but does not import: numba_jit says why
        return None
    return cpu_augment


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="gpunet")
