"""A user's own digit images, prepared the way the MNIST digits were made.

MNIST's recipe (LeCun et al.): the digit is size-normalized to fit a 20x20 box,
keeping its aspect ratio, anti-aliased to gray levels, and placed in a 28x28
field so that its centre of mass lands on the centre (index 14, 14: the mean
centre of mass of the bundled sample is 13.99, 14.00). ``prepare_digit`` does
the same to any picture, light ink on dark or dark ink on light; ``predict
--image`` and the drawing page both call it, so they see digits alike.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from gpunet.errors import GpunetError

SIDE = 28
BOX = 20  # the digit is scaled to fit BOX x BOX inside the SIDE x SIDE field
CENTRE = 14.0  # where its centre of mass goes (row and column index)
WORK_SIDE = 1024  # larger pictures (phone photos) are shrunk to this first: the digit ends up 20 px anyway
MIN_CONTRAST = 32  # ink must differ from the background by this many gray levels (of 255)
# A pixel with this share of the strongest ink counts for the crop box. Of 0.1-0.5, 0.3 gave re-rendered
# sample digits (resized, photographed) the labels of their originals most often.
INK_LEVEL = 0.3
NOISE_LEVEL = 0.05  # weaker than this fraction is background (paper grain, JPEG ringing)


class ImageError(GpunetError):
    """An image that cannot be read, or holds no digit."""


class ImageTooLarge(ImageError):
    """More pixels than the caller accepts (checked before decoding)."""


class NoDigit(ImageError):
    """A readable image with no ink on it: blank, or too little contrast."""


def read_image(source, name: str | None = None, max_pixels: int | None = None):
    """Open an image file (a path, bytes or a binary file) as a Pillow image, fully decoded.

    ``max_pixels`` (default: Pillow's decompression-bomb limit) refuses larger
    images before decoding them. Every failure is an ImageError naming
    ``name`` (the path by default).
    """
    if max_pixels is None:
        max_pixels = Image.MAX_IMAGE_PIXELS
    if name is None:
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image"
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        raise ImageError(f"{name}: is a folder, not an image")
    try:
        return _open_decoded(source, name, max_pixels)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ImageError(f"{name}: cannot read the image ({detail})") from None


def _open_decoded(source, name: str, max_pixels: int):
    """Image.open + size check + load; a refused or broken image is closed (its file let go) before raising."""
    with warnings.catch_warnings():  # Pillow warns above its limit; the check below refuses instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
    try:
        if image.width * image.height > max_pixels:
            raise ImageTooLarge(f"{name}: {image.width}x{image.height} pixels is too large (at most {max_pixels:,})")
        if image.format == "JPEG":
            image.draft("L", (WORK_SIDE, WORK_SIDE))  # let the decoder shrink big photos cheaply
        image.load()
    except BaseException:
        image.close()
        raise
    return image


def prepare_digit(image, name: str = "image") -> np.ndarray:
    """A Pillow image -> the digit as MNIST would hold it: uint8 (784,), light ink on black.

    1. grayscale (transparent pixels become background; EXIF rotation applied);
    2. invert when the background, the median of the outermost pixels, is light;
    3. subtract the background and stretch so the strongest ink is 255;
    4. crop to the ink; 5. scale to fit 20x20 keeping the aspect ratio;
    6. place in 28x28 with the centre of mass at the centre.
    """
    ink = ink_levels(grayscale(image), name)
    rows = np.flatnonzero((ink >= INK_LEVEL).any(axis=1))
    cols = np.flatnonzero((ink >= INK_LEVEL).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    digit = fit_box(crop)
    return centre_by_mass(digit)


def grayscale(image) -> np.ndarray:
    """Luminance 0-255 as float32 (H, W); shrunk to at most WORK_SIDE on a side."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16- or 32-bit gray: to 0-255
        levels = np.asarray(image, dtype=np.float32)
        image = Image.fromarray(levels / 257 if levels.max() > 255 else levels)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = flatten_alpha(image)
    if max(image.size) > WORK_SIDE:
        image = image.copy()
        image.thumbnail((WORK_SIDE, WORK_SIDE), reducing_gap=2.0)
    if image.mode != "F":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32)


def flatten_alpha(image):
    """Transparent pixels become the colour opposite the ink, so they read as background.

    A drawing of dark strokes on a transparent canvas lands on white; light
    strokes land on black. The ink's shade is the opacity-weighted mean of the
    visible pixels.
    """
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    luminance = np.asarray(rgba.convert("L"), dtype=np.float32)
    if alpha.min() == 1.0:
        return rgba.convert("RGB")
    shade = float((luminance * alpha).sum() / max(alpha.sum(), 1e-6))
    under = 255.0 if shade < 128 else 0.0
    mixed = luminance * alpha + under * (1 - alpha)
    return Image.fromarray(mixed.astype(np.float32))


def ink_levels(gray: np.ndarray, name: str) -> np.ndarray:
    """How much ink each pixel holds, 0 (background) to 1 (the strongest ink)."""
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    background = float(np.median(border))
    if background > 127.5:  # dark ink on light paper: invert
        gray = 255 - gray
        background = 255 - background
    ink = gray - background
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise NoDigit(f"{name}: no digit found (the image is blank or has too little contrast)")
    ink /= peak
    ink[ink < NOISE_LEVEL] = 0
    return ink


def fit_box(crop: np.ndarray) -> np.ndarray:
    """Scale so the longer side is BOX pixels, keeping the aspect ratio; values 0-1."""
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return crop
    resized = Image.fromarray(np.ascontiguousarray(crop, dtype=np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Paste into SIDE x SIDE so the centre of mass is at CENTRE (whole-pixel shift, digit kept whole)."""
    height, width = digit.shape
    mass = float(digit.sum())
    cy = float((digit.sum(axis=1) * np.arange(height)).sum() / mass)
    cx = float((digit.sum(axis=0) * np.arange(width)).sum() / mass)
    top = min(max(round(CENTRE - cy), 0), SIDE - height)
    left = min(max(round(CENTRE - cx), 0), SIDE - width)
    field = np.zeros((SIDE, SIDE), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return np.round(field * 255).astype(np.uint8).reshape(SIDE * SIDE)


def load_digit(path, max_pixels: int | None = None) -> np.ndarray:
    """read_image + prepare_digit for a file: uint8 (784,), or ImageError naming the file."""
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "image"
    return prepare_digit(read_image(path, name, max_pixels), name)
