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


def layer_sizes(hidden: tuple[int, ...]) -> list[int]:
    """[784, *hidden, 10]."""
    return [INPUTS, *hidden, CLASSES]


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


class Network:
    """A stack of dense layers, ReLU between them and softmax at the end, on one backend."""

    def __init__(self, backend, params):
        self.backend = backend
        self.params = [backend.asarray(p) for p in params]

    @property
    def weights(self):
        return self.params[0::2]

    @property
    def biases(self):
        return self.params[1::2]

    @property
    def sizes(self) -> list[int]:
        return [self.params[0].shape[1]] + [W.shape[0] for W in self.weights]

    @property
    def dtype(self):
        return self.params[0].dtype

    def forward(self, A0):
        """Return (logits Z_L, activations [A0, A1, ..., A_{L-1}] kept for backward)."""
        ops, xp = self.backend, self.backend.xp
        activations = [A0]
        A = A0
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            A = ops.bias_relu(xp.matmul(W, A), b)  # Z = W.A + b; A = relu(Z)
            activations.append(A)
        Z = xp.matmul(self.weights[-1], A)
        Z += self.biases[-1]  # Z_L = W_L.A + b_L; softmax is applied inside the loss
        return Z, activations

    def backward(self, Z, activations, labels):
        """Gradients [dW1, db1, ...] of the mean cross-entropy, and the per-sample losses."""
        ops, xp = self.backend, self.backend.xp
        dZ, losses = ops.softmax_cross_entropy(Z, labels)  # dZ_L = (A_L - Y) / m
        grads = [None] * len(self.params)
        for k in reversed(range(len(self.weights))):
            A_prev = activations[k]
            grads[2 * k] = xp.matmul(dZ, A_prev.T)  # dW = dZ.A^T (1/m already in dZ)
            grads[2 * k + 1] = dZ.sum(axis=1, keepdims=True)  # db = sum of dZ over samples
            if k > 0:
                # dZ_{k-1} = W_k^T.dZ_k * relu'(Z_{k-1})
                dZ = ops.relu_backward(xp.matmul(self.weights[k].T, dZ), A_prev)
        return grads, losses

    def logits(self, A0):
        """Z_L for a batch, without keeping anything for backward."""
        return self.forward(A0)[0]

    def host_params(self) -> list[np.ndarray]:
        """Copies of the parameters as NumPy arrays (for saving and snapshots)."""
        return [self.backend.to_numpy(p).copy() for p in self.params]

    def load_params(self, params) -> None:
        """Overwrite the parameters in place (optimizer state keeps pointing at them)."""
        for p, new in zip(self.params, params):
            p[...] = self.backend.asarray(new)
