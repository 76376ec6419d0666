"""Compiled (numba) passes for the layers' hot operations on the CPU: one pass each, shared between the cores.

NumPy does each of these as several whole-array calls on one core: max-pool backward zero-fills dx, then
writes it again through four masked multiplies; col2im adds 25 shifted slices into a zeroed array. Here
each is one loop over its output that writes every element once, and the output's rows are split between
the cores' threads (``run``, given by the backend; the kernels release the GIL).

The arithmetic is that of :mod:`gpunet.nn.layers` and :mod:`gpunet.nn.activations`, which stay the
readable reference and the path wherever numba is not installed: each kernel computes every output element
with the same operations in the same order as the generic code (col2im sums its patch entries from 0 in
ascending kernel offset (i, j), as the NumPy additions and the CUDA kernel do), so the results are the
same bits, whichever thread ran which rows (tests/test_cpu_layers.py).

Every kernel has the signature ``kernel(lo, hi, ...)`` and writes the output rows lo..hi-1 only.
Importing this module needs numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_jit = njit(nogil=True, cache=True)
DTYPES = (np.float32, np.float64)


def takes(*arrays) -> bool:
    """Whether the kernels take these arrays: float32 or float64 (one dtype), C-ordered."""
    return (arrays[0].dtype in DTYPES and all(a.dtype == arrays[0].dtype for a in arrays)
            and all(a.flags.c_contiguous for a in arrays))


# -- im2col and its gradient -------------------------------------------------------------------------
@_jit
def _im2col_rows(lo, hi, x, k, before, patches):
    """patches[c, i, j, yo, xo, s] = x[c, yo + i - before, xo + j - before, s], 0 in the padding.

    Row r = ((c.k + i).k + j).H_out + yo of patches (C, k, k, H_out, W_out, m): a block of W_out.m values.
    """
    C, H, W, m = x.shape
    H_out, W_out = patches.shape[3], patches.shape[4]
    zero = patches.dtype.type(0)
    for r in range(lo, hi):
        yo, rest = r % H_out, r // H_out
        j, rest = rest % k, rest // k
        i, c = rest % k, rest // k
        ys = yo + i - before
        for xo in range(W_out):
            xs = xo + j - before
            if 0 <= ys < H and 0 <= xs < W:
                patches[c, i, j, yo, xo] = x[c, ys, xs]
            else:
                patches[c, i, j, yo, xo] = zero


@_jit
def _col2im_rows(lo, hi, patches, before, dx):
    """dx[c, y, x, s] = the sum, from 0 in ascending (i, j), of patches[c, i, j, y + before - i, x + before - j, s]
    over the kernel offsets where that position exists (a gather: no two rows write one element).

    Row r = c.H + y of dx (C, H, W, m).
    """
    k, H_out, W_out, m = patches.shape[1], patches.shape[3], patches.shape[4], patches.shape[5]
    H, W = dx.shape[1], dx.shape[2]
    for r in range(lo, hi):
        y, c = r % H, r // H
        dx[c, y] = 0
        for i in range(k):
            yy = y + before - i
            if not 0 <= yy < H_out:
                continue
            for j in range(k):
                for x in range(max(0, j - before), min(W, W_out + j - before)):  # 0 <= x + before - j < W_out
                    xx = x + before - j
                    for s in range(m):
                        dx[c, y, x, s] += patches[c, i, j, yy, xx, s]


# -- max-pooling -------------------------------------------------------------------------------------
@_jit
def _max_pool_rows(lo, hi, x, size, y, argmax):
    """y = each window's largest entry by numpy.maximum's rule (the later entry on a tie, NaN where one is NaN);
    argmax = the first entry q = i.size + j equal to it (size.size - 1 where none is: a NaN).

    Row r = c.H_out + yo of y (C, H_out, W_out, m).
    """
    H_out, W_out, m = y.shape[1], y.shape[2], y.shape[3]
    last = size * size - 1
    for r in range(lo, hi):
        yo, c = r % H_out, r // H_out
        for xo in range(W_out):
            top = y[c, yo, xo]
            top[:] = x[c, yo * size, xo * size]
            for q in range(1, size * size):
                entry = x[c, yo * size + q // size, xo * size + q % size]
                for s in range(m):
                    top[s] = top[s] if (top[s] > entry[s] or top[s] != top[s]) else entry[s]
            which = argmax[c, yo, xo]
            which[:] = last
            for q in range(last - 1, -1, -1):  # downwards, so that the first entry equal to the max is kept
                entry = x[c, yo * size + q // size, xo * size + q % size]
                for s in range(m):
                    if entry[s] == top[s]:
                        which[s] = q


@_jit
def _max_pool_backward_rows(lo, hi, dy, argmax, size, dx):
    """dx[c, y, x, s] = dy of its window times 1 where it is the window's argmax, else times 0 (a NaN shows);
    0 on the rows and columns past the last whole window. Row r = c.H + y of dx (C, H, W, m)."""
    H, W, m = dx.shape[1], dx.shape[2], dx.shape[3]
    H_out, W_out = dy.shape[1], dy.shape[2]
    zero, one = dx.dtype.type(0), dx.dtype.type(1)
    for r in range(lo, hi):
        y, c = r % H, r // H
        yo = y // size
        for x in range(W):
            xo = x // size
            if yo >= H_out or xo >= W_out:
                dx[c, y, x] = 0
                continue
            q = (y % size) * size + x % size
            for s in range(m):
                dx[c, y, x, s] = dy[c, yo, xo, s] * (one if argmax[c, yo, xo, s] == q else zero)


# -- ReLU --------------------------------------------------------------------------------------------
@_jit
def _bias_relu_rows(lo, hi, Z, b):
    """Z[f] = relu(Z[f] + b[f]) as numpy.maximum(z, 0): 0 for z <= 0 (-0.0 too), NaN kept. Row f of Z (F, n)."""
    zero = Z.dtype.type(0)
    for f in range(lo, hi):
        row, bias = Z[f], b[f, 0]
        for e in range(row.size):
            z = row[e] + bias
            row[e] = z if (z > 0 or z != z) else zero


@_jit
def _relu_backward_rows(lo, hi, dA, A):
    """dA[f] *= 1 where A[f] > 0, else 0 (a NaN or inf in dA shows). Row f of dA, A (F, n)."""
    zero, one = dA.dtype.type(0), dA.dtype.type(1)
    for f in range(lo, hi):
        d, a = dA[f], A[f]
        for e in range(d.size):
            d[e] = d[e] * (one if a[e] > 0 else zero)


# -- the backend's operations, on arrays ``takes`` accepts --------------------------------------------
# ``run(kernel, rows, *args)`` runs kernel(lo, hi, *args) over rows 0..rows-1, in parts on the cores.
def im2col(run, x, k: int, pads):
    """``layers.im2col``: the columns (C.k.k, H_out.W_out.m) of maps x (C, H, W, m)."""
    before, after = pads
    C, H, W, m = x.shape
    H_out, W_out = H + before + after - k + 1, W + before + after - k + 1
    patches = np.empty((C, k, k, H_out, W_out, m), dtype=x.dtype)
    run(_im2col_rows, C * k * k * H_out, x, k, before, patches)
    return patches.reshape(C * k * k, H_out * W_out * m)


def col2im(run, columns, input_shape, k: int, pads):
    """``layers.col2im``: the maps ``input_shape`` (C, H, W, m) whose elements sum the entries that copied them."""
    C, H, W, m = input_shape
    before, after = pads
    H_out, W_out = H + before + after - k + 1, W + before + after - k + 1
    dx = np.empty(input_shape, dtype=columns.dtype)
    run(_col2im_rows, C * H, columns.reshape(C, k, k, H_out, W_out, m), before, dx)
    return dx


def max_pool(run, x, size: int):
    """``layers.max_pool``: (y, uint8 argmax) of size x size windows of maps x."""
    C, H, W, m = x.shape
    y = np.empty((C, H // size, W // size, m), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.uint8)
    run(_max_pool_rows, C * (H // size), x, size, y, argmax)
    return y, argmax


def max_pool_backward(run, dy, argmax, input_shape, size: int):
    """``layers.max_pool_backward``: dx of maps ``input_shape``, each window's dy at its argmax."""
    dx = np.empty(input_shape, dtype=dy.dtype)
    run(_max_pool_backward_rows, input_shape[0] * input_shape[1], dy, argmax, size, dx)
    return dx


def bias_relu(run, Z, b):
    """Z (F, n) overwritten with relu(Z + b), b (F, 1)."""
    run(_bias_relu_rows, Z.shape[0], Z, b)
    return Z


def relu_backward(run, dA, A):
    """dA overwritten with dA * relu'(Z), the mask read from A = relu(Z) (both of one shape)."""
    rows = dA.shape[0]
    run(_relu_backward_rows, rows, dA.reshape(rows, -1), A.reshape(rows, -1))
    return dA
