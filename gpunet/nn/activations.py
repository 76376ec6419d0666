"""Activations of the design notes, each next to its backward rule.

Written against an array module ``xp`` (NumPy or CuPy) so one formula serves both.
Arrays hold one sample per column: Z has shape (units, m).
"""


def relu(xp, Z, out=None):
    """A = relu(Z) = max(Z, 0); ``out=Z`` overwrites Z with A. NaN stays NaN."""
    return xp.maximum(Z, 0, out=out)


def relu_backward(xp, dA, A, out=None):
    """dZ = dA * relu'(Z), where relu'(Z) is 1 for Z > 0, else 0; ``out=dA`` overwrites dA.

    A = relu(Z) is positive exactly where Z is, so the mask is read from A and
    Z need not be kept. A multiply by 1 or 0, so a NaN or inf in dA shows
    (as NaN) instead of being zeroed.
    """
    return xp.multiply(dA, A > 0, out=out)


def softmax(xp, Z):
    """A = exp(Z) / sum(exp(Z)) down each column.

    Subtracting each column's max first changes nothing mathematically and keeps
    exp() from overflowing for large logits.
    """
    E = xp.exp(Z - Z.max(axis=0, keepdims=True))
    return E / E.sum(axis=0, keepdims=True)


def log_softmax(xp, Z):
    """log(softmax(Z)), computed without forming softmax: finite for any finite Z."""
    shifted = Z - Z.max(axis=0, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=0, keepdims=True))
