"""gpunet.files.data parses a CSV's blocks on several threads: the same arrays, the same first error, bounded memory."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import numpy as np
import pytest

from gpunet.files import data
from tests.test_data import csv_text, data_error, make_digits, rows_with, write_lines

SMALL_BLOCK = 1 << 14  # a parse block of 16 KiB: a few rows of digits, so a small file is many blocks


def use_workers(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(data, "_parse_workers", lambda: count)


def parse_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first line numbers of the blocks given to _parse_block, from now on."""
    seen: list[int] = []
    parse = data._parse_block

    def spy(block: bytes, line_no: int, *args: object) -> np.ndarray:
        seen.append(line_no)
        return parse(block, line_no, *args)

    monkeypatch.setattr(data, "_parse_block", spy)
    return seen


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz"])
def test_threads_give_the_arrays_one_thread_gives(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_PARSE_BLOCK", SMALL_BLOCK)
    images, labels = make_digits(300, seed=7)
    text = csv_text(images, labels).encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    results, blocks, parse = {}, {}, data._parse_block
    for workers in (1, 4):
        use_workers(monkeypatch, workers)
        monkeypatch.setattr(data, "_parse_block", parse)
        blocks[workers] = parse_spy(monkeypatch)
        results[workers] = data._read_csv(path, name)
    assert len(blocks[1]) >= 20  # ~3 KB a row: 20 blocks or more, parsed four at a time
    assert sorted(blocks[4]) == blocks[1]  # the same blocks, whichever order they were parsed in
    for threaded, alone, written in zip(results[4], results[1], (images, labels)):
        assert threaded.dtype == alone.dtype == np.uint8 and threaded.shape == alone.shape
        np.testing.assert_array_equal(threaded, alone)
        np.testing.assert_array_equal(threaded, written)  # and both are the digits written


def test_first_bad_line_is_named_when_a_later_block_fails_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first block waits until a later bad block has failed: the error is still the first block's line."""
    monkeypatch.setattr(data, "_PARSE_BLOCK", SMALL_BLOCK)
    use_workers(monkeypatch, 4)  # 8 blocks in flight, ~10 rows each
    lines = rows_with("300", row=3, count=120)  # line 5, in the first block (it starts at line 2)
    cells = lines[30].split(",")
    cells[100] = "x"  # line 31, column pixel99: three blocks further
    lines[30] = ",".join(cells)
    parse = data._parse_block
    later_failed = threading.Event()
    failed_later: list[int] = []

    def first_block_last(block: bytes, line_no: int, *args: object) -> np.ndarray:
        if line_no == 2:
            # Not a timing: only a deadlock guard for a reader that never parses the later block meanwhile.
            assert later_failed.wait(timeout=60), "the later block was not parsed while the first waited"
            return parse(block, line_no, *args)
        try:
            return parse(block, line_no, *args)
        except data.DataError:
            failed_later.append(line_no)
            later_failed.set()
            raise

    monkeypatch.setattr(data, "_parse_block", first_block_last)
    message = data_error(write_lines(tmp_path / "train.csv", lines))
    assert message.endswith("line 5, column pixel5: '300' is outside 0-255")
    assert len(failed_later) == 1 and 5 < failed_later[0] <= 31  # the later block did fail, before the first


def test_a_bad_line_comes_before_a_read_error_further_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks taken ahead of a truncated end are parsed first: their bad line is named, as one thread names it."""
    monkeypatch.setattr(data, "_PARSE_BLOCK", SMALL_BLOCK)
    use_workers(monkeypatch, 2)  # 4 blocks in flight: all of the file's blocks before its cut end

    def cut_short(cell: str) -> Path:  # line 5 holds the cell; the blocks are lines 2-7, 8-17, 18-27 and 28-31
        path = tmp_path / "train.csv.gz"
        path.write_bytes(gzip.compress("\n".join(rows_with(cell, row=3, count=30)).encode())[:-20])
        return path

    assert data_error(cut_short("300")).endswith("line 5, column pixel5: '300' is outside 0-255")
    assert "truncated gzip" in data_error(cut_short("3"))  # with no bad line, the truncation is what is named


@pytest.mark.parametrize("workers", [1, 3])
def test_blocks_in_flight_are_bounded(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """However long the file, at most two blocks per thread are taken before the first is given back."""
    use_workers(monkeypatch, workers)
    count, taken = 50, [0]
    parsed: list[int] = []

    def parse(block: bytes, line_no: int, *args: object) -> np.ndarray:
        parsed.append(line_no)
        return np.array([line_no])

    monkeypatch.setattr(data, "_parse_block", parse)

    def blocks():  # a file of `count` blocks, counting those taken from it
        for line_no in range(count):
            taken[0] += 1
            yield line_no, b"0\n"

    held = []
    for given, table in enumerate(data._parsed_in_order(blocks(), data.PIXEL_COLUMNS, "many.csv")):
        held.append(taken[0] - given)  # blocks taken from the file and not given back, this one included
        assert table.tolist() == [given]  # in the file's order
    assert sorted(parsed) == list(range(count))
    assert max(held) == data._BLOCKS_PER_PARSER * workers
