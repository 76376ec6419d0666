"""Digit data: Kaggle CSV, MNIST IDX and .npz files read into checked uint8 arrays, with a parse cache.

Every reader returns a `Digits` whose pixels stay uint8 (one row of 784 per digit); scaling to
[0, 1] happens per batch elsewhere, so the data set is never copied as floats. Anything wrong
with a file is a `DataError` with a one-line message that names the file and the problem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gpunet.files.atomic_file import write_atomically
from gpunet.errors import DataError, printable

SIDE = 28
PIXELS = SIDE * SIDE
PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(PIXELS))
LABELED_COLUMNS = ("label", *PIXEL_COLUMNS)

# Bump when the cached arrays would differ for the same source file.
CACHE_VERSION = 1
SAMPLE_NAME = "bundled sample"

_GZIP_MAGIC = b"\x1f\x8b"
_READ_BLOCK = 1 << 18  # compressed bytes per read: ~2 MB of CSV text
# The most one inflating step may give: zeros compress 1000:1, so without it one read could give 256 MB.
# The CSV reader holds a few of these besides the text pandas parses.
_INFLATED_BLOCK = 1 << 20
# A Kaggle row is at most 785 x "255," = 3,140 bytes; 20 times that still allows spaces and zero padding.
_MAX_LINE = 1 << 16
# The most CSV text one pandas call is given (see _sized).
_PARSE_BLOCK = 1 << 21
_Block = tuple[int, bytes]  # (number of its first line, whole lines of text)
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
# "train-images-idx3-ubyte" as published by LeCun; some copies use "train-images.idx3-ubyte".
_IDX_IMAGES_NAME = re.compile(r"(?P<stem>.+)-images[-.]idx3-ubyte(\.gz)?")
_IDX_LABELS_NAME = re.compile(r".+-labels[-.]idx1-ubyte(\.gz)?")
_CELL = re.compile(rb"\s*([+-]?[0-9]+)\s*")


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare as one bool
class Digits:
    """A set of 28x28 digits: `images` uint8 (m, 784) row-major pixels, `labels` uint8 (m,) or None."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    # The pixels' column names where the file has them (a Kaggle CSV: pixel0, ..., pixel783), recorded in the
    # model as scikit-learn's estimators record a DataFrame's (feature_names_in_); None for IDX and .npz.
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != PIXELS:
            raise ValueError(f"images must be uint8 (m, {PIXELS}), got {images.dtype} {images.shape}")
        if not images.flags.c_contiguous:
            raise ValueError("images must be C-contiguous")
        if labels is not None and (labels.dtype != np.uint8 or labels.shape != (len(images),)):
            raise ValueError(f"labels must be uint8 ({len(images)},), got {labels.dtype} {labels.shape}")

    def __len__(self) -> int:
        return len(self.images)


def load_digits(path: str | os.PathLike, *, labeled: bool) -> Digits:
    """Reads digits from a Kaggle CSV (.csv, .csv.gz), an MNIST IDX images file or folder, or an .npz.

    labeled=True asks for training or evaluation data: a file without labels is a DataError.
    labeled=False asks for prediction data: labels, if the file has them, are dropped.

    Where one file holds two parts, labeled picks the training part and unlabeled the test part:
    a folder with both train-* and t10k-* IDX pairs, and Keras's mnist.npz (x_train/y_train or
    x_test). Pass the IDX images file itself to choose otherwise.
    """
    name = os.fspath(path)
    where = Path(name)
    feature_names = None
    if not where.exists():
        raise DataError(f"{name}: no such file or directory")
    if where.is_dir():
        where, labels_path = _find_idx_pair(where, name, labeled)
        name = os.path.join(name, where.name)  # from here on, name the file the folder gave
        images, labels = _read_idx_cached(where, labels_path, name)
    elif (kind := _format_of(where, name)) == "csv":
        images, labels = _cached([where], lambda: _read_csv(where, name))
        feature_names = PIXEL_COLUMNS  # the header is Kaggle's, checked column by column
    elif kind == "npz":
        images, labels = _read_npz(where, name, labeled)
    else:
        labels_path = _labels_beside(where)
        if labeled and labels_path is None:
            raise DataError(
                f"{name}: no labels file beside it (looked for {_labels_name(where)}[.gz]); "
                "labeled digits are needed here"
            )
        images, labels = _read_idx_cached(where, labels_path, name)
    if labeled and labels is None:
        raise DataError(f"{name}: holds no labels (a test file?); labeled digits are needed here")
    return Digits(images, labels if labeled else None, name, feature_names)


def load_sample() -> Digits:
    """The digits bundled with the package (labeled), for trying gpunet without downloading anything."""
    resource = resources.files("gpunet") / "sample" / "digits.npz"
    with resources.as_file(resource) as path:
        images, labels = _read_npz(path, SAMPLE_NAME, labeled=True)
    return Digits(images, labels, SAMPLE_NAME)


MIN_TO_TRAIN_ON = 2  # samples left to train on: one sample is one class, which leaves nothing to learn to tell apart


def split_validation(digits: Digits, val_size: int, seed: int) -> tuple[Digits, Digits]:
    """(training, validation): the first val_size digits of a seeded shuffle are the validation set."""
    check_val_size(val_size, len(digits), f"digits in {digits.source}")
    learned_from, held_out = validation_rows(len(digits), val_size, seed)
    return _subset(digits, learned_from, "training part"), _subset(digits, held_out, "validation part")


def check_val_size(val_size: int, count: int, samples: str = "samples") -> None:
    """SettingError naming val_size unless it leaves at least MIN_TO_TRAIN_ON of ``count`` samples to train on.

    The command line's and the estimator's one rule; ``samples`` says what they are ("digits in train.csv")."""
    from gpunet.training.loop import SettingError, check_setting, literal_problem

    check_setting("val_size", val_size)
    if count - val_size < MIN_TO_TRAIN_ON:
        raise SettingError("val_size", val_size, literal_problem(
            f"holds out {val_size:,} of the {count:,} {samples}, leaving {max(0, count - val_size):,} to train on; "
            f"at least {MIN_TO_TRAIN_ON} are needed"))


def validation_rows(count: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of ``count`` samples: the first val_size of a seeded shuffle are held out.

    The command line and the estimator split with it, so a model's metadata (seed, val_size) finds its
    validation digits again (``gpunet evaluate``, ``gpunet plot``).
    """
    order = np.random.default_rng(seed).permutation(count)
    return order[val_size:], order[:val_size]


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of a labeled data set's arrays: a model records it to know its training data again."""
    digest = hashlib.sha256(np.ascontiguousarray(images).data)
    digest.update(np.ascontiguousarray(labels).data)
    return digest.hexdigest()


def _subset(digits: Digits, rows: np.ndarray, part: str) -> Digits:
    labels = None if digits.labels is None else digits.labels[rows]
    return Digits(digits.images[rows], labels, f"{digits.source} ({part})", digits.feature_names)


# --- telling formats apart ---------------------------------------------------------------------


def _format_of(path: Path, name: str) -> str:
    lower = path.name.lower()
    bare = lower.removesuffix(".gz")
    if bare.endswith(".csv"):
        return "csv"
    if lower.endswith(".npz"):
        return "npz"
    if _IDX_IMAGES_NAME.fullmatch(path.name):
        return "idx"
    if _IDX_LABELS_NAME.fullmatch(path.name):
        raise DataError(f"{name}: is an IDX labels file; give the images file beside it (or the folder)")
    raise DataError(
        f"{name}: unknown format; expected .csv, .csv.gz, .npz, "
        "an MNIST IDX images file (train-images-idx3-ubyte[.gz]) or a folder holding one"
    )


def _labels_name(images_path: Path) -> str:
    stem = _IDX_IMAGES_NAME.fullmatch(images_path.name)["stem"]
    return f"{stem}-labels-idx1-ubyte"


def _labels_beside(images_path: Path) -> Path | None:
    stem = _IDX_IMAGES_NAME.fullmatch(images_path.name)["stem"]
    for separator in "-.":
        for suffix in ("", ".gz"):
            candidate = images_path.with_name(f"{stem}-labels{separator}idx1-ubyte{suffix}")
            if candidate.is_file():
                return candidate
    return None


def _find_idx_pair(folder: Path, name: str, labeled: bool) -> tuple[Path, Path | None]:
    """The IDX images file (and labels beside it) to read from a folder such as MNIST's download."""
    try:
        images = sorted(p for p in folder.iterdir() if _IDX_IMAGES_NAME.fullmatch(p.name) and p.is_file())
    except OSError as error:
        raise DataError(f"{name}: cannot list the folder ({error.strerror})") from None
    pairs = [(image, _labels_beside(image)) for image in images]
    if labeled:
        pairs = [(image, labels) for image, labels in pairs if labels is not None]
    if not pairs:
        raise DataError(
            f"{name}: no MNIST IDX {'pair' if labeled else 'images file'} in this folder "
            "(expected train-images-idx3-ubyte[.gz] with train-labels-idx1-ubyte[.gz])"
        )
    wanted = ("train",) if labeled else ("t10k", "test")
    for image, labels in pairs:
        if _IDX_IMAGES_NAME.fullmatch(image.name)["stem"].lower().endswith(wanted):
            return image, labels
    return pairs[0]


# --- raw bytes, gzip or not --------------------------------------------------------------------


def _byte_blocks(path: Path, name: str) -> Iterator[bytes]:
    """The file's bytes in blocks, gunzipped when it starts with the gzip magic (whatever its name)."""
    try:
        with path.open("rb") as file:
            first = file.read(_READ_BLOCK)
            if first.startswith(_GZIP_MAGIC):
                yield from _gunzip(first, file, name)
            else:
                while first:
                    yield first
                    first = file.read(_READ_BLOCK)
    except OSError as error:
        raise DataError(f"{name}: cannot read ({error.strerror or error})") from None


def _gunzip(first: bytes, file: BinaryIO, name: str) -> Iterator[bytes]:
    """Inflated blocks of at most _INFLATED_BLOCK bytes, however well the input compresses."""
    inflater = zlib.decompressobj(wbits=31)
    packed = first
    try:
        while packed or (packed := file.read(_READ_BLOCK)):
            if inflater.eof:
                # Another member follows (gzip allows several back to back), or zero padding.
                packed = packed.lstrip(b"\0")
                if not packed:
                    continue
                inflater = zlib.decompressobj(wbits=31)
            inflated = inflater.decompress(packed, _INFLATED_BLOCK)
            packed = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            if inflated:
                yield inflated
        # Output zlib held back when the last input inflated past the limit.
        while not inflater.eof and (inflated := inflater.decompress(b"", _INFLATED_BLOCK)):
            yield inflated
    except zlib.error as error:
        raise DataError(f"{name}: corrupt gzip data ({error})") from None
    if not inflater.eof:
        raise DataError(f"{name}: truncated gzip file (it ends before the compressed data does)")


def _take(blocks: Iterator[bytes], size: int, start: bytes = b"") -> bytes:
    """start and then blocks until there are `size` bytes or the blocks end: at most one block more than asked."""
    parts, held = [start], len(start)
    while held < size and (block := next(blocks, None)) is not None:
        parts.append(block)
        held += len(block)
    return b"".join(parts)


# --- Kaggle CSV ----------------------------------------------------------------------------------


def _read_csv(path: Path, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    line_blocks = _sized(_line_blocks(_byte_blocks(path, name), name), _PARSE_BLOCK)
    with closing(_read_ahead(line_blocks)) as blocks:
        _, first = next(blocks, (1, b""))
        if _is_blank(first):
            raise DataError(f"{name}: file is empty")
        cut = first.index(b"\n")
        columns = _check_header(first[:cut], name)
        labeled = columns[0] == "label"
        images, labels = [], []
        for line_no, block in itertools.chain([(2, first[cut + 1 :])], blocks):  # line 1 is the header
            table = _parse_block(block, line_no, columns, name)
            # Split each block while it is small, so the whole set is copied only once (by concatenate).
            images.append(np.ascontiguousarray(table[:, 1:] if labeled else table))
            labels.append(table[:, 0].copy() if labeled else None)
    if sum(map(len, images)) == 0:
        raise DataError(f"{name}: has a header but no digits")
    return np.concatenate(images), np.concatenate(labels) if labeled else None


def _read_ahead(blocks: Iterator[_Block]) -> Iterator[_Block]:
    """blocks, each taken by a second thread while the one before is used: the next block inflates
    while pandas parses this one (zlib lets go of the GIL as it inflates). Errors come in order."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpunet-csv") as reader:
        coming = reader.submit(next, blocks, None)
        while (block := coming.result()) is not None:
            coming = reader.submit(next, blocks, None)
            yield block


def _is_blank(text: bytes) -> bool:
    return not text or text.isspace()  # without the copy text.strip() makes


def _line_blocks(blocks: Iterator[bytes], name: str) -> Iterator[_Block]:
    """(number of its first line, block) re-cut so each block ends with a newline (added to a last unfinished line).

    No line of a block is longer than _MAX_LINE bytes. A line still unfinished after _MAX_LINE
    bytes is refused there: a file without line ends (a decompression bomb, a binary file) costs a
    block or two of memory, not its size. Any reader of text rows can sit on top of this.
    """
    line_no, tail = 1, b""
    for block in blocks:
        cut = block.rfind(b"\n")
        if cut < 0:
            tail += block
        else:
            whole = b"".join((tail, memoryview(block)[: cut + 1]))  # one copy, where + and a slice make two
            _check_line_lengths(whole, line_no, name)
            yield line_no, whole
            line_no += whole.count(b"\n")
            tail = block[cut + 1 :]
        if len(tail) > _MAX_LINE:
            raise _line_too_long(name, line_no)
    if tail:
        yield line_no, tail + b"\n"


def _sized(blocks: Iterator[_Block], size: int) -> Iterator[_Block]:
    """Blocks of whole lines re-cut to at most `size` bytes: small ones joined, large ones cut at a line end.

    A pandas call costs ~5 ms whatever its length (a table of 785 columns), and holds 9 (pandas 3)
    to 12.5 (pandas 2) bytes per byte of text it parses, in its tokens and int64 columns: its blocks
    are neither small nor large. A line longer than `size` (none is: size > _MAX_LINE) is a block alone.
    """
    line_no, pending = 1, b""
    for start, block in blocks:
        if not pending:
            line_no = start
        pending += block
        while len(pending) > size:
            cut = (pending.rfind(b"\n", 0, size) + 1) or (pending.index(b"\n") + 1)
            piece, pending = pending[:cut], pending[cut:]
            yield line_no, piece
            line_no += piece.count(b"\n")
    if pending:
        yield line_no, pending


def _check_line_lengths(block: bytes, line_no: int, name: str) -> None:
    """Refuses a block holding a line longer than _MAX_LINE bytes, naming the first such line.

    Such a line covers a whole stretch of _MAX_LINE // 2 bytes aligned to that size, so a block
    where every stretch holds a newline (one short find each) is let through without splitting it.
    """
    stretch = _MAX_LINE // 2
    if all(block.find(b"\n", start, start + stretch) >= 0 for start in range(0, len(block), stretch)):
        return
    for index, line in enumerate(_lines(block)):
        if len(line) > _MAX_LINE:
            raise _line_too_long(name, line_no + index)


def _lines(block: bytes) -> Iterator[bytes]:
    """The lines of a block that ends with a newline, one at a time (a list of them all would copy the block)."""
    start = 0
    while (end := block.find(b"\n", start)) >= 0:
        yield block[start:end]
        start = end + 1


def _line_too_long(name: str, line_no: int) -> DataError:
    return DataError(f"{name}: line {line_no} is longer than {_MAX_LINE:,} bytes; a row of digits is a few kilobytes")


def _check_header(line: bytes, name: str) -> tuple[str, ...]:
    """The expected column names, after checking the header is Kaggle's, labeled or not."""
    text = line.removeprefix(b"\xef\xbb\xbf").decode("latin-1")  # spreadsheets may start with a BOM
    names = [cell.strip().strip("\"'").strip().lower() for cell in text.rstrip("\r").split(",")]
    if all(_CELL.fullmatch(cell.encode("latin-1")) for cell in names):
        raise DataError(
            f"{name}: line 1 is not a header; expected 'label,pixel0,...,pixel783' or 'pixel0,...,pixel783'"
        )
    labeled = names[0] == "label" or len(names) == len(LABELED_COLUMNS)
    expected = LABELED_COLUMNS if labeled else PIXEL_COLUMNS
    if len(names) != len(expected):
        raise DataError(
            f"{name}: header has {len(names)} columns; expected {len(LABELED_COLUMNS)} "
            f"(label,pixel0,...,pixel783) or {len(PIXEL_COLUMNS)} (pixel0,...,pixel783)"
        )
    for index, (found, wanted) in enumerate(zip(names, expected)):
        if found != wanted:
            raise DataError(f"{name}: header column {index + 1} is {_show(found)}; expected '{wanted}'")
    return expected


def _parse_block(block: bytes, line_no: int, columns: tuple[str, ...], name: str) -> np.ndarray:
    """Rows of a block of whole lines: by pandas, and where pandas refuses, by the exact pass that names why."""
    if _is_blank(block):
        return np.empty((0, len(columns)), np.uint8)
    table = _parse_with_pandas(block, len(columns))
    if table is None or not _in_range(table, labeled=columns[0] == "label"):
        return _parse_exactly(block, line_no, columns, name)
    return table.astype(np.uint8)


# pandas' C parser, told to take nothing but plain numbers: quotes are characters, every cell is
# converted (no NA strings), only "\n" ends a line (a lone "\r" would start a row the line count misses).
_PANDAS_OPTIONS = {
    "header": None,
    "engine": "c",
    "lineterminator": "\n",
    "quoting": csv.QUOTE_NONE,
    "na_filter": False,
    "encoding": "latin-1",  # any byte decodes, so a stray one is a cell that is not a number
    "low_memory": False,  # one pass per block: no chunked type guessing
}
_NOT_SPACE = re.compile(rb"\S")


def _parse_with_pandas(block: bytes, width: int) -> np.ndarray | None:
    """The block's rows as int64, or None where pandas cannot read them all as whole numbers in `width` columns.

    pandas takes blank and whitespace-only lines (skipped), spaces around numbers, signs and zero
    padding, as the exact pass does; every other cell (fractions, "1e2", NaN, quotes, empty cells)
    turns its column to floats or strings, and a long row is a ParserError. The first row's width
    is checked here, so that a line of 20,000 cells is never a table of 20,000 columns.
    """
    import pandas as pd  # 0.2 s to import, and only CSV files need it

    if _first_row_width(block) != width or b"\0" in block:  # pandas 2 ends a number at a NUL: "7\0x" is 7
        return None
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")  # Windows line ends: blank lines stay blank
    try:
        table = pd.read_csv(io.BytesIO(block), **_PANDAS_OPTIONS).to_numpy()
    except (ValueError, OverflowError):  # pandas' ParserError is a ValueError
        return None
    if table.dtype != np.int64 or table.shape[1] != width:
        return None
    return table


def _first_row_width(block: bytes) -> int:
    """The number of cells in the block's first line that is not blank: pandas sizes its table by it."""
    text = _NOT_SPACE.search(block)
    if text is None:
        return 0
    start = block.rfind(b"\n", 0, text.start()) + 1
    return block.count(b",", start, block.find(b"\n", text.start())) + 1


def _in_range(table: np.ndarray, labeled: bool) -> bool:
    """Whether every pixel is 0-255 and every label 0-9 (negative numbers, seen unsigned, are huge)."""
    if table.view(np.uint64).max(initial=0) > 255:
        return False
    return not labeled or table[:, 0].max(initial=0) <= 9


def _parse_exactly(block: bytes, line_no: int, columns: tuple[str, ...], name: str) -> np.ndarray:
    """The block read cell by cell: slow, for blocks pandas refused; raises on the first bad cell or line."""
    rows = [_parse_row(line, line_no + index, columns, name) for index, line in enumerate(_lines(block))]
    return np.concatenate(rows)


def _parse_row(line: bytes, line_no: int, columns: tuple[str, ...], name: str) -> np.ndarray:
    """One line read cell by cell: accepts spaces and signs, and names what is wrong."""
    if not line.strip():
        return np.empty((0, len(columns)), np.uint8)  # blank lines are skipped
    cells = line.rstrip(b"\r").split(b",")
    if len(cells) != len(columns):
        raise DataError(f"{name}: line {line_no} has {len(cells)} columns; the header has {len(columns)}")
    row = np.empty((1, len(columns)), np.uint8)
    for index, (cell, column) in enumerate(zip(cells, columns)):
        where = f"{name}: line {line_no}, column {column}"
        top = 9 if column == "label" else 255
        if not cell.strip():
            raise DataError(f"{where}: empty cell")
        number = _CELL.fullmatch(cell)
        if number is None:
            raise DataError(f"{where}: {_show(cell)} is not a whole number 0-{top}")
        value = int(number[1])
        if not 0 <= value <= top:
            raise DataError(f"{where}: {_show(cell)} is outside 0-{top}")
        row[0, index] = value
    return row


def _show(text: bytes | str, limit: int = 24) -> str:
    """A cell quoted for a one-line message (control characters escaped, long cells cut)."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    text = text.strip()
    shown = repr(text[:limit])[1:-1]
    return f"'{shown}{'...' if len(text) > limit else ''}'"


# --- MNIST IDX -----------------------------------------------------------------------------------


def _read_idx_cached(
    images_path: Path, labels_path: Path | None, shown: str
) -> tuple[np.ndarray, np.ndarray | None]:
    labels_shown = None if labels_path is None else os.path.join(os.path.dirname(shown), labels_path.name)
    sources = [images_path] if labels_path is None else [images_path, labels_path]
    return _cached(sources, lambda: _read_idx(images_path, shown, labels_path, labels_shown))


def _read_idx(
    images_path: Path, images_name: str, labels_path: Path | None, labels_name: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    images = _read_idx_images(images_path, images_name)
    if labels_path is None:
        return images, None
    labels = _read_idx_labels(labels_path, labels_name)
    if len(labels) != len(images):
        raise DataError(f"{labels_name}: has {len(labels)} labels but {images_name} has {len(images)} images")
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f"{labels_name}: label {bad[0]} is {labels[bad[0]]}; labels must be 0-9")
    return images, labels


# Each IDX reader takes the header first and then no more of the file than the header promises (and
# a block to see that the file goes on), so a header that lies about a huge body costs nothing.


def _read_idx_images(path: Path, name: str) -> np.ndarray:
    with closing(_byte_blocks(path, name)) as blocks:
        data = _take(blocks, 16)
        count, rows, cols = _idx_header(data, _IDX_IMAGES_MAGIC, 3, name)
        if (rows, cols) != (SIDE, SIDE):
            raise DataError(f"{name}: images are {rows}x{cols}; gpunet reads {SIDE}x{SIDE} digits")
        data = _take(blocks, 16 + count * PIXELS + 1, data)
    _check_idx_size(data, 16, count * PIXELS, f"{count} images", name)
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, PIXELS).copy()


def _read_idx_labels(path: Path, name: str) -> np.ndarray:
    with closing(_byte_blocks(path, name)) as blocks:
        data = _take(blocks, 8)
        (count,) = _idx_header(data, _IDX_LABELS_MAGIC, 1, name)
        data = _take(blocks, 8 + count + 1, data)
    _check_idx_size(data, 8, count, f"{count} labels", name)
    return np.frombuffer(data, np.uint8, offset=8).copy()


def _idx_header(data: bytes, magic: int, dims: int, name: str) -> tuple[int, ...]:
    if not data:
        raise DataError(f"{name}: file is empty")
    size = 4 + 4 * dims
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = {_IDX_IMAGES_MAGIC: "images", _IDX_LABELS_MAGIC: "labels"}[magic]
        raise DataError(f"{name}: not an MNIST IDX {kind} file (magic number {found}, expected {magic})")
    if len(data) < size:
        raise DataError(f"{name}: truncated IDX header ({len(data)} of {size} bytes)")
    counts = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if counts[0] == 0:
        raise DataError(f"{name}: holds no digits")
    return counts


def _check_idx_size(data: bytes, header: int, body: int, what: str, name: str) -> None:
    """data: the file, or its first bytes past what the header promises (the rest is never read)."""
    promised = f"its header promises {what} ({header + body} bytes)"
    if len(data) < header + body:
        raise DataError(f"{name}: truncated: {len(data)} bytes, but {promised}")
    if len(data) > header + body:
        raise DataError(f"{name}: has extra bytes at the end: {promised}, and the file goes on")


# --- .npz ----------------------------------------------------------------------------------------


def _read_npz(path: Path, name: str, labeled: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Our layout (images, optional labels) or Keras's mnist.npz (x_train, y_train, x_test, y_test).

    Both arrays' headers are checked before either is read, and each is read no further than its
    header says: a member that inflates to gigabytes, or claims to, is refused for the cost of its header.
    """
    try:
        _refuse_bare_npy(path, name)
        with zipfile.ZipFile(path) as archive:
            members = npz_members(archive)
            images_key, labels_key = _npz_keys(set(members), labeled, name)
            images_header = npy_header(archive, members[images_key])
            count = _npz_images_header(images_header, images_key, name)
            labels_header = npy_header(archive, members[labels_key]) if labels_key in members else None
            if labels_header is not None:
                _npz_labels_header(labels_header, labels_key, count, name)
            images = read_npy(archive, members[images_key], images_header)
            labels = None if labels_header is None else read_npy(archive, members[labels_key], labels_header)
    except (ValueError, *ZIP_ERRORS) as error:
        raise DataError(f"{name}: cannot read as .npz ({printable(one_line(error), 300)})") from None
    images = np.ascontiguousarray(_as_uint8(images.reshape(count, PIXELS), 255, images_key, name))
    if labels is not None:
        labels = _as_uint8(labels, 9, labels_key, name)
    return images, labels


def _refuse_bare_npy(path: Path, name: str) -> None:
    with path.open("rb") as file:
        if file.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
            raise DataError(f"{name}: is a single .npy array, not an .npz archive of images and labels")


def _npz_keys(keys: set[str], labeled: bool, name: str) -> tuple[str, str]:
    """(images key, labels key); Keras's file gives its training pair when labels are asked for."""
    if "images" in keys:
        return "images", "labels"
    if {"x_train", "y_train"} <= keys:
        chosen = ("x_train", "y_train") if labeled else ("x_test", "y_test")
        if chosen[0] not in keys:
            raise DataError(f"{name}: no '{chosen[0]}' array")
        return chosen
    shown = [printable(key, 40) for key in sorted(keys)[:10]] + (["..."] if len(keys) > 10 else [])
    found = ", ".join(shown) or "nothing"
    raise DataError(f"{name}: no 'images' array (nor Keras's x_train/y_train); it holds {found}")


def _npz_images_header(header: NpyHeader, key: str, name: str) -> int:
    """The number of digits the images array declares, after checking its dtype and shape."""
    _check_numeric(header, 255, key, name)
    shape = header.shape
    if shape[1:] not in ((PIXELS,), (SIDE, SIDE)):
        expected = f"(n, {PIXELS}) or (n, {SIDE}, {SIDE})"
        raise DataError(f"{name}: '{key}' has shape {shape}; expected {expected}")
    if shape[0] == 0:
        raise DataError(f"{name}: '{key}' holds no digits")
    return shape[0]


def _npz_labels_header(header: NpyHeader, key: str, count: int, name: str) -> None:
    _check_numeric(header, 9, key, name)
    if header.shape != (count,):
        raise DataError(f"{name}: '{key}' has shape {header.shape}; expected ({count},), one label per image")


def _check_numeric(header: NpyHeader, top: int, key: str, name: str) -> None:
    if header.dtype.hasobject:
        raise DataError(f"{name}: '{key}' holds Python objects; only numeric arrays are read")
    if header.dtype.kind not in "iuf":
        raise DataError(f"{name}: '{key}' has dtype {header.dtype}; expected whole numbers 0-{top}")


def _as_uint8(array: np.ndarray, top: int, key: str, name: str) -> np.ndarray:
    """Whole numbers 0-top of any integer or float dtype, as uint8."""
    if array.dtype == np.uint8 and (top == 255 or array.max() <= top):
        return array
    bad = (array < 0) | (array > top)
    if array.dtype.kind == "f":
        bad |= array != np.round(array)  # fractions, and NaN
    if bad.any():
        value = array[bad].flat[0].item()
        raise DataError(f"{name}: '{key}' holds {value!r}; expected whole numbers 0-{top}")
    return array.astype(np.uint8)


# --- .npy arrays in a zip archive, read no further than their headers say -----------------------
# Shared with model files (gpunet.files.checkpoint). Problems are ValueErrors for the caller to name its file.

# What zipfile raises on a damaged archive: a bad CRC or directory, corrupt deflate data, an
# unsupported zip version or feature, a file that ends early.
ZIP_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)
_NPY_MAGIC = b"\x93NUMPY"
_NPY_CHUNK = 1 << 18  # bytes per read of an array: larger reads only add transient copies
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


@dataclass(frozen=True)
class NpyHeader:
    """What an .npy member declares about its array, read without touching the array's data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    size: int  # bytes of the header itself; the data follows

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def npz_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by array name ('.npy' dropped, as np.load names them).

    Only stored and deflated members are taken: zipfile inflates bzip2 and lzma without a size limit.
    """
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        key = info.filename.removesuffix(".npy")
        if key in members:
            raise ValueError(f"two members are named '{printable(info.filename)}'")
        if info.flag_bits & 0x1:
            raise ValueError(f"'{printable(info.filename)}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"'{printable(info.filename)}' is compressed with method {info.compress_type}; "
                             "only stored or deflated members are read")
        members[key] = info
    return members


def npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> NpyHeader:
    """The member's .npy header (numpy bounds its length), read without any of the array's data."""
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f"format version {version[0]}.{version[1]} is not read")
            shape, fortran_order, dtype = _NPY_HEADER_READERS[version](member)
        except Exception as error:  # numpy's header parser raises several kinds on bad bytes, as does zipfile
            raise ValueError(f"'{printable(info.filename)}' is not a readable .npy array ({one_line(error)})") from None
        return NpyHeader(shape, dtype, fortran_order, member.tell())


def read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: NpyHeader) -> np.ndarray:
    """The member's array: exactly the bytes its header declares, which the zip's own size must match.

    Neither number is trusted to allocate: the data grows as it is read, so a member that claims
    more than it holds costs what it holds.
    """
    if header.dtype.hasobject:
        raise ValueError(f"'{printable(info.filename)}' holds Python objects (pickled); they are never loaded")
    if info.file_size != header.size + header.nbytes:
        raise ValueError(f"'{printable(info.filename)}' is {info.file_size:,} bytes, but its header declares "
                         f"{header.size + header.nbytes:,} ({header.dtype} {header.shape})")
    with archive.open(info) as member:
        member.read(header.size)
        data = _read_at_most(member, header.nbytes)
    if len(data) != header.nbytes:
        raise ValueError(f"'{printable(info.filename)}' ends after {len(data):,} of its {header.nbytes:,} bytes "
                         "of data")
    order = "F" if header.fortran_order else "C"
    return np.frombuffer(data, header.dtype).reshape(header.shape, order=order)


def _read_at_most(file: BinaryIO, size: int) -> bytearray:
    data = bytearray()  # grows in place, and np.frombuffer takes it as it is: the data is held once
    while len(data) < size and (chunk := file.read(min(size - len(data), _NPY_CHUNK))):
        data += chunk
    return data


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# --- parse cache ---------------------------------------------------------------------------------


def _cache_dir() -> Path:
    if configured := os.environ.get("GPUNET_CACHE_DIR"):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpunet"


def _cache_key(sources: list[Path]) -> tuple[str, str]:
    """(a prefix naming these source files, the full entry name that also pins their size and mtime)."""
    where = "\0".join(str(p.resolve()) for p in sources)
    stamps = [p.stat() for p in sources]
    what = f"{CACHE_VERSION}\0" + "\0".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stamps)
    prefix = hashlib.sha256(where.encode()).hexdigest()[:20]
    return prefix, f"{prefix}-{hashlib.sha256(what.encode()).hexdigest()[:20]}"


def _cached(
    sources: list[Path], parse: Callable[[], tuple[np.ndarray, np.ndarray | None]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """parse(), or the arrays it gave last time for the same unchanged source files."""
    folder = _cache_dir()
    try:
        prefix, key = _cache_key(sources)
    except OSError:
        return parse()
    hit = _read_cache(folder, key)
    if hit is not None:
        return hit
    images, labels = parse()
    _write_cache(folder, prefix, key, images, labels)
    return images, labels


def _read_cache(folder: Path, key: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    images_file = folder / f"{key}.images.npy"
    labels_file = folder / f"{key}.labels.npy"
    try:
        images = np.load(images_file, allow_pickle=False)
        labels = np.load(labels_file, allow_pickle=False) if labels_file.exists() else None
        Digits(images, labels, "cache")  # checks dtypes and shapes
    except Exception:  # a missing or damaged entry fails in many ways inside np.load; it is rewritten
        return None
    if len(images) == 0 or (labels is not None and labels.max() > 9):
        return None
    return images, labels


def _write_cache(folder: Path, prefix: str, key: str, images: np.ndarray, labels: np.ndarray | None) -> None:
    """Writes the entry atomically and drops older entries for the same source; any failure is ignored."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Labels first: an entry counts once its images file exists.
        if labels is not None:
            write_atomically(folder / f"{key}.labels.npy", lambda f: np.save(f, labels, allow_pickle=False))
        write_atomically(folder / f"{key}.images.npy", lambda f: np.save(f, images, allow_pickle=False))
        for old in folder.glob(f"{prefix}-*.npy"):
            if not old.name.startswith(f"{key}."):
                old.unlink(missing_ok=True)
    except OSError:
        pass
