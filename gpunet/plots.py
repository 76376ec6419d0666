"""What the network learned, as four PNG files: learning curves, confusion matrix,
misclassified digits, and the first layer's weights.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no
display, no global state) at fixed sizes, so a plot's pixel size depends only on
what it shows. matplotlib is the optional extra ``gpunet[plot]``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gpunet.atomic_file import check_writable
from gpunet.errors import GpunetError

DPI = 100
FILES = {
    "learning_curves": "learning_curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "misclassified": "misclassified.png",
    "weights": "first_layer_weights.png",
}
# Figure sizes in inches (pixels = inches * DPI); the weights grid grows with the hidden units.
CURVES_SIZE = (10.0, 4.0)
CONFUSION_SIZE = (7.0, 6.0)
MISCLASSIFIED_GRID = (5, 8)  # rows, columns: the most confident mistakes first
MISCLASSIFIED_SIZE = (10.0, 8.0)
WEIGHTS_WIDTH = 12.0  # inches across, however many units
WEIGHTS_CELL_MAX = 1.2  # inches per unit at most (few units)


def require_matplotlib():
    """The Figure class, or a GpunetError naming the install command."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise GpunetError("plots need matplotlib: pip install 'gpunet[plot]'") from None
    return Figure


def prepare_out_dir(out_dir: Path, option: str = "--out") -> Path:
    """Create the folder if missing; refuse a file in its place (checked before any work)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GpunetError(f"{option} {out_dir}: is a file; give a folder for the plots")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GpunetError(f"{option} {out_dir}: cannot create the folder ({error.strerror or error})") from None
    try:  # a read-only folder fails here, not after training
        check_writable(out_dir)
    except OSError as error:
        raise GpunetError(f"{option} {out_dir}: cannot write in the folder ({error.strerror or error})") from None
    return out_dir


def training_validation_digits(meta: dict, model_path) -> "Digits":  # noqa: F821
    """The validation digits the model was trained beside, re-derived from its metadata.

    Training holds out the first ``val_size`` digits of a seeded shuffle of its
    data; the same data, size and seed give the same digits.
    """
    from gpunet.data import SAMPLE_NAME, load_digits, load_sample, split_validation

    training = meta.get("training") or {}
    source, val_size, seed = training.get("data"), training.get("val_size"), training.get("seed")
    ask = "give labeled digits with --data"
    if not isinstance(source, str) or not isinstance(val_size, int) or not isinstance(seed, int):
        raise GpunetError(f"{model_path}: does not record its training data, split size and seed; {ask}")
    if val_size == 0:
        raise GpunetError(f"{model_path}: was trained without validation digits (--val-size 0); {ask}")
    if source == SAMPLE_NAME:
        digits = load_sample()
    elif Path(source).exists():
        digits = load_digits(source, labeled=True)
    else:
        raise GpunetError(f"{model_path}: was trained on {source}, which is not found from here; {ask}")
    return split_validation(digits, val_size, seed)[1]


def write_plots(model_path, out_dir, digits=None) -> list[Path]:
    """Write the four PNG files for a saved model into ``out_dir``; returns their paths.

    ``digits`` (labeled) feed the confusion matrix and the misclassified grid;
    by default the model's own validation digits.
    """
    from gpunet.backend import CpuBackend
    from gpunet.checkpoint import load_model
    from gpunet.model import Network

    Figure = require_matplotlib()
    out_dir = prepare_out_dir(out_dir)
    params, meta = load_model(model_path)
    if digits is None:
        digits = training_validation_digits(meta, model_path)
    if digits.labels is None:
        raise GpunetError(f"{digits.source}: holds no labels; the confusion matrix needs labeled digits")
    network = Network(CpuBackend(), params)
    probs = network.probabilities(digits.images)

    figures = {
        "learning_curves": learning_curves(Figure, meta),
        "confusion_matrix": confusion_matrix(Figure, digits.labels, probs.argmax(axis=1), digits.source),
        "misclassified": misclassified(Figure, digits.images, digits.labels, probs, digits.source),
        "weights": first_layer_weights(Figure, params[0], hidden=len(params) > 2),
    }
    return [save(figure, out_dir / FILES[name]) for name, figure in figures.items()]



def save(figure, path: Path) -> Path:
    from gpunet.atomic_file import write_atomically

    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=DPI))
    return path


def describe(meta: dict) -> str:
    sizes = "-".join(str(s) for s in meta.get("layer_sizes", []))
    training = meta.get("training") or {}
    optimizer, lr = training.get("optimizer"), training.get("lr")
    settings = f", {optimizer} lr {lr:g}" if optimizer and isinstance(lr, (int, float)) else ""
    return f"network {sizes}{settings}, trained on {training.get('data', 'unknown data')}"


def learning_curves(Figure, meta: dict):
    """Loss and accuracy per epoch, training and validation, with the kept epoch marked."""
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=CURVES_SIZE, dpi=DPI, layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    history = [h for h in meta.get("history") or [] if isinstance(h, dict) and "epoch" in h]
    if not history:
        for axes in (loss_axes, accuracy_axes):
            axes.text(0.5, 0.5, "no training history in this model file", ha="center", va="center")
    epochs = [h["epoch"] for h in history]
    marker = "o" if len(history) < 30 else None
    for axes, key, scale, label in ((loss_axes, "loss", 1, "cross-entropy loss"),
                                    (accuracy_axes, "accuracy", 100, "accuracy (%)")):
        for part, style in (("train", "-"), ("val", "--")):
            values = [h.get(f"{part}_{key}") for h in history]
            if values and all(v is not None for v in values):
                axes.plot(epochs, [scale * v for v in values], style, marker=marker, markersize=3,
                          label="training" if part == "train" else "validation")
        best = meta.get("best_epoch")
        if isinstance(best, int) and history:
            axes.axvline(best, color="gray", linestyle=":", linewidth=1, label=f"kept: epoch {best}")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(history) == 1:  # one point: matplotlib's own margins would show ticks at 0.95 ... 1.05
            axes.set_xlim(epochs[0] - 1, epochs[0] + 1)
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        if history:
            axes.legend()
    if len(history) > 1:
        loss_axes.set_yscale("log")
    figure.suptitle(f"Learning curves: {describe(meta)}")
    return figure


def confusion_matrix(Figure, truth: np.ndarray, predicted: np.ndarray, source: str):
    """Counts of (true, predicted) pairs; the colour is the share of the true digit's row."""
    from gpunet.metrics import confusion_counts

    counts = confusion_counts(truth, predicted)
    rows = counts.sum(axis=1, keepdims=True)
    shares = counts / np.maximum(rows, 1)
    figure = Figure(figsize=CONFUSION_SIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for t in range(10):
        for p in range(10):
            if counts[t, p]:
                axes.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=8,
                          color="white" if shares[t, p] > 0.5 else "black")
    axes.set_xticks(range(10))
    axes.set_yticks(range(10))
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true digit's row")
    accuracy = 100 * np.trace(counts) / max(counts.sum(), 1)
    axes.set_title(f"{source}\n{len(truth):,} digits, accuracy {accuracy:.2f}%", fontsize=10)
    return figure


def misclassified(Figure, images: np.ndarray, truth: np.ndarray, probs: np.ndarray, source: str):
    """The most confidently wrong digits, each titled with its true and predicted label.

    The digits are tiled into one picture (one imshow, not one axes per digit: ten times faster).
    """
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), predicted]
    wrong = np.flatnonzero(predicted != truth)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    n_rows, n_cols = MISCLASSIFIED_GRID
    shown = wrong[: n_rows * n_cols]
    cell_w, cell_h, caption = 34, 46, 16  # pixels of the tiled picture: a 28x28 digit under a caption
    mosaic = np.zeros((n_rows * cell_h, n_cols * cell_w))
    figure = Figure(figsize=MISCLASSIFIED_SIZE, dpi=DPI, layout="constrained")
    axes = figure.subplots()
    for cell, k in enumerate(shown):
        row, col = divmod(cell, n_cols)
        top, left = row * cell_h + caption, col * cell_w + 3
        mosaic[top : top + 28, left : left + 28] = images[k].reshape(28, 28)
        axes.text(left + 14, top - 1, f"true {truth[k]}, pred {predicted[k]}\np = {confidence[k]:.2f}",
                  ha="center", va="bottom", fontsize=9)
    axes.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    axes.set_axis_off()
    if not len(wrong):
        axes.text(0.5, 0.5, "no misclassified digits", fontsize=16, ha="center", transform=axes.transAxes)
    more = f" (the {len(shown)} most confident shown)" if len(wrong) > len(shown) else ""
    figure.suptitle(f"Misclassified: {len(wrong):,} of {len(truth):,} digits of {source}{more}")
    return figure


def weights_grid(units: int) -> tuple[int, int]:
    """(rows, columns) of the weights figure: near square."""
    columns = max(1, math.ceil(math.sqrt(units)))
    return math.ceil(units / columns), columns


def weights_size(units: int) -> tuple[float, float]:
    """The weights figure's size in inches: each unit a square cell, plus room for the title."""
    rows, columns = weights_grid(units)
    cell = min(WEIGHTS_CELL_MAX, WEIGHTS_WIDTH / columns)
    return round(columns * cell, 2), round(rows * cell + 0.6, 2)


def first_layer_weights(Figure, W1: np.ndarray, hidden: bool):
    """Each row of W1 as a 28x28 image, tiled: red pixels excite the unit, blue ones inhibit it.

    Each unit is scaled by its own largest weight, so faint units show their pattern too.
    """
    from matplotlib import colormaps

    units = W1.shape[0]
    rows, columns = weights_grid(units)
    gap = 2
    step = 28 + gap
    mosaic = np.full((rows * step - gap, columns * step - gap), np.nan)
    for unit in range(units):
        row, col = divmod(unit, columns)
        weights = W1[unit].reshape(28, 28).astype(np.float64)
        mosaic[row * step : row * step + 28, col * step : col * step + 28] = weights / (np.abs(weights).max() or 1.0)
    width, height = weights_size(units)
    figure = Figure(figsize=(width, height), dpi=DPI)
    axes = figure.add_axes((0.01, 0.01, 0.98, 1 - 0.6 / height - 0.01))
    cmap = colormaps["RdBu_r"].with_extremes(bad="white")
    axes.imshow(mosaic, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    axes.set_axis_off()
    what = f"each of the {units} hidden units" if hidden else f"each of the {units} classes (no hidden layer)"
    figure.suptitle(f"First layer: the 784 weights into {what}; red excites, blue inhibits", fontsize=11)
    return figure
