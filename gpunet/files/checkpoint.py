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

import contextlib
import json
import shlex
import struct
import zipfile
from pathlib import Path

import numpy as np

from gpunet import __version__
from gpunet.files.atomic_file import write_atomically
from gpunet.files.data import ZIP_ERRORS, NpyHeader, npy_header, npz_members, one_line, read_npy
from gpunet.files.model_schema import FORMAT, FORMAT_VERSION, STACK_FORMAT_VERSION, metadata_from_json
from gpunet.errors import ModelFileError, printable
from gpunet.nn.model import MAX_LAYERS

# The JSON metadata, stored as UTF-32 (4 bytes a character): ~800 bytes an epoch of history, so some 20,000
# epochs. Parsed, JSON takes up to ~25 bytes a character (a list of {} objects): this bounds it to ~100 MB.
METADATA_LIMIT = 16 << 20
# Members a model may have: W_k and b_k of each layer with parameters (MAX_LAYERS and the output), the metadata.
MAX_MEMBERS = 2 * (MAX_LAYERS + 1) + 1
# Bytes of the zip's directory of members: 46 bytes a member, its name (W12.npy) and a zip64 field fit in 1 KiB.
MAX_DIRECTORY = MAX_MEMBERS << 10


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

    The zip's directory is bounded first (members, bytes), then every member's .npy header is read, then the
    metadata (size-bounded, checked field by field: ``model_schema``); names, shapes and dtypes are checked
    against the metadata before any array data is inflated, and each array is read no further than its header
    says. A file built to inflate to gigabytes costs its headers.
    """
    name = str(path)
    with model_archive(path) as archive:
        members = _member_headers(archive, name)
        meta = _metadata(archive, members.pop("metadata", None), name)
        shapes = _param_shapes(meta, name)
        _check_members(members, shapes, name)
        params = [_read_param(archive, key, *members[key], name) for key in shapes]
    return params, meta


def load_metadata(path) -> dict:
    """The metadata of a gpunet model file, checked as ``load_model`` checks it, without reading any weights.

    A cheap answer to "is this a gpunet model?" (how ``outputs`` tells a model at --out from a user's other
    file): a dict carrying the format marker and a version this gpunet reads, or ModelFileError with one line
    saying why not (no such file, not a zip, too many members, no metadata, another format, an unknown
    version, a field out of its bounds). Only the metadata member is read; the weights are not checked."""
    name = str(path)
    with model_archive(path) as archive:
        info = npz_members(archive).get("metadata")
        meta = _metadata(archive, None if info is None else (info, npy_header(archive, info)), name)
    stack_architecture(meta, name)  # a version 2 spec that parses, at most MAX_LAYERS long, and fits its input
    return meta


@contextlib.contextmanager
def model_archive(path):
    """The model file open as a zip whose directory is within bounds; errors reading it become ModelFileError."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise ModelFileError(f"{name}: is a folder, not a model file")
    if not path.is_file():
        raise ModelFileError(f"{name}: no such model file")
    if not zipfile.is_zipfile(path):  # a plainer message than zipfile's own
        raise ModelFileError(f"{name}: not a readable .npz model file (not a zip archive)")
    try:
        check_directory(path, name)
        with zipfile.ZipFile(path) as archive:
            if len(archive.infolist()) > MAX_MEMBERS:  # the end record read by zipfile's own rules, to be sure
                raise ModelFileError(f"{name}: holds {len(archive.infolist()):,} members; a gpunet model holds at "
                                     f"most {MAX_MEMBERS:,}")
            yield archive
    except ValueError as exc:
        raise ModelFileError(f"{name}: not a gpunet model file ({printable(one_line(exc), 300)})") from None
    except ZIP_ERRORS as exc:
        raise ModelFileError(f"{name}: not a readable .npz model file "
                             f"({type(exc).__name__}: {printable(one_line(exc), 300)})") from None


_END = struct.Struct("<4s4H2LH")  # the zip's end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")


def check_directory(path: Path, name: str, max_members: int = MAX_MEMBERS, max_directory: int = MAX_DIRECTORY,
                    what: str = "a gpunet model") -> None:
    """Refuse a zip whose directory lists more than ``max_members`` members or takes more than ``max_directory``
    bytes, from its end record alone: zipfile reads the whole directory into objects when it opens the file.
    ``what``: the kind of file the limits are for, in the message (resumable checkpoints have their own)."""
    with path.open("rb") as file:
        size = file.seek(0, 2)
        tail_start = max(0, size - _END.size - 0xFFFF)  # the record, then a comment of up to 64 KiB
        file.seek(tail_start)
        tail = file.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _END.size > len(tail):
            return  # zipfile says what is wrong
        *_, members, directory, _offset, _comment = _END.unpack_from(tail, at)
        locator_at = tail_start + at - _END64_LOCATOR.size
        if locator_at >= 0:
            file.seek(locator_at)
            locator = file.read(_END64_LOCATOR.size)
            if locator[:4] == b"PK\x06\x07":
                file.seek(_END64_LOCATOR.unpack(locator)[2])
                record = file.read(_END64.size)
                if len(record) == _END64.size and record[:4] == b"PK\x06\x06":
                    members, directory = _END64.unpack(record)[7], _END64.unpack(record)[8]
    if members > max_members:
        raise ModelFileError(f"{name}: holds {members:,} members; {what} holds at most {max_members:,}")
    if directory > max_directory:
        raise ModelFileError(f"{name}: its zip directory is {directory:,} bytes; {what}'s is at most "
                             f"{max_directory:,}")


def _member_headers(archive: zipfile.ZipFile, name: str) -> dict[str, tuple[zipfile.ZipInfo, NpyHeader]]:
    """Every member with its .npy header; no array data is read."""
    members = {key: (info, npy_header(archive, info)) for key, info in npz_members(archive).items()}
    if any(header.dtype.hasobject for _, header in members.values()):
        raise ModelFileError(f"{name}: holds pickled Python objects; gpunet model files never do, refusing to load it")
    return members


def _metadata(archive: zipfile.ZipFile, member: tuple[zipfile.ZipInfo, NpyHeader] | None, name: str) -> dict:
    """The metadata member, size-bounded, read and checked field by field (``model_schema``)."""
    if member is None:
        if "run_state.npy" in archive.namelist():  # resume_file.STATE: a stopped run's checkpoint
            raise ModelFileError(f"{name}: a gpunet checkpoint, not a model: go on with its run with gpunet train "
                                 f"--resume {shlex.quote(name)}")
        raise ModelFileError(f"{name}: not a gpunet model (no metadata)")
    info, header = member
    if header.dtype.hasobject:
        raise ModelFileError(f"{name}: holds pickled Python objects; gpunet model files never do, refusing to load it")
    size = max(info.file_size, header.nbytes)  # read_npy also holds the zip's size to the header's
    if size > METADATA_LIMIT:
        raise ModelFileError(f"{name}: metadata is {size:,} bytes; gpunet reads at most {METADATA_LIMIT:,}")
    if header.dtype.kind != "U" or header.shape != ():
        raise ModelFileError(f"{name}: metadata is not valid JSON (it is a {header.dtype} array of shape {header.shape})")
    return metadata_from_json(str(read_npy(archive, info, header)[()]), name)


def stack_architecture(meta: dict, name: str):
    """(spec parts, input shape, outputs) of a version 2 model's metadata; None for a version 1 (dense) one.

    ``meta`` is checked metadata (``model_schema``: the fields' types, the spec's grammar and length);
    ModelFileError naming the architecture where it does not fit its input (a kernel larger than the maps).
    """
    if meta.get("format_version") != STACK_FORMAT_VERSION:
        return None
    from gpunet.nn.model import build_layers, parse_arch_text

    spec, input_shape, outputs = meta["architecture"], tuple(meta["input_shape"]), meta["outputs"]
    try:
        arch = parse_arch_text(spec)
        build_layers(arch, input_shape, outputs)
    except ValueError as error:
        raise ModelFileError(f"{name}: metadata's architecture '{printable(spec)}': "
                             f"{printable(one_line(error), 300)}") from None
    return arch, input_shape, outputs


def _param_shapes(meta: dict, name: str) -> dict[str, tuple[int, ...]]:
    """W1, b1, W2, b2, ... in order, with the shapes the metadata's architecture gives them."""
    stack = stack_architecture(meta, name)
    if stack is not None:
        return _stack_param_shapes(*stack)
    sizes = meta["layer_sizes"]
    shapes = {}
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        shapes[f"W{k}"] = (fan_out, fan_in)
        shapes[f"b{k}"] = (fan_out, 1)
    return shapes


def input_scale(meta: dict) -> float:
    """What the model multiplies its inputs by (1/255: pixels), from checked metadata (a positive number);
    files without one were written for pixels."""
    return float(meta.get("normalization", {}).get("scale", 1 / 255))


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
        shown = ", ".join(f"'{printable(key, 40)}'" for key in unexpected[:5])
        more = f", ... ({len(unexpected):,} in all)" if len(unexpected) > 5 else ""
        raise ModelFileError(f"{name}: unexpected arrays [{shown}{more}]")


def _read_param(archive: zipfile.ZipFile, key: str, info: zipfile.ZipInfo, header: NpyHeader, name: str) -> np.ndarray:
    array = read_npy(archive, info, header)
    if not np.isfinite(array).all():
        raise ModelFileError(f"{name}: {key} holds NaN or infinite values")
    return array
