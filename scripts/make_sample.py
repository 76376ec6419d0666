"""Builds gpunet/sample/digits.npz, the small labeled set bundled with the package.

It takes the same number of digits of each class, chosen by a seeded generator, from Kaggle's
train.csv(.gz) (MNIST digits, CC BY-SA 3.0), in shuffled order. Same source, same options: the
same bytes (the zip entries carry a fixed timestamp).

    python scripts/make_sample.py [--source ../shared/data/train.csv.gz] [--per-class 1100] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gpunet.files.data import load_digits  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "train.csv.gz"
DEFAULT_OUT = ROOT / "gpunet" / "sample" / "digits.npz"
SIZE_LIMIT = 2_000_000


def choose(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Row numbers: per_class of each digit 0-9, drawn without replacement, then shuffled together."""
    rng = np.random.default_rng(seed)
    rows = []
    for digit in range(10):
        of_digit = np.flatnonzero(labels == digit)
        if len(of_digit) < per_class:
            raise SystemExit(f"only {len(of_digit)} digits of class {digit}; use a smaller --per-class")
        rows.append(rng.choice(of_digit, size=per_class, replace=False))
    return rng.permutation(np.concatenate(rows))


def reproducible_npz(images: np.ndarray, labels: np.ndarray) -> bytes:
    """np.savez_compressed's archive with its entries' timestamps pinned, so reruns give identical bytes."""
    made = io.BytesIO()
    np.savez_compressed(made, images=images, labels=labels)
    pinned = io.BytesIO()
    with zipfile.ZipFile(made) as source, zipfile.ZipFile(pinned, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            fixed = zipfile.ZipInfo(entry.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(fixed, source.read(entry), compresslevel=9)
    return pinned.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-class", type=int, default=1100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits(args.source, labeled=True)
    rows = choose(digits.labels, args.per_class, args.seed)
    data = reproducible_npz(digits.images[rows], digits.labels[rows])
    if len(data) > SIZE_LIMIT:
        raise SystemExit(f"{len(data):,} bytes is over the {SIZE_LIMIT:,}-byte limit; use a smaller --per-class")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"{args.out}: {len(rows):,} digits, {len(data):,} bytes")


if __name__ == "__main__":
    main()
