"""Resumable checkpoints: a training run's state (``training/run_state.py``) as an .npz of plain arrays plus one
JSON string. Never pickled; read within bounds, as model files are (``checkpoint.py``).

Members:

    run_state              0-d unicode: JSON {format "gpunet-checkpoint", version, gpunet_version, config (the
                           run's settings), epochs_done, shapes (of W1, b1, W2, b2, ...), rng (the shuffle
                           generator's state), optimizer (its whole numbers: Adam's t), history, best_epoch,
                           best_score, since_best, best_is_last, data (counts and SHA-256), extra}
    params                 every parameter, flat: all weights, then all biases (``model.weights_then_biases``)
    best_params            the same for the best epoch's weights; absent where they are ``params`` (best_is_last)
    optimizer.NAME.K       the optimizer's K-th array of list NAME (velocity; mean, square)

A model file is a different thing: a checkpoint is not a model (``gpunet predict`` does not read one), and a
model holds no optimizer state.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from gpunet import __version__
from gpunet.errors import GpunetError, ModelFileError, printable
from gpunet.files.atomic_file import write_atomically
from gpunet.files.checkpoint import check_directory
from gpunet.files.data import ZIP_ERRORS, npy_header, npz_members, one_line, read_npy
from gpunet.files.model_schema import (COUNT, EPOCH, MAX_TEXT, Invalid, ListOf, Number, OrNull, Record, Text, Whole,
                                       marked_json)
from gpunet.nn.model import MAX_LAYERS, weights_then_biases

FORMAT = "gpunet-checkpoint"
VERSION = 1
STATE = "run_state"
STATE_LIMIT = 16 << 20  # bytes of the JSON (UTF-32): the history, ~800 bytes an epoch, is most of it
MAX_MEMBERS = 16  # run_state, params, best_params and the optimizer's lists (2 arrays each: weights, biases)
MAX_DIRECTORY = MAX_MEMBERS << 10
OPTIMIZER_MEMBER = re.compile(r"optimizer\.(?P<name>[a-z_]{1,32})\.(?P<index>0|[1-9][0-9]?)")  # one name each
MAX_SEED_STATE = 2**128 - 1  # PCG64's state and increment are 128-bit numbers
# Settings that checkpoints written before them do not record, each with the value those runs had: a checkpoint
# from before --warmup warmed its cosine schedule up for one epoch. Any other setting missing is refused.
ADDED_SETTINGS = {"warmup": 1.0}


class CheckpointError(GpunetError):
    """A checkpoint file that cannot be resumed from: one line naming it and what is wrong."""


PCG64_STATE = Record({
    "bit_generator": Text(16, r"PCG64", "the text 'PCG64'"),
    "state": Record({"state": Whole(0, MAX_SEED_STATE), "inc": Whole(0, MAX_SEED_STATE)}, required=("state", "inc")),
    "has_uint32": Whole(0, 1),
    "uinteger": Whole(0, 2**32 - 1),
}, required=("bit_generator", "state", "has_uint32", "uinteger"))
# --data and --out as recorded: no NUL (which no file system takes) nor another control character
PATH = Text(MAX_TEXT, r"[^\x00-\x1f\x7f]*", "a path without control characters")
FULL_EPOCH = Record(EPOCH.fields, required=tuple(EPOCH.fields))  # every field: the history is read back whole
SCHEMA = Record({
    "format": Text(len(FORMAT)),
    "version": Whole(VERSION, VERSION),
    "gpunet_version": Text(64),
    "config": Record(),  # checked by TrainConfig itself, which refuses what it cannot train with
    "epochs_done": Whole(1, 2**63 - 1),
    "shapes": ListOf(ListOf(Whole(1, 2**31 - 1), shortest=1, longest=4), shortest=2, longest=2 * (MAX_LAYERS + 1)),
    "rng": PCG64_STATE,
    "optimizer": Record(others=COUNT),
    "history": ListOf(FULL_EPOCH),
    "best_epoch": OrNull(Whole(1, 2**63 - 1)),
    "best_score": OrNull(Number()),
    "since_best": COUNT,
    "best_is_last": Whole(0, 1),
    "data": Record({"train_count": Whole(1, 2**63 - 1), "val_count": COUNT,
                    "sha256": Text(64, r"[0-9a-f]{64}", "64 hexadecimal digits (a SHA-256)")},
                   required=("train_count", "val_count", "sha256")),
    "extra": Record(others=OrNull(PATH)),
}, required=("format", "version", "config", "epochs_done", "shapes", "rng", "optimizer", "history", "best_epoch",
             "best_score", "since_best", "best_is_last", "data", "extra"))


def flat(params: list) -> np.ndarray:
    """[W1, b1, W2, b2, ...] as one array: all weights, then all biases (the networks' own layout)."""
    return np.concatenate([np.ravel(p) for p in params[0::2]] + [np.ravel(p) for p in params[1::2]])


def save_run_state(path, state) -> None:
    """Write ``state`` (a ``run_state.RunState``) atomically at ``path``."""
    best_is_last = state.best_epoch == state.epochs_done
    header = {
        "format": FORMAT, "version": VERSION, "gpunet_version": __version__,
        "config": _settings(state.config),
        "epochs_done": state.epochs_done,
        "shapes": [list(p.shape) for p in state.params],
        "rng": state.rng,
        "optimizer": {name: value for name, value in state.optimizer.items() if isinstance(value, int)},
        "history": [vars(m) for m in state.history],
        "best_epoch": state.best_epoch, "best_score": state.best_score, "since_best": state.since_best,
        "best_is_last": int(best_is_last),
        "data": _digits(state.data),
        "extra": state.extra,
    }
    arrays = {STATE: np.array(json.dumps(header)), "params": flat(state.params)}
    if not best_is_last:
        arrays["best_params"] = flat(state.best_params)
    for name, value in state.optimizer.items():
        if not isinstance(value, int):
            arrays.update({f"optimizer.{name}.{k}": np.asarray(a) for k, a in enumerate(value)})
    write_atomically(Path(path), lambda f: np.savez(f, **arrays))


def load_run_state(path):
    """The ``run_state.RunState`` in the checkpoint at ``path``; CheckpointError with one line naming the file and
    what is wrong (missing, not a checkpoint, damaged, truncated, a field out of its bounds). The arrays are
    checked against the JSON's shapes and the run's dtype from their headers before any is read."""
    from gpunet.training.loop import EpochMetrics
    from gpunet.training.run_state import DataIdentity, RunState

    name = str(path)
    try:
        with _archive(path, name) as archive:
            members = npz_members(archive)
            header = _header(archive, members.pop(STATE, None), name)
            config = _config(header["config"], name)
            arrays = _arrays(archive, members, header, np.dtype(config.dtype), name)
    except (ValueError, *ZIP_ERRORS) as error:
        raise CheckpointError(f"{name}: not a readable gpunet checkpoint ({printable(one_line(error), 300)})") \
            from None
    shapes = [tuple(shape) for shape in header["shapes"]]
    params = weights_then_biases(arrays.pop("params"), shapes)
    best = weights_then_biases(arrays.pop("best_params"), shapes) if "best_params" in arrays else params
    lists = _optimizer_lists(arrays, name)
    _check_agreement(header, config, name)
    data = header["data"]
    rng = {key: header["rng"][key] for key in PCG64_STATE.required}  # the known fields only, as for an epoch's
    history = [EpochMetrics(**{key: m[key] for key in FULL_EPOCH.required}) for m in header["history"]]
    return RunState(config, header["epochs_done"], params, {**lists, **header["optimizer"]}, rng, history,
                    header["best_epoch"], header["best_score"], best, header["since_best"],
                    DataIdentity(data["train_count"], data["val_count"], data["sha256"]), dict(header["extra"]))


def is_checkpoint(path) -> bool:
    """Whether ``path`` holds a gpunet checkpoint (its JSON read and checked; no array read): what ``outputs``
    asks before replacing a file with a checkpoint."""
    return _header_or_none(path) is not None


def is_of_run(path, state) -> bool:
    """Whether ``path`` holds a checkpoint of the run ``state`` is of (its settings and digits): the only one a
    stopped run replaces, for another run's may still be gone on with."""
    header = _header_or_none(path)
    return header is not None and {**ADDED_SETTINGS, **header["config"]} == _settings(state.config) and \
        header["data"] == _digits(state.data)


def _header_or_none(path) -> dict | None:
    name = str(path)
    try:
        with _archive(path, name) as archive:
            return _header(archive, npz_members(archive).get(STATE), name)
    except (CheckpointError, ModelFileError, ValueError, *ZIP_ERRORS):
        return None


def _settings(config) -> dict:
    """A TrainConfig as the JSON holds it."""
    return {**config.as_dict(), "hidden": list(config.hidden)}


def _digits(data) -> dict:
    """A run_state.DataIdentity as the JSON holds it."""
    return {"train_count": data.train_count, "val_count": data.val_count, "sha256": data.sha256}


@contextlib.contextmanager
def _archive(path, name: str):
    """The file open as a zip whose directory is within a checkpoint's bounds (checked before zipfile reads it)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{name}: is a folder, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{name}: no such checkpoint file")
    if not path.is_file():  # a FIFO, a device: never opened as a zip
        raise CheckpointError(f"{name}: is not a regular file (a checkpoint is one)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{name}: not a gpunet checkpoint (not a zip archive)")
    try:
        check_directory(path, name, MAX_MEMBERS, MAX_DIRECTORY, "a gpunet checkpoint")
    except ModelFileError as error:
        raise CheckpointError(str(error)) from None
    with zipfile.ZipFile(path) as archive:
        yield archive


def _header(archive, info, name: str) -> dict:
    """The run_state JSON, size- and depth-bounded, every field checked."""
    if info is None:
        raise CheckpointError(f"{name}: not a gpunet checkpoint (no {STATE}; a model file is not a checkpoint)")
    npy = npy_header(archive, info)
    if npy.dtype.kind != "U" or npy.shape != ():
        raise CheckpointError(f"{name}: {STATE} is a {npy.dtype} array of shape {npy.shape}, not JSON text")
    if max(info.file_size, npy.nbytes) > STATE_LIMIT:
        raise CheckpointError(f"{name}: {STATE} is over {STATE_LIMIT:,} bytes")
    header = marked_json(str(read_npy(archive, info, npy)[()]), name, STATE, "gpunet checkpoint", FORMAT,
                         CheckpointError)
    if header.get("version") != VERSION:
        raise CheckpointError(f"{name}: checkpoint version {printable(repr(header.get('version')), 40)} is not "
                              f"read by this gpunet (it reads version {VERSION})")
    try:
        SCHEMA.check(header, "")
    except Invalid as invalid:
        raise CheckpointError(invalid.message(name).replace("metadata field", "field")) from None
    return header


def _config(settings: dict, name: str):
    """The run's TrainConfig, or one line naming the setting it refuses."""
    from gpunet.training.loop import SettingError, TrainConfig

    unknown = sorted(set(settings) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise CheckpointError(f"{name}: records a setting this gpunet does not know ({printable(unknown[0], 40)})")
    settings = {**ADDED_SETTINGS, **settings}
    missing = [setting for setting in TrainConfig.__dataclass_fields__ if setting not in settings]
    if missing:  # today's default would make it another run
        raise CheckpointError(f"{name}: records no setting {missing[0]}")
    try:
        return TrainConfig(**settings)
    except SettingError as error:
        raise CheckpointError(f"{name}: recorded setting {error}") from None


def _arrays(archive, members: dict, header: dict, dtype: np.dtype, name: str) -> dict:
    """params, best_params (unless best_is_last) and the optimizer's arrays: names, shapes and dtypes checked
    from the headers, then read, each no further than its header says; all finite."""
    size = sum(math.prod(shape) for shape in header["shapes"])
    expected = {"params": (size,)}
    if not header["best_is_last"]:
        expected["best_params"] = (size,)
    for key in members:
        if key not in expected and not OPTIMIZER_MEMBER.fullmatch(key):
            raise CheckpointError(f"{name}: unexpected array '{printable(key, 40)}'")
    for key, shape in expected.items():
        if key not in members:
            raise CheckpointError(f"{name}: missing {key}")
    for key, info in members.items():  # stored, as np.savez writes them: a deflated one may inflate 1000-fold
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{name}: {key} is compressed; gpunet writes a checkpoint's arrays uncompressed, "
                                  "so that reading one costs no more memory than its size")
    headers = {key: npy_header(archive, info) for key, info in members.items()}
    for key, npy in headers.items():
        if npy.dtype != dtype or npy.fortran_order or (key in expected and npy.shape != expected[key]) \
                or len(npy.shape) != 1 or npy.nbytes > size * dtype.itemsize:
            want = f"{expected[key]}" if key in expected else "a 1-d array no larger than the parameters"
            raise CheckpointError(f"{name}: {key} is {npy.dtype} {npy.shape}; expected {dtype} {want}")
    arrays = {key: read_npy(archive, members[key], npy) for key, npy in headers.items()}
    for key, array in arrays.items():
        if not np.isfinite(array).all():
            raise CheckpointError(f"{name}: {key} holds NaN or infinite values")
    return arrays


def _optimizer_lists(arrays: dict, name: str) -> dict:
    """{NAME: [optimizer.NAME.0, optimizer.NAME.1, ...]}: each list numbered 0 to n - 1, with no gap."""
    numbered = {}
    for key, array in arrays.items():
        match = OPTIMIZER_MEMBER.fullmatch(key)
        numbered.setdefault(match["name"], {})[int(match["index"])] = array
    for list_name, by_index in numbered.items():
        if sorted(by_index) != list(range(len(by_index))):
            raise CheckpointError(f"{name}: its optimizer arrays {list_name} are numbered {sorted(by_index)}, not 0 "
                                  f"to {len(by_index) - 1}")
    return {list_name: [by_index[k] for k in range(len(by_index))] for list_name, by_index in numbered.items()}


def _check_agreement(header: dict, config, name: str) -> None:
    """Fields that must agree: one epoch of history each done, in order; the best epoch one of them; an epoch
    of the run left to do."""
    done = header["epochs_done"]
    if [m["epoch"] for m in header["history"]] != list(range(1, done + 1)):
        raise CheckpointError(f"{name}: its history does not hold epochs 1 to {done}, one each")
    if done >= config.epochs:  # a stop is saved from the start of an epoch: one is always left to do
        raise CheckpointError(f"{name}: records all {done} epochs of its run done ({config.epochs} planned); "
                              "there is nothing to go on with")
    best = header["best_epoch"]
    if best is not None and best > done:
        raise CheckpointError(f"{name}: its best epoch {best} is past the {done} done")
    if header["best_is_last"] and best != done:
        raise CheckpointError(f"{name}: holds no best_params, yet its best epoch {best} is not the last done")
