"""Compiled (numba) passes for the layers' hot operations on the CPU: one pass each over its output.

NumPy does each of these as several whole-array calls: max-pool backward zero-fills dx, then writes it
again through four masked multiplies; col2im adds 25 shifted slices into a zeroed array. Here each is one
loop over its output that writes every element once: in a CNN's epoch col2im and the pooling passes take
a half to a third of NumPy's time, bias + ReLU and its backward half; im2col, a copy either way, about
as long (1.8-2.6 ms against 2.5 for conv64k5's; it is compiled so that a step's passes are all one kind).

They run on the calling thread. Split between the two cores' threads they were no faster in an epoch:
each pass follows a BLAS product, whose worker thread then spins on the other core for a while (OpenBLAS's
idle wait), so a second thread of ours waits for that core (measured after a product: col2im 1.10 ms in two
parts, 1.03 in one; max-pool 0.66 against 0.56).

The arithmetic is that of :mod:`gpunet.nn.layers` and :mod:`gpunet.nn.activations`, which stay the
readable reference and the path wherever numba is not installed: each kernel computes every output element
with the same operations in the same order as the generic code (col2im sums its patch entries from 0 in
ascending kernel offset (i, j), as the NumPy additions and the CUDA kernel do), so the results are the
same bits (tests/test_cpu_layers.py). Importing this module needs numba.
"""

from __future__ import annotations

import numpy as np

from gpunet.backends.numba_jit import IMPORT_ERROR, jit, numba

if numba is None:
    raise ImportError(f"numba is not usable: {IMPORT_ERROR}")
_jit = jit()
DTYPES = (np.float32, np.float64)


def takes(*arrays) -> bool:
    """Whether the kernels take these arrays: float32 or float64 (one dtype), C-ordered."""
    return (arrays[0].dtype in DTYPES and all(a.dtype == arrays[0].dtype for a in arrays)
            and all(a.flags.c_contiguous for a in arrays))


# -- im2col and its gradient -------------------------------------------------------------------------
@_jit
def _im2col(x, k, before, patches):
    """patches[c, i, j, yo, xo, s] = x[c, yo + i - before, xo + j - before, s], 0 in the padding."""
    C, H, W, m = x.shape
    H_out, W_out = patches.shape[3], patches.shape[4]
    zero = patches.dtype.type(0)
    for c in range(C):
        for i in range(k):
            for j in range(k):
                for yo in range(H_out):
                    ys = yo + i - before
                    for xo in range(W_out):
                        xs = xo + j - before
                        if 0 <= ys < H and 0 <= xs < W:
                            for s in range(m):  # loops, not slices: numba's slice assignment took 2x as long
                                patches[c, i, j, yo, xo, s] = x[c, ys, xs, s]
                        else:
                            for s in range(m):
                                patches[c, i, j, yo, xo, s] = zero


@_jit
def _col2im(patches, before, dx):
    """dx[c, y, x, s] = the sum, from 0 in ascending (i, j), of patches[c, i, j, y + before - i, x + before - j, s]
    over the kernel offsets where that position exists (a gather, as the CUDA kernel: no atomics there).
    """
    k, H_out, W_out, m = patches.shape[1], patches.shape[3], patches.shape[4], patches.shape[5]
    C, H, W = dx.shape[0], dx.shape[1], dx.shape[2]
    for c in range(C):
        for y in range(H):
            for x in range(W):
                for s in range(m):
                    dx[c, y, x, s] = 0
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
def _max_pool(x, size, y, argmax):
    """y = each window's largest entry by numpy.maximum's rule (the later entry on a tie, NaN where one is NaN);
    argmax = the first entry q = i.size + j equal to it (size.size - 1 where none is: a NaN).
    """
    C, H_out, W_out, m = y.shape
    last = size * size - 1
    for c in range(C):
        for yo in range(H_out):
            for xo in range(W_out):
                for s in range(m):
                    y[c, yo, xo, s] = x[c, yo * size, xo * size, s]
                for q in range(1, size * size):
                    row, col = yo * size + q // size, xo * size + q % size
                    for s in range(m):
                        top, entry = y[c, yo, xo, s], x[c, row, col, s]
                        y[c, yo, xo, s] = top if (top > entry or top != top) else entry
                for s in range(m):
                    argmax[c, yo, xo, s] = last
                for q in range(last - 1, -1, -1):  # downwards, so that the first entry equal to the max is kept
                    row, col = yo * size + q // size, xo * size + q % size
                    for s in range(m):
                        if x[c, row, col, s] == y[c, yo, xo, s]:
                            argmax[c, yo, xo, s] = q


@_jit
def _max_pool_backward(dy, argmax, size, dx):
    """dx[c, y, x, s] = dy of its window times 1 where it is the window's argmax, else times 0 (a NaN shows);
    0 on the rows and columns past the last whole window."""
    C, H, W, m = dx.shape
    H_out, W_out = dy.shape[1], dy.shape[2]
    zero, one = dx.dtype.type(0), dx.dtype.type(1)
    for c in range(C):
        for y in range(H):
            yo = y // size
            for x in range(W):
                xo = x // size
                if yo >= H_out or xo >= W_out:
                    for s in range(m):
                        dx[c, y, x, s] = zero
                    continue
                q = (y % size) * size + x % size
                for s in range(m):
                    dx[c, y, x, s] = dy[c, yo, xo, s] * (one if argmax[c, yo, xo, s] == q else zero)


# -- ReLU --------------------------------------------------------------------------------------------
@_jit
def _bias_relu(Z, b):
    """Z[f] = relu(Z[f] + b[f]) as numpy.maximum(z, 0): 0 for z <= 0 (-0.0 too), NaN kept; Z (F, n)."""
    zero = Z.dtype.type(0)
    for f in range(Z.shape[0]):
        row, bias = Z[f], b[f, 0]
        for e in range(row.size):
            z = row[e] + bias
            row[e] = z if (z > 0 or z != z) else zero


@_jit
def _relu_backward(dA, A):
    """dA[f] *= 1 where A[f] > 0, else 0 (a NaN or inf in dA shows); dA, A (F, n)."""
    zero, one = dA.dtype.type(0), dA.dtype.type(1)
    for f in range(dA.shape[0]):
        d, a = dA[f], A[f]
        for e in range(d.size):
            d[e] = d[e] * (one if a[e] > 0 else zero)


# -- the backend's operations, on arrays ``takes`` accepts -------------------------------------------
# ``out``: a C-ordered array of the result's shape and dtype to write it into (a workspace's), or None.
def im2col(x, k: int, pads, out=None):
    """``layers.im2col``: the columns (C.k.k, H_out.W_out.m) of maps x (C, H, W, m)."""
    before, after = pads
    C, H, W, m = x.shape
    H_out, W_out = H + before + after - k + 1, W + before + after - k + 1
    shape = (C, k, k, H_out, W_out, m)
    patches = np.empty(shape, dtype=x.dtype) if out is None else out.reshape(shape)
    _im2col(x, k, before, patches)
    return patches.reshape(C * k * k, H_out * W_out * m)


def col2im(columns, input_shape, k: int, pads, out=None):
    """``layers.col2im``: the maps ``input_shape`` (C, H, W, m) whose elements sum the entries that copied them."""
    C, H, W, m = input_shape
    before, after = pads
    H_out, W_out = H + before + after - k + 1, W + before + after - k + 1
    dx = np.empty(input_shape, dtype=columns.dtype) if out is None else out
    _col2im(columns.reshape(C, k, k, H_out, W_out, m), before, dx)
    return dx


def max_pool(x, size: int, out=None, argmax_out=None):
    """``layers.max_pool``: (y, uint8 argmax) of size x size windows of maps x."""
    C, H, W, m = x.shape
    y = np.empty((C, H // size, W // size, m), dtype=x.dtype) if out is None else out
    argmax = np.empty(y.shape, dtype=np.uint8) if argmax_out is None else argmax_out
    _max_pool(x, size, y, argmax)
    return y, argmax


def max_pool_backward(dy, argmax, input_shape, size: int, out=None):
    """``layers.max_pool_backward``: dx of maps ``input_shape``, each window's dy at its argmax."""
    dx = np.empty(input_shape, dtype=dy.dtype) if out is None else out
    _max_pool_backward(dy, argmax, size, dx)
    return dx


def bias_relu(Z, b):
    """Z (F, n) overwritten with relu(Z + b), b (F, 1)."""
    _bias_relu(Z, b)
    return Z


def relu_backward(dA, A):
    """dA overwritten with dA * relu'(Z), the mask read from A = relu(Z) (both of one shape)."""
    rows = dA.shape[0]
    _relu_backward(dA.reshape(rows, -1), A.reshape(rows, -1))
    return dA
