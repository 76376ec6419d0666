"""Model files: an .npz of plain arrays plus one JSON metadata string. Never pickled.

Layout: ``W1, b1, W2, b2, ...`` as float arrays shaped as in the notes, and
``metadata``: a 0-d unicode array holding JSON (format, version, architecture,
normalization, classes, training settings, history, final metrics). Loading
reads the .npy headers itself and refuses object arrays, so nothing is ever unpickled.

Two versions: 1, the notes' dense network, its architecture ``layer_sizes`` ([784, 16, 16, 10]);
2, a stack of layers (``--arch``), its architecture ``architecture`` (the spec, e.g.
"conv32k5,pool2,dense256"), ``input_shape`` ([1, 28, 28]) and ``outputs``, with W_k and b_k the
parameters of the k-th layer that has any (a convolution's W is (filters, channels.k.k)). Dense networks
are still written as version 1, so that every gpunet reads them.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from gpunet import __version__
from gpunet.files.atomic_file import write_atomically
from gpunet.files.data import ZIP_ERRORS, NpyHeader, npy_header, npz_members, one_line, read_npy
from gpunet.errors import ModelFileError

FORMAT = "gpunet-model"
FORMAT_VERSION = 1  # the notes' dense network
STACK_FORMAT_VERSION = 2  # a stack of layers: the architecture is the spec
MAX_INPUT_SIDE = 100_000  # a version 2 model's input shape, per axis
# The JSON metadata, stored as UTF-32: ~800 bytes an epoch of history, so some 80,000 epochs.
METADATA_LIMIT = 64 << 20


def save_model(path, params: list[np.ndarray], metadata: dict) -> None:
    """Write the model atomically: a temporary file in the same folder, then a rename.

    A crash or an error midway leaves any existing file at ``path`` untouched.
    ``metadata`` with an ``architecture`` (see the module's docstring) makes a version 2 file.
    """
    path = Path(path)
    if "architecture" in metadata:
        architecture = {"format_version": STACK_FORMAT_VERSION}
    else:
        architecture = {"format_version": FORMAT_VERSION,
                        "layer_sizes": [int(params[0].shape[1])] + [int(W.shape[0]) for W in params[0::2]]}
    meta = {"format": FORMAT, **architecture, "gpunet_version": __version__, **metadata}
    arrays = {f"{kind}{k + 1}": np.asarray(p) for k, pair in enumerate(zip(params[0::2], params[1::2]))
              for kind, p in zip("Wb", pair)}
    arrays["metadata"] = np.array(json.dumps(meta))
    write_atomically(path, lambda f: np.savez(f, **arrays))


def load_model(path) -> tuple[list[np.ndarray], dict]:
    """Return ``(params, metadata)``; ModelFileError with one line for anything wrong.

    Every member's .npy header is read first, then the metadata (size-bounded); names, shapes and
    dtypes are checked against the metadata before any array data is inflated, and each array is
    read no further than its header says. A file built to inflate to gigabytes costs its headers.
    """
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise ModelFileError(f"{name}: is a folder, not a model file")
    if not path.is_file():
        raise ModelFileError(f"{name}: no such model file")
    if not zipfile.is_zipfile(path):  # a plainer message than zipfile's own
        raise ModelFileError(f"{name}: not a readable .npz model file (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = _member_headers(archive, name)
            meta = parse_metadata(name, _read_metadata(archive, members.pop("metadata", None), name))
            shapes = _param_shapes(meta, name)
            _check_members(members, shapes, name)
            params = [_read_param(archive, key, *members[key], name) for key in shapes]
    except ValueError as exc:
        raise ModelFileError(f"{name}: not a gpunet model file ({one_line(exc)})") from None
    except ZIP_ERRORS as exc:
        raise ModelFileError(f"{name}: not a readable .npz model file ({type(exc).__name__}: {one_line(exc)})") from None
    return params, meta


def _member_headers(archive: zipfile.ZipFile, name: str) -> dict[str, tuple[zipfile.ZipInfo, NpyHeader]]:
    """Every member with its .npy header; no array data is read."""
    members = {key: (info, npy_header(archive, info)) for key, info in npz_members(archive).items()}
    if any(header.dtype.hasobject for _, header in members.values()):
        raise ModelFileError(f"{name}: holds pickled Python objects; gpunet model files never do, refusing to load it")
    return members


def _read_metadata(archive: zipfile.ZipFile, member: tuple[zipfile.ZipInfo, NpyHeader] | None, name: str):
    """The metadata as a 0-d string array, or None when there is none; read only when it is small."""
    if member is None:
        return None
    info, header = member
    size = max(info.file_size, header.nbytes)  # read_npy also holds the zip's size to the header's
    if size > METADATA_LIMIT:
        raise ModelFileError(f"{name}: metadata is {size:,} bytes; gpunet reads at most {METADATA_LIMIT:,}")
    if header.dtype.kind != "U" or header.shape != ():
        raise ModelFileError(f"{name}: metadata is not valid JSON (it is a {header.dtype} array of shape {header.shape})")
    return read_npy(archive, info, header)


def stack_architecture(meta: dict, name: str):
    """(spec parts, input shape, outputs) of a version 2 model's metadata; None for a version 1 (dense) one.

    ModelFileError naming what is wrong: a spec --arch would refuse, or one that does not fit its input.
    """
    if meta.get("format_version") != STACK_FORMAT_VERSION:
        return None
    from gpunet.nn.model import MAX_UNITS, build_layers, parse_arch_text

    spec, input_shape, outputs = meta.get("architecture"), meta.get("input_shape"), meta.get("outputs")
    if not isinstance(spec, str):
        raise ModelFileError(f"{name}: metadata has no valid architecture")
    if not (isinstance(input_shape, list) and len(input_shape) in (1, 3)
            and all(type(n) is int and 0 < n <= MAX_INPUT_SIDE for n in input_shape)):
        raise ModelFileError(f"{name}: metadata has no valid input_shape")
    if not (type(outputs) is int and 0 < outputs <= MAX_UNITS):
        raise ModelFileError(f"{name}: metadata has no valid outputs")
    try:
        arch = parse_arch_text(spec)
        build_layers(arch, tuple(input_shape), outputs)
    except ValueError as error:
        raise ModelFileError(f"{name}: metadata's architecture {spec!r}: {one_line(error)}") from None
    return arch, tuple(input_shape), outputs


def _param_shapes(meta: dict, name: str) -> dict[str, tuple[int, ...]]:
    """W1, b1, W2, b2, ... in order, with the shapes the metadata's architecture gives them."""
    stack = stack_architecture(meta, name)
    if stack is not None:
        return _stack_param_shapes(*stack)
    sizes = meta.get("layer_sizes")
    if not (isinstance(sizes, list) and len(sizes) >= 2 and all(isinstance(s, int) and s > 0 for s in sizes)):
        raise ModelFileError(f"{name}: metadata has no valid layer_sizes")
    shapes = {}
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        shapes[f"W{k}"] = (fan_out, fan_in)
        shapes[f"b{k}"] = (fan_out, 1)
    return shapes


def input_scale(meta: dict) -> float | None:
    """What the model multiplies its inputs by (1/255: pixels); None where the metadata's value is no
    positive number. Files without one were written for pixels."""
    normalization = meta.get("normalization", {"scale": 1 / 255})
    scale = normalization.get("scale") if isinstance(normalization, dict) else None
    valid = isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0
    return float(scale) if valid else None


def network_from_file(params: list[np.ndarray], meta: dict, backend, name: str):
    """The network a loaded model file holds: the notes' ``Network`` (version 1) or a ``LayerStack`` (version 2)."""
    from gpunet.nn.model import LayerStack, Network

    stack = stack_architecture(meta, name)
    if stack is None:
        return Network(backend, params)
    arch, input_shape, outputs = stack
    return LayerStack(backend, arch, params, input_shape, outputs)


def _stack_param_shapes(arch, input_shape, outputs) -> dict[str, tuple[int, ...]]:
    """W_k and b_k of each layer that has parameters, k counting those layers from 1."""
    from gpunet.nn.model import build_layers

    shaped = [layer.param_shapes() for layer in build_layers(arch, input_shape, outputs) if layer.param_shapes()]
    return {f"{kind}{k}": tuple(shape) for k, shapes in enumerate(shaped, start=1) for kind, shape in zip("Wb", shapes)}


def _check_members(members: dict[str, tuple[zipfile.ZipInfo, NpyHeader]], shapes: dict, name: str) -> None:
    """Every array the metadata names, with its shape and a float dtype, and nothing else: from headers only."""
    for key, shape in shapes.items():
        if key not in members:
            raise ModelFileError(f"{name}: missing {key}")
        header = members[key][1]
        if header.shape != shape or header.dtype.kind != "f":
            raise ModelFileError(f"{name}: {key} has shape {header.shape} and dtype {header.dtype}, expected {shape} floats")
    if unexpected := sorted(set(members) - set(shapes)):
        raise ModelFileError(f"{name}: unexpected arrays {unexpected}")


def _read_param(archive: zipfile.ZipFile, key: str, info: zipfile.ZipInfo, header: NpyHeader, name: str) -> np.ndarray:
    array = read_npy(archive, info, header)
    if not np.isfinite(array).all():
        raise ModelFileError(f"{name}: {key} holds NaN or infinite values")
    return array


def parse_metadata(name: str, raw) -> dict:
    """The metadata member's JSON as a dict, or ModelFileError naming what is wrong."""
    if raw is None:
        raise ModelFileError(f"{name}: not a gpunet model (no metadata)")
    try:
        meta = json.loads(str(raw[()]))
    except (ValueError, TypeError):
        raise ModelFileError(f"{name}: metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{name}: not a gpunet model (format is not {FORMAT!r})")
    if meta.get("format_version") not in (FORMAT_VERSION, STACK_FORMAT_VERSION):
        raise ModelFileError(f"{name}: model format version {meta.get('format_version')!r} is not supported "
                             f"(this gpunet reads versions {FORMAT_VERSION} and {STACK_FORMAT_VERSION})")
    return meta


# -- the metadata alone: how gpunet.files.outputs tells a gpunet model at --out from any other file --
def load_metadata(path) -> dict:
    """A model file's metadata, read and checked as ``load_model`` reads it (gpunet's format marker, a version
    this gpunet reads); no array is read. ModelFileError with one line for anything else."""
    name = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = _member_headers(archive, name)
            return parse_metadata(name, _read_metadata(archive, members.get("metadata"), name))
    except ValueError as exc:
        raise ModelFileError(f"{name}: not a gpunet model file ({one_line(exc)})") from None
    except ZIP_ERRORS as exc:
        raise ModelFileError(f"{name}: not a readable .npz model file ({type(exc).__name__}: {one_line(exc)})") from None
