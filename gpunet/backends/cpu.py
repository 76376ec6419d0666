"""Array backends: one object carries ``xp``, the device, and the hot operations.

The network, loss, optimizers and training loop are written once against
``backend.xp`` and call the few hot operations below through the backend.
``Backend`` implements every operation with the generic ``xp`` formulas of
:mod:`gpunet.nn.activations` and :mod:`gpunet.nn.loss`; those generic versions are
also the reference that the CUDA kernels are tested against. Each real
backend overrides only what it does better: ``CpuBackend`` (NumPy) the
memory layouts, threads and compiled loops that pay on a CPU, and
``gpunet.backends.cuda.CupyBackend`` (``xp = cupy``) the hot operations it has
kernels for.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from gpunet.nn import activations, layers, loss
from gpunet.errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")
SAMPLE_MAJOR_FROM = 128  # samples; see CpuBackend.empty_layer
FULL_BATCH_CHUNK = 512  # samples: 1.6 MB of float32 pixels, inside a core's 2 MB L2 cache


class Backend:
    """Every operation written once against ``self.xp``: the reference each backend's overrides are tested against."""

    name = "generic"
    xp = np

    def describe(self) -> str:
        """The backend in a few words, for the training banner and `gpunet info`."""
        return f"{self.name} ({self.xp.__name__})"

    # -- moving data ---------------------------------------------------------
    def asarray(self, array, dtype=None):
        """Host array -> backend array (no copy where none is needed)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        """Backend array -> NumPy array on the host."""
        return np.asarray(array)

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for here)."""

    # -- how the work is laid out --------------------------------------------
    def empty_layer(self, units: int, m: int, dtype):
        """An uninitialised (units, m) array for one layer's values on m samples."""
        return self.xp.empty((units, m), dtype=dtype)

    def empty_batch(self, features: int, m: int, dtype):
        """An uninitialised (features, m) array for ``gather_scaled(..., out=)``."""
        return self.xp.empty((features, m), dtype=dtype)

    def full_batch_chunk(self, m: int) -> int:
        """Samples per chunk of a full-batch step (see ``Network.full_batch_gradients``): all of them."""
        return m

    def parallel_parts(self) -> int:
        """Into how many parts ``parallel_map`` usefully splits work."""
        return 1

    def parallel_map(self, fn, items) -> list:
        """[fn(item) for item in items]."""
        return [fn(item) for item in items]

    def compute_threads(self):
        """A context for the mini-batch training loop (nothing to set here)."""
        return contextlib.nullcontext()

    def compiled_path(self, network, optimizer=None):
        """A module of compiled loops that runs this network's steps instead, or None."""
        return None

    # -- hot operations ------------------------------------------------------
    def gather_scaled(self, images, index, dtype, out=None):
        """A0 = images[index]^T / 255: a batch as columns, shape (784, batch), in ``dtype``.

        ``images`` is the uint8 data set (m, 784), one sample per row, kept as
        uint8; only the batch is ever converted to floating point. ``index`` is
        an integer array of sample numbers, or None for all samples in order.
        ``out``: a (784, batch) array to write A0 into (see ``empty_batch``).
        Float ``images`` (m, features) are features already scaled: cast, not divided.
        """
        xp = self.xp
        pixels = images.dtype == np.uint8
        scale = xp.asarray(1.0 / 255.0, dtype=dtype)
        if out is None:
            batch = images if index is None else images[index]
            A0 = batch.T.astype(dtype)
            if pixels:
                A0 *= scale
            return A0
        batch = images if index is None else xp.take(images, index, axis=0)
        xp.copyto(out, batch.T)  # uint8 -> dtype: a plain cast, twice as fast as a casting multiply
        if pixels:
            out *= scale
        return out

    def bias_relu(self, Z, b):
        """A = relu(Z + b) for Z = W.A_prev (the matrix product is done by the caller).

        Z is overwritten with A: the backward pass reads relu'(Z) from A.
        """
        Z += b
        return activations.relu(self.xp, Z, out=Z)

    def relu_backward(self, dA, A):
        """dZ = dA * relu'(Z), with the mask read from A = relu(Z). dA is overwritten."""
        return activations.relu_backward(self.xp, dA, A, out=dA)

    def softmax_cross_entropy(self, Z, labels, out=None):
        """(dZ, losses) with dZ = (softmax(Z) - onehot(labels)) / m and per-sample losses (m,).

        ``out``: a pair of arrays shaped as dZ and losses to write the results
        into; the arithmetic is that of :func:`gpunet.nn.loss.softmax_cross_entropy`,
        step for step, so both give the same bits.
        """
        if out is None:
            return loss.softmax_cross_entropy(self.xp, Z, labels)
        xp = self.xp
        dZ, losses = out
        m = Z.shape[1]
        samples = xp.arange(m)
        logp = xp.subtract(Z, Z.max(axis=0, keepdims=True), out=dZ)  # log_softmax, in dZ
        logp -= xp.log(xp.exp(logp).sum(axis=0, keepdims=True))
        xp.negative(logp[labels, samples], out=losses)
        dZ = xp.exp(logp, out=dZ)  # softmax(Z)
        dZ[labels, samples] -= 1  # - Y
        dZ *= Z.dtype.type(1.0 / m)
        return dZ, losses

    def count_correct(self, Z, labels):
        """How many columns of Z have their largest logit at the label, as a 0-d array.

        The count stays where Z is: the training loop adds the counts up on the
        device and reads the total once per epoch, not once per batch.
        """
        return (Z.argmax(axis=0) == labels).sum()

    def softmax(self, Z):
        """Class probabilities for prediction."""
        return activations.softmax(self.xp, Z)

    # -- the layers' hot operations (gpunet/nn/layers.py's generic code) ----------
    def im2col(self, x, k: int, pads):
        """The k x k patches of maps x (C, H, W, m) as columns (C.k.k, H_out.W_out.m): ``layers.im2col``."""
        return layers.im2col(self.xp, x, k, pads)

    def col2im(self, columns, input_shape, k: int, pads):
        """The gradient of im2col, maps ``input_shape`` (C, H, W, m): ``layers.col2im``."""
        return layers.col2im(self.xp, columns, input_shape, k, pads)

    def max_pool(self, x, size: int):
        """(y, uint8 argmax) of size x size windows, stride ``size``, of maps x: ``layers.max_pool``."""
        return layers.max_pool(self.xp, x, size)

    def max_pool_backward(self, dy, argmax, input_shape, size: int):
        """dx of the maps ``input_shape``: each window's dy at its argmax: ``layers.max_pool_backward``."""
        return layers.max_pool_backward(self.xp, dy, argmax, input_shape, size)

    def dropout_mask(self, shape, p: float, seed: int, step: int, dtype):
        """Inverted dropout's mask of (seed, step), 0 or 1/(1 - p): ``layers.dropout_mask``."""
        return layers.dropout_mask(self.xp, shape, p, seed, step, dtype)


class CpuBackend(Backend):
    """NumPy on the CPU, with what pays there: sample-major layouts, both cores, compiled loops where numba is."""

    name = "cpu"
    xp = np

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
        reason = "turned off" if self.compiled is False else "numba or scipy is not installed"
        return f"steps as NumPy array calls ({reason})"

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
        with blas.limit(limits=1):
            return list(_thread_pool().map(fn, items))

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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="gpunet")


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
    from gpunet.backends import cuda as backend_cuda

    if device == "auto" and backend_cuda.cupy is None:
        return CpuBackend(), None
    reason = backend_cuda.unavailable_reason()  # probed once per process: a device, NVRTC, cuBLAS, the kernels
    if reason is None:
        return backend_cuda.CupyBackend(), None
    if device == "cuda":
        raise DeviceError(f"--device cuda: {reason}")
    short_reason = reason.split(";")[0].split(" (")[0]  # the gist; `gpunet info` gives the details
    return CpuBackend(), f"CUDA is not usable ({short_reason}); running on the CPU"
