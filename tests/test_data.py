"""gpunet.files.data: every reader round-trips small generated files, and every bad file is one DataError line."""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gpunet.files import data
from gpunet.files.data import Digits, load_digits, load_sample, split_validation
from gpunet.errors import DataError, GpunetError

HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
TEST_HEADER = HEADER.removeprefix("label,")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own parse cache, never the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("GPUNET_CACHE_DIR", str(folder))
    return folder


def make_digits(count: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random pixels that include 0, 9, 10, 99, 100 and 255 (every digit count), and labels 0-9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 784), dtype=np.uint8)
    images[0, :6] = [0, 9, 10, 99, 100, 255]
    labels = (np.arange(count) % 10).astype(np.uint8)
    return images, labels


def csv_text(images: np.ndarray, labels: np.ndarray | None, newline: str = "\n") -> str:
    table = images if labels is None else np.column_stack([labels, images])
    lines = [TEST_HEADER if labels is None else HEADER] + [",".join(map(str, row)) for row in table]
    return newline.join(lines) + newline


def write_csv(path: Path, images: np.ndarray, labels: np.ndarray | None, newline: str = "\n") -> Path:
    text = csv_text(images, labels, newline).encode()
    path.write_bytes(gzip.compress(text) if path.name.endswith(".gz") else text)
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def write_idx(folder: Path, stem: str, images: np.ndarray, labels: np.ndarray | None, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    image_bytes = (2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (len(images), 28, 28))
    image_bytes += images.tobytes()
    write = gzip.compress if gz else bytes
    images_path = folder / f"{stem}-images-idx3-ubyte{suffix}"
    images_path.write_bytes(write(image_bytes))
    if labels is not None:
        label_bytes = (2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.tobytes()
        (folder / f"{stem}-labels-idx1-ubyte{suffix}").write_bytes(write(label_bytes))
    return images_path


def assert_same(digits: Digits, images: np.ndarray, labels: np.ndarray | None) -> None:
    assert digits.images.dtype == np.uint8 and digits.images.flags.c_contiguous
    np.testing.assert_array_equal(digits.images, images)
    if labels is None:
        assert digits.labels is None
    else:
        assert digits.labels.dtype == np.uint8
        np.testing.assert_array_equal(digits.labels, labels)
    assert len(digits) == len(images)


def data_error(path: Path | str, labeled: bool = True) -> str:
    """The message of the DataError that loading `path` raises, checked to be one line naming the file."""
    with pytest.raises(DataError) as caught:
        load_digits(path, labeled=labeled)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert Path(path).name in message
    return message


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz"])
def test_labeled_csv_round_trips(tmp_path: Path, name: str) -> None:
    images, labels = make_digits()
    digits = load_digits(write_csv(tmp_path / name, images, labels), labeled=True)
    assert_same(digits, images, labels)
    assert digits.source == str(tmp_path / name)


def test_unlabeled_csv_round_trips(tmp_path: Path) -> None:
    images, _ = make_digits()
    assert_same(load_digits(write_csv(tmp_path / "test.csv", images, None), labeled=False), images, None)


def test_labeled_csv_read_for_prediction_drops_labels(tmp_path: Path) -> None:
    images, labels = make_digits()
    assert_same(load_digits(write_csv(tmp_path / "train.csv", images, labels), labeled=False), images, None)


@pytest.mark.parametrize("name", ["big.csv", "big.csv.gz"])
def test_csv_larger_than_a_read_block_round_trips(tmp_path: Path, name: str) -> None:
    images, labels = make_digits(300, seed=1)  # ~900 kB of text: several blocks, lines cut across them
    assert_same(load_digits(write_csv(tmp_path / name, images, labels), labeled=True), images, labels)


def test_csv_with_windows_line_ends_round_trips(tmp_path: Path) -> None:
    images, labels = make_digits()
    path = write_csv(tmp_path / "train.csv", images, labels, newline="\r\n")
    assert_same(load_digits(path, labeled=True), images, labels)


def test_gzip_content_is_detected_whatever_the_name(tmp_path: Path) -> None:
    images, labels = make_digits()
    path = tmp_path / "train.csv"
    path.write_bytes(gzip.compress(csv_text(images, labels).encode()))
    assert_same(load_digits(path, labeled=True), images, labels)
    plain = tmp_path / "plain.csv.gz"  # a browser may have unpacked it already
    plain.write_text(csv_text(images, labels))
    assert_same(load_digits(plain, labeled=True), images, labels)


def test_multi_member_gzip_reads_every_member_and_skips_padding(tmp_path: Path) -> None:
    images, labels = make_digits()
    text = csv_text(images, labels).encode()
    cut = text.index(b"\n", len(text) // 2) + 1
    path = tmp_path / "train.csv.gz"
    path.write_bytes(gzip.compress(text[:cut]) + gzip.compress(text[cut:]) + bytes(300_000))
    assert_same(load_digits(path, labeled=True), images, labels)  # zero padding after the last is allowed


def test_csv_slow_path_accepts_spaces_signs_zero_padding_and_blank_lines(tmp_path: Path) -> None:
    images, labels = make_digits(4)
    rows = [",".join(map(str, [label, *row])) for label, row in zip(labels, images)]
    rows[1] = rows[1].replace(",", ", ", 5)
    rows[2] = "+" + rows[2].replace(",", ",0000", 1)
    lines = [HEADER, rows[0], "", rows[1], rows[2], rows[3], ""]
    path = tmp_path / "odd.csv"
    path.write_text("\n".join(lines))  # and no newline at the end
    assert_same(load_digits(path, labeled=True), images, labels)


def test_csv_header_may_be_quoted_capitalised_or_start_with_a_bom(tmp_path: Path) -> None:
    images, labels = make_digits(3)
    header = "\ufeff" + ",".join(f'"{name.capitalize()}"' for name in HEADER.split(","))
    path = tmp_path / "excel.csv"
    path.write_text(header + "\n" + csv_text(images, labels).split("\n", 1)[1], encoding="utf-8")
    assert_same(load_digits(path, labeled=True), images, labels)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_file_round_trips_with_labels_beside_it(tmp_path: Path, gz: bool) -> None:
    images, labels = make_digits()
    path = write_idx(tmp_path, "train", images, labels, gz=gz)
    digits = load_digits(path, labeled=True)
    assert_same(digits, images, labels)
    assert digits.source == str(path)


def test_idx_accepts_dotted_names(tmp_path: Path) -> None:
    images, labels = make_digits()
    write_idx(tmp_path, "train", images, labels)
    for kind in ("images-idx3", "labels-idx1"):
        dashed = next(tmp_path.glob(f"train-{kind}-ubyte"))
        dashed.rename(tmp_path / dashed.name.replace(f"{kind[:-5]}-idx", f"{kind[:-5]}.idx"))
    assert_same(load_digits(tmp_path / "train-images.idx3-ubyte", labeled=True), images, labels)


def test_idx_images_without_labels_serve_prediction(tmp_path: Path) -> None:
    images, _ = make_digits()
    path = write_idx(tmp_path, "t10k", images, None)
    assert_same(load_digits(path, labeled=False), images, None)
    assert "t10k-labels-idx1-ubyte" in data_error(path)


def test_idx_folder_prefers_train_for_labeled_and_t10k_for_prediction(tmp_path: Path) -> None:
    train_images, train_labels = make_digits(12, seed=1)
    test_images, test_labels = make_digits(7, seed=2)
    write_idx(tmp_path / "mnist", "train", train_images, train_labels, gz=True)
    write_idx(tmp_path / "mnist", "t10k", test_images, test_labels, gz=True)
    labeled = load_digits(tmp_path / "mnist", labeled=True)
    assert_same(labeled, train_images, train_labels)
    assert labeled.source.endswith("train-images-idx3-ubyte.gz")
    assert_same(load_digits(tmp_path / "mnist", labeled=False), test_images, None)


def test_idx_folder_with_one_pair_uses_it(tmp_path: Path) -> None:
    images, labels = make_digits()
    write_idx(tmp_path / "only", "t10k", images, labels)
    assert_same(load_digits(tmp_path / "only", labeled=True), images, labels)


@pytest.mark.parametrize("shape", [(12, 784), (12, 28, 28)])
def test_npz_of_our_layout_round_trips(tmp_path: Path, shape: tuple[int, ...]) -> None:
    images, labels = make_digits()
    path = tmp_path / "digits.npz"
    np.savez(path, images=images.reshape(shape), labels=labels)
    assert_same(load_digits(path, labeled=True), images, labels)


def test_npz_of_wider_integer_dtypes_round_trips(tmp_path: Path) -> None:
    images, labels = make_digits()
    path = tmp_path / "wide.npz"
    np.savez_compressed(path, images=images.astype(np.int64), labels=labels.astype(np.float32))
    assert_same(load_digits(path, labeled=True), images, labels)


def test_npz_in_fortran_order_and_big_endian_round_trips(tmp_path: Path) -> None:
    images, labels = make_digits()
    path = tmp_path / "fortran.npz"
    np.savez_compressed(path, images=np.asfortranarray(images.reshape(-1, 28, 28)), labels=labels.astype(">i4"))
    assert_same(load_digits(path, labeled=True), images, labels)


def test_npz_without_labels_serves_prediction_only(tmp_path: Path) -> None:
    images, _ = make_digits()
    path = tmp_path / "unlabeled.npz"
    np.savez(path, images=images)
    assert_same(load_digits(path, labeled=False), images, None)
    assert "no labels" in data_error(path)


def test_keras_npz_gives_train_for_labeled_and_test_for_prediction(tmp_path: Path) -> None:
    train_images, train_labels = make_digits(12, seed=1)
    test_images, test_labels = make_digits(5, seed=2)
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=train_images.reshape(-1, 28, 28),
        y_train=train_labels,
        x_test=test_images.reshape(-1, 28, 28),
        y_test=test_labels,
    )
    assert_same(load_digits(path, labeled=True), train_images, train_labels)
    assert_same(load_digits(path, labeled=False), test_images, None)


def test_bundled_sample_loads() -> None:
    sample = load_sample()
    assert sample.source == "bundled sample"
    assert sample.images.dtype == np.uint8 and sample.images.shape == (len(sample), 784)
    assert sample.labels.dtype == np.uint8 and sample.labels.shape == (len(sample),)
    assert len(sample) >= 5000
    assert set(np.unique(sample.labels)) == set(range(10))
    assert (Path(data.__file__).parents[1] / "sample" / "digits.npz").stat().st_size <= 2_000_000


# --- validation split --------------------------------------------------------------------------


def numbered(count: int) -> Digits:
    """Digits whose first pixel pair spells out their row number, so splits can be traced back."""
    images = np.zeros((count, 784), np.uint8)
    images[:, 0], images[:, 1] = np.divmod(np.arange(count), 256)
    return Digits(images, (np.arange(count) % 10).astype(np.uint8), "numbered")


def rows_of(digits: Digits) -> np.ndarray:
    return digits.images[:, 0].astype(int) * 256 + digits.images[:, 1]


def test_split_is_deterministic_disjoint_and_complete() -> None:
    digits = numbered(1000)
    train, val = split_validation(digits, 100, seed=7)
    again_train, again_val = split_validation(digits, 100, seed=7)
    assert len(val) == 100 and len(train) == 900
    np.testing.assert_array_equal(rows_of(val), rows_of(again_val))
    np.testing.assert_array_equal(rows_of(train), rows_of(again_train))
    assert sorted(np.concatenate([rows_of(train), rows_of(val)])) == list(range(1000))
    np.testing.assert_array_equal(train.labels, rows_of(train) % 10)
    other_train, other_val = split_validation(digits, 100, seed=8)
    assert set(rows_of(other_val)) != set(rows_of(val))
    expected = np.random.default_rng(7).permutation(1000)[:100]
    np.testing.assert_array_equal(rows_of(val), expected)


def test_split_of_zero_gives_an_empty_validation_set() -> None:
    train, val = split_validation(numbered(50), 0, seed=0)
    assert len(val) == 0 and val.images.shape == (0, 784) and len(train) == 50


def test_split_of_unlabeled_digits_keeps_labels_none() -> None:
    digits = Digits(numbered(20).images, None, "unlabeled")
    train, val = split_validation(digits, 5, seed=0)
    assert train.labels is None and val.labels is None


@pytest.mark.parametrize("size", [-1, 49, 50, 51])
def test_split_leaves_at_least_two_digits_to_train_on(size: int) -> None:
    from gpunet.training.loop import SettingError

    with pytest.raises(SettingError, match=f"^val_size={size}: ") as caught:
        split_validation(numbered(50), size, seed=0)
    assert caught.value.name == "val_size" and "\n" not in str(caught.value)
    train, val = split_validation(numbered(50), 48, seed=0)
    assert len(train) == 2 and len(val) == 48


def test_split_size_message_names_the_data() -> None:
    sample = Digits(np.zeros((800, 784), np.uint8), np.zeros(800, np.uint8), "bundled {sample}")
    with pytest.raises(GpunetError, match=r"holds out 1,000 of the 800 digits in bundled \{sample\}, leaving 0 to "
                                          r"train on; at least 2 are needed"):
        split_validation(sample, 1000, seed=0)


# --- bad CSV files -------------------------------------------------------------------------------


def rows_with(cell: str, row: int = 16, column: int = 6, count: int = 20, labeled: bool = True) -> list[str]:
    """CSV lines of zeros with one cell replaced; column 0 is the label when labeled."""
    width = 785 if labeled else 784
    rows = [["1" if labeled else "0"] + ["0"] * (width - 1) for _ in range(count)]
    rows[row][column] = cell
    return [HEADER if labeled else TEST_HEADER] + [",".join(r) for r in rows]


def test_pixel_out_of_range_names_line_and_column(tmp_path: Path) -> None:
    message = data_error(write_lines(tmp_path / "train.csv", rows_with("300")))
    assert message == f"{tmp_path / 'train.csv'}: line 18, column pixel5: '300' is outside 0-255"


def exact_reader_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The numbers of the lines the cell-by-cell reader is given, from now on."""
    seen: list[int] = []
    read_row = data._parse_row

    def spy(line: bytes, line_no: int, *args: object) -> np.ndarray:
        seen.append(line_no)
        return read_row(line, line_no, *args)

    monkeypatch.setattr(data, "_parse_row", spy)
    return seen


@pytest.mark.parametrize("name", ["odd.csv", "odd.csv.gz"])
def test_valid_files_are_read_by_pandas_alone(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several parse blocks of Windows line ends, blank and whitespace-only lines, signs, spaces and padding."""
    monkeypatch.setattr(data, "_PARSE_BLOCK", 1 << 16)
    images, labels = make_digits(200, seed=5)
    rows = [",".join(map(str, [label, *row])) for label, row in zip(labels, images)]
    for index in range(0, len(rows), 7):
        rows[index] = "+" + rows[index].replace(",", " , 00", 3) + " "
        rows.insert(index, " \t" if index % 2 else "")
    text = "\r\n".join([HEADER, *rows]) + "\r\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    exact = exact_reader_spy(monkeypatch)
    assert_same(load_digits(path, labeled=True), images, labels)
    assert exact == []


def test_bad_cell_is_found_reading_only_its_block_cell_by_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_READ_BLOCK", 1 << 14)
    monkeypatch.setattr(data, "_PARSE_BLOCK", 1 << 16)
    lines = rows_with("300", row=249, count=300)  # line 251
    exact = exact_reader_spy(monkeypatch)
    message = data_error(write_lines(tmp_path / "train.csv", lines))
    assert message.endswith("line 251, column pixel5: '300' is outside 0-255")
    # The lines of its block up to the bad one, one by one; the blocks before went through pandas alone.
    assert exact == list(range(exact[0], 252)) and exact[0] > 2
    block_lines = ((1 << 14) + (1 << 16)) // (len(lines[2]) + 1) + 1  # a parse block: 64 KiB and one read
    assert len(exact) <= block_lines


def test_bad_cell_is_found_deep_in_a_large_gzip(tmp_path: Path) -> None:
    images, labels = make_digits(300, seed=3)
    text = csv_text(images, labels).split("\n")
    cells = text[250].split(",")
    cells[700] = "-4"
    text[250] = ",".join(cells)
    path = tmp_path / "big.csv.gz"
    path.write_bytes(gzip.compress("\n".join(text).encode()))
    assert data_error(path).endswith("line 251, column pixel699: '-4' is outside 0-255")


@pytest.mark.parametrize(
    ("cell", "column", "expected"),
    [
        ("256", 3, "column pixel2: '256' is outside 0-255"),
        ("-1", 3, "column pixel2: '-1' is outside 0-255"),
        ("12", 0, "column label: '12' is outside 0-9"),
        ("-1", 0, "column label: '-1' is outside 0-9"),
        ("3.5", 0, "column label: '3.5' is not a whole number 0-9"),
        ("7.0", 9, "column pixel8: '7.0' is not a whole number 0-255"),
        ("x", 9, "column pixel8: 'x' is not a whole number 0-255"),
        ("1e2", 9, "column pixel8: '1e2' is not a whole number 0-255"),
        ("", 9, "column pixel8: empty cell"),
        ("  ", 0, "column label: empty cell"),
        ("1000", 784, "column pixel783: '1000' is outside 0-255"),
    ],
)
def test_bad_cells_are_named(tmp_path: Path, cell: str, column: int, expected: str) -> None:
    message = data_error(write_lines(tmp_path / "train.csv", rows_with(cell, row=3, column=column)))
    assert message.endswith(f"line 5, {expected}")


def test_bad_cell_in_unlabeled_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "test.csv", rows_with("999", row=0, column=0, labeled=False))
    assert data_error(path, labeled=False).endswith("line 2, column pixel0: '999' is outside 0-255")


@pytest.mark.parametrize(("delta", "found"), [(-1, 784), (1, 786)])
def test_row_with_wrong_column_count(tmp_path: Path, delta: int, found: int) -> None:
    lines = rows_with("0")
    lines[7] = lines[7] + ",0" if delta > 0 else lines[7].rsplit(",", 1)[0]
    message = data_error(write_lines(tmp_path / "train.csv", lines))
    assert message.endswith(f"line 8 has {found} columns; the header has 785")


# A cell and what it is: the number it reads as, or the end of the message refusing it (top: 9 or 255).
# pandas reads the plain ones and some odd ones (spaces, signs, zero padding, a "\r"); each must come
# out exactly as the cell-by-cell reader says, in a label and in a pixel, never as pandas alone would
# (pandas 2.0 reads "7\x00" as 7, and asked for uint8 it wraps 300 to 44).
CELLS = [
    ("7", 7), (" 7 ", 7), ("\t7", 7), ("+7", 7), ("-0", 0), ("007", 7), ("0" * 30 + "7", 7),
    ("7\r", 7), ("7\x0b", 7), ("7\x0c", 7),
    ("7.0", "is not a whole number 0-{top}"), ("7.", "is not a whole number 0-{top}"),
    (".7", "is not a whole number 0-{top}"), ("1e0", "is not a whole number 0-{top}"),
    ("0x7", "is not a whole number 0-{top}"), ("1_0", "is not a whole number 0-{top}"),
    ('"7"', "is not a whole number 0-{top}"), ("'7'", "is not a whole number 0-{top}"),
    ("nan", "is not a whole number 0-{top}"), ("NA", "is not a whole number 0-{top}"),
    ("inf", "is not a whole number 0-{top}"), ("- 7", "is not a whole number 0-{top}"),
    ("+-7", "is not a whole number 0-{top}"), ("7 7", "is not a whole number 0-{top}"),
    ("7\x00", "is not a whole number 0-{top}"), ("7\x009", "is not a whole number 0-{top}"),
    ("\x00", "is not a whole number 0-{top}"), ("\xa07", "is not a whole number 0-{top}"),
    ("", "empty cell"), ("\t", "empty cell"),
    ("9223372036854775807", "is outside 0-{top}"), ("9223372036854775808", "is outside 0-{top}"),
    ("-9223372036854775809", "is outside 0-{top}"), ("18446744073709551623", "is outside 0-{top}"),
]


def write_latin1(path: Path, lines: list[str]) -> Path:
    """The lines as one byte per character, so that a test names every byte of the file."""
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return path


@pytest.mark.parametrize("column", [0, 400])
@pytest.mark.parametrize(("cell", "meaning"), CELLS)
def test_every_cell_reads_as_the_exact_reader_says(tmp_path: Path, cell: str, meaning: int | str, column: int) -> None:
    path = write_latin1(tmp_path / "train.csv", rows_with(cell, row=3, column=column))
    if isinstance(meaning, str):
        name, top = ("label", 9) if column == 0 else (f"pixel{column - 1}", 255)
        message = data_error(path)
        assert message.startswith(f"{path}: line 5, column {name}: ")
        assert message.endswith(meaning.format(top=top))
        return
    expected = np.zeros((20, 785), np.uint8)
    expected[:, 0] = 1
    expected[3, column] = meaning
    assert_same(load_digits(path, labeled=True), expected[:, 1:], expected[:, 0])


ROW = ",".join(["1"] + ["0"] * 784)


# A line put among rows of digits and what it is: skipped (None) when blank, else how its refusal ends.
LINES = [
    ("", None), ("   ", None), ("\t", None), ("\r", None), ("\x0b", None), (" \t \r", None),
    (ROW.replace(",", "\r", 1), " has 784 columns; the header has 785"),  # a lone "\r" does not end a line
    (ROW + "\r" + ROW, " has 1569 columns; the header has 785"),
    (ROW + ",", " has 786 columns; the header has 785"),
    (ROW.rsplit(",", 1)[0], " has 784 columns; the header has 785"),
    (",".join(["0"] * 20_000), " has 20000 columns; the header has 785"),
    ("7", " has 1 columns; the header has 785"),
    ("#" + ROW, ", column label: '#1' is not a whole number 0-9"),  # no comment lines
]


@pytest.mark.parametrize("first", [True, False], ids=["first row", "later row"])
@pytest.mark.parametrize(("line", "refusal"), LINES)
def test_every_line_reads_as_the_exact_reader_says(tmp_path: Path, line: str, refusal: str | None, first: bool) -> None:
    lines = rows_with("0")
    where = 1 if first else 9
    lines.insert(where, line)
    path = write_latin1(tmp_path / "train.csv", lines)
    if refusal is None:
        assert_same(load_digits(path, labeled=True), np.zeros((20, 784), np.uint8), np.ones(20, np.uint8))
    else:
        assert data_error(path) == f"{path}: line {where + 1}{refusal}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (HEADER + ",pixel784", "header has 786 columns"),
        (HEADER.rsplit(",", 1)[0], "header has 784 columns"),
        (HEADER.rsplit(",", 2)[0], "header has 783 columns"),
        (HEADER.replace("label", "digit"), "header column 1 is 'digit'; expected 'label'"),
        (HEADER.replace("pixel3,", "pixelx,"), "header column 5 is 'pixelx'; expected 'pixel3'"),
        (",".join(["0"] * 785), "line 1 is not a header"),
        ("", "header has 1 columns"),
    ],
)
def test_bad_header(tmp_path: Path, header: str, expected: str) -> None:
    lines = rows_with("0")
    lines[0] = header
    assert expected in data_error(write_lines(tmp_path / "train.csv", lines))


def test_test_file_where_labels_are_needed(tmp_path: Path) -> None:
    images, _ = make_digits()
    path = write_csv(tmp_path / "test.csv", images, None)
    assert "holds no labels" in data_error(path, labeled=True)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    assert data_error(path).endswith("file is empty")


def test_empty_gzip(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv.gz"
    path.write_bytes(gzip.compress(b""))
    assert data_error(path).endswith("file is empty")


@pytest.mark.parametrize("after", ["", "\n", "\n\n"])
def test_header_only_file(tmp_path: Path, after: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text(HEADER + after)
    assert data_error(path).endswith("has a header but no digits")


def test_truncated_gzip(tmp_path: Path) -> None:
    images, labels = make_digits()
    packed = gzip.compress(csv_text(images, labels).encode())
    path = tmp_path / "train.csv.gz"
    path.write_bytes(packed[: len(packed) // 2])
    assert "truncated gzip" in data_error(path)


@pytest.mark.parametrize("where", ["middle", "checksum", "trailing garbage"])
def test_corrupt_gzip(tmp_path: Path, where: str) -> None:
    images, labels = make_digits()
    packed = bytearray(gzip.compress(csv_text(images, labels).encode()))
    if where == "trailing garbage":
        packed += b"garbage"
    else:
        spot = len(packed) // 2 if where == "middle" else len(packed) - 6
        packed[spot : spot + 4] = bytes(b ^ 0xFF for b in packed[spot : spot + 4])
    path = tmp_path / "train.csv.gz"
    path.write_bytes(bytes(packed))
    assert "gzip" in data_error(path)


def test_missing_file(tmp_path: Path) -> None:
    assert data_error(tmp_path / "nowhere.csv").endswith("no such file or directory")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = make_digits()
    path = write_csv(tmp_path / "locked.csv", images, labels)

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    assert data_error(path).endswith("cannot read (Permission denied)")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "digits.txt"
    path.write_text("1,2,3\n")
    assert "unknown format" in data_error(path)


def test_folder_without_idx_files(tmp_path: Path) -> None:
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing here")
    assert "no MNIST IDX" in data_error(folder)


# --- bad IDX files -------------------------------------------------------------------------------


def test_idx_wrong_magic(tmp_path: Path) -> None:
    images, labels = make_digits()
    path = write_idx(tmp_path, "train", images, labels)
    raw = bytearray(path.read_bytes())
    raw[3] = 0x01
    path.write_bytes(bytes(raw))
    assert "magic number 2049, expected 2051" in data_error(path)


@pytest.mark.parametrize(("cut", "expected"), [(-100, "truncated"), (None, "extra bytes"), (10, "truncated IDX header")])
def test_idx_wrong_size(tmp_path: Path, cut: int | None, expected: str) -> None:
    images, labels = make_digits()
    path = write_idx(tmp_path, "train", images, labels)
    raw = path.read_bytes()
    path.write_bytes(raw + b"\0" * 5 if cut is None else raw[:cut])
    assert expected in data_error(path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    images, labels = make_digits()
    path = write_idx(tmp_path, "train", images, labels, gz=True)
    path.write_bytes(path.read_bytes()[:-20])
    assert "truncated gzip" in data_error(path)


def test_idx_wrong_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    header = b"".join(n.to_bytes(4, "big") for n in (2051, 2, 32, 32))
    path.write_bytes(header + bytes(2 * 32 * 32))
    assert "images are 32x32" in data_error(path, labeled=False)


def test_idx_label_count_disagrees(tmp_path: Path) -> None:
    images, labels = make_digits()
    write_idx(tmp_path, "train", images, None)
    write_idx(tmp_path / "other", "train", images[:5], labels[:5])
    (tmp_path / "other" / "train-labels-idx1-ubyte").rename(tmp_path / "train-labels-idx1-ubyte")
    message = data_error(tmp_path / "train-images-idx3-ubyte")
    assert "has 5 labels but" in message and "12 images" in message


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    images, labels = make_digits()
    labels[4] = 11
    write_idx(tmp_path, "train", images, labels)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: label 4 is 11; labels must be 0-9$"):
        load_digits(tmp_path / "train-images-idx3-ubyte", labeled=True)


def test_idx_labels_file_given_instead_of_images(tmp_path: Path) -> None:
    images, labels = make_digits()
    write_idx(tmp_path, "train", images, labels)
    assert "give the images file" in data_error(tmp_path / "train-labels-idx1-ubyte")


def test_idx_folder_without_labels_when_labels_are_needed(tmp_path: Path) -> None:
    images, _ = make_digits()
    write_idx(tmp_path / "mnist", "t10k", images, None)
    assert "no MNIST IDX pair" in data_error(tmp_path / "mnist")
    assert_same(load_digits(tmp_path / "mnist", labeled=False), images, None)


# --- bad .npz files ------------------------------------------------------------------------------


def npz_error(tmp_path: Path, labeled: bool = True, **arrays: np.ndarray) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return data_error(path, labeled=labeled)


def test_npz_missing_keys(tmp_path: Path) -> None:
    message = npz_error(tmp_path, pictures=np.zeros((2, 784), np.uint8))
    assert "no 'images' array" in message and "pictures" in message


def test_npz_keras_without_test_pair_for_prediction(tmp_path: Path) -> None:
    message = npz_error(tmp_path, labeled=False, x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2, np.uint8))
    assert "no 'x_test' array" in message


@pytest.mark.parametrize("shape", [(3, 783), (3, 28, 27), (784,), (0, 784)])
def test_npz_wrong_image_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    message = npz_error(tmp_path, labeled=False, images=np.zeros(shape, np.uint8))
    assert "'images'" in message


def test_npz_labels_wrong_shape(tmp_path: Path) -> None:
    message = npz_error(tmp_path, images=np.zeros((3, 784), np.uint8), labels=np.zeros((3, 1), np.uint8))
    assert "'labels' has shape (3, 1)" in message


@pytest.mark.parametrize(
    ("images", "labels", "expected"),
    [
        (np.full((2, 784), 256, np.int16), np.zeros(2, np.uint8), "'images' holds 256"),
        (np.full((2, 784), -3, np.int64), np.zeros(2, np.uint8), "'images' holds -3"),
        (np.full((2, 784), 0.5), np.zeros(2, np.uint8), "'images' holds 0.5"),
        (np.zeros((2, 784), np.uint8), np.array([1, 10], np.uint8), "'labels' holds 10"),
        (np.zeros((2, 784), np.uint8), np.array([1, 3.5]), "'labels' holds 3.5"),
        (np.zeros((2, 784), bool), np.zeros(2, np.uint8), "'images' has dtype bool"),
    ],
)
def test_npz_bad_values(tmp_path: Path, images: np.ndarray, labels: np.ndarray, expected: str) -> None:
    assert expected in npz_error(tmp_path, images=images, labels=labels)


def test_npz_pickled_objects_are_refused(tmp_path: Path) -> None:
    objects = np.empty(2, dtype=object)
    objects[:] = [np.zeros(784), np.zeros(784)]
    message = npz_error(tmp_path, images=objects)
    assert "Python objects" in message


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04 broken"])
def test_npz_that_is_not_an_archive(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    data_error(path)


def test_npy_named_npz(tmp_path: Path) -> None:
    path = tmp_path / "array.npz"
    with path.open("wb") as file:
        np.save(file, np.zeros((2, 784), np.uint8))
    assert "not an .npz archive" in data_error(path)


# --- parse cache ---------------------------------------------------------------------------------


def test_second_read_comes_from_the_cache(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = make_digits()
    path = write_csv(tmp_path / "train.csv.gz", images, labels)
    load_digits(path, labeled=True)
    assert len(list(cache_dir.glob("*.images.npy"))) == 1

    def no_parsing(*args: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(data, "_read_csv", no_parsing)
    assert_same(load_digits(path, labeled=True), images, labels)
    assert_same(load_digits(path, labeled=False), images, None)


def test_changed_source_is_read_again(tmp_path: Path, cache_dir: Path) -> None:
    images, labels = make_digits(seed=1)
    path = write_csv(tmp_path / "train.csv", images, labels)
    assert_same(load_digits(path, labeled=True), images, labels)
    before = path.stat()
    new_images, new_labels = make_digits(seed=2)
    write_csv(path, new_images, new_labels)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert_same(load_digits(path, labeled=True), new_images, new_labels)
    # The entry for the old content is dropped, not left to pile up.
    assert len(list(cache_dir.glob("*.images.npy"))) == 1


def test_same_size_change_is_seen_through_mtime(tmp_path: Path) -> None:
    images, labels = make_digits()
    path = write_csv(tmp_path / "train.csv", images, labels)
    load_digits(path, labeled=True)
    changed = labels.copy()
    changed[0] = (changed[0] + 1) % 10  # one digit for another: same size
    stat = path.stat()
    write_csv(path, images, changed)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert_same(load_digits(path, labeled=True), images, changed)


def test_idx_is_cached_and_a_changed_labels_file_is_read_again(tmp_path: Path, cache_dir: Path) -> None:
    images, labels = make_digits()
    path = write_idx(tmp_path, "train", images, labels, gz=True)
    assert_same(load_digits(path, labeled=True), images, labels)
    assert len(list(cache_dir.glob("*.labels.npy"))) == 1
    changed = np.roll(labels, 1)
    write_idx(tmp_path, "train", images, changed, gz=True)
    label_file = tmp_path / "train-labels-idx1-ubyte.gz"
    stat = label_file.stat()
    os.utime(label_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert_same(load_digits(path, labeled=True), images, changed)


def test_corrupt_cache_entry_is_ignored_and_rewritten(tmp_path: Path, cache_dir: Path) -> None:
    images, labels = make_digits()
    path = write_csv(tmp_path / "train.csv", images, labels)
    load_digits(path, labeled=True)
    (entry,) = cache_dir.glob("*.images.npy")
    entry.write_bytes(entry.read_bytes()[:300])
    assert_same(load_digits(path, labeled=True), images, labels)
    assert entry.stat().st_size > 784 * len(images)
    entry.write_bytes(b"garbage")
    assert_same(load_digits(path, labeled=True), images, labels)


def test_unwritable_cache_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GPUNET_CACHE_DIR", str(blocker / "cache"))
    images, labels = make_digits()
    path = write_csv(tmp_path / "train.csv", images, labels)
    assert_same(load_digits(path, labeled=True), images, labels)
    assert_same(load_digits(path, labeled=True), images, labels)


def test_cache_folder_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data._cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("GPUNET_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data._cache_dir() == tmp_path / "xdg" / "gpunet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data._cache_dir() == tmp_path / "home" / ".cache" / "gpunet"


def test_bad_file_is_not_cached(tmp_path: Path, cache_dir: Path) -> None:
    path = write_lines(tmp_path / "train.csv", rows_with("300"))
    data_error(path)
    data_error(path)
    assert not list(cache_dir.glob("*.npy"))


# --- the Digits record and the sample builder ----------------------------------------------------


def test_digits_refuses_arrays_of_the_wrong_kind() -> None:
    images = np.zeros((3, 784), np.uint8)
    with pytest.raises(ValueError):
        Digits(images.astype(np.float32), None, "floats")
    with pytest.raises(ValueError):
        Digits(np.zeros((3, 28, 28), np.uint8), None, "square")
    with pytest.raises(ValueError):
        Digits(np.asfortranarray(np.zeros((3, 784), np.uint8)), None, "strided")
    with pytest.raises(ValueError):
        Digits(images, np.zeros(2, np.uint8), "short labels")


def test_sample_builder_is_balanced_seeded_and_byte_for_byte_reproducible(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_sample.py"
    spec = importlib.util.spec_from_file_location("make_sample", script)
    make_sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_sample)
    images, labels = make_digits(200, seed=4)
    rows = make_sample.choose(labels, per_class=5, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[rows]), [5] * 10)
    np.testing.assert_array_equal(rows, make_sample.choose(labels, per_class=5, seed=0))
    first = make_sample.reproducible_npz(images[rows], labels[rows])
    assert first == make_sample.reproducible_npz(images[rows], labels[rows])
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert {entry.date_time for entry in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    path = tmp_path / "sample.npz"
    path.write_bytes(first)
    assert_same(load_digits(path, labeled=True), images[rows], labels[rows])
