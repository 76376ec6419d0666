"""The command line end to end: train, predict, evaluate, info, and every kind of bad input."""

import gzip
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from gpunet.frontends.cli import main
from tests.conftest import run
from tests.tolerances import assert_counts_within, pass_bounds


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
    from gpunet.files.data import load_sample

    sample = load_sample()
    return sample.images[:40], sample.labels[:40]


def test_train_on_the_bundled_sample_reports_each_epoch(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--device", "cpu", "--epochs", "3", "--out", str(tmp_path / "m.npz"))
    assert code == 0, err
    assert "784-16-16-10" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    assert "val_acc" in out and "Validation accuracy" in out
    from gpunet.files.checkpoint import load_model

    params, meta = load_model(tmp_path / "m.npz")
    assert meta["layer_sizes"] == [784, 16, 16, 10] and len(meta["history"]) == 3
    assert meta["final_metrics"]["val_accuracy"] > 0.8


def test_device_auto_falls_back_to_the_cpu_with_a_notice(capsys, tmp_path):
    from gpunet.backends import cuda as backend_cuda

    if backend_cuda.unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    code, out, err = run(capsys, "train", "--epochs", "1", "--hidden", "8", "--out", str(tmp_path / "m.npz"))
    assert code == 0 and err == ""
    (banner,) = [line for line in out.splitlines() if line.startswith("Network ")]
    assert "CPU (NumPy" in banner and "CUDA is not usable" in banner and "running on the CPU" in banner


def test_device_cuda_without_a_gpu_exits_2_with_one_line(capsys, tmp_path):
    from gpunet.backends import cuda as backend_cuda

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
    from gpunet.files.checkpoint import load_model

    images, _ = digits
    test_csv = write_csv(tmp_path / "test.csv", images)
    run(capsys, "predict", "--device", "cpu", "--model", str(trained), "--data", str(test_csv), "--out",
        str(tmp_path / "s.csv"))
    predicted = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1, dtype=int)[:, 1]
    params, _ = load_model(trained)
    Z = params[0] @ (images.T / 255.0) + params[1]
    Z = params[2] @ np.maximum(Z, 0) + params[3]
    # float32 against this float64 reference: only digits whose top two logits are within rounding may differ.
    near_ties = pass_bounds(params, images, np.zeros(len(images)), np.float32, other_dtype=np.float64).ambiguous
    assert np.sum(predicted != Z.argmax(axis=0)) <= near_ties


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
def test_bad_train_input_gets_one_line_and_keeps_the_old_model(capsys, tmp_path, trained, args, named):
    out = tmp_path / "model.npz"
    precious = trained.read_bytes()
    out.write_bytes(precious)
    if "--out" not in args:
        args = args + ["--out", str(out)]
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", *args) if "--epochs" not in args \
        else run(capsys, "train", "--device", "cpu", *args)
    assert code != 0
    assert err.startswith("Error:") and err.count("\n") == 1 and named in err, err
    assert "Traceback" not in err
    assert out.read_bytes() == precious


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
        from gpunet.files.checkpoint import save_model
        from gpunet.nn.model import init_params

        save_model(model, init_params([100, 10], "he", 0, np.float32), {})
    data = write_csv(tmp_path / "test.csv", digits[0])
    submission = tmp_path / "submission.csv"
    submission.write_text("ImageId,Label\n1,7\n")
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                       "--out", str(submission))
    assert code == 1 and err.startswith("Error:") and err.count("\n") == 1 and "model.npz" in err
    assert submission.read_text() == "ImageId,Label\n1,7\n"


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
    assert code == 3 and "diverged" in err and "--weight-decay (now 1000)" in err and err.count("\n") == 1


def test_divergence_stops_with_a_hint_and_keeps_the_last_good_weights(capsys, tmp_path):
    out = tmp_path / "m.npz"
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--optimizer", "sgd", "--lr", "1e5",
                            "--epochs", "5", "--out", str(out))
    assert code == 3
    assert "diverged" in err and "smaller --lr" in err and err.count("\n") == 1


def test_ctrl_c_saves_the_best_model_and_exits_130(tmp_path):
    out = tmp_path / "m.npz"
    code, err = interrupt_after_first_epoch(["--out", str(out)])
    assert code == 130, err[-2000:]
    assert "Interrupted" in err and str(out) in err and "Traceback" not in err
    from gpunet.files.checkpoint import load_model

    _, meta = load_model(out)
    assert meta["stop_reason"] == "interrupted" and meta["history"]


# -- nothing a user made is lost (README: "Your files are safe") -------------------------------------
def interrupt_after_first_epoch(args, signal_number=signal.SIGINT):
    """Run ``gpunet train ARGS`` in a subprocess, press Ctrl-C (or send another signal) once an epoch is done;
    (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "gpunet", "train", "--device", "cpu", "--epochs", "1000", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:
            if line.startswith("epoch"):
                break
        proc.send_signal(signal_number)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


def test_ctrl_c_never_replaces_an_existing_model_and_says_where_it_saved(tmp_path, trained):
    out = tmp_path / "model.npz"
    out.write_bytes(trained.read_bytes())
    before = out.read_bytes()
    code, err = interrupt_after_first_epoch(["--out", str(out)])
    assert code == 130, err[-2000:]
    beside = tmp_path / "model.interrupted.npz"
    assert out.read_bytes() == before
    assert str(beside) in err and "Traceback" not in err
    from gpunet.files.checkpoint import load_model

    assert load_model(beside)[1]["stop_reason"] == "interrupted"
    code, err = interrupt_after_first_epoch(["--out", str(out)])  # again: a name beside that is free too
    assert code == 130 and str(tmp_path / "model.interrupted-2.npz") in err, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.checkpoint.npz", "model.interrupted-2.npz",
                                                          "model.interrupted.npz", "model.npz"]  # one checkpoint


def png_bytes():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["submission", "png", "text", "other npz"])
def test_train_writes_a_model_over_no_other_kind_of_file(capsys, tmp_path, kind):
    out = tmp_path / "out.file"
    content = {"submission": b"ImageId,Label\n1,7\n", "png": png_bytes(), "text": b"my notes\n"}.get(kind)
    if content is None:
        np.savez(out.with_suffix(".npz"), weights=np.zeros(3))
        out.with_suffix(".npz").rename(out)
        content = out.read_bytes()
    else:
        out.write_bytes(content)
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 1 and err.count("\n") == 1 and "refusing to replace it" in err and str(out) in err, err
    assert stdout == "" and out.read_bytes() == content  # refused before any training


def test_predict_writes_a_submission_over_no_other_kind_of_file(capsys, tmp_path, trained, digits):
    data = write_csv(tmp_path / "test.csv", digits[0])
    other_model = tmp_path / "other.npz"
    other_model.write_bytes(trained.read_bytes())
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(trained), "--data", str(data),
                       "--out", str(other_model))
    assert code == 1 and err.count("\n") == 1 and "holds a gpunet model, not a Kaggle submission" in err, err
    assert other_model.read_bytes() == trained.read_bytes()
    old = tmp_path / "submission.csv"  # an older submission is the one kind it replaces
    old.write_text("ImageId,Label\n1,7\n")
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(trained), "--data", str(data),
                       "--out", str(old))
    assert code == 0, err
    assert old.read_text().splitlines()[0] == "ImageId,Label" and len(old.read_text().splitlines()) == 41


def test_a_completed_run_replaces_the_model_at_out(capsys, tmp_path, trained):
    out = tmp_path / "model.npz"
    out.write_bytes(trained.read_bytes())
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--seed", "5", "--out", str(out))
    assert code == 0, err
    from gpunet.files.checkpoint import load_model

    assert load_model(out)[1]["training"]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "model.previous.npz"]
    assert (tmp_path / "model.previous.npz").read_bytes() == trained.read_bytes()  # kept, one generation


def test_two_runs_writing_one_out_at_once_leave_complete_models(tmp_path):
    out = tmp_path / "model.npz"
    procs = [subprocess.Popen([sys.executable, "-m", "gpunet", "train", "--device", "cpu", "--epochs", "2",
                               "--seed", str(seed), "--out", str(out)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    from gpunet.files.checkpoint import load_model

    # Both whole (every array present, shaped and finite), each where its run said (tests/test_your_files.py)
    seeds = {load_model(p)[1]["training"]["seed"] for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert seeds == {1, 2}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


# -- honest endings ----------------------------------------------------------------------------------
def test_a_run_that_learned_nothing_exits_3_and_keeps_the_old_model(capsys, tmp_path, trained):
    out = tmp_path / "model.npz"
    out.write_bytes(trained.read_bytes())
    # Full-batch steps of 3 kill every ReLU of the seed init in a few epochs: ~10% from then on.
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--optimizer", "gd", "--lr", "3", "--epochs", "20",
                            "--out", str(out))
    assert code == 3, err
    assert err.startswith("Error: validation accuracy") and err.count("\n") == 1
    assert "no better than chance" in err and "smaller --lr (now 3)" in err and "--optimizer adam" in err
    beside = tmp_path / "model.unlearned.npz"
    assert str(beside) in err and beside.is_file()
    assert out.read_bytes() == trained.read_bytes()


@pytest.mark.parametrize("args", [["--lr", "1e-300", "--epochs", "2"],
                                  ["--optimizer", "gd", "--lr", "0.001", "--epochs", "3"]])
def test_a_learning_rate_too_small_to_learn_is_told_to_grow(capsys, tmp_path, args):
    code, _, err = run(capsys, "train", "--device", "cpu", *args, "--out", str(tmp_path / "m.npz"))
    assert code == 3 and err.count("\n") == 1, err
    assert "the training loss hardly moved" in err and "a larger --lr" in err and "more --epochs" in err
    assert "smaller --lr" not in err


def test_a_training_set_memorised_but_not_learned_is_named(capsys, tmp_path):
    from gpunet.files.data import load_sample

    sample = load_sample()
    # Labels shuffled apart from their images: the network can only memorise its 500 training digits.
    labels = np.random.default_rng(0).permutation(sample.labels[:1100])
    data = tmp_path / "shuffled.npz"
    np.savez(data, images=sample.images[:1100], labels=labels)
    code, _, err = run(capsys, "train", "--device", "cpu", "--data", str(data), "--val-size", "600",
                       "--out", str(tmp_path / "m.npz"))
    assert code == 3 and err.count("\n") == 1, err
    assert "it fit its training set" in err and "memorised" in err and "a smaller --val-size" in err
    assert "--lr" not in err


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_sgd_and_momentum_train_well_with_their_defaults(capsys, tmp_path, optimizer):
    # Before their own defaults they took Adam's weight decay, 0.1: at SGD's lr it shrinks W 1-2% a step.
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--optimizer", optimizer,
                            "--out", str(tmp_path / "m.npz"))
    assert code == 0, err
    from gpunet.files.checkpoint import load_model

    final = load_model(tmp_path / "m.npz")[1]["final_metrics"]
    # The bundled sample: 10,000 training digits, 30 epochs. Adam gives ~94% there.
    assert final["val_accuracy"] >= 0.92, final


def test_chance_level_is_the_most_common_class_plus_three_standard_errors():
    from gpunet.training.metrics import better_than_chance, chance_accuracy

    balanced = np.repeat(np.arange(10), 100)
    assert chance_accuracy(balanced) == 0.1
    margin = 3 * (0.1 * 0.9 / 1000) ** 0.5
    assert not better_than_chance(0.1 + margin, balanced) and better_than_chance(0.1 + margin + 1e-9, balanced)
    skewed = np.array([3] * 900 + [5] * 100)
    assert chance_accuracy(skewed) == 0.9 and not better_than_chance(0.9, skewed)


# -- evaluate on the model's own training data -------------------------------------------------------
def test_evaluate_on_the_training_file_scores_the_held_out_digits_apart(capsys, tmp_path):
    from gpunet.files.data import load_sample

    sample = load_sample()
    data = write_csv(tmp_path / "train.csv", sample.images[:600], sample.labels[:600])
    model = tmp_path / "m.npz"
    code, _, err = run(capsys, "train", "--device", "cpu", "--data", str(data), "--val-size", "150",
                       "--epochs", "3", "--out", str(model))
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(model), "--data", str(data))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{data} is the data this model was trained on."
    assert lines[1].startswith("Training digits (it learned from these; no estimate for new digits): 450 digits")
    assert lines[2].startswith("Validation digits (held out in training): 150 digits, accuracy")
    from gpunet.files.checkpoint import load_model

    # The same 150 digits training validated on: the accuracy it reported, but for digits whose top two
    # logits are within rounding (training validates on one BLAS thread, evaluate on all).
    params, meta = load_model(model)
    reported = meta["final_metrics"]["val_accuracy"]
    shown = float(lines[2].rsplit(" ", 1)[1].rstrip("%")) / 100
    from gpunet.files.data import load_digits, split_validation

    _, held_out = split_validation(load_digits(data, labeled=True), 150, 0)
    assert_counts_within(round(shown * 150), round(reported * 150),
                         pass_bounds(params, held_out.images, held_out.labels, np.float32).ambiguous)
    start = lines.index("Confusion matrix (rows: true digit, columns: predicted):") + 2  # past the header row
    assert sum(int(n) for line in lines[start:start + 10] for n in line.split()[1:]) == 150
    other = write_csv(tmp_path / "other.csv", sample.images[600:700], sample.labels[600:700])
    code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(model), "--data", str(other))
    assert code == 0 and out.splitlines()[0].startswith(f"{other}: 100 digits, accuracy"), out


def test_info_names_the_cpu_path(capsys):
    from gpunet.backends.cpu import CpuBackend

    code, out, _ = run(capsys, "info")
    assert code == 0
    cpu_line = next(line for line in out.splitlines() if line.startswith("  cpu:"))
    assert CpuBackend().cpu_path() in cpu_line and ("numba" in cpu_line or "NumPy array calls" in cpu_line)


def test_an_unreadable_zip_at_out_is_refused_in_one_line(capsys, tmp_path):
    from tests.test_untrusted_files import member, zip_archive

    out = tmp_path / "odd.npz"
    out.write_bytes(zip_archive({"metadata.npy": {**member(b"x" * 10), "version": 99}}))  # needs zip 9.9
    before = out.read_bytes()
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 1 and err.count("\n") == 1 and "a zip archive that is not a gpunet model this version reads" in err, err
    assert out.read_bytes() == before


@pytest.mark.parametrize("kind", ["fifo", "symlink", "read-only", "name too long"])
def test_out_that_is_no_plain_writable_file_is_refused_before_training(capsys, tmp_path, trained, kind):
    out = tmp_path / "model.npz"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "symlink":
        target = tmp_path / "real.npz"
        target.write_bytes(trained.read_bytes())
        out.symlink_to(target)
    elif kind == "read-only":
        out.write_bytes(trained.read_bytes())
        out.chmod(0o444)
    else:  # fits the file system's 255 bytes, but not with the temporary file's prefix and suffix
        out = tmp_path / ("m" * 245 + ".npz")
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 1 and err.count("\n") == 1 and "--out" in err and "Traceback" not in err, err
    if kind == "name too long":  # the name is to blame, not the folder
        assert "the name is too long for the file system" in err and "folder" not in err, err
    assert stdout == ""  # refused before any training
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"fifo": ["model.npz"], "symlink": ["model.npz", "real.npz"],
                                                                  "read-only": ["model.npz"], "name too long": []}[kind])
    if kind == "read-only":
        assert out.read_bytes() == trained.read_bytes()


# -- from a review ---------------------------------------------------------------------------------
def test_a_validation_set_too_small_to_tell_is_not_taken_for_chance(capsys, tmp_path):
    # 5 digits: not even 5 right out of 5 is clearly above chance; the training digits decide instead.
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--val-size", "5", "--epochs", "5",
                            "--out", str(tmp_path / "m.npz"))
    assert code == 0, err
    assert "Validation accuracy" in stdout


def test_a_failed_run_is_recorded_as_failed_and_commands_say_so(capsys, tmp_path, digits):
    out = tmp_path / "model.npz"
    code, _, err = run(capsys, "train", "--device", "cpu", "--optimizer", "gd", "--lr", "3", "--epochs", "20",
                       "--out", str(out))
    assert code == 3 and str(out) in err
    from gpunet.files.checkpoint import load_model

    assert load_model(out)[1]["stop_reason"] == "unlearned"
    data = write_csv(tmp_path / "test.csv", digits[0])
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(out), "--data", str(data),
                       "--out", str(tmp_path / "s.csv"))
    assert code == 0 and err.startswith(f"Note: {out} is from a run that learned nothing"), err


def test_weight_decay_that_wipes_the_weights_is_named_in_the_hint(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--device", "cpu", "--weight-decay", "200", "--epochs", "3",
                       "--out", str(tmp_path / "m.npz"))
    assert code == 3 and "--weight-decay (now 200)" in err and err.count("\n") == 1, err


def test_plot_folder_and_model_file_of_one_name_are_refused_before_training(capsys, tmp_path):
    out = tmp_path / "plots"
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out),
                            "--plot", str(out))
    assert code == 2 and "--plot" in err and err.count("\n") == 1 and stdout == ""
    assert not out.exists()


@pytest.fixture(scope="module")
def python_models(tmp_path_factory):
    """Models fitted from Python: on scaled float features, on the digits 1-9, and with labels holding commas."""
    from gpunet.files.data import load_sample
    from gpunet.frontends.estimator import Classifier

    folder = tmp_path_factory.mktemp("python_models")
    sample = load_sample()
    X, y = sample.images[:2000], sample.labels[:2000]
    Classifier(epochs=1, device="cpu").fit(X / 127.5 - 1, y).save(folder / "features.npz")
    Classifier(epochs=1, device="cpu").fit(X[y > 0], y[y > 0]).save(folder / "no_zero.npz")
    words = np.array([f"digit {d}, in words" for d in range(10)])
    Classifier(epochs=1, device="cpu").fit(X, words[y]).save(folder / "words.npz")
    return folder


def test_a_model_of_float_features_is_refused_by_the_commands(capsys, tmp_path, python_models, digits):
    data = write_csv(tmp_path / "test.csv", digits[0])
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(python_models / "features.npz"),
                       "--data", str(data), "--out", str(tmp_path / "s.csv"))
    assert code == 1 and "scaled by 1.0, not on pixels" in err and err.count("\n") == 1
    assert not (tmp_path / "s.csv").exists()


def test_a_model_of_other_classes_labels_but_is_not_scored_as_digits(capsys, tmp_path, python_models, digits):
    data = write_csv(tmp_path / "train.csv", digits[0], digits[1])
    model = python_models / "no_zero.npz"
    code, _, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(model), "--data", str(data))
    assert code == 1 and "not the digits 0-9" in err and err.count("\n") == 1
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                       "--out", str(tmp_path / "s.csv"))
    assert code == 0, err
    from gpunet import load

    labels = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1, dtype=int)[:, 1]
    np.testing.assert_array_equal(labels, load(model).predict(digits[0]))
    assert set(labels) <= set(range(1, 10))


def test_labels_with_commas_are_quoted_in_the_submission(capsys, tmp_path, python_models, digits):
    import pandas as pd

    data = write_csv(tmp_path / "test.csv", digits[0])
    model = python_models / "words.npz"
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                       "--out", str(tmp_path / "s.csv"))
    assert code == 0, err
    submission = pd.read_csv(tmp_path / "s.csv")
    from gpunet import load

    assert list(submission.columns) == ["ImageId", "Label"] and len(submission) == len(digits[0])
    np.testing.assert_array_equal(submission.Label.to_numpy(), load(model).predict(digits[0]))


@pytest.mark.parametrize("command", [["train", "--data", "no/such/train.csv"],
                                     ["predict", "--model", "no/such/model.npz", "--data", "t.csv"],
                                     ["evaluate", "--model", "no/such/model.npz", "--data", "t.csv"],
                                     ["predict", "--model", "no/such/model.npz", "--image", "a.png"]])
def test_bad_input_with_device_auto_is_one_line_even_where_cuda_is_not_usable(capsys, tmp_path, command):
    # Where CuPy is installed but no GPU is usable, the fallback notice waits until the inputs are read.
    code, _, err = run(capsys, *command, "--device", "auto")
    assert code == 1 and err.count("\n") == 1 and err.startswith("Error:") and "no/such" in err, err


# -- a file that appears at --out while training runs --------------------------------------------------
def write_at_out_when_training_ends(monkeypatch, out, content):
    """Make the training loop write ``content`` at ``out`` (None: remove it) as it returns, before the save."""
    import gpunet.training.loop

    real_train = gpunet.training.loop.train

    def train_then_write(*args, **kwargs):
        result = real_train(*args, **kwargs)
        if content is None:
            out.unlink()
        elif callable(content):
            content(out)
        else:
            out.write_bytes(content)
        return result

    monkeypatch.setattr(gpunet.training.loop, "train", train_then_write)


@pytest.mark.parametrize("kind", ["notes", "png", "folder", "symlink", "unreadable", "write-protected"])
def test_a_file_of_another_kind_appearing_at_out_during_training_is_kept(capsys, monkeypatch, tmp_path, trained,
                                                                          kind):
    import gpunet.files.outputs

    out = tmp_path / "model.npz"
    out.write_bytes(trained.read_bytes())  # checked before training: a model, which the run may replace
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    real_kind_of = gpunet.files.outputs.kind_of

    def unreadable_at_out(path):  # mode 000 or another owner's; root reads through mode 000, so it is simulated
        if path == out:
            raise PermissionError(13, "Permission denied", str(path))
        return real_kind_of(path)

    def replace_out(path):
        path.unlink()
        if kind == "folder":
            path.mkdir()
        elif kind == "symlink":
            path.symlink_to(notes)
        elif kind == "write-protected":  # a model, but one the user marked read-only, as check_out_path refuses
            path.write_bytes(trained.read_bytes())
            path.chmod(0o444)
        else:
            path.write_bytes(png_bytes() if kind == "png" else b"my notes\n")
        if kind == "unreadable":
            monkeypatch.setattr(gpunet.files.outputs, "kind_of", unreadable_at_out)

    write_at_out_when_training_ends(monkeypatch, out, replace_out)
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    beside = tmp_path / "model.completed.npz"
    assert code == 0, err
    assert err.count("\n") == 1 and "a file gpunet does not replace" in err and str(beside) in err, err
    assert stdout.rstrip().endswith(f"saved {beside}")
    from gpunet.files.checkpoint import load_model

    assert load_model(beside)[1]["stop_reason"] == "completed"
    if kind == "folder":
        assert out.is_dir() and not any(out.iterdir())
    elif kind == "symlink":
        assert out.is_symlink() and notes.read_text() == "my notes\n"
    elif kind == "write-protected":
        assert out.read_bytes() == trained.read_bytes()
    else:
        assert out.read_bytes() == (png_bytes() if kind == "png" else b"my notes\n")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("content", ["empty", "removed"])  # a model there: tests/test_your_files.py (another run's)
def test_nothing_at_out_at_save_time_is_replaced(capsys, monkeypatch, tmp_path, trained, content):
    out = tmp_path / "model.npz"
    write_at_out_when_training_ends(monkeypatch, out, {"empty": b"", "removed": None}[content])
    out.write_bytes(trained.read_bytes())
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--seed", "9", "--out", str(out))
    assert code == 0 and err == "", err
    from gpunet.files.checkpoint import load_model

    assert load_model(out)[1]["training"]["seed"] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


# -- SIGTERM is Ctrl-C ---------------------------------------------------------------------------------
def test_sigterm_during_training_saves_beside_the_model_and_exits_143(tmp_path, trained):
    out = tmp_path / "model.npz"
    out.write_bytes(trained.read_bytes())
    code, err = interrupt_after_first_epoch(["--out", str(out)], signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    beside = tmp_path / "model.interrupted.npz"
    assert "Interrupted" in err and str(beside) in err and "Traceback" not in err, err[-2000:]
    assert out.read_bytes() == trained.read_bytes()
    from gpunet.files.checkpoint import load_model

    assert load_model(beside)[1]["stop_reason"] == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.checkpoint.npz", "model.interrupted.npz",
                                                          "model.npz"]  # no .tmp


SIGTERM_IN_SAVE = """
import os, signal, sys
import numpy as np
from gpunet.frontends.cli import main

real_savez = np.savez

def savez_then_terminated(*args, **kwargs):  # SIGTERM arrives while the model file is being written
    os.kill(os.getpid(), signal.SIGTERM)
    real_savez(*args, **kwargs)
    sys.stderr.write("savez finished\\n")

np.savez = savez_then_terminated
main(["train", "--device", "cpu", "--epochs", "1", "--out", sys.argv[1], *sys.argv[2:]])
"""


def test_sigterm_during_the_save_lets_the_model_finish_then_exits_0(tmp_path, trained):
    out = tmp_path / "model.npz"
    out.write_bytes(trained.read_bytes())
    proc = subprocess.run([sys.executable, "-c", SIGTERM_IN_SAVE, str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]  # --out was replaced: 143 would say it was not
    assert "savez finished" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.rstrip().endswith(f"saved {out}"), proc.stdout[-2000:]  # where it went, before stopping
    from gpunet.files.checkpoint import load_model

    _, meta = load_model(out)  # the completed run's model, whole
    assert meta["stop_reason"] == "completed" and len(meta["history"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "model.previous.npz"]  # no temporary file


@pytest.mark.parametrize("failure", [ValueError, KeyboardInterrupt, SystemExit, "folder in the way"])
def test_the_atomic_writer_leaves_no_temporary_file_on_any_exception(tmp_path, failure):
    from gpunet.files.atomic_file import write_atomically

    path = tmp_path / "out.bin"
    if failure == "folder in the way":  # os.replace itself fails: a non-empty folder has the name
        path.mkdir()
        (path / "inside").write_text("kept")
        expected = OSError
    else:
        path.write_bytes(b"old")
        expected = failure

    def write(f):
        f.write(b"partial")
        if failure != "folder in the way":
            raise failure

    with pytest.raises(expected):
        write_atomically(path, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert (path / "inside").read_text() == "kept" if path.is_dir() else path.read_bytes() == b"old"


def test_the_atomic_writer_keeps_the_first_exception_when_its_temporary_file_is_gone(tmp_path):
    from gpunet.files.atomic_file import write_atomically

    def write(f):  # another cleaner removed the temporary file before the failure
        (temporary,) = tmp_path.iterdir()
        temporary.unlink()
        raise ValueError("the write's own failure")

    with pytest.raises(ValueError, match="the write's own failure"):
        write_atomically(tmp_path / "out.bin", write)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_the_save_of_a_failed_run_still_says_where_it_went(tmp_path, trained):
    out = tmp_path / "model.npz"
    out.write_bytes(trained.read_bytes())
    proc = subprocess.run([sys.executable, "-c", SIGTERM_IN_SAVE, str(out), "--lr", "1e-300"], capture_output=True,
                          text=True, timeout=120)
    beside = tmp_path / "model.unlearned.npz"
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "learned nothing" in proc.stderr and f"saved it as {beside}" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and out.read_bytes() == trained.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "model.unlearned.npz"]


# -- whose signals: what the parent ignores stays ignored; the handlers before main() come back ---------------
IGNORED_SIGINT = """
python -m gpunet train --device cpu --epochs 3000 --out "$1" > "$2" 2>&1 &  # started with SIGINT ignored
pid=$!
until grep -q '^epoch' "$2"; do kill -0 $pid || exit 90; sleep 0.2; done
kill -INT $pid
sleep 2
kill -0 $pid || exit 91  # stopped by the signal it was started to ignore
kill -TERM $pid
wait $pid
echo "rc=$?"
"""


@pytest.mark.skipif(not os.path.exists("/bin/bash"), reason="needs bash")
def test_a_signal_the_parent_ignores_stays_ignored(tmp_path):
    out, log = tmp_path / "model.npz", tmp_path / "train.log"
    proc = subprocess.run(["/bin/bash", "-c", IGNORED_SIGINT, "bash", str(out), str(log)], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                       "PATH": os.path.dirname(sys.executable) + os.pathsep
                                                       + os.environ.get("PATH", "")})
    assert proc.returncode == 0 and proc.stdout.strip() == f"rc={128 + signal.SIGTERM}", (proc, log.read_text()[-2000:])
    assert log.read_text().count("Interrupted in epoch") == 1  # once, for the SIGTERM
    from gpunet.files.checkpoint import load_model

    assert load_model(out)[1]["stop_reason"] == "interrupted"


def handlers():
    return {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}


def test_main_leaves_an_ignored_signal_alone_and_puts_every_handler_back(monkeypatch, tmp_path):
    import gpunet.frontends.cli as cli
    from gpunet.errors import DeviceError

    during = {}

    def record_handlers(device):  # the train command asks for its backend once it runs
        during.update(handlers())
        raise DeviceError("recorded")

    def previous_handler(signum, frame):
        pass

    monkeypatch.setattr(cli, "get_backend", record_handlers)
    before = handlers()
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, previous_handler)
        with pytest.raises(SystemExit):
            main(["train", "--device", "cpu", "--out", str(tmp_path / "m.npz")])
        assert during == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: cli.STOP_SIGNALS.handle}
        assert handlers() == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: previous_handler}
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
    main(["info"])
    assert handlers() == before


def test_a_handler_set_from_c_is_left_alone(monkeypatch, tmp_path):
    import gpunet.frontends.cli as cli
    from gpunet.errors import DeviceError

    real_getsignal, before, during = signal.getsignal, handlers(), {}

    def record_handlers(device):
        during.update({number: real_getsignal(number) for number in before})
        raise DeviceError("recorded")

    monkeypatch.setattr(cli, "get_backend", record_handlers)
    # getsignal says None for a handler set from C: signal.signal(SIGTERM, None) could not put it back
    monkeypatch.setattr(signal, "getsignal",
                        lambda number: None if number == signal.SIGTERM else real_getsignal(number))
    with pytest.raises(SystemExit):
        main(["train", "--device", "cpu", "--out", str(tmp_path / "m.npz")])
    monkeypatch.undo()
    assert during == {signal.SIGINT: cli.STOP_SIGNALS.handle, signal.SIGTERM: before[signal.SIGTERM]}
    assert handlers() == before


def test_a_signal_while_the_handlers_are_put_back_goes_to_the_previous_handler(monkeypatch):
    from gpunet.frontends.cli import StopSignals

    received, before, real_signal = [], handlers(), signal.signal
    stop = StopSignals()

    def previous_handler(signum, frame):
        received.append(signum)

    def restore_then_terminated(number, handler):  # SIGTERM comes between putting back SIGINT's and SIGTERM's
        result = real_signal(number, handler)
        if number == signal.SIGINT and handler is previous_handler:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    try:
        for number in before:
            signal.signal(number, stop.handle)
        monkeypatch.setattr(signal, "signal", restore_then_terminated)
        try:
            stop.restore({signal.SIGINT: previous_handler, signal.SIGTERM: previous_handler})
        except KeyboardInterrupt:
            pytest.fail("the signal raised out of restore(), which left our SIGTERM handler installed")
        monkeypatch.undo()
        assert handlers() == {signal.SIGINT: previous_handler, signal.SIGTERM: previous_handler}
        assert received == [signal.SIGTERM]
    finally:
        monkeypatch.undo()
        for number, handler in before.items():
            signal.signal(number, handler)


def test_main_runs_outside_the_main_thread(tmp_path):
    import threading

    outcome = []

    def train_in_thread():
        try:
            main(["train", "--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "m.npz")])
            outcome.append("returned")
        except BaseException as error:  # noqa: BLE001 - the test reports whatever it was
            outcome.append(error)

    before = handlers()
    thread = threading.Thread(target=train_in_thread)
    thread.start()
    thread.join(timeout=120)
    assert outcome == ["returned"], outcome
    assert (tmp_path / "m.npz").is_file() and handlers() == before


@pytest.mark.parametrize("numba_there", [True, False], ids=["numba", "no numba"])
def test_the_banner_says_how_a_layer_stacks_passes_run(capsys, tmp_path, monkeypatch, numba_there):
    from gpunet.backends import cpu

    if numba_there:
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(cpu, "_cpu_layers", lambda: None)
    code, out, err = run(capsys, "train", "--device", "cpu", "--arch", "conv2k3,pool2,dense8", "--epochs", "1",
                         "--val-size", "100", "--out", str(tmp_path / "m.npz"))
    assert code in (0, 3), err  # 3: one epoch of a tiny CNN may learn too little; the banner is what is tested
    banner = next(line for line in out.splitlines() if line.startswith("Network "))
    expected = "layer passes compiled with numba" if numba_there else "layer passes as NumPy array calls"
    assert expected in banner and "CPU (NumPy" in banner, banner


BROKEN_NUMBA = 'raise ImportError("Numba needs NumPy 2.3 or less. Got NumPy 2.4.")\n'


@pytest.mark.parametrize("arch", ["dense16", "conv2k3,pool2,dense8"], ids=["dense", "layer stack"])
def test_a_numba_that_fails_to_import_leaves_the_numpy_path(tmp_path, arch):
    """A numba built for another NumPy raises at import: training runs NumPy's array calls and says why."""
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text(BROKEN_NUMBA)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    run_ = subprocess.run([sys.executable, "-m", "gpunet", "train", "--device", "cpu", "--arch", arch, "--epochs", "1",
                           "--val-size", "100", "--out", str(tmp_path / "m.npz")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert run_.returncode in (0, 3), run_.stderr  # 3: one epoch may learn too little; the path is what is tested
    assert "Traceback" not in run_.stderr and (tmp_path / "m.npz").exists()
    banner = next(line for line in run_.stdout.splitlines() if line.startswith("Network "))
    assert "NumPy array calls" in banner and "Numba needs NumPy" in banner, banner


# Issue 17, finding 19: after the README's test set-up (CuPy's NVRTC installed) on a machine without a GPU, every
# command printed the CUDA notice and every Classifier.fit/predict raised a RuntimeWarning.

@pytest.fixture
def cupy_without_a_gpu(monkeypatch):
    """CuPy installed where no GPU is usable, on any machine; returns the reason the probe gives.

    Each test's reason is its own, so that a notice given once a process is given in each test.
    """
    import uuid

    from gpunet.backends import cuda as backend_cuda

    reason = f"no usable CUDA driver (CUDARuntimeError: {uuid.uuid4().hex}); install the NVIDIA driver"
    monkeypatch.setattr(backend_cuda, "cupy", backend_cuda.cupy or object())
    monkeypatch.setattr(backend_cuda, "unavailable_reason", lambda: reason)
    return reason


def test_cuda_not_usable_is_said_once_in_trains_banner_and_by_no_other_command(capsys, tmp_path, cupy_without_a_gpu,
                                                                               digits):
    from PIL import Image

    model = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--epochs", "2", "--hidden", "16", "--out", str(model))
    assert code == 0 and err == "", err
    (banner,) = [line for line in out.splitlines() if line.startswith("Network ")]
    assert out.count("no usable CUDA driver") == 1 and "no usable CUDA driver" in banner  # the reason's gist
    images, labels = digits
    labeled = write_csv(tmp_path / "labeled.csv", images, labels)
    Image.fromarray(255 - images[0].reshape(28, 28)).save(tmp_path / "digit.png")
    for command in (["predict", "--model", str(model), "--data", str(write_csv(tmp_path / "test.csv", images)),
                     "--out", str(tmp_path / "submission.csv")],
                    ["predict", "--model", str(model), "--image", str(tmp_path / "digit.png")],
                    ["evaluate", "--model", str(model), "--data", str(labeled)]):
        code, out, err = run(capsys, *command)
        assert code == 0, err
        assert "CUDA" not in out + err and err == "", (command[0], out, err)


def test_info_without_a_usable_gpu_compiles_the_kernels_only_when_asked(capsys, monkeypatch, cupy_without_a_gpu):
    """The finding: `gpunet info` took 27 s where CuPy is installed without a GPU: it compiled every kernel with
    NVRTC for three architectures, a developer's check, at every call."""
    pytest.importorskip("cupy", reason="gpunet info reports CuPy's versions")
    from gpunet.backends import kernels

    compiled = []
    monkeypatch.setattr(kernels, "compile_check", lambda archs=None, ptx_archs=(): compiled.append(archs))
    code, out, err = run(capsys, "info")
    assert code == 0, err
    assert compiled == []
    assert f"cuda: not usable: {cupy_without_a_gpu}" in out
    assert out.splitlines()[-1].strip().startswith("kernels: not compiled (gpunet info --kernels")
    code, out, err = run(capsys, "info", "--kernels")
    assert code == 0, err
    assert len(compiled) == 1 and out.splitlines()[-1].strip().startswith("kernels: compile with NVRTC for")


def test_the_dev_extra_holds_every_extra_the_tests_use():
    """The README's test set-up (pip install -e ".[dev]") installs what each part of the suite needs: the plots,
    the notebook, the compiled CPU paths, Dask, and CuPy's NVRTC for the kernels (not CuPy's CUDA libraries)."""
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for name in ("plot", "notebook", "fast", "dask", "kernels"):
        assert set(extras[name]) <= set(extras["dev"]), name
    assert not any("[ctk]" in requirement for requirement in extras["dev"])
