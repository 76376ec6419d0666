"""Benchmark: one library's CNN epochs alone in a fresh process, as each runs for its user.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_cnn_alone.py gpunet|pytorch [--epochs 3]
        [--threads 2] [--samples 41000]

scripts/bench.py times gpunet and PyTorch in one process, taking turns; there each library's large frees
and allocations move glibc's allocator thresholds for the other (BENCHMARKS.md, "Split steps"), so a side's
time depends on what the other did before it. This script times bench.py's CNN of one library only
(``GpunetCNN`` or ``TorchCNN``: the same network, data, batch and Adam), each epoch after the same short
untimed warm-up, so that running it once per library gives each its own default allocator. Run the two
in turns and compare the medians. A benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the data, the two CNNs, the machine's description)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", choices=["gpunet", "pytorch"])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's intra-op threads (gpunet uses a part per core)")
    parser.add_argument("--samples", type=int, default=bench.M)
    parser.add_argument("--data", type=Path, default=bench.DATA, help="a train.csv.gz (synthetic digits without)")
    args = parser.parse_args()

    digits, source = bench.bench_data(args.samples, args.data)
    if args.library == "gpunet":
        side = bench.GpunetCNN(bench.CpuBackend(), digits)
    else:
        try:
            import torch
        except ImportError:
            raise SystemExit("bench_cnn_alone.py: PyTorch is not installed")
        bench.TorchCNN.threads = args.threads
        side = bench.TorchCNN(torch, "cpu", digits)
    times = []
    for _ in range(args.epochs):
        getattr(side, "warm", side.run)(bench.CNN_BATCH)
        times.append(bench.seconds(lambda: side.run(bench.CNN_BATCH)))
    print(f"{args.library} alone ({source}; load {bench.load_average()}): CNN epochs "
          + " ".join(f"{t * 1e3:,.0f}" for t in times) + f" ms; median {statistics.median(times) * 1e3:,.0f} ms")


if __name__ == "__main__":
    main()
