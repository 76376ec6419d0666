"""Array backends: one object carries ``xp``, the device, and the hot operations.

The network, loss, optimizers and training loop are written once against
``backend.xp`` and call the few hot operations below through the backend.
``CpuBackend`` implements every hot operation with the generic ``xp`` formulas
of :mod:`gpunet.activations` and :mod:`gpunet.loss`; those generic versions are
also the reference that the CUDA kernels are tested against. A GPU backend
(``gpunet.backend_cuda.CupyBackend``) sets ``xp = cupy`` and overrides only the
operations it has kernels for.
"""

from __future__ import annotations

import numpy as np

from gpunet import activations, loss
from gpunet.errors import DeviceError

DEVICES = ("auto", "cpu", "cuda")


class CpuBackend:
    """NumPy on the CPU; also the base class whose generic operations a GPU backend inherits."""

    name = "cpu"
    xp = np

    def describe(self) -> str:
        return f"CPU (NumPy {np.__version__})"

    # -- moving data ---------------------------------------------------------
    def asarray(self, array, dtype=None):
        """Host array -> backend array (no copy where none is needed)."""
        return self.xp.asarray(array, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        """Backend array -> NumPy array on the host."""
        return np.asarray(array)

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""

    # -- hot operations ------------------------------------------------------
    def gather_scaled(self, images, index, dtype):
        """A0 = images[index]^T / 255: a batch as columns, shape (784, batch), in ``dtype``.

        ``images`` is the uint8 data set (m, 784), one sample per row, kept as
        uint8; only the batch is ever converted to floating point. ``index`` is
        an integer array of sample numbers, or None for all samples in order.
        """
        xp = self.xp
        batch = images if index is None else images[index]
        A0 = batch.T.astype(dtype)
        A0 *= xp.asarray(1.0 / 255.0, dtype=dtype)
        return A0

    def bias_relu(self, Z, b):
        """A = relu(Z + b) for Z = W.A_prev (the matrix product is done by the caller).

        Z is overwritten with A: the backward pass reads relu'(Z) from A.
        """
        Z += b
        return self.xp.maximum(Z, 0, out=Z)

    def relu_backward(self, dA, A):
        """dZ = dA * relu'(Z), with the mask read from A = relu(Z). dA is overwritten."""
        dA *= A > 0
        return dA

    def softmax_cross_entropy(self, Z, labels):
        """(dZ, losses) with dZ = (softmax(Z) - onehot(labels)) / m and per-sample losses (m,)."""
        return loss.softmax_cross_entropy(self.xp, Z, labels)

    def count_correct(self, Z, labels) -> int:
        """How many columns of Z have their largest logit at the label."""
        return int((Z.argmax(axis=0) == labels).sum())

    def softmax(self, Z):
        """Class probabilities for prediction."""
        return activations.softmax(self.xp, Z)


def get_backend(device: str):
    """Return ``(backend, notice)`` for ``--device auto|cpu|cuda``.

    ``cuda`` that cannot be used raises DeviceError naming what is missing;
    ``auto`` falls back to the CPU and returns a one-line notice saying why.
    """
    if device not in DEVICES:
        raise DeviceError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return CpuBackend(), None
    from gpunet import backend_cuda

    reason = backend_cuda.unavailable_reason()
    if reason is None:
        return backend_cuda.CupyBackend(), None
    if device == "cuda":
        raise DeviceError(f"--device cuda: {reason}")
    return CpuBackend(), f"CUDA is not usable ({reason.split(';')[0]}); training on the CPU"
