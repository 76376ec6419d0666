"""Ensembles and probabilities: `gpunet predict --model a --model b --probabilities FILE`, and soft voting from Python.

The reference is independent of the command's code: each model's ``predict_proba`` from ``gpunet.load``,
computed apart, and their mean taken here.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

import gpunet
from gpunet.files.data import load_sample
from gpunet.frontends.estimator import Classifier
from tests.conftest import run
from tests.test_cli import write_csv
from tests.tolerances import gamma, unit_roundoff

CLASSES = 10
HEADER = "ImageId," + ",".join(f"p{k}" for k in range(CLASSES))


def row_sum_bound(models: int, dtype=np.float32) -> float:
    """How far a row of the mean of ``models`` softmax outputs (computed in ``dtype``) may sum from 1.

    softmax is p_i = fl(e_i / S^), S^ the computed sum of the same e_i: sum_i e_i / S^ = 1 / (1 + theta) with
    |theta| <= gamma_(classes-1), and each division rounds once (u). Whatever error exp made cancels, as the
    same e_i are on both sides. Adding the float64 probabilities up, and the mean's own sums, round in float64.
    """
    return gamma(CLASSES, dtype) + unit_roundoff(dtype) + gamma(CLASSES + models, np.float64)


def mean_bound(models: int) -> float:
    """Two float64 means of the same ``models`` probabilities (each <= 1), added in any order: gamma_K apart."""
    return 2 * gamma(models, np.float64)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two digit models of different architectures, trained through the command line: the notes' dense network
    (model format 1) and a layer stack with dropout (format 2)."""
    folder = tmp_path_factory.mktemp("ensemble")
    for name, shape in (("dense.npz", ["--hidden", "32"]), ("stack.npz", ["--arch", "dense24,dropout0.2"])):
        code = gpunet_main("train", "--device", "cpu", "--epochs", "2", "--seed", "3", *shape,
                           "--out", str(folder / name))
        assert code == 0
    return folder / "dense.npz", folder / "stack.npz"


def gpunet_main(*args) -> int:
    from gpunet.frontends.cli import main

    try:
        main(list(args))
    except SystemExit as exit:
        return exit.code or 0
    return 0


@pytest.fixture(scope="module")
def test_digits():
    sample = load_sample()
    return sample.images[-300:]


def read_probabilities(path) -> tuple[list[int], np.ndarray]:
    """(ImageIds, probabilities) of a --probabilities file, each value read back exactly by Python's float()."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert ",".join(rows[0]) == HEADER
    return [int(row[0]) for row in rows[1:]], np.array([[float(v) for v in row[1:]] for row in rows[1:]])


def test_predict_averages_the_models_probabilities_and_writes_them(capsys, tmp_path, models, test_digits):
    data = write_csv(tmp_path / "test.csv", test_digits)
    out, probs_path = tmp_path / "submission.csv", tmp_path / "probabilities.csv"
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(models[0]), "--model",
                            str(models[1]), "--data", str(data), "--out", str(out), "--probabilities", str(probs_path))
    assert code == 0, err
    assert "mean of 2 models" in stdout
    ids, probs = read_probabilities(probs_path)
    m = len(test_digits)
    assert ids == list(range(1, m + 1)) and probs.shape == (m, CLASSES)
    reference = (gpunet.load(models[0]).predict_proba(test_digits) + gpunet.load(models[1]).predict_proba(test_digits)) / 2
    assert np.abs(probs - reference).max() <= mean_bound(2)
    assert np.abs(probs.sum(axis=1) - 1).max() <= row_sum_bound(2)
    # The two models disagree somewhere, so the mean is no copy of either.
    single = [gpunet.load(model).predict_proba(test_digits) for model in models]
    assert all(np.abs(probs - p).max() > 1e-3 for p in single)
    submission = pd.read_csv(out)
    assert submission.ImageId.tolist() == list(range(1, m + 1))
    np.testing.assert_array_equal(submission.Label.to_numpy(), probs.argmax(axis=1))  # from the very numbers written
    top_two = np.sort(reference, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 2 * mean_bound(2)  # a label may differ only at a tie within rounding
    np.testing.assert_array_equal(submission.Label.to_numpy()[clear], reference.argmax(axis=1)[clear])


def test_one_model_gives_its_own_probabilities(capsys, tmp_path, models, test_digits):
    data = write_csv(tmp_path / "test.csv", test_digits)
    probs_path = tmp_path / "p.csv"
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(models[1]), "--data", str(data),
                            "--out", str(tmp_path / "s.csv"), "--probabilities", str(probs_path))
    assert code == 0, err
    assert "mean of" not in stdout
    probs = read_probabilities(probs_path)[1]
    np.testing.assert_array_equal(probs, gpunet.load(models[1]).predict_proba(test_digits))  # the same computation


def test_image_labels_come_from_the_ensemble(capsys, tmp_path, models, test_digits):
    from PIL import Image

    image = tmp_path / "digit.png"
    Image.fromarray(test_digits[0].reshape(28, 28)).save(image)
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(models[0]), "--model",
                            str(models[1]), "--image", str(image), "--json")
    assert code == 0, err
    import json

    from gpunet.frontends.images import load_digit

    pixels = load_digit(image)[None, :]
    reference = (gpunet.load(models[0]).predict_proba(pixels) + gpunet.load(models[1]).predict_proba(pixels)) / 2
    answer = json.loads(stdout)[0]
    assert np.abs(np.array(answer["probabilities"]) - reference[0]).max() <= 5e-7 + mean_bound(2)  # rounded to 6 places
    ranked = np.sort(reference[0])
    if ranked[-1] - ranked[-2] > 2 * mean_bound(2):  # not a tie within rounding
        assert answer["label"] == int(reference[0].argmax())


@pytest.mark.parametrize("kind", ["missing", "corrupt", "not_a_model", "other_classes"])
def test_a_bad_or_mismatched_model_among_several_is_named_in_one_line(capsys, tmp_path, models, test_digits, kind):
    bad = tmp_path / "bad.npz"
    if kind == "corrupt":
        bad.write_bytes(b"PK\x03\x04 broken")
    elif kind == "not_a_model":
        np.savez(bad, weights=np.zeros(3))
    elif kind == "other_classes":
        sample = load_sample()
        X, y = sample.images[:1000], sample.labels[:1000]
        Classifier(epochs=1, device="cpu").fit(X[y > 0], y[y > 0]).save(bad)
    data = write_csv(tmp_path / "test.csv", test_digits[:20])
    out, probs_path = tmp_path / "s.csv", tmp_path / "p.csv"
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(models[0]), "--model", str(bad),
                       "--data", str(data), "--out", str(out))
    assert code == 1 and err.startswith("Error:") and err.count("\n") == 1 and "bad.npz" in err, err
    if kind == "other_classes":
        assert "are not those of" in err and "dense.npz" in err
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(bad), "--model", str(models[0]),
                       "--data", str(data), "--out", str(out), "--probabilities", str(probs_path))
    assert code == 1 and err.count("\n") == 1 and "bad.npz" in err, err
    assert not out.exists() and not probs_path.exists()


def test_probabilities_replace_only_probabilities(capsys, tmp_path, models, test_digits):
    data = write_csv(tmp_path / "test.csv", test_digits[:20])
    out, probs_path = tmp_path / "s.csv", tmp_path / "p.csv"
    args = ["predict", "--device", "cpu", "--model", str(models[0]), "--data", str(data), "--out", str(out)]
    probs_path.write_text("ImageId,Label\n1,7\n")  # a submission is not what --probabilities replaces
    code, _, err = run(capsys, *args, "--probabilities", str(probs_path))
    assert code == 1 and err.count("\n") == 1, err
    assert "--probabilities" in err and "holds a Kaggle submission, not a file of class probabilities" in err
    assert probs_path.read_text() == "ImageId,Label\n1,7\n" and not out.exists()
    probs_path.write_text(HEADER + "\n1,1,0,0,0,0,0,0,0,0,0\n")  # an older one is
    code, _, err = run(capsys, *args, "--probabilities", str(probs_path))
    assert code == 0, err
    assert len(read_probabilities(probs_path)[0]) == 20
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(models[0]), "--data", str(data),
                       "--out", str(probs_path))  # nor is a probabilities file what --out replaces
    assert code == 1 and "holds a file of class probabilities, not a Kaggle submission" in err, err
    assert len(read_probabilities(probs_path)[0]) == 20


@pytest.mark.parametrize("clash", ["out", "model", "data"])
def test_probabilities_at_another_output_or_an_input_is_refused(capsys, tmp_path, models, test_digits, clash):
    data = write_csv(tmp_path / "test.csv", test_digits[:20])
    model = tmp_path / "model.npz"
    model.write_bytes(models[0].read_bytes())
    out = tmp_path / "s.csv"
    target = {"out": out, "model": model, "data": data}[clash]
    before = target.read_bytes() if target.exists() else None
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(models[1]), "--model", str(model),
                       "--data", str(data), "--out", str(out), "--probabilities", str(target))
    assert code == (2 if clash == "out" else 1) and err.count("\n") == 1, err
    assert "different names" in err if clash == "out" else f"is the --{clash} file" in err
    assert (target.read_bytes() if target.exists() else None) == before
    assert not out.exists()


def test_probabilities_go_with_data_not_images(capsys, tmp_path, models):
    code, _, err = run(capsys, "predict", "--model", str(models[0]), "--image", "a.png", "--probabilities", "p.csv")
    assert code == 2 and "--probabilities goes with --data" in err and err.count("\n") == 1


# -- from Python ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_xy():
    sample = load_sample()
    return sample.images[:3000], sample.labels[:3000], sample.images[-200:]


MEMBERS = [("dense", dict(hidden=(32,), epochs=2, seed=1, device="cpu")),
           ("stack", dict(arch="dense24,dropout0.2", epochs=2, seed=2, device="cpu"))]


def test_voting_classifier_soft_averages_the_members_probabilities(digits_xy):
    from sklearn.ensemble import VotingClassifier

    X, y, X_new = digits_xy
    voting = VotingClassifier([(name, Classifier(**params)) for name, params in MEMBERS], voting="soft").fit(X, y)
    apart = [Classifier(**params).fit(X, y) for _, params in MEMBERS]  # the reference: each fitted on its own
    for member, alone in zip(voting.estimators_, apart):  # the same fit twice: the same bits
        np.testing.assert_array_equal(member.predict_proba(X_new), alone.predict_proba(X_new))
    reference = (apart[0].predict_proba(X_new) + apart[1].predict_proba(X_new)) / 2
    probs = voting.predict_proba(X_new)
    assert np.abs(probs - reference).max() <= mean_bound(2)
    assert np.abs(probs.sum(axis=1) - 1).max() <= row_sum_bound(2)
    np.testing.assert_array_equal(voting.predict(X_new), voting.classes_[probs.argmax(axis=1)])
    assert voting.score(X_new, load_sample().labels[-200:]) > 0.8


def test_mean_proba_averages_fitted_classifiers_and_refuses_other_classes(digits_xy):
    X, y, X_new = digits_xy
    fitted = [Classifier(**params).fit(X, y) for _, params in MEMBERS]
    reference = sum(clf.predict_proba(X_new) for clf in fitted) / len(fitted)
    probs = gpunet.mean_proba(fitted, X_new)
    assert np.abs(probs - reference).max() <= mean_bound(2)
    assert np.abs(probs.sum(axis=1) - 1).max() <= row_sum_bound(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = Classifier(epochs=1, device="cpu").fit(X[y > 0], y[y > 0])
    with pytest.raises(ValueError, match="classes_"):
        gpunet.mean_proba([fitted[0], other], X_new)
    with pytest.raises(ValueError, match="at least one"):
        gpunet.mean_proba([], X_new)
