"""scripts/bench.py runs and fills its table (on the CPU, and on the CuPy stand-in for its GPU rows).

Nothing here is timed or compared: these only show that the benchmark works,
so that a run on a GPU machine measures rather than fails.
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpunet.backend import CpuBackend

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_digits(bench, m=600):
    rng = np.random.default_rng(0)
    return bench.Digits(rng.integers(0, 256, size=(m, 784), dtype=np.uint8),
                        rng.integers(0, 10, size=m).astype(np.uint8))


def check_rows(rows, device, batches):
    works = [row[1] for row in rows]
    assert works == ["full-batch GD step", *(f"SGD epoch, batch {b}" for b in batches),
                     "floor: read X once", "floor: FLOPs of a step"]
    for row in rows:
        assert row[0] == device
        milliseconds = float(row[2].split()[0])  # "   1.82 (1.75)" -> 1.82 (a fast step may print 0.00)
        assert np.isfinite(milliseconds) and milliseconds >= 0, row
    assert re.fullmatch(r"\d+\.\d MB at \d+\.\d GB/s copy", rows[-2][4]), rows[-2]


def test_measure_on_the_cpu(bench):
    rows = bench.measure("cpu", CpuBackend(), small_digits(bench), [128], repeats=1)
    check_rows(rows, "cpu", [128])
    assert [row[3] for row in rows[:2]] == ["-", "-"]  # no PyTorch side asked for


@pytest.mark.kernels
def test_measure_on_the_cuda_stand_in(bench, stand_in_cuda, monkeypatch):
    """The GPU rows' code (CupyBackend, the device's floors) on the stand-in, its kernels walked on the CPU."""
    monkeypatch.setitem(bench.MATMUL_SIZES, "cuda", 256)
    rows = bench.measure("cuda", stand_in_cuda, small_digits(bench, 300), [128], repeats=1)
    check_rows(rows, "cuda", [128])


def test_the_script_prints_its_table(tmp_path):
    missing = tmp_path / "train.csv.gz"  # synthetic digits: the test does not depend on ../shared
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--samples", "1000", "--repeats", "1", "--batches", "256", "--device", "cpu",
         "--data", str(missing)],
        capture_output=True, text=True, timeout=300,  # a guard against a hang, not a timing check
    )
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| cpu")]
    assert "Data: synthetic uint8 digits, 1,000 x 784" in done.stdout
    assert [line.split("|")[2].strip() for line in table[:4]] == [
        "full-batch GD step", "SGD epoch, batch 256", "floor: read X once", "floor: FLOPs of a step"]
