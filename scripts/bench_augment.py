"""Benchmark: what augmentation (gpunet train --augment) costs a CNN's training epoch on the CPU.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_augment.py [--samples 8192] [--rounds 3]
        [--arch conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5]

The network, batch and optimizer of ``gpunet train --arch SPEC`` (batch 64, Adam at its defaults; a spec of dense
layers alone is the notes' network, whose plain epochs take the compiled dense path where numba is, and whose
augmented ones take NumPy's steps, since that path reads the uint8 digits itself), trained by the loop's own ``train_epoch`` on the first ``--samples`` digits of
train.csv.gz (synthetic digits where it is missing). Each round times, in turn:

* an epoch without augmentation, and an epoch with it (the epoch's transforms drawn on the host, as
  ``train`` does, inside the timing);
* the augmentation alone: the host's draw plus the compiled pass (backends/cpu_augment.py) over every batch of
  an epoch, as the steps call it;
* NumPy's generic pass (gpunet/nn/augment.py's ``affine_sample``) over the first 16 batches, scaled to the epoch:
  what the CPU would spend without numba.

The medians of the rounds are printed, with the augmentation's share of an epoch without it. A benchmark, not a
test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the data, timing, the machine's description)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # gpunet from this checkout, installed or not

from gpunet.backends.base import Backend  # noqa: E402
from gpunet.backends.cpu import CpuBackend  # noqa: E402
from gpunet.nn import augment  # noqa: E402
from gpunet.nn.model import arch_text, dense_sizes, parse_arch_text  # noqa: E402
from gpunet.nn.optimizers import make_optimizer  # noqa: E402
from gpunet.training.loop import DeviceData, TrainConfig, epoch_transforms, new_network, train_epoch  # noqa: E402

ARCH = "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5"
BATCH = 64
NUMPY_BATCHES = 16  # NumPy's pass is slow: timed on this many batches, scaled to the epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--arch", default=ARCH, help="the network, as gpunet train --arch takes it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=bench.DATA, help="a train.csv.gz (synthetic digits without)")
    args = parser.parse_args()

    digits, source = bench.bench_data(args.samples, args.data)
    backend = CpuBackend()
    arch = parse_arch_text(args.arch)
    sizes = dense_sizes(arch)  # as the command line: dense layers alone are the notes' network
    config = TrainConfig(hidden=sizes or (), arch=None if sizes is not None else arch_text(arch), batch_size=BATCH,
                         seed=0, augment=True)
    network = new_network(backend, config, 784)
    optimizer = make_optimizer(config.optimizer, network.groups, config.lr, config.weight_decay)
    data = DeviceData(backend, digits)
    m, rng = len(data), np.random.default_rng(1)
    batches = [np.arange(start, min(start + BATCH, m)) for start in range(0, m, BATCH)]

    def epoch(augmented: bool, number: int) -> None:
        transforms = epoch_transforms(backend, config, number, m) if augmented else None
        train_epoch(network, optimizer, data, BATCH, rng, transforms=transforms)

    def passes(ops, number: int, count: int) -> None:
        transforms = epoch_transforms(backend, config, number, m)
        order = rng.permutation(m)
        for index in batches[:count]:
            ops.gather_augmented(data.images, order[index], transforms, np.float32)

    warm = DeviceData(backend, bench.Digits(digits.images[:512], digits.labels[:512]))
    train_epoch(network, optimizer, warm, BATCH, rng, transforms=epoch_transforms(backend, config, 0, 512))
    times = {"plain": [], "augmented": [], "augmentation alone": [], "numpy pass": []}
    for number in range(1, args.rounds + 1):
        times["plain"].append(bench.seconds(lambda: epoch(False, number)))
        times["augmented"].append(bench.seconds(lambda: epoch(True, number)))
        times["augmentation alone"].append(bench.seconds(lambda: passes(backend, number, len(batches))))
        count = min(NUMPY_BATCHES, len(batches))
        times["numpy pass"].append(bench.seconds(lambda: passes(Backend(), number, count)) * len(batches) / count)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'CNN' if sizes is None else 'MLP'} {args.arch}, batch {BATCH}, {m:,} digits ({source}; load {bench.load_average()}); "
          f"{augment.DEFAULT_RANGES.describe()}")
    for name, values in times.items():
        print(f"  {name:>19}: " + " ".join(f"{t * 1e3:,.0f}" for t in values) + f" ms; median {median[name] * 1e3:,.0f} ms")
    print(f"augmented epoch / plain epoch: {median['augmented'] / median['plain']:.3f}; augmentation alone: "
          f"{100 * median['augmentation alone'] / median['plain']:.1f}% of a plain epoch (compiled pass), "
          f"{100 * median['numpy pass'] / median['plain']:.0f}% with NumPy's")


if __name__ == "__main__":
    main()
