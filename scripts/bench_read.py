"""Benchmark: reading a Kaggle CSV from a cold start, as `gpunet train` does first.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_read.py [--runs 5]
        [--gpunet-root OTHER_CHECKOUT ...] [FILE ...]

Each run is a fresh interpreter with an empty parse cache (GPUNET_CACHE_DIR, a new folder) that imports
gpunet.files.data and calls load_digits once. It prints, per checkout and file, the median and the range
of the load alone (pandas' import included: gpunet imports it at the first parse) and of the whole process.
The checkouts (this one, and each --gpunet-root) take turns run by run, so that a change in the machine's
load falls on all of them. FILE defaults to ../shared/data/train.csv.gz and test.csv.gz: Kaggle CSVs, read as
training digits where the header's first column is "label", else as test digits (each line says which). A
benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CHILD = """
import sys, time
start = time.perf_counter()
from gpunet.files.data import load_digits
digits = load_digits(sys.argv[1], labeled=sys.argv[2] == "labeled")
print(time.perf_counter() - start, len(digits))
"""


def labels_in(path: Path) -> str:
    """"labeled" where the CSV's header starts with a label column (Kaggle's train.csv), else "unlabeled"."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", errors="replace") as lines:
        return "labeled" if lines.readline(1 << 16).split(",")[0].strip().strip('"') == "label" else "unlabeled"


def one_run(root: Path, path: Path, labeled: str) -> tuple[float, float, int]:
    """(seconds of the import and load_digits, seconds of the whole process, digits read), a fresh interpreter."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(root), "GPUNET_CACHE_DIR": cache}
        start = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", CHILD, str(path), labeled], env=env,
                               capture_output=True, text=True)
        wall = time.perf_counter() - start
    if child.returncode != 0:
        why = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        sys.exit(f"{root}: reading {path} failed: {why}")
    seconds, count = child.stdout.split()
    return float(seconds), wall, int(count)


def spread(times: list[float]) -> str:
    return f"{statistics.median(times):6.3f} ({min(times):.3f}-{max(times):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, default=[DATA / "train.csv.gz", DATA / "test.csv.gz"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gpunet-root", type=Path, action="append", default=[], help="another checkout to time")
    args = parser.parse_args()
    problem = f"--runs {args.runs}: give 1 or more" if args.runs < 1 else next(
        (f"{path}: no such file" for path in args.files if not path.is_file()), None)
    if problem:  # one line, as argparse's own errors end (without its usage line)
        print(f"bench_read.py: error: {problem}", file=sys.stderr)
        sys.exit(2)
    roots = [ROOT, *(root.resolve() for root in args.gpunet_root)]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for path in args.files:
        labeled = labels_in(path)
        times: dict[Path, list[tuple[float, float, int]]] = {root: [] for root in roots}
        for _ in range(args.runs):
            for root in roots:
                times[root].append(one_run(root, path, labeled))
        for root in roots:
            loads, walls, counts = zip(*times[root])
            print(f"{path.name:14} {str(root):30} {counts[0]:,} digits   load s {spread(list(loads))}   "
                  f"process s {spread(list(walls))}   {labeled}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
