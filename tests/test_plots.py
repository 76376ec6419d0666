"""`gpunet plot` and `gpunet train --plot`: four PNG files, each of the expected size and not blank,
with every title and label inside the picture, and each first-layer image labelled."""

import sys

import numpy as np
import pytest
from PIL import Image

from gpunet.frontends import plots
from gpunet.frontends.cli import main
from tests.conftest import run, sample_npz
from gpunet.files.data import load_sample

pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install 'gpunet[plot]')")

HIDDEN = 32
TRAIN = ["train", "--device", "cpu", "--hidden", str(HIDDEN), "--epochs", "2", "--batch-size", "128"]


def expected_sizes(units: int, shown: int = 40) -> dict:
    def pixels(inches):
        return (round(inches[0] * plots.DPI), round(inches[1] * plots.DPI))

    return {
        plots.FILES["learning_curves"]: (1000, 400),
        plots.FILES["confusion_matrix"]: (700, 600),
        plots.FILES["misclassified"]: pixels(plots.misclassified_size(shown)),  # a full grid for 40 or more
        plots.FILES["weights"]: pixels(plots.weights_size(units)),
    }


def check_pngs(folder, units=HIDDEN, shown=40):
    """Every plot is a PNG of its size with more than one colour (``shown``: misclassified digits drawn);
    returns them as arrays."""
    images = {}
    for name, size in expected_sizes(units, shown).items():
        path = folder / name
        assert path.is_file(), f"{name} not written"
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == size, name
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 5, f"{name} looks blank"
        images[name] = pixels
    return images


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """1,500 labeled digits of the bundled sample as an .npz, for quick training runs."""
    return sample_npz(tmp_path_factory.mktemp("data"), 1500)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained through the CLI with --plot: (folder, model path)."""
    folder = tmp_path_factory.mktemp("plots")
    try:
        main(TRAIN + ["--out", str(folder / "model.npz"), "--plot", str(folder / "train_plots")])
    except SystemExit as exit:
        assert not exit.code
    return folder, folder / "model.npz"


def test_train_with_plot_writes_the_four_pngs(trained):
    folder, _ = trained
    check_pngs(folder / "train_plots")


def test_plot_rederives_the_validation_digits(capsys, trained, tmp_path):
    """Without --data, plot uses the digits training held out: the same pictures train --plot drew."""
    folder, model = trained
    code, out, err = run(capsys, "plot", "--model", str(model), "--out", str(tmp_path / "new" / "plots"))
    assert code == 0, err
    assert out.startswith("Plots: ")
    again = check_pngs(tmp_path / "new" / "plots")
    first = check_pngs(folder / "train_plots")
    for name in (plots.FILES["confusion_matrix"], plots.FILES["misclassified"]):
        np.testing.assert_array_equal(again[name], first[name], err_msg=name)


def test_plot_on_given_labeled_data(capsys, trained, tmp_path):
    sample = load_sample()
    data = tmp_path / "few.npz"
    np.savez(data, images=sample.images[:300], labels=sample.labels[:300])
    code, out, err = run(capsys, "plot", "--model", str(trained[1]), "--data", str(data), "--out", str(tmp_path))
    assert code == 0, err
    from gpunet.backends.cpu import CpuBackend
    from gpunet.frontends.cli import load_network

    probs = load_network(trained[1], CpuBackend())[0].probabilities(sample.images[:300])
    wrong = int(np.sum(probs.argmax(axis=1) != sample.labels[:300]))
    assert 0 < wrong
    check_pngs(tmp_path, shown=min(wrong, 40))


def test_without_hidden_layer_the_weights_are_the_class_templates(capsys, monkeypatch, tmp_path, small_data):
    """The saved weights figure shows W1's ten rows, each under its digit, nothing cut off."""
    from gpunet.files.checkpoint import load_model

    figures = record_saved_figures(monkeypatch)
    model = tmp_path / "linear.npz"
    code, _, err = run(capsys, *TRAIN, "--hidden", "none", "--data", str(small_data), "--out", str(model),
                       "--plot", str(tmp_path / "plots"))
    assert code == 0, err
    check_pngs(tmp_path / "plots", units=10)
    weights_figure = figures[plots.FILES["weights"]]
    check_labels_above_templates(weights_figure, load_model(model)[0][0], [f"digit {d}" for d in range(10)])
    assert texts_outside(weights_figure) == []


def test_no_validation_digits_train_plots_the_training_digits_and_plot_asks_for_data(capsys, tmp_path, small_data):
    model = tmp_path / "model.npz"
    code, _, err = run(capsys, *TRAIN, "--data", str(small_data), "--val-size", "0", "--out", str(model),
                       "--plot", str(tmp_path / "a"))
    assert code == 0, err
    check_pngs(tmp_path / "a")
    code, _, err = run(capsys, "plot", "--model", str(model), "--out", str(tmp_path / "b"))
    assert code == 1
    assert "--val-size 0" in err and "--data" in err and len(err.strip().splitlines()) == 1


def test_training_data_gone_asks_for_data(capsys, tmp_path, small_data):
    data = tmp_path / "digits.npz"
    data.write_bytes(small_data.read_bytes())
    model = tmp_path / "model.npz"
    code, _, err = run(capsys, *TRAIN, "--data", str(data), "--val-size", "100", "--out", str(model))
    assert code == 0, err
    data.unlink()
    code, _, err = run(capsys, "plot", "--model", str(model), "--out", str(tmp_path / "plots"))
    assert code == 1
    assert "not found" in err and "give labeled digits with --data" in err
    assert len(err.strip().splitlines()) == 1


def test_out_is_a_file(capsys, trained, tmp_path):
    target = tmp_path / "taken"
    target.write_text("a file")
    code, _, err = run(capsys, "plot", "--model", str(trained[1]), "--out", str(target))
    assert code == 1 and "is a file" in err


def test_train_plot_into_a_file_fails_before_training(capsys, tmp_path):
    target = tmp_path / "taken"
    target.write_text("a file")
    code, _, err = run(capsys, *TRAIN, "--out", str(tmp_path / "model.npz"), "--plot", str(target))
    assert code == 1 and "--plot" in err and "is a file" in err
    assert not (tmp_path / "model.npz").exists()


def test_missing_model(capsys, tmp_path):
    code, _, err = run(capsys, "plot", "--model", str(tmp_path / "none.npz"), "--out", str(tmp_path))
    assert code == 1 and "no such model file" in err


def test_missing_matplotlib_names_the_extra(capsys, monkeypatch, tmp_path, trained):
    """With matplotlib unimportable, both commands stop at once with the install command."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, _, err = run(capsys, "plot", "--model", str(trained[1]), "--out", str(tmp_path / "p"))
    assert code == 1 and "pip install 'gpunet[plot]'" in err
    code, out, err = run(capsys, *TRAIN, "--out", str(tmp_path / "model.npz"), "--plot", str(tmp_path / "p"))
    assert code == 1 and "pip install 'gpunet[plot]'" in err
    assert not (tmp_path / "model.npz").exists() and "epoch" not in out


# Readability: every text inside the figure, every first-layer image under its own label.

LONG_SOURCE = "/data/" + "a-folder-name-longer-than-some-figures-are-wide/" * 3 + "train.csv.gz"
HALF_PIXEL = 0.5  # extents are floats; less than half a pixel out is nothing a PNG shows


def record_saved_figures(monkeypatch) -> dict:
    """{file name: figure} for each figure plots.save writes from now on (it still writes them)."""
    figures, save = {}, plots.save

    def recording_save(figure, path):
        figures[path.name] = figure
        return save(figure, path)

    monkeypatch.setattr(plots, "save", recording_save)
    return figures


def drawn_texts(figure):
    """Draw the figure as savefig does (layout included); returns (the renderer, the texts it drew).

    The texts are those whose draw ran with something to show: a figure also holds texts
    that are never drawn (tick labels outside the axes' view keep stale strings).
    """
    from unittest import mock

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    drawn, draw = [], Text.draw

    def recording_draw(text, renderer):
        if text.get_visible() and text.get_text():
            drawn.append(text)
        return draw(text, renderer)

    canvas = FigureCanvasAgg(figure)
    with mock.patch.object(Text, "draw", autospec=True, side_effect=recording_draw):
        canvas.draw()
    return canvas.get_renderer(), drawn


def texts_outside(figure) -> list[str]:
    """The texts whose drawn extent reaches past an edge of the figure: cut off in the PNG."""
    renderer, texts = drawn_texts(figure)
    assert texts, "no text drawn: nothing checked"
    page = figure.bbox
    outside = []
    for text in texts:
        box = text.get_window_extent(renderer)
        if (box.x0 < page.x0 - HALF_PIXEL or box.x1 > page.x1 + HALF_PIXEL
                or box.y0 < page.y0 - HALF_PIXEL or box.y1 > page.y1 + HALF_PIXEL):
            outside.append(text.get_text())
    return outside


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each stretch of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def template_boxes(figure, W1: np.ndarray) -> dict:
    """{unit: its 28x28 image's extent in figure pixels}, found by content in the drawn images.

    Each unit's image is its row of W1 scaled by its largest |weight|; blank (NaN) pixels separate them.
    """
    from matplotlib.image import AxesImage
    from matplotlib.transforms import Bbox

    W1 = W1.astype(np.float64)  # as the figure scales it: elementwise, so equal far inside allclose's tolerance
    scaled = W1.reshape(-1, 28, 28) / np.abs(W1).max(axis=1).reshape(-1, 1, 1)
    projection = np.random.default_rng(0).normal(size=(28, 28, 4))  # a short fingerprint of each image
    fingerprints = np.einsum("uij,ijk->uk", scaled, projection)
    boxes = {}
    for image in figure.findobj(AxesImage):
        assert image.origin == "upper"
        pixels = np.ma.filled(np.ma.masked_invalid(np.ma.asarray(image.get_array(), dtype=float)), np.nan)
        shown = np.isfinite(pixels)
        (left, right, bottom, top), (height, width) = image.get_extent(), pixels.shape
        for r0, r1 in runs(shown.any(axis=1)):
            for c0, c1 in runs(shown.any(axis=0)):
                block = pixels[r0 : r1 + 1, c0 : c1 + 1]
                if block.shape != (28, 28) or not np.isfinite(block).all():
                    continue
                # the nearest fingerprint names the candidate; the whole image must then match it
                unit = int(np.abs(fingerprints - np.einsum("ij,ijk->k", block, projection)).sum(axis=1).argmin())
                if not np.allclose(block, scaled[unit]):
                    continue
                assert unit not in boxes, f"unit {unit} shown twice"
                corners = [(left + c * (right - left) / width, top + r * (bottom - top) / height)
                           for r, c in ((r0, c0), (r1 + 1, c1 + 1))]
                boxes[unit] = Bbox(image.axes.transData.transform(corners))
    assert sorted(boxes) == list(range(len(W1))), "not every row of W1 is shown"
    return boxes


def check_labels_above_templates(figure, W1: np.ndarray, labels: list[str]) -> None:
    """Label k sits just above unit k's image, and no label covers an image or another label."""
    renderer, texts = drawn_texts(figure)
    images = template_boxes(figure, W1)
    captions = [t for t in texts if t not in figure.texts]  # figure.texts: the title
    assert sorted(t.get_text() for t in captions) == sorted(labels)
    boxes = {labels.index(t.get_text()): t.get_window_extent(renderer) for t in captions}
    for unit, caption in boxes.items():
        image = images[unit]  # display y grows upward: above is a larger y
        assert image.xmin <= (caption.xmin + caption.xmax) / 2 <= image.xmax, f"{labels[unit]} is not over its image"
        gap = caption.ymin - image.ymax
        assert -HALF_PIXEL <= gap < caption.height, f"{labels[unit]} is not just above its image"
    titles = [t.get_window_extent(renderer) for t in texts if t in figure.texts]
    labels_and_titles = list(boxes.values()) + titles
    assert not overlaps(labels_and_titles, labels_and_titles + list(images.values())).any(), (
        "a label or the title covers an image or another label")


def overlaps(boxes: list, others: list) -> np.ndarray:
    """[i, j]: boxes[i] and others[j] share more than half a pixel each way (a box never overlaps itself)."""
    def sides(bboxes):
        return np.array([[b.xmin, b.xmax, b.ymin, b.ymax] for b in bboxes]).reshape(-1, 4).T

    ax0, ax1, ay0, ay1 = sides(boxes)[:, :, None]
    bx0, bx1, by0, by1 = sides(others)[:, None, :]
    result = (ax0 + HALF_PIXEL < bx1) & (bx0 + HALF_PIXEL < ax1) & (ay0 + HALF_PIXEL < by1) & (by0 + HALF_PIXEL < ay1)
    same = np.array([[a is b for b in others] for a in boxes], dtype=bool).reshape(result.shape)
    return result & ~same


def random_weights(units: int) -> np.ndarray:
    return np.random.default_rng(units).normal(size=(units, 784))


def history_meta(source: str, epochs: int) -> dict:
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_accuracy": 1 - 0.5 / e,
                "val_accuracy": 1 - 0.6 / e} for e in range(1, epochs + 1)]
    training = {"optimizer": "adam", "lr": 0.01, "data": source}
    return {"layer_sizes": [784, 16, 16, 10], "training": training, "history": history, "best_epoch": epochs - 1}


def predictions(count: int = 1000):
    """(images, truth, probabilities) with about a tenth misclassified."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 10, count)
    logits = rng.normal(size=(count, 10))
    logits[np.arange(count), truth] += 4
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return rng.integers(0, 256, (count, 784), dtype=np.uint8), truth, probs


FIGURES = {
    "learning curves, long data path": lambda F: plots.learning_curves(F, history_meta(LONG_SOURCE, 30)),
    "learning curves, no history": lambda F: plots.learning_curves(F, {}),
    "confusion matrix, long data path": lambda F: plots.confusion_matrix(
        F, predictions()[1], predictions()[2].argmax(axis=1), LONG_SOURCE + " (validation part)"),
    "misclassified, long data path": lambda F: plots.misclassified(F, *predictions(), LONG_SOURCE),
    "weights, 1 unit": lambda F: plots.first_layer_weights(F, random_weights(1), hidden=True),
    "weights, 10 classes": lambda F: plots.first_layer_weights(F, random_weights(10), hidden=False),
    "weights, 16 units": lambda F: plots.first_layer_weights(F, random_weights(16), hidden=True),
    "weights, 128 units": lambda F: plots.first_layer_weights(F, random_weights(128), hidden=True),
    "weights, 1024 units": lambda F: plots.first_layer_weights(F, random_weights(1024), hidden=True),
}


@pytest.mark.parametrize("name", FIGURES)
def test_every_text_is_inside_the_figure(name):
    """No title, label or caption is cut off at the figure's edge, however long the data path."""
    figure = FIGURES[name](plots.require_matplotlib())
    assert texts_outside(figure) == []


@pytest.mark.parametrize("name", FIGURES)
def test_no_text_covers_another(name):
    """Titles, tick labels, legends and captions each stand clear of the others."""
    figure = FIGURES[name](plots.require_matplotlib())
    renderer, texts = drawn_texts(figure)
    boxes = [t.get_window_extent(renderer) for t in texts]
    crossing = overlaps(boxes, boxes)
    assert [(texts[i].get_text(), texts[j].get_text()) for i, j in zip(*np.nonzero(np.triu(crossing)))] == []


@pytest.mark.parametrize("units", [1, 16, 128, 1024])
def test_hidden_units_are_labelled_by_number(units):
    W1 = random_weights(units)
    figure = plots.first_layer_weights(plots.require_matplotlib(), W1, hidden=True)
    check_labels_above_templates(figure, W1, [f"unit {u}" for u in range(units)])


def test_class_templates_are_labelled_by_digit():
    W1 = random_weights(10)
    figure = plots.first_layer_weights(plots.require_matplotlib(), W1, hidden=False)
    check_labels_above_templates(figure, W1, [f"digit {d}" for d in range(10)])


def test_wrapped_titles_keep_every_character():
    """A title broken onto more lines still says all it said: only spaces and line breaks change."""
    figure = plots.misclassified(plots.require_matplotlib(), *predictions(), LONG_SOURCE)
    title = figure.texts[0].get_text()
    assert "\n" in title
    assert LONG_SOURCE in "".join(title.split())


def test_plot_never_replaces_a_file_of_its_names_that_is_no_image(capsys, tmp_path):
    from tests.conftest import run

    model = tmp_path / "m.npz"
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(model))
    assert code == 0, err
    folder = tmp_path / "plots"
    folder.mkdir()
    (folder / "learning_curves.png").write_text("my notes")
    code, _, err = run(capsys, "plot", "--model", str(model), "--out", str(folder))
    assert code == 1 and err.count("\n") == 1, err
    assert "learning_curves.png there holds another kind of file, not a PNG image; refusing to replace it" in err
    assert (folder / "learning_curves.png").read_text() == "my notes"
    assert sorted(p.name for p in folder.iterdir()) == ["learning_curves.png"]


def test_plot_reads_the_model_file_once(capsys, monkeypatch, trained, tmp_path):
    from gpunet.files import checkpoint

    reads = []
    real_load_model = checkpoint.load_model

    def counted_load_model(path):
        reads.append(path)
        return real_load_model(path)

    monkeypatch.setattr(checkpoint, "load_model", counted_load_model)
    code, _, err = run(capsys, "plot", "--model", str(trained[1]), "--out", str(tmp_path / "plots"))
    assert code == 0, err
    assert len(reads) == 1, reads
    check_pngs(tmp_path / "plots")


# Issue 17, finding 18: titles and sizes by content, for every kind of model; one kind of plot alone.

CNN = "conv4k5,pool2,dense16"


def mistakes(count: int, total: int = 1000):
    """(images, truth, probabilities) with exactly ``count`` digits misclassified."""
    images, truth, probs = predictions(total)
    wrong = probs.argmax(axis=1) != truth
    probs[wrong] = np.eye(10)[truth[wrong]]  # every mistake corrected ...
    for k in range(count):  # ... then ``count`` made
        probs[k] = np.eye(10)[(truth[k] + 1) % 10]
    return images, truth, probs


def content_box(png_path) -> tuple[float, float]:
    """(width, height) of the box around everything drawn (pixels not white), as shares of the picture's."""
    with Image.open(png_path) as image:
        pixels = np.asarray(image.convert("L"))
    rows, columns = np.flatnonzero((pixels < 250).any(axis=1)), np.flatnonzero((pixels < 250).any(axis=0))
    return (columns[-1] - columns[0] + 1) / pixels.shape[1], (rows[-1] - rows[0] + 1) / pixels.shape[0]


def test_a_cnns_learning_curves_are_titled_with_its_layers(capsys, monkeypatch, tmp_path, small_data):
    """The finding: a CNN's learning-curve title read "network , adam ..." (plots read layer_sizes only)."""
    figures = record_saved_figures(monkeypatch)
    model = tmp_path / "cnn.npz"
    code, _, err = run(capsys, "train", "--device", "cpu", "--arch", CNN, "--epochs", "1", "--data", str(small_data),
                       "--out", str(model), "--plot", str(tmp_path / "plots"))
    assert code == 0, err
    title = figures[plots.FILES["learning_curves"]].texts[0].get_text()
    assert "".join(title.split()).startswith("Learningcurves:network784-conv4k5-pool2-dense16-10,adamlr0.01,"), title


def test_a_dense_models_learning_curves_are_titled_with_its_layer_sizes():
    title = plots.learning_curves(plots.require_matplotlib(), history_meta("train.csv", 3)).texts[0].get_text()
    assert title == "Learning curves: network 784-16-16-10, adam lr 0.01, trained on train.csv"


@pytest.mark.parametrize("wrong", [1, 3, 10, 17])
def test_few_misclassified_digits_fill_their_figure(tmp_path, wrong):
    """The finding: 10 misclassified digits filled two rows of a 5 x 8 grid, the figure two-thirds blank."""
    figure = plots.misclassified(plots.require_matplotlib(), *mistakes(wrong), "test.csv")
    path = plots.save(figure, tmp_path / "misclassified.png")
    width, height = content_box(path)
    assert height > 0.85, f"{wrong} digits: {100 * (1 - height):.0f}% of the height blank"
    if wrong >= 5:  # fewer than 5 cells are narrower than the title: it sets the width (MISCLASSIFIED_MIN_WIDTH)
        assert width > 0.85, f"{wrong} digits: {100 * (1 - width):.0f}% of the width blank"
    assert texts_outside(figure) == []
    assert f"{wrong} of 1,000 digits" in figure.texts[0].get_text()


def test_the_misclassified_grid_is_as_even_as_its_bounds_allow():
    assert [plots.misclassified_grid(n) for n in (1, 8, 9, 10, 17, 40, 1000)] == [
        (1, 1), (1, 8), (2, 5), (2, 5), (3, 6), (5, 8), (5, 8)]


@pytest.mark.parametrize("kind", ["learning-curves", "weights"])
def test_plot_kind_draws_that_plot_alone_even_when_the_training_data_is_gone(capsys, tmp_path, small_data, kind):
    data = tmp_path / "digits.npz"
    data.write_bytes(small_data.read_bytes())
    model = tmp_path / "model.npz"
    code, _, err = run(capsys, *TRAIN, "--data", str(data), "--val-size", "100", "--out", str(model))
    assert code == 0, err
    data.unlink()  # the curves and the weights need no digits: plot must not ask for them
    folder = tmp_path / "plots"
    code, out, err = run(capsys, "plot", "--model", str(model), "--kind", kind, "--out", str(folder))
    assert code == 0, err
    name = plots.FILES[kind.replace("-", "_")]
    assert sorted(p.name for p in folder.iterdir()) == [name]
    assert out == f"Plots: {folder / name}\n"
    with Image.open(folder / name) as image:
        assert image.size == expected_sizes(HIDDEN)[name]


def test_plot_kind_can_be_given_twice_and_checks_only_its_own_files(capsys, trained, tmp_path):
    folder = tmp_path / "plots"
    folder.mkdir()
    (folder / plots.FILES["weights"]).write_text("my notes")  # not drawn: not in the way
    code, out, err = run(capsys, "plot", "--model", str(trained[1]), "--kind", "misclassified",
                         "--kind", "confusion-matrix", "--out", str(folder))
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [plots.FILES["confusion_matrix"], plots.FILES["misclassified"], plots.FILES["weights"]])
    assert (folder / plots.FILES["weights"]).read_text() == "my notes"
    code, _, err = run(capsys, "plot", "--model", str(trained[1]), "--kind", "scatter", "--out", str(folder))
    assert code == 2 and "--kind" in err and err.count("\n") == 1


def test_the_command_lines_plot_kinds_are_the_plots_kinds():
    from gpunet.frontends.cli import PLOT_KINDS

    assert [kind.replace("-", "_") for kind in PLOT_KINDS] == list(plots.KINDS)


# -- issue 17 review: plots ask outputs.py's rule, before the work and again just before each rename -----------------
def test_plot_never_replaces_a_write_protected_png(capsys, trained, tmp_path):
    _, model = trained
    folder = tmp_path / "plots"
    folder.mkdir()
    png = folder / "learning_curves.png"
    Image.new("L", (4, 4)).save(png)
    before = png.read_bytes()
    png.chmod(0o444)
    code, stdout, err = run(capsys, "plot", "--model", str(model), "--out", str(folder), "--kind", "learning-curves")
    assert code == 1 and err.count("\n") == 1 and "learning_curves.png there is write-protected" in err, err
    assert png.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["learning_curves.png"]


def test_a_file_appearing_at_a_plot_while_it_is_drawn_is_kept(capsys, monkeypatch, trained, tmp_path):
    _, model = trained
    folder = tmp_path / "plots"
    notes = folder / "learning_curves.png"
    real_draw = plots.learning_curves

    def draw_then_notes_appear(*args):
        figure = real_draw(*args)
        notes.write_text("my notes")  # after the check before the work, before the rename
        return figure

    monkeypatch.setattr(plots, "learning_curves", draw_then_notes_appear)
    code, stdout, err = run(capsys, "plot", "--model", str(model), "--out", str(folder), "--kind", "learning-curves")
    assert code == 1 and err.count("\n") == 1 and str(notes) in err and "refusing to replace it" in err, err
    assert notes.read_text() == "my notes" and sorted(p.name for p in folder.iterdir()) == ["learning_curves.png"]


def test_plot_removes_the_temporary_files_a_killed_process_left(capsys, trained, tmp_path):
    from gpunet.files.outputs import HOST

    _, model = trained
    folder = tmp_path / "plots"
    folder.mkdir()
    dead = 2 ** 22 + 1  # above Linux's largest process id: no process has it
    left = [folder / f".gpunet-{HOST}-{dead}-abcdefgh.new", folder / f"..gpunet-{HOST}-{dead}-abcdefgh.new.xyz.tmp"]
    for path in left:
        path.write_bytes(b"half a PNG")
    code, _, err = run(capsys, "plot", "--model", str(model), "--out", str(folder), "--kind", "learning-curves")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["learning_curves.png"]
