"""Hostile files, small on disk and huge inflated: each is refused with one line, in bounded memory.

Every hostile file here inflates to HUGE bytes (or, for the plain CSV, holds a 64 MiB line). The
command runs in a subprocess that reports its own peak resident memory, and that peak must stay
within ALLOWANCE of the same command's peak when its file is missing (which imports the same code
and reads nothing), and a CSV whose hostile part follows valid rows within PARSE_ALLOWANCE more. A
reader that holds what it inflates is over that by hundreds of MiB.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from gpunet.files import data
from gpunet.files.checkpoint import load_model
from gpunet.errors import DataError, ModelFileError

HUGE = 400 << 20
# Bounded readers hold a few inflated blocks (1 MiB each) and a 64 KiB line at most: measured, 0-15 MiB
# over the baseline (18 MiB for predict, which reads a one-row CSV and a model). Readers that hold what
# they inflate were 390 MiB to 7 GiB over it.
ALLOWANCE = 32 << 20
# Valid rows before the hostile part are parsed, and pandas holds up to 12.5 bytes per byte of the
# text it parses (its tokens and int64 columns; pandas 2.0, 9 with pandas 3): ~25 MiB for one block.
# Measured, with ALLOWANCE's blocks: 28 MiB over the baseline (pandas 3.1), 36 MiB (pandas 2.0).
PARSE_ALLOWANCE = 13 * data._PARSE_BLOCK
HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
ZERO_MIB = bytes(1 << 20)

# Runs `gpunet ARGS...` and writes its peak resident memory (bytes) as the last line of stderr.
# pandas (the CSV reader's, imported on first use: ~35 MiB) is imported first, in the baseline too,
# so that what is measured is what reading costs, wherever the reader first needs pandas.
PEAK_REPORTER = """
import resource, runpy, sys
import pandas
sys.argv = ["gpunet", *sys.argv[1:]]
try:
    runpy.run_module("gpunet", run_name="__main__")
    code = 0
except SystemExit as exit:
    code = exit.code
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
print(f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit}", file=sys.stderr)
sys.exit(code)
"""


# --- building hostile files without ever holding them -------------------------------------------


def deflate_repeated(head: bytes, unit: bytes, size: int) -> bytes:
    """Raw deflate of head + `size` bytes of unit repeated, from one compressed copy of unit.

    A full flush resets the compressor, so every copy of unit after one compresses to the same bytes.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    copy = packer.compress(unit) + packer.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(size, len(unit))
    return start + copy * count + packer.compress(unit[:rest]) + packer.flush()


def crc_repeated(head: bytes, unit: bytes, size: int) -> int:
    count, rest = divmod(size, len(unit))
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(unit, crc)
    return zlib.crc32(unit[:rest], crc)


def gzip_repeated(head: bytes, unit: bytes, size: int) -> bytes:
    """A .gz file (RFC 1952) of head + `size` bytes of unit repeated."""
    header = b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\xff"
    total = len(head) + size
    trailer = struct.pack("<II", crc_repeated(head, unit, size), total & 0xFFFFFFFF)
    return header + deflate_repeated(head, unit, size) + trailer


def member(head: bytes, zeros: int = 0, method: int = zipfile.ZIP_DEFLATED, flags: int = 0) -> dict:
    """A zip member holding head and then `zeros` zero bytes, deflated (or bzip2-compressed)."""
    if method == zipfile.ZIP_BZIP2:
        packed = bz2.compress(head + bytes(zeros))
    else:
        packed = deflate_repeated(head, ZERO_MIB, zeros)
    return {"packed": packed, "crc": crc_repeated(head, ZERO_MIB, zeros), "size": len(head) + zeros,
            "method": method, "flags": flags}


def broken_after(head: bytes, size: int) -> dict:
    """A deflated member claiming head + `size` zero bytes whose stream breaks (a reserved block type) after head."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH) + b"\xff" * 32
    return {**member(head, zeros=size), "packed": packed}


def zip_archive(members: dict[str, dict]) -> bytes:
    """A zip file (no zip64: every size under 4 GiB) from already-compressed members."""
    local, central = io.BytesIO(), io.BytesIO()
    for name, entry in members.items():
        offset = local.tell()
        sizes = (entry["crc"], len(entry["packed"]), entry["size"], len(name.encode()))
        # version needed, flags, method, time, date (1980-01-01), crc, sizes, name length
        common = (entry.get("version", 20), entry["flags"], entry["method"], 0, 0x21, *sizes)
        local.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", *common, 0) + name.encode() + entry["packed"])
        central.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *common, 0, 0, 0, 0, 0, offset) + name.encode())
    directory = central.getvalue()
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), local.tell(), 0)
    return local.getvalue() + directory + end


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def npy_head(dtype: str, shape: tuple[int, ...]) -> bytes:
    """An .npy header alone, declaring an array that need not exist."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": dtype, "fortran_order": False, "shape": shape})
    return out.getvalue()


def model_members(layer_sizes=(784, 4, 10)) -> dict[str, dict]:
    """The members of a small valid model file."""
    rng = np.random.default_rng(0)
    members = {}
    for k, (fan_in, fan_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:]), start=1):
        members[f"W{k}.npy"] = member(npy(rng.standard_normal((fan_out, fan_in)).astype(np.float32)))
        members[f"b{k}.npy"] = member(npy(np.zeros((fan_out, 1), np.float32)))
    meta = {"format": "gpunet-model", "format_version": 1, "layer_sizes": list(layer_sizes)}
    members["metadata.npy"] = member(npy(np.array(json.dumps(meta))))
    return members


# --- running a command and measuring its peak ----------------------------------------------------


def run_gpunet(tmp_path: Path, *args: str) -> tuple[int, str, int]:
    """(exit code, stderr without the peak line, peak resident bytes) of `gpunet ARGS` in a fresh process."""
    env = {**os.environ, "GPUNET_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", PEAK_REPORTER, *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    *lines, last = done.stderr.rstrip("\n").split("\n")
    assert last.startswith("peak "), done.stderr
    return done.returncode, "\n".join(lines), int(last.split()[1])


@pytest.fixture(scope="module")
def baseline_peak(tmp_path_factory: pytest.TempPathFactory):
    """The peak of each command run on a missing file: everything imported, nothing read."""
    peaks: dict[str, int] = {}

    def peak_of(command: str) -> int:
        if command not in peaks:
            folder = tmp_path_factory.mktemp("baseline")
            args = {"train": ["train", "--device", "cpu", "--data", "missing.csv", "--out", "m.npz"],
                    "predict": ["predict", "--device", "cpu", "--model", "missing.npz", "--data", "x.csv"]}[command]
            code, err, peaks[command] = run_gpunet(folder, *args)
            assert code == 1 and "missing" in err, err
        return peaks[command]

    return peak_of


def assert_refused_in_bounded_memory(tmp_path: Path, baseline_peak, path: Path, expected: str, *args: str,
                                     allowance: int = ALLOWANCE) -> None:
    code, err, peak = run_gpunet(tmp_path, *args)
    assert code == 1, err
    assert re.fullmatch(r"Error: [^\n]+", err), err  # one line, no traceback
    assert str(path) in err and expected in err, err
    bound = baseline_peak(args[0]) + allowance
    assert peak <= bound, f"peak {peak >> 20} MiB > bound {bound >> 20} MiB"


def train_on(tmp_path: Path, path: Path) -> list[str]:
    return ["train", "--device", "cpu", "--epochs", "1", "--data", str(path), "--out", str(tmp_path / "m.npz")]


def predict_with(tmp_path: Path, model: Path) -> list[str]:
    digits = tmp_path / "test.csv"
    digits.write_text(HEADER.removeprefix("label,") + "\n" + ",".join(["0"] * 784) + "\n")
    return ["predict", "--device", "cpu", "--model", str(model), "--data", str(digits),
            "--out", str(tmp_path / "submission.csv")]


def test_the_builders_make_the_files_they_describe(tmp_path: Path) -> None:
    unit = b"0,1,"
    content = b"head" + (unit * 100)[:398]
    assert zlib.decompress(deflate_repeated(b"head", unit, 398), -15) == content
    assert gzip.decompress(gzip_repeated(b"head", unit, 398)) == content
    path = tmp_path / "z.npz"
    path.write_bytes(zip_archive({"a.npy": member(npy(np.arange(5)), zeros=3), "b": member(b"xyz")}))
    with zipfile.ZipFile(path) as archive:
        assert archive.read("a.npy") == npy(np.arange(5)) + bytes(3)
        assert archive.read("b") == b"xyz"


# --- data files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [0, 2000], ids=["after the header", "after rows of digits"])
def test_csv_gz_line_without_an_end_is_refused_in_bounded_memory(tmp_path: Path, baseline_peak, rows: int) -> None:
    """With rows before it, pandas has parsed blocks of them when the endless line comes."""
    path = tmp_path / "train.csv.gz"
    head = f"{HEADER}\n" + ("1," + ",".join(["0"] * 784) + "\n") * rows + "1,"
    path.write_bytes(gzip_repeated(head.encode(), b"0," * (1 << 19), HUGE))
    expected = f"line {rows + 2} is longer than {data._MAX_LINE:,} bytes"
    allowance = ALLOWANCE + (PARSE_ALLOWANCE if rows else 0)
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, expected, *train_on(tmp_path, path),
                                     allowance=allowance)
    assert not (tmp_path / "m.npz").exists()


def test_csv_line_without_an_end_is_refused_in_bounded_memory(tmp_path: Path, baseline_peak) -> None:
    path = tmp_path / "train.csv"
    path.write_text(f"{HEADER}\n1,")
    with path.open("r+b") as file:
        file.truncate(64 << 20)  # a hole: 64 MiB of zero bytes that take no disk
    expected = f"line 2 is longer than {data._MAX_LINE:,} bytes"
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, expected, *train_on(tmp_path, path))


def test_csv_gz_of_wide_rows_is_refused_in_bounded_memory(tmp_path: Path, baseline_peak) -> None:
    """Rows of 32,768 cells, each within the line limit: refused by their width, never a 32,768-column table."""
    path = tmp_path / "train.csv.gz"
    wide = ("0," * (1 << 15))[:-1].encode() + b"\n"
    path.write_bytes(gzip_repeated(f"{HEADER}\n".encode(), wide, HUGE))
    expected = "line 2 has 32768 columns; the header has 785"
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, expected, *train_on(tmp_path, path))


@pytest.mark.parametrize("liar", ["images", "labels"])
def test_idx_gz_header_promising_less_than_the_file_holds(tmp_path: Path, baseline_peak, liar: str) -> None:
    images_head = struct.pack(">4I", 2051, 10, 28, 28)
    labels_head = struct.pack(">2I", 2049, 10)
    images = gzip_repeated(images_head, ZERO_MIB, HUGE if liar == "images" else 10 * 784)
    labels = gzip_repeated(labels_head, ZERO_MIB, HUGE if liar == "labels" else 10)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(images)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(labels)
    path = tmp_path / f"train-{liar}-idx{3 if liar == 'images' else 1}-ubyte.gz"
    args = train_on(tmp_path, tmp_path / "train-images-idx3-ubyte.gz")
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, "has extra bytes at the end", *args)


def test_idx_raw_header_promising_less_than_the_file_holds(tmp_path: Path, baseline_peak) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">4I", 2051, 10, 28, 28))
    with path.open("r+b") as file:
        file.truncate(HUGE)  # a hole: zero bytes that take no disk
    args = ["predict", "--device", "cpu", "--model", str(tmp_path / "model.npz"), "--data", str(path),
            "--out", str(tmp_path / "submission.csv")]
    (tmp_path / "model.npz").write_bytes(zip_archive(model_members()))
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, "has extra bytes at the end", *args)


def test_npz_data_with_a_huge_labels_member(tmp_path: Path, baseline_peak) -> None:
    path = tmp_path / "digits.npz"
    path.write_bytes(zip_archive({
        "images.npy": member(npy(np.zeros((10, 784), np.uint8))),
        "labels.npy": member(npy_head("|u1", (HUGE,)), zeros=HUGE),
    }))
    expected = f"'labels' has shape ({HUGE},); expected (10,)"
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, expected, *train_on(tmp_path, path))


def test_npz_data_header_that_disagrees_with_the_member_size(tmp_path: Path) -> None:
    path = tmp_path / "digits.npz"
    path.write_bytes(zip_archive({
        "images.npy": member(npy(np.zeros((10, 784), np.uint8)), zeros=1000),  # np.load ignored those
        "labels.npy": member(npy(np.zeros(10, np.uint8))),
    }))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: cannot read as .npz \('images.npy' is "):
        data.load_digits(path, labeled=True)


def test_gunzip_gives_bounded_blocks_of_a_bomb(tmp_path: Path) -> None:
    path = tmp_path / "zeros.gz"
    size = 40 << 20
    path.write_bytes(gzip_repeated(b"", ZERO_MIB, size))
    blocks = [len(block) for block in data._byte_blocks(path, "zeros.gz")]
    assert sum(blocks) == size and max(blocks) <= data._INFLATED_BLOCK


@pytest.mark.parametrize("where", ["header", "row"])
def test_long_complete_line_is_refused_by_number(tmp_path: Path, where: str) -> None:
    """A long line that does end is refused too, wherever it falls in a block."""
    row = "1," + ",".join(["0"] * 784)
    long_row = "1," + " " * (data._MAX_LINE + 1) + ",".join(["0"] * 784)
    lines = [HEADER, row, row, long_row, row] if where == "row" else [HEADER + " " * (data._MAX_LINE + 1), row]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    line = 4 if where == "row" else 1
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: line {line} is longer than "):
        data.load_digits(path, labeled=True)


@pytest.mark.parametrize("shift", [0, 1, 5000, (1 << 15) - 1, 1 << 15])
@pytest.mark.parametrize("extra", [0, 1], ids=["at the limit", "one byte over"])
def test_line_limit_is_exact_wherever_the_line_falls(tmp_path: Path, shift: int, extra: int) -> None:
    """A valid row padded with spaces to exactly _MAX_LINE bytes is read; one byte more is refused, at any offset."""
    row = "1," + ",".join(["0"] * 784)
    padded = "1," + " " * (data._MAX_LINE + extra - len(row)) + row[2:]
    lines = [HEADER, "1," + " " * shift + row[2:], row, padded, row]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    if extra:
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: line 4 is longer than "):
            data.load_digits(path, labeled=True)
    else:
        assert len(data.load_digits(path, labeled=True)) == 4


def test_blank_stretches_are_skipped_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of nothing but line ends (cheap to pack) are not halved down to single lines."""
    row = "1," + ",".join(["0"] * 784)
    path = tmp_path / "train.csv"
    path.write_text(f"{HEADER}\n{row}\n" + "\n" * (1 << 19) + f"{row}\n")

    def line_by_line(*args: object) -> None:
        raise AssertionError("a blank line was parsed on its own")

    monkeypatch.setattr(data, "_parse_row", line_by_line)
    digits = data.load_digits(path, labeled=True)
    assert len(digits) == 2


# --- model files ---------------------------------------------------------------------------------


def test_model_with_an_extra_huge_member(tmp_path: Path, baseline_peak) -> None:
    members = model_members()
    members["junk.npy"] = member(npy_head("|u1", (HUGE,)), zeros=HUGE)
    path = tmp_path / "model.npz"
    path.write_bytes(zip_archive(members))
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, "unexpected arrays ['junk']",
                                     *predict_with(tmp_path, path))


def test_model_member_whose_header_disagrees_with_the_metadata(tmp_path: Path, baseline_peak) -> None:
    members = model_members()
    rows = HUGE // (784 * 4)
    members["W1.npy"] = member(npy_head("<f4", (rows, 784)), zeros=rows * 784 * 4)
    path = tmp_path / "model.npz"
    path.write_bytes(zip_archive(members))
    expected = f"W1 has shape ({rows}, 784) and dtype float32, expected (4, 784) floats"
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, expected, *predict_with(tmp_path, path))


def test_model_with_huge_metadata(tmp_path: Path, baseline_peak) -> None:
    """Valid JSON padded with NULs (which numpy strips) to 400 MiB: read in full, it would load."""
    members = model_members()
    meta = json.dumps({"format": "gpunet-model", "format_version": 1, "layer_sizes": [784, 4, 10]})
    chars = HUGE // 4
    text = meta.encode("utf-32-le")
    members["metadata.npy"] = member(npy_head(f"<U{chars}", ()) + text, zeros=chars * 4 - len(text))
    path = tmp_path / "model.npz"
    path.write_bytes(zip_archive(members))
    expected = f"metadata is {chars * 4 + len(npy_head(f'<U{chars}', ())):,} bytes"
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, expected, *predict_with(tmp_path, path))


def model_error(tmp_path: Path, members: dict[str, dict]) -> str:
    path = tmp_path / "model.npz"
    path.write_bytes(zip_archive(members))
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_valid_model_from_the_hand_made_zip_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    members = model_members()
    path.write_bytes(zip_archive(members))
    params, meta = load_model(path)
    with np.load(path, allow_pickle=False) as reference:
        for key, array in zip(["W1", "b1", "W2", "b2"], params):
            np.testing.assert_array_equal(array, reference[key])
    assert meta["layer_sizes"] == [784, 4, 10]


def test_model_member_whose_zip_size_disagrees_with_its_header(tmp_path: Path) -> None:
    members = model_members()
    members["W2.npy"] = member(npy(np.zeros((10, 4), np.float32)), zeros=1000)
    assert "'W2.npy' is " in model_error(tmp_path, members)


def npy_header_of(raw: bytes) -> bytes:
    return raw[: raw.index(b"\n") + 1]  # the header's text ends with the file's first newline


def unbalanced_npy_header() -> bytes:
    """An .npy header whose dict never closes: numpy's tokenizer raises TokenError, not ValueError."""
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (10, 1".ljust(117) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


# What each kind of damage does to the b2 member of a model file, and the words that name it.
MEMBER_TROUBLES = {
    "bzip2": (lambda raw: member(raw, method=zipfile.ZIP_BZIP2), "compressed with method 12"),  # inflated unbounded
    "encrypted": (lambda raw: member(raw, flags=0x1), "'b2.npy' is encrypted"),  # zipfile: RuntimeError
    "zip version": (lambda raw: {**member(raw), "version": 99}, "zip file version 9.9"),
    "corrupt header": (lambda raw: broken_after(b"", len(raw)), "'b2.npy' is not a readable .npy array"),
    "corrupt data": (lambda raw: broken_after(npy_header_of(raw), len(raw) - len(npy_header_of(raw))),
                     "Error -3 while decompressing"),
    "bad header": (lambda raw: member(unbalanced_npy_header()), "'b2.npy' is not a readable .npy array"),
}


@pytest.mark.parametrize("trouble", MEMBER_TROUBLES)
def test_model_members_that_cannot_be_read_safely(tmp_path: Path, trouble: str) -> None:
    members = model_members()
    make, expected = MEMBER_TROUBLES[trouble]
    members["b2.npy"] = make(npy(np.zeros((10, 1), np.float32)))
    assert expected in model_error(tmp_path, members)


@pytest.mark.parametrize("trouble", ["duplicate", "not npy"])
def test_model_members_that_are_not_one_array_each(tmp_path: Path, trouble: str) -> None:
    members = model_members()
    if trouble == "duplicate":
        members["b2"] = member(npy(np.zeros((10, 1), np.float32)))
        expected = "two members are named 'b2'"
    else:
        members["notes.txt"] = member(b"hello")
        expected = "'notes.txt' is not a readable .npy array"
    assert expected in model_error(tmp_path, members)


@pytest.mark.parametrize("trouble", MEMBER_TROUBLES)
def test_data_npz_members_that_cannot_be_read_safely(tmp_path: Path, trouble: str) -> None:
    make, expected = MEMBER_TROUBLES[trouble]
    path = tmp_path / "digits.npz"
    path.write_bytes(zip_archive({
        "images.npy": member(npy(np.zeros((10, 784), np.uint8))),
        "labels.npy": make(npy(np.zeros(10, np.uint8))),
    }))
    with pytest.raises(DataError) as caught:
        data.load_digits(path, labeled=True)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read as .npz (") and expected.replace("b2", "labels") in message
    assert "\n" not in message
