"""The network of the design notes: 784 -> 16 ReLU -> 16 ReLU -> 10 softmax by default.

Parameters are shaped as in the notes: W_k is (out, in) and b_k is (out, 1),
and samples are columns, so a layer is Z_k = W_k . A_{k-1} + b_k.

Forward (hidden layers, then the output layer):
    Z_k = W_k . A_{k-1} + b_k          A_k = relu(Z_k)
    Z_L = W_L . A_{L-1} + b_L          A_L = softmax(Z_L)
Backward (m samples, labels Y one-hot):
    dZ_L = (A_L - Y) / m
    dW_k = dZ_k . A_{k-1}^T            (the notes' dZ.A^T / m: the 1/m is already in dZ)
    db_k = sum of dZ_k over samples    (the notes' sum dZ / m)
    dZ_{k-1} = W_k^T . dZ_k * relu'(Z_{k-1})
"""

from __future__ import annotations

import numpy as np

INPUTS = 784
CLASSES = 10
INITS = ("he", "seed")
MAX_UNITS = 100_000  # per hidden layer: larger ones only fail later, allocating gigabytes
EVAL_CHUNK = 8192  # digits per forward pass when scoring or predicting: bounds memory, keeps BLAS busy


def parse_hidden_text(value: str) -> tuple[int, ...]:
    """'16,16' -> (16, 16); 'none' -> () for a network with no hidden layer; ValueError saying what is wrong."""
    text = value.strip().lower()
    if text == "none":
        return ()
    if not text:  # an unset shell variable, say: not silently a network with no hidden layer
        raise ValueError("is empty; give layer sizes such as 16,16, or 'none' for no hidden layer")
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{value!r} is not a comma-separated list of layer sizes such as 16,16") from None
    if any(size <= 0 for size in sizes):
        raise ValueError(f"{value!r}: every layer size must be a positive integer")
    if any(size > MAX_UNITS for size in sizes):
        raise ValueError(f"{value!r}: at most {MAX_UNITS:,} units a layer")
    return sizes


def layer_sizes(hidden: tuple[int, ...], inputs: int = INPUTS, classes: int = CLASSES) -> list[int]:
    """[784, *hidden, 10] for digits; other data sets have other inputs and classes."""
    return [inputs, *hidden, classes]


def init_params(sizes: list[int], init: str, seed: int, dtype) -> list[np.ndarray]:
    """Fresh [W1, b1, W2, b2, ...] as NumPy arrays, the same for the same seed on any backend.

    ``he``: W ~ Normal(0, 2/in), b = 0, which keeps ReLU activations at a steady scale.
    ``seed``: uniform in [-0.5, 0.5) for W and b, as the notes do with np.random.rand - 0.5.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}")
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if init == "he":
            W = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
            b = np.zeros((fan_out, 1))
        else:
            W = rng.random((fan_out, fan_in)) - 0.5
            b = rng.random((fan_out, 1)) - 0.5
        params += [W.astype(dtype), b.astype(dtype)]
    return params


class Workspace:
    """Preallocated arrays for batches of m samples, reused by every step so that a step allocates nothing.

    The batch A0 and the layers' values Z_k (overwritten by A_k = relu(Z_k))
    are laid out as the backend prefers (``empty_batch``, ``empty_layer``): the
    layout changes how fast BLAS multiplies, not the result. The logits Z_L and
    every dZ_k are C-ordered (units, m) arrays, so that their sums (softmax, db)
    add up in the same order as freshly allocated arrays would. The gradients are
    views of one flat array laid out as the network's parameters: ``grad_groups``
    is [all dW, all db], matching the network's ``groups``.
    """

    def __init__(self, network, m: int):
        backend, sizes, dtype = network.backend, network.sizes, network.dtype
        xp = backend.xp
        self.m = m
        self.A0 = backend.empty_batch(sizes[0], m, dtype)
        self.Z = [backend.empty_layer(n, m, dtype) for n in sizes[1:-1]] + [xp.empty((sizes[-1], m), dtype)]
        self.dZ = [xp.empty((n, m), dtype) for n in sizes[1:]]
        self.losses = xp.empty(m, dtype)
        self.grad_flat = xp.zeros_like(network.flat)
        self.grads = network.views_of(self.grad_flat)
        self.grad_groups = network.groups_of(self.grad_flat)


class Network:
    """A stack of dense layers, ReLU between them and softmax at the end, on one backend.

    All parameters live in one flat array, ``flat``: the weights first, then
    the biases; each W_k and b_k is a view of it. ``groups`` is that array as
    two parts, [all weights, all biases]: an optimizer given these (and a
    workspace's ``grad_groups``) updates every parameter with a few whole-array
    operations instead of a few per layer.
    """

    def __init__(self, backend, params):
        xp = backend.xp
        self.backend = backend
        arrays = [backend.asarray(p) for p in params]
        dtype = arrays[0].dtype
        self.n_weights = sum(int(W.size) for W in arrays[0::2])
        self.flat = xp.empty(self.n_weights + sum(int(b.size) for b in arrays[1::2]), dtype=dtype)
        self.shapes = [p.shape for p in arrays]
        self.params = self.views_of(self.flat)
        for p, new in zip(self.params, arrays):
            p[...] = new
        self.groups = self.groups_of(self.flat)
        self._workspaces = {}
        self._sums = {}  # part -> flat gradient sum of a full-batch step

    def views_of(self, flat) -> list:
        """[W1, b1, W2, b2, ...] as views of a flat array holding all weights, then all biases."""
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        order = [*range(0, len(sizes), 2), *range(1, len(sizes), 2)]  # W1, W2, ..., b1, b2, ...
        views, start = [None] * len(sizes), 0
        for i in order:
            views[i] = flat[start : start + sizes[i]].reshape(self.shapes[i])
            start += sizes[i]
        return views

    def groups_of(self, flat) -> list:
        """[all weights, all biases] of a flat array laid out as ``flat``."""
        return [flat[: self.n_weights], flat[self.n_weights :]]

    @property
    def weights(self):
        """[W1, W2, ...]: views of ``flat``."""
        return self.params[0::2]

    @property
    def biases(self):
        """[b1, b2, ...]: views of ``flat``."""
        return self.params[1::2]

    @property
    def sizes(self) -> list[int]:
        """Units per layer, inputs first: [784, 16, 16, 10] for the notes' network."""
        return [self.params[0].shape[1]] + [W.shape[0] for W in self.weights]

    @property
    def dtype(self):
        """The parameters' floating-point type."""
        return self.params[0].dtype

    def workspace(self, m: int, key=0) -> Workspace:
        """The buffers for batches of m samples (made on first use, kept for the next steps).

        ``key`` tells apart workspaces of the same size used at the same time (by parallel workers).
        """
        ws = self._workspaces.get((m, key))
        if ws is None:
            ws = self._workspaces[m, key] = Workspace(self, m)
        return ws

    def forward(self, A0, ws: Workspace | None = None):
        """Return (logits Z_L, activations [A0, A1, ..., A_{L-1}] kept for backward).

        With a workspace the values are written into its arrays, else into new ones.
        """
        ops, xp = self.backend, self.backend.xp
        out = ws.Z if ws is not None else [None] * len(self.weights)
        activations = [A0]
        A = A0
        for k, (W, b) in enumerate(zip(self.weights[:-1], self.biases[:-1])):
            A = ops.bias_relu(xp.matmul(W, A, out=out[k]), b)  # Z = W.A + b; A = relu(Z)
            activations.append(A)
        Z = xp.matmul(self.weights[-1], A, out=out[-1])
        Z += self.biases[-1]  # Z_L = W_L.A + b_L; softmax is applied inside the loss
        return Z, activations

    def backward(self, Z, activations, labels, ws: Workspace | None = None, losses=None):
        """Gradients [dW1, db1, ...] of the mean cross-entropy, and the per-sample losses.

        With a workspace every result is written into its arrays (the gradients
        into ``ws.grads``); ``losses``, if given, is where the per-sample losses
        go. Without one, every result is a new array.
        """
        ops, xp = self.backend, self.backend.xp
        if ws is None:
            dZ, losses = ops.softmax_cross_entropy(Z, labels)  # dZ_L = (A_L - Y) / m
            dZ_out, grads = [None] * len(self.weights), [None] * len(self.params)
        else:
            out = (ws.dZ[-1], ws.losses if losses is None else losses)
            dZ, losses = ops.softmax_cross_entropy(Z, labels, out=out)  # dZ_L = (A_L - Y) / m
            dZ_out, grads = ws.dZ, list(ws.grads)
        for k in reversed(range(len(self.weights))):
            A_prev = activations[k]
            grads[2 * k] = xp.matmul(dZ, A_prev.T, out=grads[2 * k])  # dW = dZ.A^T (1/m already in dZ)
            grads[2 * k + 1] = dZ.sum(axis=1, keepdims=True, out=grads[2 * k + 1])  # db = sum of dZ over samples
            if k > 0:
                # dZ_{k-1} = W_k^T.dZ_k * relu'(Z_{k-1})
                dZ = ops.relu_backward(xp.matmul(self.weights[k].T, dZ, out=dZ_out[k - 1]), A_prev)
        return grads, losses

    def full_batch_gradients(self, images, labels, losses, chunk: int, parts: int = 1):
        """Gradients of the mean loss over every sample of ``images``, reading each digit once.

        Done as the notes write it, a full-batch step reads all of X twice: in
        the forward pass and again for dW1 = dZ1.A0^T. Here the samples are
        walked in chunks small enough to stay in cache; each chunk's forward
        and backward pass run while its pixels are still there, and the
        chunks' gradients add up, each weighted by its share of the samples
        (the mean over all samples is the weighted mean of the chunks' means).
        The samples are split into ``parts`` runs of chunks, which the backend
        may walk in parallel (``parallel_map``); each adds up its own sum, and
        the sums are added in order, so the result does not depend on timing.
        ``chunk`` >= the number of samples gives the notes' single pass.

        Writes the per-sample losses into ``losses``; returns (grad_groups, correct count).
        """
        m = int(labels.shape[0])
        if chunk >= m:
            return self._chunk_gradients(images, labels, losses, 0, m, m, key=0)
        bounds = [m * i // parts // chunk * chunk for i in range(parts)] + [m]  # parts start on a chunk boundary

        def run(i):
            total, correct = None, 0
            for start in range(bounds[i], bounds[i + 1], chunk):
                stop = min(start + chunk, bounds[i + 1])
                grads, n = self._chunk_gradients(images, labels, losses, start, stop, m, key=i)
                correct += n
                if total is None:
                    if i not in self._sums:
                        self._sums[i] = self.backend.xp.empty_like(self.flat)
                    total = self._sums[i]
                    total[...] = grads
                else:
                    total += grads
            return total, correct

        results = [r for r in self.backend.parallel_map(run, range(parts)) if r[0] is not None]
        total = results[0][0]
        for part, _ in results[1:]:
            total += part
        return self.groups_of(total), sum(correct for _, correct in results)

    def _chunk_gradients(self, images, labels, losses, start, stop, m, key):
        """One chunk's forward and backward pass; its gradients (flat) weighted by its share of m."""
        ops = self.backend
        ws = self.workspace(stop - start, key)
        A0 = ops.gather_scaled(images[start:stop], None, self.dtype, out=ws.A0)
        Z, activations = self.forward(A0, ws)
        correct = ops.count_correct(Z, labels[start:stop])
        self.backward(Z, activations, labels[start:stop], ws, losses=losses[start:stop])
        if stop - start == m:
            return ws.grad_groups, correct
        ws.grad_flat *= self.dtype.type((stop - start) / m)  # the chunk's mean, weighted by its share
        return ws.grad_flat, correct

    def logits(self, A0):
        """Z_L for a batch, without keeping anything for backward."""
        return self.forward(A0)[0]

    def probabilities(self, images) -> np.ndarray:
        """softmax(Z_L) of uint8 digits (m, 784), as a NumPy float64 array (m, classes), a chunk at a time."""
        ops = self.backend
        device_images = ops.asarray(images)
        chunks = [ops.to_numpy(ops.softmax(self.logits(ops.gather_scaled(device_images[start:start + EVAL_CHUNK],
                                                                          None, self.dtype)))).T
                  for start in range(0, len(images), EVAL_CHUNK)]
        return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, self.sizes[-1]))

    def host_params(self) -> list[np.ndarray]:
        """Copies of the parameters as NumPy arrays (for saving and snapshots)."""
        return [self.backend.to_numpy(p).copy() for p in self.params]

    def load_params(self, params) -> None:
        """Overwrite the parameters in place (optimizer state keeps pointing at them)."""
        for p, new in zip(self.params, params):
            p[...] = self.backend.asarray(new)
