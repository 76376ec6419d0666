"""`gpunet plot` and `gpunet train --plot`: four PNG files, each of the expected size and not blank."""

import sys

import numpy as np
import pytest
from PIL import Image

from gpunet import plots
from gpunet.cli import main
from tests.conftest import run
from gpunet.data import load_sample

pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install 'gpunet[plot]')")

HIDDEN = 32
TRAIN = ["train", "--device", "cpu", "--hidden", str(HIDDEN), "--epochs", "2", "--batch-size", "128"]


def expected_sizes(units: int) -> dict:
    def pixels(inches):
        return (round(inches[0] * plots.DPI), round(inches[1] * plots.DPI))

    return {
        plots.FILES["learning_curves"]: (1000, 400),
        plots.FILES["confusion_matrix"]: (700, 600),
        plots.FILES["misclassified"]: (1000, 800),
        plots.FILES["weights"]: pixels(plots.weights_size(units)),
    }


def check_pngs(folder, units=HIDDEN):
    """Every plot is a PNG of its size with more than one colour; returns them as arrays."""
    images = {}
    for name, size in expected_sizes(units).items():
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
    sample = load_sample()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, images=sample.images[:1500], labels=sample.labels[:1500])
    return path


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
    check_pngs(tmp_path)


def test_without_hidden_layer_the_weights_are_the_class_templates(capsys, tmp_path, small_data):
    model = tmp_path / "linear.npz"
    code, _, err = run(capsys, *TRAIN, "--hidden", "none", "--data", str(small_data), "--out", str(model),
                       "--plot", str(tmp_path / "plots"))
    assert code == 0, err
    check_pngs(tmp_path / "plots", units=10)


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
