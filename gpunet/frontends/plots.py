"""What the network learned, as four PNG files: learning curves, confusion matrix,
misclassified digits, and the first layer's weights.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no
display, no global state) at fixed sizes, so a plot's pixel size depends only on
what it shows. matplotlib is the optional extra ``gpunet[plot]``.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from gpunet.files.atomic_file import check_writable
from gpunet.errors import GpunetError, printable
from gpunet.files.outputs import PNG, refusal, save_replacing_only

DPI = 100
FILES = {
    "learning_curves": "learning_curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "misclassified": "misclassified.png",
    "weights": "first_layer_weights.png",
}
KINDS = tuple(FILES)  # every plot, in this order; `gpunet plot --kind` draws some alone
NEED_DIGITS = ("confusion_matrix", "misclassified")  # the plots drawn from labeled digits
# Figure sizes in inches (pixels = inches * DPI); the weights grid grows with the hidden units.
CURVES_SIZE = (10.0, 4.0)
CONFUSION_SIZE = (7.0, 6.0)
CONFUSION_TITLE_WIDTH = 4.5  # inches: the title is centred on the matrix, left of the colour bar
TITLE_MARGIN = 0.2  # inches kept clear at each side of a title
MISCLASSIFIED_GRID = (5, 8)  # rows, columns at most: the most confident mistakes first
MISCLASSIFIED_CELL = 1.1  # inches across one digit's cell; the grid has as many cells as digits shown (or about)
MISCLASSIFIED_MIN_WIDTH = 5.0  # inches: room for the title's lines
MISCLASSIFIED_TITLE_BAND = 0.7  # inches above the grid for two title lines
MISCLASSIFIED_MARGIN = 0.1  # inches around the figure's contents
MISCLASSIFIED_CELL_PIXELS = (34, 46, 16)  # width, height, caption: mosaic pixels of a 28x28 digit under a caption
WEIGHTS_WIDTH = 12.0  # inches across the grid, unless the cells would leave these bounds:
WEIGHTS_CELL_MAX = 1.2  # inches per unit at most (few units)
WEIGHTS_CELL_MIN = 0.6  # inches per unit at least (many units): room for the label "unit 1023"
WEIGHTS_MIN_WIDTH = 6.0  # inches: the two title lines fit across
WEIGHTS_TITLE_BAND = 0.65  # inches above the grid for the two title lines
WEIGHTS_MARGIN = 0.1  # inches around the figure's contents
WEIGHTS_GAP = 4  # mosaic pixels between neighbouring units' images
WEIGHTS_TITLE_SIZE = 11  # points
WEIGHTS_LABEL_SIZE = 8  # points


def require_matplotlib():
    """The Figure class, or a GpunetError naming the install command."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise GpunetError("plots need matplotlib: pip install 'gpunet[plot]'") from None
    return Figure


def prepare_out_dir(out_dir: Path, option: str = "--out", kinds=KINDS) -> Path:
    """Create the folder if missing; refuse a file in its place, or a file at one of the ``kinds``' names that a
    PNG may not replace by outputs.py's rule (another kind, a link, write-protected: checked before any work)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GpunetError(f"{option} {out_dir}: is a file; give a folder for the plots")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GpunetError(f"{option} {out_dir}: cannot create the folder ({error.strerror or error})") from None
    for name in (FILES[kind] for kind in kinds):  # replace only images: never a user's other file of that name
        reason = refusal(out_dir / name, PNG)
        if reason is not None:
            raise GpunetError(f"{option} {out_dir}: {name} there {reason}; refusing to replace it, "
                              "give another folder")
    try:  # a read-only folder fails here, not after training
        check_writable(out_dir)
    except OSError as error:
        raise GpunetError(f"{option} {out_dir}: cannot write in the folder ({error.strerror or error})") from None
    return out_dir


def training_validation_digits(meta: dict, model_path) -> "Digits":  # noqa: F821
    """The validation digits the model was trained beside, re-derived from its metadata.

    Training holds out the first ``val_size`` digits of a seeded shuffle of its
    data; the same data, size and split seed give the same digits.
    """
    from gpunet.files.data import SAMPLE_NAME, load_digits, load_sample, split_validation
    from gpunet.files.model_schema import split_seed

    training = meta.get("training") or {}
    source, val_size, seed = training.get("data"), training.get("val_size"), split_seed(training)
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
        raise GpunetError(f"{model_path}: was trained on {printable(source)}, which is not found from here; {ask}")
    return split_validation(digits, val_size, seed)[1]


def write_plots(model_path, out_dir, digits=None, kinds=KINDS) -> list[Path]:
    """Write the PNG files of ``kinds`` (all four by default) for a saved model into ``out_dir``; returns their paths.

    ``digits`` (labeled) feed the confusion matrix and the misclassified grid;
    by default the model's own validation digits.
    """
    from gpunet.backends.cpu import CpuBackend
    from gpunet.files.checkpoint import load_model, network_from_file

    require_matplotlib()
    params, meta = load_model(model_path)
    return plot_network(network_from_file(params, meta, CpuBackend(), str(model_path)), meta, model_path, out_dir,
                        digits, kinds)


def plot_network(network, meta: dict, model_path, out_dir, digits=None, kinds=KINDS) -> list[Path]:
    """``write_plots`` for a model already read: its network (on the CPU) and metadata, from ``model_path``.

    Labeled digits are read (or re-derived) only for the kinds drawn from them: the learning curves and the
    weights of a model whose training data is gone can still be drawn alone.
    """
    Figure = require_matplotlib()
    kinds = [kind for kind in KINDS if kind in kinds]  # each once, in the usual order
    out_dir = prepare_out_dir(out_dir, kinds=kinds)
    if any(kind in NEED_DIGITS for kind in kinds):
        if digits is None:
            digits = training_validation_digits(meta, model_path)
        if digits.labels is None:
            raise GpunetError(f"{digits.source}: holds no labels; the confusion matrix needs labeled digits")
        probs = network.probabilities(digits.images)

    draw = {
        "learning_curves": lambda: learning_curves(Figure, meta),
        "confusion_matrix": lambda: confusion_matrix(Figure, digits.labels, probs.argmax(axis=1), digits.source),
        "misclassified": lambda: misclassified(Figure, digits.images, digits.labels, probs, digits.source),
        "weights": lambda: first_layer_weights(Figure, network.host_params()[0], hidden=len(network.params) > 2,
                                               kernel=first_kernel(network)),
    }
    return [save(draw[kind](), out_dir / FILES[kind]) for kind in kinds]


def first_kernel(network) -> int | None:
    """The kernel size k where the first layer with weights is a convolution (W1 rows are k x k filters), else None."""
    from gpunet.nn.layers import Conv2D

    first = next((layer for layer in getattr(network, "layers", []) if layer.param_shapes()), None)
    return first.k if isinstance(first, Conv2D) else None


def filter_images(W1: np.ndarray, k: int) -> np.ndarray:
    """A one-channel convolution's filters W1 (filters, k.k) as 28x28 images: each k x k filter enlarged by a
    whole factor (nearest neighbour) and centred, NaN (drawn white) around it."""
    scale = max(1, 28 // k)
    side = min(28, k * scale)
    images = np.full((W1.shape[0], 28, 28), np.nan)
    start = (28 - side) // 2
    enlarged = W1.reshape(-1, k, k).repeat(scale, axis=1).repeat(scale, axis=2)[:, :side, :side]
    images[:, start:start + side, start:start + side] = enlarged
    return images.reshape(W1.shape[0], 784)


def save(figure, path: Path) -> Path:
    """Write a figure as a PNG, whole or not at all, through outputs.py's save: ``path`` is checked again just
    before the rename (a file a PNG may not replace that appeared meanwhile is kept: one line), and the temporary
    files of dead processes in the folder are removed."""
    from gpunet.files.atomic_file import write_atomically

    def write(temporary: Path) -> None:
        write_atomically(temporary, lambda f: figure.savefig(f, format="png", dpi=DPI))

    return save_replacing_only(path, PNG, "new", write, refuse=True, noun="the plot").path


def wrap_to_width(text, width: float) -> None:
    """Break a title's lines until it is at most ``width`` inches across.

    Titles name data files, whose paths can be longer than the figure is wide;
    a path with no spaces is broken anywhere rather than cut off at the edge.
    """
    from matplotlib.backends.backend_agg import RendererAgg

    figure = text.get_figure()
    renderer = RendererAgg(1, 1, figure.dpi)  # measures text; the figure's own canvas stays as it is
    lines = text.get_text().split("\n")
    chars = max(len(line) for line in lines)
    while text.get_window_extent(renderer).width > width * figure.dpi and chars > 1:
        chars -= max(1, chars // 10)
        text.set_text("\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in lines))


def describe(meta: dict) -> str:
    """The model in a few words (its layers, optimizer and rate, training data), for plot titles."""
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    optimizer, lr = training.get("optimizer"), training.get("lr")
    settings = (f", {optimizer} lr {lr:g}" if isinstance(optimizer, str) and isinstance(lr, (int, float))
                and not isinstance(lr, bool) else "")
    data = training.get("data")
    return f"{network_text(meta)}{settings}, trained on {data if isinstance(data, str) else 'unknown data'}"


def network_text(meta: dict) -> str:
    """The layers as `gpunet train`'s banner names them: "network 784-16-16-10" (the notes' network, version 1:
    ``layer_sizes``), "network 784-conv8k5-pool2-dense32-10" (an ``architecture`` spec, version 2)."""
    sizes = meta.get("layer_sizes")
    if isinstance(sizes, list) and sizes and all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        return "network " + "-".join(map(str, sizes))
    spec, shape, outputs = meta.get("architecture"), meta.get("input_shape"), meta.get("outputs")
    if isinstance(spec, str) and spec:
        inputs = (math.prod(shape) if isinstance(shape, list) and shape
                  and all(isinstance(s, int) and not isinstance(s, bool) for s in shape) else None)
        parts = [*([str(inputs)] if inputs else []), *spec.split(","),
                 *([str(outputs)] if isinstance(outputs, int) and not isinstance(outputs, bool) else [])]
        return "network " + "-".join(parts)
    return "a network of unrecorded layers"


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
    wrap_to_width(figure.suptitle(f"Learning curves: {describe(meta)}"), CURVES_SIZE[0] - 2 * TITLE_MARGIN)
    return figure


def confusion_matrix(Figure, truth: np.ndarray, predicted: np.ndarray, source: str):
    """Counts of (true, predicted) pairs; the colour is the share of the true digit's row."""
    from gpunet.training.metrics import confusion_counts

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
    title = axes.set_title(f"{source}\n{len(truth):,} digits, accuracy {accuracy:.2f}%", fontsize=10)
    wrap_to_width(title, CONFUSION_TITLE_WIDTH)
    return figure


def misclassified(Figure, images: np.ndarray, truth: np.ndarray, probs: np.ndarray, source: str):
    """The most confidently wrong digits, each titled with its true and predicted label.

    The digits are tiled into one picture (one imshow, not one axes per digit: ten times faster).
    """
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), predicted]
    wrong = np.flatnonzero(predicted != truth)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    shown = wrong[: math.prod(MISCLASSIFIED_GRID)]
    n_rows, n_cols = misclassified_grid(len(shown))
    cell_w, cell_h, caption = MISCLASSIFIED_CELL_PIXELS
    mosaic = np.zeros((n_rows * cell_h, n_cols * cell_w))
    figure = Figure(figsize=misclassified_size(len(shown)), dpi=DPI, layout="constrained")
    figure.get_layout_engine().set(w_pad=MISCLASSIFIED_MARGIN / 2, h_pad=MISCLASSIFIED_MARGIN / 2)
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
    title = figure.suptitle(f"Misclassified: {len(wrong):,} of {len(truth):,} digits of {source}{more}")
    wrap_to_width(title, misclassified_size(len(shown))[0] - 2 * TITLE_MARGIN)
    return figure


def misclassified_grid(count: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` digits: at most MISCLASSIFIED_GRID, as few rows as that allows, and the
    columns then evened out (10 digits: 2 x 5, not a row of 8 over a row of 2)."""
    max_rows, max_cols = MISCLASSIFIED_GRID
    count = max(1, min(count, max_rows * max_cols))
    rows = math.ceil(count / max_cols)
    return rows, math.ceil(count / rows)


def misclassified_size(count: int) -> tuple[float, float]:
    """The misclassified figure's size in inches (whole pixels) for ``count`` digits shown: its grid of cells,
    the title's band and margins, so that a few mistakes do not leave most of the picture blank."""
    rows, columns = misclassified_grid(count)
    cell_w, cell_h, _ = MISCLASSIFIED_CELL_PIXELS
    width = max(MISCLASSIFIED_MIN_WIDTH, columns * MISCLASSIFIED_CELL + 2 * MISCLASSIFIED_MARGIN)
    height = MISCLASSIFIED_TITLE_BAND + rows * MISCLASSIFIED_CELL * cell_h / cell_w + 2 * MISCLASSIFIED_MARGIN
    return whole_pixels(width), whole_pixels(height)


def weights_grid(units: int) -> tuple[int, int]:
    """(rows, columns) of the weights figure: near square, with the fewest empty cells (10 digits: 2 x 5)."""
    squarest = max(1, math.ceil(math.sqrt(units)))
    widest = max(squarest, math.ceil(math.sqrt(2 * units)))  # at most about twice as wide as tall
    columns = min(range(squarest, widest + 1), key=lambda c: math.ceil(units / c) * c - units)
    return math.ceil(units / columns), columns


def weights_cell(units: int) -> float:
    """Inches across one unit's cell: the grid fills WEIGHTS_WIDTH, within readable bounds."""
    columns = weights_grid(units)[1]
    return min(WEIGHTS_CELL_MAX, max(WEIGHTS_CELL_MIN, WEIGHTS_WIDTH / columns))


def weights_cell_pixels(units: int) -> tuple[int, int]:
    """(caption, step): mosaic pixels above each 28x28 image for its label, and between cells.

    A cell is ``step`` mosaic pixels across and ``weights_cell`` inches, so the caption
    gets as many mosaic pixels as its line of text needs at that scale.
    """
    step = 28 + WEIGHTS_GAP
    scale = weights_cell(units) * DPI / step  # figure pixels per mosaic pixel
    caption = math.ceil(1.5 * WEIGHTS_LABEL_SIZE * DPI / 72 / scale)  # a line of text, with room under it
    return caption, step


def weights_mosaic_inches(units: int) -> tuple[float, float]:
    """The weights figure's size in inches for a grid of images."""
    rows, columns = weights_grid(units)
    caption, step = weights_cell_pixels(units)
    cell = weights_cell(units)
    return columns * cell, rows * (caption + step) * cell / step


def weights_size(units: int) -> tuple[float, float]:
    """The weights figure's size in inches (whole pixels): the mosaic, margins and the title's band."""
    mosaic_width, mosaic_height = weights_mosaic_inches(units)
    width = max(WEIGHTS_MIN_WIDTH, mosaic_width + 2 * WEIGHTS_MARGIN)
    height = WEIGHTS_TITLE_BAND + mosaic_height + WEIGHTS_MARGIN
    return whole_pixels(width), whole_pixels(height)


def whole_pixels(inches: float) -> float:
    """Inches rounded up to a whole pixel (ignoring float noise below a millionth of one)."""
    return math.ceil(round(inches * DPI, 6)) / DPI


def weights_mosaic(W1: np.ndarray) -> np.ndarray:
    """Each row of W1 as a 28x28 image scaled by its own largest weight, under a blank caption band.

    Between images is NaN (drawn white).
    """
    units = W1.shape[0]
    rows, columns = weights_grid(units)
    caption, step = weights_cell_pixels(units)
    mosaic = np.full((rows * (caption + step), columns * step), np.nan)
    for unit in range(units):
        top, left = weights_image_corner(unit, columns, caption, step)
        weights = W1[unit].reshape(28, 28).astype(np.float64)
        mosaic[top : top + 28, left : left + 28] = weights / (np.nanmax(np.abs(weights)) or 1.0)
    return mosaic


def weights_image_corner(unit: int, columns: int, caption: int, step: int) -> tuple[int, int]:
    """(top row, left column) of a unit's image in the mosaic: its cell, less the caption and half a gap."""
    row, col = divmod(unit, columns)
    return row * (caption + step) + caption, col * step + WEIGHTS_GAP // 2


def weights_titles(units: int, hidden: bool, kernel: int | None = None) -> tuple[str, str]:
    """The figure's two title lines, each short enough for the narrowest weights figure."""
    if kernel is not None:
        filters_named = f"{units} first-layer filter" + ("s" if units != 1 else "")
        return (f"The {filters_named}, {kernel}x{kernel} (filter k: row k of W1)",
                "red pixels excite a filter, blue ones inhibit it")
    if hidden:
        units_named = f"{units} hidden unit" + ("s" if units != 1 else "")
        return (f"First-layer weights of the {units_named} (unit k: row k of W1)",
                "red pixels excite a unit, blue ones inhibit it")
    return ("First-layer weights: one template per digit (no hidden layer)",
            "red pixels vote for the digit, blue ones against it")


def first_layer_weights(Figure, W1: np.ndarray, hidden: bool, kernel: int | None = None):
    """Each row of W1 as a 28x28 image, tiled and labelled: red pixels excite the unit, blue ones inhibit it.

    Without a hidden layer the rows are the ten digits' templates, labelled by digit. A first layer that
    is a convolution (``kernel``: its size) has its filters shown instead, enlarged (``filter_images``).
    Each unit is scaled by its own largest weight, so faint units show their pattern too.
    The tiles are one picture (one imshow, not one axes per unit: hundreds of units stay fast),
    placed at exact inches so each label's band fits its text.
    """
    from matplotlib import colormaps

    units = W1.shape[0]
    width, height = weights_size(units)
    mosaic_width, mosaic_height = weights_mosaic_inches(units)
    figure = Figure(figsize=(width, height), dpi=DPI)
    axes = figure.add_axes(((width - mosaic_width) / 2 / width, WEIGHTS_MARGIN / height,
                            mosaic_width / width, mosaic_height / height))
    cmap = colormaps["RdBu_r"].with_extremes(bad="white")
    images = W1 if kernel is None else filter_images(W1, kernel)
    axes.imshow(weights_mosaic(images), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    axes.set_axis_off()
    label_weights(axes, units, "filter" if kernel is not None else "unit" if hidden else "digit")
    figure.suptitle("\n".join(weights_titles(units, hidden, kernel)), fontsize=WEIGHTS_TITLE_SIZE,
                    y=1 - WEIGHTS_MARGIN / height, va="top")
    return figure


def label_weights(axes, units: int, kind: str) -> None:
    """Each image's label just above it: the digit it votes for, or the hidden unit's or filter's number."""
    columns = weights_grid(units)[1]
    caption, step = weights_cell_pixels(units)
    for unit in range(units):
        top, left = weights_image_corner(unit, columns, caption, step)
        label = f"{kind} {unit}"
        # pixel centres are whole numbers: the image's top edge is at top - 0.5
        axes.text(left + 13.5, top - 1, label, ha="center", va="bottom", fontsize=WEIGHTS_LABEL_SIZE)
