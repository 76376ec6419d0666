"""Benchmark: the compiled CPU path (numba) against NumPy's array calls, for dense networks of several widths.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_dense_paths.py [--widths 16,16 64,64 ...]
        [--batch 64] [--optimizer adam] [--repeats 5] [--samples 41000]

Where numba is installed, ``CpuBackend`` runs every one of the notes' dense networks on the compiled path
(``gpunet.backends.cpu_fused``); this script measures whether that pays at every width: one training
epoch (``train_epoch`` with ``gpunet train``'s settings for the optimizer: its default lr and weight decay,
the cosine schedule's rates of a run's second epoch) of each width on each path
(``CpuBackend(compiled=None/False)``), the two paths taking turns (``bench.compare``), from the same
initial weights. It prints the medians, the fastest in brackets, and the ratio compiled / NumPy.
A benchmark, not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the data, the turn-taking timer, the machine's description)

from gpunet.backends import cpu_fused  # noqa: E402
from gpunet.backends.cpu import CpuBackend  # noqa: E402
from gpunet.nn.model import Network, init_params, layer_sizes  # noqa: E402
from gpunet.nn.optimizers import DEFAULTS, make_optimizer  # noqa: E402
from gpunet.training.loop import (DeviceData, TrainConfig, compute_threads, learning_rate,  # noqa: E402
                                  steps_per_epoch, train_epoch)

WIDTHS = ("16,16", "32,32", "64,64", "128,64", "128,128", "256,128", "512,256", "800,800")


class DenseEpoch:
    """One epoch of a dense network on one CPU path."""

    def __init__(self, hidden: tuple[int, ...], compiled: bool, digits, batch: int, optimizer: str):
        self.backend = CpuBackend(compiled=None if compiled else False)
        self.network = Network(self.backend, init_params(layer_sizes(hidden), "he", 0, np.float32))
        config = TrainConfig.for_optimizer(optimizer, batch_size=batch)
        self.optimizer = make_optimizer(optimizer, self.network.groups, config.lr, config.weight_decay)
        self.data = DeviceData(self.backend, digits)
        self.batch, self.rng = batch, np.random.default_rng(1)
        steps = steps_per_epoch(len(digits), batch)
        self.rate = lambda k: learning_rate(config, steps + k, steps)  # the second epoch's: past the warm-up
        path = self.backend.compiled_path(self.network, self.optimizer)
        if (path is cpu_fused) != compiled:
            raise SystemExit(f"hidden {hidden}: the compiled path {'does not' if compiled else 'does'} run it")

    def run(self, _batch: int) -> None:
        with compute_threads(self.network):
            train_epoch(self.network, self.optimizer, self.data, self.batch, self.rng, rate=self.rate)


def ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", default=list(WIDTHS), help="hidden sizes, e.g. 16,16 800,800")
    parser.add_argument("--batch", type=int, default=64, help="mini-batch size (gpunet train's default: 64)")
    parser.add_argument("--optimizer", default="adam", choices=sorted(DEFAULTS))
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per path and width")
    parser.add_argument("--samples", type=int, default=bench.M)
    parser.add_argument("--data", type=Path, default=bench.DATA, help="a train.csv.gz (synthetic digits without)")
    args = parser.parse_args()

    digits, source = bench.bench_data(args.samples, args.data)
    print(f"data: {source}; batch {args.batch}, {args.optimizer}, float32; "
          f"{args.repeats} timed epochs per path, taking turns")
    cpu_fused.available()  # loads SciPy's BLAS, so that threadpoolctl lists it
    print("\n".join(bench.describe_machine(None)[:-1]))
    print(f"load average at the start: {bench.load_average()}")
    print("| hidden | compiled, ms | NumPy, ms | compiled / NumPy |")
    print("| --- | --- | --- | --- |")
    for text in args.widths:
        hidden = tuple(int(unit) for unit in text.split(","))
        sides = {path: DenseEpoch(hidden, path == "compiled", digits, args.batch, args.optimizer)
                 for path in ("compiled", "numpy")}
        times = bench.compare(sides, args.batch, args.repeats, rounds=min(args.repeats, 3))
        failed = {path: t for path, t in times.items() if isinstance(t, str)}  # compare's message for a failed side
        if failed:
            print(f"| {text} | " + " | ".join(failed.get(path, "-") for path in ("compiled", "numpy")) + " | - |")
            continue
        med = {path: statistics.median(t) * 1e3 for path, t in times.items()}
        best = {path: min(t) * 1e3 for path, t in times.items()}
        print(f"| {text} | {ms(med['compiled'])} ({ms(best['compiled'])}) | {ms(med['numpy'])} "
              f"({ms(best['numpy'])}) | **{med['compiled'] / med['numpy']:.2f}x** |", flush=True)
    print(f"load average at the end: {bench.load_average()}")


if __name__ == "__main__":
    main()
