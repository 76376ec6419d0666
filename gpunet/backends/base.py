"""The backend's interface, implemented once with the generic ``xp`` formulas.

The network, loss, optimizers and training loop are written once against
``backend.xp`` and call the few hot operations below through the backend.
``Backend`` implements every operation with the generic ``xp`` formulas of
:mod:`gpunet.nn.activations`, :mod:`gpunet.nn.loss` and :mod:`gpunet.nn.layers`;
those generic versions are also the reference that the CUDA kernels and the
compiled CPU passes are tested against. Each real backend overrides only what it
does better: :class:`gpunet.backends.cpu.CpuBackend` (NumPy) the memory layouts,
threads and compiled loops that pay on a CPU, and
:class:`gpunet.backends.cuda.CupyBackend` (``xp = cupy``) the hot operations it
has kernels for. :func:`gpunet.backends.devices.get_backend` picks one.
"""

from __future__ import annotations

import contextlib

import numpy as np

from gpunet.nn import activations, augment, layers, loss


class Backend:
    """Every operation written once against ``self.xp``: the reference each backend's overrides are tested against."""

    name = "generic"
    xp = np
    # Whether training workspaces give each layer arrays to reuse (layers.Scratch) that the layer operations'
    # ``out=`` arguments then receive; where False they get None and every step makes fresh arrays.
    reuses_layer_arrays = False

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

    def gather_augmented(self, images, index, transforms, dtype, out=None):
        """A0 as ``gather_scaled`` gives it, each digit first drawn through its transform: ``augment.affine_sample``.

        ``images``: the uint8 data set (m, side.side); ``transforms``: (m, 6) inverse-map coefficients of
        ``dtype``, one row per sample of the data set (``augment.draw_transforms``); ``index`` and ``out`` as for
        ``gather_scaled`` (the result MAY be written into ``out``; callers use the returned array).
        """
        return augment.affine_sample(self.xp, images, index, transforms, dtype, augment.side_of(images))

    def matmul(self, A, B, out=None):
        """A . B for 2-D A and B (a layer's W.A, dZ.A^T, W^T.dZ), into ``out`` where given (xp.matmul's ``out``)."""
        return self.xp.matmul(A, B, out=out)

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

    def count_correct(self, Z, labels, out=None):
        """How many columns of Z have their largest logit at the label, as a 0-d array.

        The count stays where Z is: the training loop adds the counts up on the
        device and reads the total once per epoch, not once per batch. ``out``: a
        one-element integer array the count is added to (the epoch's counter); it is
        returned as a 0-d view.
        """
        count = (Z.argmax(axis=0) == labels).sum()
        if out is None:
            return count
        out += count
        return out[0]

    def softmax_cross_entropy_counted(self, Z, b, labels, counter, out=None):
        """The output layer's end of a training step: Z += b (the bias, in place), the correct count added to
        ``counter`` (``count_correct``'s out=), then ``softmax_cross_entropy`` of the biased Z into ``out``."""
        Z += b
        self.count_correct(Z, labels, out=counter)
        return self.softmax_cross_entropy(Z, labels, out=out)

    def softmax(self, Z):
        """Class probabilities for prediction."""
        return activations.softmax(self.xp, Z)

    def optimizer_update(self, rule: str, params, grads, state, **scalars) -> bool:
        """Do an optimizer's whole step its own way and say True, or say False: the optimizer's array operations
        (gpunet/nn/optimizers.py, the reference) then do it. ``rule``: "sgd", "momentum" or "adam"; ``state``:
        the optimizer's per-parameter lists (velocity; mean, square); ``scalars``: decay, lr and the rule's own."""
        return False

    # -- the layers' hot operations (gpunet/nn/layers.py's generic code) ----------
    # ``out`` (and ``argmax_out``): an array of the result's shape and dtype that the result MAY be written
    # into (the CPU backend's compiled passes do); callers use the returned array. The generic code here
    # makes its own.
    def im2col(self, x, k: int, pads, out=None):
        """The k x k patches of maps x (C, H, W, m) as columns (C.k.k, H_out.W_out.m): ``layers.im2col``."""
        return layers.im2col(self.xp, x, k, pads)

    def col2im(self, columns, input_shape, k: int, pads, out=None):
        """The gradient of im2col, maps ``input_shape`` (C, H, W, m): ``layers.col2im``."""
        return layers.col2im(self.xp, columns, input_shape, k, pads)

    def max_pool(self, x, size: int, out=None, argmax_out=None):
        """(y, uint8 argmax) of size x size windows, stride ``size``, of maps x: ``layers.max_pool``."""
        return layers.max_pool(self.xp, x, size)

    def max_pool_backward(self, dy, argmax, input_shape, size: int, out=None):
        """dx of the maps ``input_shape``: each window's dy at its argmax: ``layers.max_pool_backward``."""
        return layers.max_pool_backward(self.xp, dy, argmax, input_shape, size)

    def dropout_mask(self, shape, p: float, seed: int, step: int, dtype, first_sample: int = 0, out=None):
        """Inverted dropout's mask of (seed, step) for samples from ``first_sample`` on, 0 or 1/(1 - p):
        ``layers.dropout_mask``. ``out``: an array it MAY be written into, as the layer operations' above."""
        return layers.dropout_mask(self.xp, shape, p, seed, step, dtype, first_sample)
