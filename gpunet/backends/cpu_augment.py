"""The augmentation's compiled (numba) pass on the CPU: one loop over the batch's output pixels.

NumPy draws a batch through its transforms (gpunet/nn/augment.py's ``affine_sample``) in some thirty
whole-array calls over (batch, 784) temporaries, about half of a CNN's step on this machine; this loop
computes each output pixel once, with the same operations in the same order (so the reference's bits, up to
how a compiler may evaluate a.xo + b.yo: tests/test_augment.py holds it to the derived bound), in a few
percent of a step (scripts/bench_augment.py, BENCHMARKS.md). It runs on the calling thread. Importing this
module needs numba.
"""

from __future__ import annotations


import numpy as np

from gpunet.backends.numba_jit import IMPORT_ERROR, jit, numba

if numba is None:
    raise ImportError(f"numba is not usable: {IMPORT_ERROR}")
_jit = jit()
DTYPES = (np.float32, np.float64)


@_jit
def _pixel(image, y, x, side):
    """Pixel (y, x) of a flat uint8 image, 0 outside it."""
    if y < 0 or y >= side or x < 0 or x >= side:
        return 0
    return image[y * side + x]


@_jit
def _held(v, side):
    """A corner's coordinate (a whole number as a float) held to [-1, side], as an integer."""
    if v < -1:
        return -1
    if v > side:
        return side
    return int(v)


@_jit
def _affine_sample(images, index, transforms, side, out):
    """out[f, j] = image index[j] drawn through transforms[index[j]] at pixel f = yo.side + xo (augment.py)."""
    one = out.dtype.type(1)
    scale = out.dtype.type(1.0 / 255.0)
    for j in range(index.size):
        row = index[j]
        image = images[row]
        a, b, c0 = transforms[row, 0], transforms[row, 1], transforms[row, 2]
        d, e, f0 = transforms[row, 3], transforms[row, 4], transforms[row, 5]
        for yo in range(side):
            y = out.dtype.type(yo)
            for xo in range(side):
                x = out.dtype.type(xo)
                xs = (a * x + b * y) + c0
                ys = (d * x + e * y) + f0
                x0, y0 = np.floor(xs), np.floor(ys)
                fx, fy = xs - x0, ys - y0
                gx, gy = one - fx, one - fy
                ix0, ix1 = _held(x0, side), _held(x0 + one, side)
                iy0, iy1 = _held(y0, side), _held(y0 + one, side)
                top = gx * out.dtype.type(_pixel(image, iy0, ix0, side)) + fx * out.dtype.type(
                    _pixel(image, iy0, ix1, side))
                bottom = gx * out.dtype.type(_pixel(image, iy1, ix0, side)) + fx * out.dtype.type(
                    _pixel(image, iy1, ix1, side))
                out[yo * side + xo, j] = (gy * top + fy * bottom) * scale


def takes(images, index, transforms, dtype) -> bool:
    """Whether the pass takes these: uint8 images (rows, side.side), C-ordered transforms (rows, 6) of ``dtype``."""
    return (np.dtype(dtype) in DTYPES and images.dtype == np.uint8 and images.ndim == 2
            and images.flags.c_contiguous and transforms.dtype == np.dtype(dtype)
            and transforms.shape == (images.shape[0], 6) and transforms.flags.c_contiguous
            and (index is None or index.ndim == 1))


def affine_sample(images, index, transforms, dtype, side: int, out=None):
    """``augment.affine_sample``'s batch A0 (side.side, k), into ``out`` (any layout) where given."""
    index = np.arange(images.shape[0]) if index is None else np.asarray(index, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= images.shape[0]):
        raise IndexError(f"augment: a row number outside 0..{images.shape[0] - 1}")
    A0 = np.empty((side * side, index.size), dtype=dtype) if out is None else out
    _affine_sample(images, index, transforms, side, A0)
    return A0
