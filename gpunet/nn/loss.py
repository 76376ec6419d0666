"""Cross-entropy loss on softmax outputs, and its gradient with respect to the logits.

The notes' loss for m samples with one-hot labels Y (10, m):

    L = -1/m * sum_i log A3[y_i, i]

and, because the softmax Jacobian and the log cancel, the gradient on the
output layer's pre-activation is simply

    dZ3 = dL/dZ3 = (A3 - Y) / m

(the notes write dZ3 = A3 - Y and divide by m in dW and db; here the 1/m is
folded in once, so the later rules drop it). No one-hot matrix is built: Y is
one only at (label, sample), so "- Y" subtracts 1 there.
"""

from gpunet.nn.activations import log_softmax, softmax


def softmax_cross_entropy(xp, Z, labels):
    """Fused forward and backward of softmax + cross-entropy.

    Z: logits (classes, m); labels: integer class of each sample, shape (m,).
    Returns (dZ, losses): dZ = (softmax(Z) - onehot(labels)) / m, same shape and
    dtype as Z, and the per-sample losses (m,). This generic version is the CPU
    path and the reference the CUDA kernel is tested against.
    """
    m = Z.shape[1]
    samples = xp.arange(m)
    logp = log_softmax(xp, Z)
    losses = -logp[labels, samples]
    dZ = xp.exp(logp)  # softmax(Z)
    dZ[labels, samples] -= 1  # - Y
    dZ *= Z.dtype.type(1.0 / m)
    return dZ, losses


__all__ = ["softmax", "softmax_cross_entropy"]
