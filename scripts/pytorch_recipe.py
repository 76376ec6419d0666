"""The PyTorch recipe of issue 16, as a user runs it: read Kaggle's train.csv with pandas, hold out digits, train a
LeNet-like CNN for 3 epochs with AdamW and a one-cycle schedule, print the validation accuracy and the timings.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/pytorch_recipe.py --data ../shared/data/train.csv.gz

It imports nothing of gpunet: it is the reference that ``gpunet train --preset fast`` is timed against
(scripts/bench_presets.py recipe runs both, each in a fresh process). The network is gpunet's
``conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5``: two valid 5x5 convolutions (32 and 64 filters) each with
ReLU and 2x2 max pooling, a dense layer of 256 ReLU units, dropout 0.5, 10 logits; cross-entropy; AdamW (lr 2e-3,
weight decay 0.01 on every parameter, PyTorch's default) under OneCycleLR (its defaults: 30% warm-up from
lr/25, cosine annealing, beta1 cycled 0.95-0.85), batch 64, reshuffled every epoch.

The held-out digits are gpunet's for the same --seed and --val-size: the first val_size of
``numpy.random.default_rng(seed).permutation(m)`` (gpunet.files.data.validation_rows), so both score the same
digits. The rest differs as two libraries' seeds must: PyTorch's initial weights (its default init), shuffle
and dropout masks come from ``torch.manual_seed(seed)``.

The batches are drawn by indexing one float tensor with a random permutation, not through a DataLoader
(whose per-digit indexing and collation would only slow PyTorch down). Last lines printed:

    Validation accuracy 99.12% (1,000 digits)
    Timings: import torch 1.2 s, read CSV 3.4 s, train 70.1 s (epochs 23.1 22.9 24.1 s), validate 0.3 s, total 75.0 s
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the imports: the import of torch is part of what a user waits for

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "train.csv.gz"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA,
                        help="Kaggle's train.csv or train.csv.gz (label, pixel0..783)")
    parser.add_argument("--val-size", type=int, default=1000, help="digits held out for validation")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (as gpunet's) and torch.manual_seed")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW's rate, OneCycleLR's max_lr")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's own)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give 1 or more")
    if args.val_size < 1:
        parser.error(f"--val-size {args.val_size}: give 1 or more (the recipe reports a validation accuracy)")
    return args


def read_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (m, 784), labels int64 (m,)) of a Kaggle train.csv[.gz], read with pandas."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=np.uint8)
    values = frame.to_numpy()
    if values.ndim != 2 or values.shape[1] != 785:
        raise ValueError(f"has {values.shape[1] if values.ndim == 2 else 0} columns, not 785 (label, pixel0..783)")
    return np.ascontiguousarray(values[:, 1:]), values[:, 0].astype(np.int64)


def split(m: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows): the first val_size of a seeded permutation held out, as gpunet does."""
    order = np.random.default_rng(seed).permutation(m)
    return order[val_size:], order[:val_size]


def lenet(nn):
    """gpunet's conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5 and its 10 logits."""
    return nn.Sequential(nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    imported = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        images, labels = read_digits(args.data)
    except (OSError, ValueError) as error:  # a missing or malformed file: one line, no traceback
        print(f"error: --data {args.data}: {error}", file=sys.stderr)
        return 1
    if not args.val_size < len(labels):
        print(f"error: --val-size {args.val_size}: {args.data} holds only {len(labels):,} digits", file=sys.stderr)
        return 1
    read = time.perf_counter()

    torch.manual_seed(args.seed)
    X = torch.from_numpy(images).float().div_(255).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels)
    train_rows, val_rows = (torch.from_numpy(rows) for rows in split(len(y), args.val_size, args.seed))
    X_train, y_train, X_val, y_val = X[train_rows], y[train_rows], X[val_rows], y[val_rows]
    model = lenet(torch.nn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = -(-len(y_train) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads); {args.data.name}: {len(y):,} digits -> "
          f"{len(y_train):,} training, {len(y_val):,} validation (split seed {args.seed})")
    print(f"LeNet-like CNN, AdamW lr {args.lr:g} weight decay {args.weight_decay:g}, OneCycleLR, "
          f"batch {args.batch_size}, {args.epochs} epochs")

    epoch_seconds = []
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        model.train()
        total, correct = 0.0, 0
        for index in torch.randperm(len(y_train)).split(args.batch_size):
            xb, yb = X_train[index], y_train[index]
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
        epoch_seconds.append(time.perf_counter() - started)
        print(f"epoch {epoch}/{args.epochs}  loss {total / len(y_train):.4f}  "
              f"acc {100 * correct / len(y_train):6.2f}%  ({epoch_seconds[-1]:.2f}s)", flush=True)
    trained = time.perf_counter()

    model.eval()
    with torch.no_grad():
        right = sum(int((model(X_val[i:i + 1000]).argmax(1) == y_val[i:i + 1000]).sum())
                    for i in range(0, len(y_val), 1000))
    done = time.perf_counter()
    print(f"Validation accuracy {100 * right / len(y_val):.2f}% ({len(y_val):,} digits)")
    print(f"Timings: import torch {imported - STARTED:.1f} s, read CSV {read - imported:.1f} s, "
          f"train {trained - read:.1f} s (epochs {' '.join(f'{s:.1f}' for s in epoch_seconds)} s), "
          f"validate {done - trained:.1f} s, total {done - STARTED:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
