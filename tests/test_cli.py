"""The command line end to end: train, predict, evaluate, info, and every kind of bad input."""

import gzip
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from gpunet.cli import main
from tests.conftest import run


def write_csv(path, images, labels=None):
    header = ([] if labels is None else ["label"]) + [f"pixel{i}" for i in range(784)]
    rows = [",".join(header)]
    for k, row in enumerate(images):
        cells = ([] if labels is None else [str(labels[k])]) + [str(v) for v in row]
        rows.append(",".join(cells))
    text = "\n".join(rows) + "\n"
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained through the CLI on the bundled sample, shared by the tests below."""
    folder = tmp_path_factory.mktemp("trained")
    model = folder / "model.npz"
    main_args = ["train", "--device", "cpu", "--epochs", "2", "--hidden", "32", "--out", str(model)]
    try:
        main(main_args)
    except SystemExit as exit:
        assert not exit.code
    return model


@pytest.fixture
def digits():
    from gpunet.data import load_sample

    sample = load_sample()
    return sample.images[:40], sample.labels[:40]


def test_train_on_the_bundled_sample_reports_each_epoch(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--device", "cpu", "--epochs", "3", "--out", str(tmp_path / "m.npz"))
    assert code == 0, err
    assert "784-16-16-10" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    assert "val_acc" in out and "Validation accuracy" in out
    from gpunet.checkpoint import load_model

    params, meta = load_model(tmp_path / "m.npz")
    assert meta["layer_sizes"] == [784, 16, 16, 10] and len(meta["history"]) == 3
    assert meta["final_metrics"]["val_accuracy"] > 0.8


def test_device_auto_falls_back_to_the_cpu_with_a_notice(capsys, tmp_path):
    from gpunet import backend_cuda

    if backend_cuda.unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    code, out, err = run(capsys, "train", "--epochs", "1", "--hidden", "8", "--out", str(tmp_path / "m.npz"))
    assert code == 0
    assert "Note: CUDA is not usable" in err and "running on the CPU" in err and err.count("\n") == 1
    assert "CPU (NumPy" in out


def test_device_cuda_without_a_gpu_exits_2_with_one_line(capsys, tmp_path):
    from gpunet import backend_cuda

    if backend_cuda.unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    code, out, err = run(capsys, "train", "--device", "cuda", "--out", str(tmp_path / "m.npz"))
    assert code == 2
    assert err.startswith("Error: --device cuda:") and err.count("\n") == 1
    assert "pip install" in err or "driver" in err or "device" in err
    assert not (tmp_path / "m.npz").exists()


def test_predict_writes_a_kaggle_submission(capsys, tmp_path, trained, digits):
    images, _ = digits
    test_csv = write_csv(tmp_path / "test.csv.gz", images)
    out = tmp_path / "submission.csv"
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(trained), "--data", str(test_csv),
                            "--out", str(out))
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 41
    ids, labels = zip(*(map(int, line.split(",")) for line in lines[1:]))
    assert list(ids) == list(range(1, 41)) and set(labels) <= set(range(10))


def test_predict_agrees_with_the_network(capsys, tmp_path, trained, digits):
    from gpunet.checkpoint import load_model

    images, _ = digits
    test_csv = write_csv(tmp_path / "test.csv", images)
    run(capsys, "predict", "--device", "cpu", "--model", str(trained), "--data", str(test_csv), "--out",
        str(tmp_path / "s.csv"))
    predicted = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1, dtype=int)[:, 1]
    params, _ = load_model(trained)
    Z = params[0] @ (images.T / 255.0) + params[1]
    Z = params[2] @ np.maximum(Z, 0) + params[3]
    np.testing.assert_array_equal(predicted, Z.argmax(axis=0))


def test_evaluate_prints_accuracy_per_class_and_confusion_matrix(capsys, tmp_path, trained, digits):
    images, labels = digits
    data = write_csv(tmp_path / "labeled.csv", images, labels)
    code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(trained), "--data", str(data))
    assert code == 0, err
    assert "40 digits, accuracy" in out and "Per class" in out and "Confusion matrix" in out
    matrix = [line for line in out.splitlines() if line.startswith("  ") and line.strip()[:2].rstrip(":").isdigit()
              and line.count(" ") > 12]
    counts = np.array([[int(n) for n in line.split(":")[1].split()] for line in matrix])
    assert counts.shape == (10, 10) and counts.sum() == 40
    assert np.array_equal(counts.sum(axis=1), np.bincount(labels, minlength=10))


def test_info_lists_versions_and_backends(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert "gpunet 0.1.0" in out and "NumPy" in out and "cpu:" in out and "cuda:" in out


def test_every_command_has_help(capsys):
    for command in ("train", "predict", "evaluate", "info"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "Usage: gpunet " + command in out


BAD_TRAIN_OPTIONS = [
    (["--hidden", "16,x"], "--hidden"),
    (["--hidden", "16,-3"], "--hidden"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--val-size", "100000"], "--val-size"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--data", "no/such/file.csv"], "no/such/file.csv"),
    (["--out", "no/such/folder/model.npz"], "does not exist"),
    (["--seed", "-1"], "--seed"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--hidden", ""], "--hidden"),  # an unset shell variable is not "no hidden layer"
    (["--hidden", "100000000"], "--hidden"),  # 584 GiB of weights
    (["--patience", "0"], "--patience"),
    (["--patience", "2", "--val-size", "0"], "--patience"),
    (["--data", "d" * 300 + ".csv"], "File name too long"),  # an OSError: one line, not a traceback
]
if os.path.isdir("/proc"):  # a folder nobody can create files in, root included
    BAD_TRAIN_OPTIONS.append((["--out", "/proc/gpunet-model.npz"], "cannot write in folder '/proc'"))


@pytest.mark.parametrize("args, named", BAD_TRAIN_OPTIONS)
def test_bad_train_input_gets_one_line_and_keeps_the_old_model(capsys, tmp_path, args, named):
    out = tmp_path / "model.npz"
    out.write_bytes(b"precious")
    if "--out" not in args:
        args = args + ["--out", str(out)]
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", *args) if "--epochs" not in args \
        else run(capsys, "train", "--device", "cpu", *args)
    assert code != 0
    assert err.startswith("Error:") and err.count("\n") == 1 and named in err, err
    assert "Traceback" not in err
    assert out.read_bytes() == b"precious"


def test_test_file_given_to_train_is_refused(capsys, tmp_path, digits):
    data = write_csv(tmp_path / "test.csv", digits[0])
    code, _, err = run(capsys, "train", "--device", "cpu", "--data", str(data), "--out", str(tmp_path / "m.npz"))
    assert code == 1 and "test.csv" in err and err.count("\n") == 1


def test_a_pixel_of_300_is_named(capsys, tmp_path, digits):
    images = digits[0].astype(np.int64)
    images[3, 5] = 300
    data = write_csv(tmp_path / "bad.csv", images, digits[1])
    code, _, err = run(capsys, "train", "--device", "cpu", "--data", str(data), "--out", str(tmp_path / "m.npz"))
    assert code == 1 and "bad.csv" in err and "300" in err and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["missing", "corrupt", "not_a_model", "wrong_inputs"])
def test_bad_model_files_for_predict(capsys, tmp_path, digits, kind):
    model = tmp_path / "model.npz"
    if kind == "corrupt":
        model.write_bytes(b"PK\x03\x04 broken")
    elif kind == "not_a_model":
        np.savez(model, weights=np.zeros(3))
    elif kind == "wrong_inputs":
        from gpunet.checkpoint import save_model
        from gpunet.model import init_params

        save_model(model, init_params([100, 10], "he", 0, np.float32), {})
    data = write_csv(tmp_path / "test.csv", digits[0])
    submission = tmp_path / "submission.csv"
    submission.write_text("keep me")
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                       "--out", str(submission))
    assert code == 1 and err.startswith("Error:") and err.count("\n") == 1 and "model.npz" in err
    assert submission.read_text() == "keep me"


def test_an_output_that_is_an_input_is_refused(capsys, tmp_path, trained, digits):
    data = write_csv(tmp_path / "train.csv", digits[0], digits[1])
    original = data.read_bytes()
    code, _, err = run(capsys, "train", "--device", "cpu", "--data", str(data), "--val-size", "10", "--out", str(data))
    assert code == 1 and err.count("\n") == 1 and "is the --data file" in err
    assert data.read_bytes() == original
    model = tmp_path / "model.npz"
    model.write_bytes(trained.read_bytes())
    test_csv = write_csv(tmp_path / "test.csv", digits[0])
    for out, named in ((model, "--model"), (test_csv, "--data")):
        before = out.read_bytes()
        code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(test_csv),
                           "--out", str(out))
        assert code == 1 and err.count("\n") == 1 and f"is the {named} file" in err, err
        assert out.read_bytes() == before


def test_out_with_image_is_a_usage_error(capsys, tmp_path, trained):
    code, _, err = run(capsys, "predict", "--model", str(trained), "--image", "a.png", "--out", "s.csv")
    assert code == 2 and "--out goes with --data" in err and err.count("\n") == 1


def test_a_folder_as_model_is_named(capsys, tmp_path, digits):
    data = write_csv(tmp_path / "train.csv", digits[0], digits[1])
    code, _, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(tmp_path), "--data", str(data))
    assert code == 1 and "is a folder, not a model file" in err and err.count("\n") == 1


def test_divergence_from_weight_decay_names_it(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--device", "cpu", "--weight-decay", "1000", "--epochs", "3",
                       "--out", str(tmp_path / "m.npz"))
    assert code == 1 and "diverged" in err and "--weight-decay (now 1000)" in err and err.count("\n") == 1


def test_divergence_stops_with_a_hint_and_keeps_the_last_good_weights(capsys, tmp_path):
    out = tmp_path / "m.npz"
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--optimizer", "sgd", "--lr", "1e5",
                            "--epochs", "5", "--out", str(out))
    assert code == 1
    assert "diverged" in err and "smaller --lr" in err and err.count("\n") == 1


def test_ctrl_c_saves_the_best_model_and_exits_130(tmp_path):
    out = tmp_path / "m.npz"
    proc = subprocess.Popen([sys.executable, "-m", "gpunet", "train", "--device", "cpu", "--epochs", "1000",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:  # wait until a whole epoch is done
            if line.startswith("epoch"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Interrupted" in err and str(out) in err and "Traceback" not in err
    from gpunet.checkpoint import load_model

    _, meta = load_model(out)
    assert meta["stop_reason"] == "interrupted" and meta["history"]
