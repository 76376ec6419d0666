"""Model files: an .npz of plain arrays plus one JSON metadata string. Never pickled.

Layout: ``W1, b1, W2, b2, ...`` as float arrays shaped as in the notes, and
``metadata``: a 0-d unicode array holding JSON (format, version, architecture,
normalization, classes, training settings, history, final metrics). Loading
uses ``allow_pickle=False``, so a file holding Python objects is refused, not run.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from gpunet import __version__
from gpunet.atomic_file import write_atomically
from gpunet.errors import ModelFileError

FORMAT = "gpunet-model"
FORMAT_VERSION = 1


def save_model(path, params: list[np.ndarray], metadata: dict) -> None:
    """Write the model atomically: a temporary file in the same folder, then a rename.

    A crash or an error midway leaves any existing file at ``path`` untouched.
    """
    path = Path(path)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "gpunet_version": __version__,
            "layer_sizes": [int(params[0].shape[1])] + [int(W.shape[0]) for W in params[0::2]],
            **metadata}
    arrays = {f"{kind}{k + 1}": np.asarray(p) for k, pair in enumerate(zip(params[0::2], params[1::2]))
              for kind, p in zip("Wb", pair)}
    arrays["metadata"] = np.array(json.dumps(meta))
    write_atomically(path, lambda f: np.savez(f, **arrays))


def load_model(path) -> tuple[list[np.ndarray], dict]:
    """Return ``(params, metadata)``; ModelFileError with one line for anything wrong."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise ModelFileError(f"{name}: is a folder, not a model file")
    if not path.is_file():
        raise ModelFileError(f"{name}: no such model file")
    if not zipfile.is_zipfile(path):  # np.load would take any other bytes for a pickle
        raise ModelFileError(f"{name}: not a readable .npz model file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ModelFileError(f"{name}: holds pickled Python objects; gpunet model files never do, refusing to load it") from None
        raise ModelFileError(f"{name}: not a gpunet model file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"{name}: not a readable .npz model file ({type(exc).__name__})") from None

    meta = parse_metadata(name, files.pop("metadata", None))
    sizes = meta.get("layer_sizes")
    if not (isinstance(sizes, list) and len(sizes) >= 2 and all(isinstance(s, int) and s > 0 for s in sizes)):
        raise ModelFileError(f"{name}: metadata has no valid layer_sizes")
    params = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        for key, shape in ((f"W{k}", (fan_out, fan_in)), (f"b{k}", (fan_out, 1))):
            array = files.pop(key, None)
            if array is None:
                raise ModelFileError(f"{name}: missing {key}")
            if array.shape != shape or array.dtype.kind != "f":
                raise ModelFileError(f"{name}: {key} has shape {array.shape} and dtype {array.dtype}, expected {shape} floats")
            if not np.isfinite(array).all():
                raise ModelFileError(f"{name}: {key} holds NaN or infinite values")
            params.append(array)
    if files:
        raise ModelFileError(f"{name}: unexpected arrays {sorted(files)}")
    return params, meta


def parse_metadata(name: str, raw) -> dict:
    if raw is None:
        raise ModelFileError(f"{name}: not a gpunet model (no metadata)")
    try:
        meta = json.loads(str(raw[()]))
    except (ValueError, TypeError):
        raise ModelFileError(f"{name}: metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{name}: not a gpunet model (format is not {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{name}: model format version {meta.get('format_version')!r} is not supported "
                             f"(this gpunet reads version {FORMAT_VERSION})")
    return meta
