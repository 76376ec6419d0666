"""Augmentation: each epoch, every training digit drawn through a fresh random affine transform.

A digit is a side x side image (28 x 28), pixel (y, x) at row y (downwards) and column x, stored as
element f = y.side + x of its row of the uint8 data set. Coordinates are taken from the image's centre
c = (side - 1)/2 = 13.5, so that rotation and zoom keep the digit where it is.

The transform of one sample (its content moved, as a user sees it):

    q - c = t + R(theta) . H(phi) . S(sx, sy) . (p - c)      content at p (source) appears at q (output)

    R(theta) = [[cos, sin], [-sin, cos]]     rotation by theta, counter-clockwise on the screen (y points down)
    H(phi)   = [[1, tan phi], [0, 1]]        shear: each row moved along x in proportion to its height
    S        = [[sx, 0], [0, sy]]            zoom: sx, sy > 1 enlarge the digit
    t        = (tx, ty)                      shift, in pixels

Sampling needs the inverse map, which the host works out per sample in float64 and hands over as six
coefficients (``transforms``, a row (a, b, c0, d, e, f0) of the compute dtype T per data-set sample):

    M = S^-1 . H^-1 . R(-theta)              (xs - c, ys - c) = M . (xo - c - tx, yo - c - ty)
    xs = (a.xo + b.yo) + c0                  ys = (d.xo + e.yo) + f0        (in T, in this order)

Output pixel (yo, xo) takes the bilinear interpolation of the source at (ys, xs), the four pixels around
it weighted by how near they are; pixels outside the image are 0 (the background):

    x0 = floor(xs), fx = xs - x0, gx = 1 - fx       (y0, fy, gy the same from ys)
    top    = gx . p[y0, x0]     + fx . p[y0, x0 + 1]
    bottom = gx . p[y0 + 1, x0] + fx . p[y0 + 1, x0 + 1]
    A0[f, j] = (gy . top + fy . bottom) . T(1/255)         f = yo.side + xo, j the sample's column

so the result is a batch of columns A0 (side.side, batch), as ``Backend.gather_scaled`` gives: the data
set stays uint8 and only the batch becomes floating point. The identity transform (a = e = 1, the rest 0)
gives gather_scaled's batch exactly. There is no gradient: the transform is applied to the inputs only.

The kernel (kernels/augment.cu) and the compiled CPU pass (backends/cpu_augment.py) compute every output
element with these operations in this order; ``affine_sample`` below is their reference. Where two of them
evaluate a product in another way (a GPU fuses a.xo + b.yo into one multiply-add), the coordinates move by
rounding, and so does the interpolation, which is continuous, also across floor's steps: a pixel moves by
at most |dxs| + |dys| (a pixel's slope is at most 255/255 per pixel) plus its own arithmetic's rounding.
tests/tolerances.py's ``augment_bound`` gives that bound.

The random parameters are drawn on the host, per sample, from a generator of (seed, epoch) alone
(``draw_transforms``): the CPU and the GPU get the same transforms, a run is reproduced from its seed, and
an epoch's draws do not depend on the epochs before it or on the shuffle, which keeps its own generator.
The training loop draws them (``TrainConfig.augment``) and never for the validation digits.

This module sits in nn/ beside layers.py, not in training/: the backends run ``affine_sample`` as their
generic code (as they run layers.im2col), and backends import from nn, never from training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIDE = 28  # the digits' height and width (data.SIDE; nn does not import files)
COEFFICIENTS = 6  # a, b, c0, d, e, f0 per sample
STREAM = 0x61756767  # "augg": the augmentation's generator, apart from the split's, the init's and the shuffle's


@dataclass(frozen=True)
class AugmentRanges:
    """How far each transform parameter is drawn, uniformly in [-range, +range] around no change.

    The defaults are those of the best single CNN of cdeotte/MNIST-CNN-99.75 (Keras's ImageDataGenerator with
    rotation_range=10, zoom_range=0.10, width_shift_range=0.1, height_shift_range=0.1): each axis zoomed on
    its own, as Keras does.
    """

    rotation: float = 10.0  # degrees, either way
    zoom: float = 0.10  # sx, sy each in [1 - zoom, 1 + zoom]
    shift: float = 0.10  # tx, ty each up to this fraction of the side: 2.8 pixels for 28
    shear: float = 0.0  # degrees, either way (off by default, as in that recipe)

    def __post_init__(self):
        for name in ("rotation", "zoom", "shift", "shear"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"augmentation {name} range {value!r} must be a finite number >= 0")
        if self.zoom >= 1 or self.shear >= 90:
            raise ValueError(f"augmentation zoom {self.zoom} must be below 1 and shear {self.shear} below 90 degrees")

    def describe(self) -> str:
        """One line for --help and the banner: 'rotation +/-10 deg, zoom +/-10%, shift +/-10% (2.8 px)'."""
        text = (f"rotation +/-{self.rotation:g} deg, zoom +/-{100 * self.zoom:g}% per axis, "
                f"shift +/-{100 * self.shift:g}% ({self.shift * SIDE:.1f} px)")
        return text + (f", shear +/-{self.shear:g} deg" if self.shear else "")


DEFAULT_RANGES = AugmentRanges()


def inverse_coefficients(theta, phi, sx, sy, tx, ty, side: int = SIDE) -> np.ndarray:
    """The rows (a, b, c0, d, e, f0) of the inverse maps of arrays of parameters (float64, angles in radians).

    M = S^-1 . H^-1 . R(-theta), with R(-theta) = [[cos, -sin], [sin, cos]] and H^-1 = [[1, -tan phi], [0, 1]];
    (xs, ys) = M . (xo - c - tx, yo - c - ty) + c, so c0 = c - a.(c + tx) - b.(c + ty), f0 likewise.
    """
    cos, sin, shear = np.cos(theta), np.sin(theta), np.tan(phi)
    # H^-1 . R(-theta) = [[cos - tan.sin, -sin - tan.cos], [sin, cos]], then rows divided by sx, sy
    a, b = (cos - shear * sin) / sx, (-sin - shear * cos) / sx
    d, e = sin / sy, cos / sy
    c = (side - 1) / 2
    c0 = c - a * (c + tx) - b * (c + ty)
    f0 = c - d * (c + tx) - e * (c + ty)
    return np.stack([a, b, c0, d, e, f0], axis=-1)


def draw_transforms(seed: int, epoch: int, m: int, ranges: AugmentRanges = DEFAULT_RANGES,
                    side: int = SIDE) -> np.ndarray:
    """The inverse-map coefficients (m, 6), float64, of sample 0..m-1 of the training set in epoch ``epoch``.

    Drawn from numpy's generator of (STREAM, seed, epoch), in this order: the m rotations, the m shears, the m
    pairs of zooms (sx, sy) and the m pairs of shifts (tx, ty), each uniform in its range.
    """
    rng = np.random.default_rng((STREAM, int(seed), int(epoch)))
    theta = np.radians(rng.uniform(-ranges.rotation, ranges.rotation, m))
    phi = np.radians(rng.uniform(-ranges.shear, ranges.shear, m))
    sx, sy = rng.uniform(1 - ranges.zoom, 1 + ranges.zoom, (2, m))
    tx, ty = rng.uniform(-ranges.shift, ranges.shift, (2, m)) * side
    return inverse_coefficients(theta, phi, sx, sy, tx, ty, side)


def identity(m: int, side: int = SIDE) -> np.ndarray:
    """Coefficients (m, 6) that leave every image as it is."""
    return inverse_coefficients(np.zeros(m), np.zeros(m), np.ones(m), np.ones(m), np.zeros(m), np.zeros(m), side)


def side_of(images) -> int:
    """The side of the square digits, one a row of ``images`` (m, side.side); ValueError where they are not square."""
    pixels = int(images.shape[-1])
    side = math.isqrt(pixels)
    if side * side != pixels:
        raise ValueError(f"augmentation draws square images; {pixels} pixels a row are not a square")
    return side


def output_grid(xp, side: int, dtype):
    """(xo, yo) of output pixel f = yo.side + xo, each a (1, side.side) array of ``dtype``."""
    grid = xp.arange(side, dtype=dtype)
    return xp.tile(grid, side)[None, :], xp.repeat(grid, side)[None, :]


def affine_sample(xp, images, index, transforms, dtype, side: int = SIDE):
    """A0 (side.side, k): the samples ``images[index]`` (uint8, one a row) each drawn through its transform
    ``transforms[index]`` (rows of 6 coefficients of ``dtype``), bilinear, scaled by 1/255 (module docstring).

    ``index``: the batch's row numbers, or None for every row in order. Written against ``xp``: the generic
    code of ``Backend.gather_augmented``, and the reference for the CUDA kernel and the compiled CPU pass.
    """
    dtype = np.dtype(dtype)
    batch = images if index is None else xp.take(images, index, axis=0)
    coefficients = xp.asarray(transforms if index is None else xp.take(transforms, index, axis=0), dtype=dtype)
    k = batch.shape[0]
    xo, yo = output_grid(xp, side, dtype)
    a, b, c0, d, e, f0 = (coefficients[:, i:i + 1] for i in range(COEFFICIENTS))
    xs = a * xo + b * yo
    xs += c0
    ys = d * xo + e * yo
    ys += f0
    x0, y0 = xp.floor(xs), xp.floor(ys)
    fx, fy = xs - x0, ys - y0
    one = dtype.type(1)
    gx, gy = one - fx, one - fy
    # Pixels as floats with a border of zeros: a corner at -1 or side reads the border, and a corner
    # further out is held to it (each corner on its own, so that both of a far-off pair read 0).
    padded = xp.zeros((k, side + 2, side + 2), dtype=dtype)
    padded[:, 1:-1, 1:-1] = batch.reshape(k, side, side)
    flat = padded.reshape(k, -1)
    rows = xp.arange(k)[:, None] * (side + 2) * (side + 2)

    def corner(y, x):
        iy = xp.clip(y, -1, side).astype(xp.int64) + 1
        ix = xp.clip(x, -1, side).astype(xp.int64) + 1
        return flat.reshape(-1)[rows + iy * (side + 2) + ix]

    top = gx * corner(y0, x0) + fx * corner(y0, x0 + one)
    bottom = gx * corner(y0 + one, x0) + fx * corner(y0 + one, x0 + one)
    value = gy * top + fy * bottom
    value *= dtype.type(1.0 / 255.0)
    return xp.ascontiguousarray(value.T)

