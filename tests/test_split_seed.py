"""`gpunet train --split-seed`: which digits a run holds out, apart from the seed of its weights, dropout and
shuffle, so that an ensemble's models (each its own --seed) hold out the same digits and `gpunet evaluate
--model a.npz --model b.npz` can score the ensemble on digits none of them learned from.

References: the held-out rows from NumPy's seeded permutation written out here (what
``files.data.validation_rows`` promises), each model's probabilities in float64 from its weights (the
notes' formulas), their mean, and the float32 rounding bounds of tests/tolerances.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpunet.errors import ModelFileError
from gpunet.files.checkpoint import load_model, save_model
from gpunet.files.data import SAMPLE_NAME, load_sample
from gpunet.files.model_schema import metadata_from_json, split_seed
from tests.conftest import run
from tests.test_cli import write_csv
from tests.tolerances import TRANSCENDENTAL_ULPS, pass_bounds

COUNT, HELD_OUT = 800, 200


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """800 labelled digits of the bundled sample as a train.csv, and the (images, labels) it holds."""
    sample = load_sample()
    images, labels = sample.images[:COUNT], sample.labels[:COUNT]
    return write_csv(tmp_path_factory.mktemp("split") / "train.csv", images, labels), images, labels


def held_out_rows(seed: int, count: int = COUNT, val_size: int = HELD_OUT) -> np.ndarray:
    """The rows a split seeded ``seed`` holds out: the first val_size of NumPy's seeded permutation."""
    return np.random.default_rng(seed).permutation(count)[:val_size]


def train(capsys, monkeypatch, data_path, out, *options):
    """Train a small dense model through the CLI; returns (its banner text, the validation images the training
    loop was given)."""
    import gpunet.training.loop as loop

    given = {}
    real_train = loop.train

    def spy(backend, train_digits, val_digits, config, **kwargs):
        given["val"] = val_digits.images.copy()
        return real_train(backend, train_digits, val_digits, config, **kwargs)

    monkeypatch.setattr(loop, "train", spy)
    code, out_text, err = run(capsys, "train", "--device", "cpu", "--data", str(data_path), "--val-size",
                              str(HELD_OUT), "--epochs", "2", "--hidden", "32", "--out", str(out), *options)
    assert code == 0, err
    return out_text, given["val"]


def test_split_seed_defaults_to_the_seed_as_before(capsys, monkeypatch, tmp_path, data):
    path, images, _ = data
    banner, held = train(capsys, monkeypatch, path, tmp_path / "a.npz", "--seed", "3")
    np.testing.assert_array_equal(held, images[held_out_rows(3)])  # today's split of --seed 3, bit for bit
    assert "split seed" not in banner
    params, meta = load_model(tmp_path / "a.npz")
    assert meta["training"]["seed"] == 3 and meta["training"]["split_seed"] == 3
    # --split-seed given as the seed is the same run: the same computation twice, the same bits.
    _, held_again = train(capsys, monkeypatch, path, tmp_path / "b.npz", "--seed", "3", "--split-seed", "3")
    np.testing.assert_array_equal(held_again, held)
    for p, q in zip(params, load_model(tmp_path / "b.npz")[0]):
        np.testing.assert_array_equal(p, q)


def test_two_seeds_with_one_split_seed_hold_out_the_same_digits(capsys, monkeypatch, tmp_path, data):
    path, images, _ = data
    banner, held_1 = train(capsys, monkeypatch, path, tmp_path / "s1.npz", "--seed", "1", "--split-seed", "0")
    _, held_2 = train(capsys, monkeypatch, path, tmp_path / "s2.npz", "--seed", "2", "--split-seed", "0")
    np.testing.assert_array_equal(held_1, images[held_out_rows(0)])
    np.testing.assert_array_equal(held_2, images[held_out_rows(0)])
    assert "200 validation (split seed 0)" in banner
    (p1, m1), (p2, m2) = load_model(tmp_path / "s1.npz"), load_model(tmp_path / "s2.npz")
    assert (m1["training"]["seed"], m1["training"]["split_seed"]) == (1, 0)
    assert (m2["training"]["seed"], m2["training"]["split_seed"]) == (2, 0)
    assert not np.array_equal(p1[0], p2[0])  # the seeds still give each its own weights


def test_split_seed_must_be_a_whole_number(capsys, tmp_path):
    from gpunet.training.loop import SettingError, TrainConfig

    code, _, err = run(capsys, "train", "--device", "cpu", "--split-seed", "-1", "--out", str(tmp_path / "m.npz"))
    assert code == 2 and "--split-seed" in err and "Traceback" not in err
    with pytest.raises(SettingError, match="split_seed"):
        TrainConfig(split_seed=-1)
    assert TrainConfig(seed=5).split_seed == 5 and TrainConfig(seed=5, split_seed=0).split_seed == 0


# -- evaluate of an ensemble ----------------------------------------------------------------------------
def float64_probabilities(params, images) -> np.ndarray:
    """softmax(W_L . relu(... relu(W_1 . x/255 + b_1) ...) + b_L) in float64, one sample a column."""
    A = np.asarray(images, np.float64).T / 255
    params = [np.asarray(p, np.float64) for p in params]
    for k, (W, b) in enumerate(zip(params[0::2], params[1::2])):
        Z = W @ A + b
        A = Z if k == len(params) // 2 - 1 else np.maximum(Z, 0)
    e = np.exp(A - A.max(axis=0))
    return e / e.sum(axis=0)


def ensemble_reference(models, images, labels):
    """(the mean of the models' float64 probabilities (classes, m), its bound per sample on how far the
    command's float32 mean may land from it)."""
    means, bounds = 0.0, 0.0
    for model in models:
        params, _ = load_model(model)
        P = float64_probabilities(params, images)
        # float32 logits against float64 ones (tests/tolerances.py), carried through softmax:
        # p' = p.e^(z'_i - z_i) / sum_j p_j.e^(z'_j - z_j), so |p' - p| <= p.(e^(2.delta) - 1), delta the largest
        # logit error; then the float32 softmax's own roundings and the mean's additions.
        delta = pass_bounds(params, images, labels, np.float32, np.float64).logits.max(axis=0)
        roundings = (TRANSCENDENTAL_ULPS + 4 + len(models)) * np.finfo(np.float32).eps
        means = means + P
        bounds = bounds + P.max(axis=0) * (np.expm1(2 * delta) + roundings)
    return means / len(models), bounds / len(models)


def confusion_shown(out: str) -> np.ndarray:
    lines = out.splitlines()
    start = lines.index("Confusion matrix (rows: true digit, columns: predicted):") + 2
    return np.array([[int(n) for n in line.split()[1:]] for line in lines[start:start + 10]])


def test_evaluate_scores_an_ensemble_on_the_digits_every_model_held_out(capsys, monkeypatch, tmp_path, data):
    path, images, labels = data
    models = [tmp_path / f"m{seed}.npz" for seed in (1, 2, 3)]
    for seed, model in zip((1, 2, 3), models):
        train(capsys, monkeypatch, path, model, "--seed", str(seed), "--split-seed", "0")
    args = [a for model in models for a in ("--model", str(model))]
    code, out, err = run(capsys, "evaluate", "--device", "cpu", *args, "--data", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Ensemble of 3 models (the mean of their probabilities)"
    assert lines[1] == f"{path} is the data these 3 models were trained on."
    assert lines[2].startswith(f"Training digits (it learned from these; no estimate for new digits): "
                               f"{COUNT - HELD_OUT} digits")
    assert lines[3].startswith(f"Validation digits (held out in training): {HELD_OUT} digits, accuracy")

    rows = held_out_rows(0)
    mean, bound = ensemble_reference(models, images[rows], labels[rows])
    ranked = np.sort(mean, axis=0)
    ambiguous = ranked[-1] - ranked[-2] <= 2 * bound  # rounding may pick either of the top two
    assert ambiguous.sum() <= HELD_OUT // 20, "the bound is too loose to check anything"
    want = np.zeros((10, 10), np.int64)
    np.add.at(want, (labels[rows].astype(np.int64), mean.argmax(axis=0)), 1)
    got = confusion_shown(out)
    assert got.sum(axis=1).tolist() == want.sum(axis=1).tolist()  # the same held-out digits, by class
    assert np.abs(got - want).sum() <= 2 * ambiguous.sum(), (got, want)
    shown = float(lines[3].rsplit(" ", 1)[1].rstrip("%"))
    correct = np.trace(want)
    assert abs(round(shown * HELD_OUT / 100) - correct) <= ambiguous.sum()


def test_evaluate_refuses_an_ensemble_whose_models_held_out_different_digits(capsys, monkeypatch, tmp_path, data):
    path, images, labels = data
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    train(capsys, monkeypatch, path, a, "--seed", "1", "--split-seed", "0")
    train(capsys, monkeypatch, path, b, "--seed", "2", "--split-seed", "1")
    other = write_csv(tmp_path / "other.csv", images[:300], labels[:300])
    train(capsys, monkeypatch, other, c, "--seed", "3")
    for second, why in ((b, "held out 200 digits with split seed 1"), (c, "trained on other data")):
        code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(a), "--model", str(second),
                             "--data", str(path))
        assert code != 0 and "accuracy" not in out, out
        (line,) = err.strip().splitlines()
        assert str(a) in line and str(second) in line and why in line
        assert "held out 200 digits with split seed 0" in line and "did not hold out the same digits" in line
    # Digits none of them was trained on are new to all: the ensemble is scored on every one.
    fresh = write_csv(tmp_path / "fresh.csv", load_sample().images[COUNT:COUNT + 100],
                      load_sample().labels[COUNT:COUNT + 100])
    code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(a), "--model", str(b),
                         "--data", str(fresh))
    assert code == 0, err
    assert out.splitlines()[1].startswith(f"{fresh}: 100 digits, accuracy")


# -- the metadata field ---------------------------------------------------------------------------------
def test_older_models_without_split_seed_read_as_their_seed(capsys, monkeypatch, tmp_path, data):
    path, _, _ = data
    model, old = tmp_path / "new.npz", tmp_path / "old.npz"
    train(capsys, monkeypatch, path, model, "--seed", "4")
    params, meta = load_model(model)
    del meta["training"]["split_seed"]  # as gpunet wrote models before --split-seed
    save_model(old, params, meta)
    assert split_seed(load_model(old)[1]["training"]) == 4
    outputs = []
    for each in (model, old):
        code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(each), "--data", str(path))
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] and "Validation digits (held out in training): 200 digits" in outputs[1]


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True, None, 2**63])
def test_the_schema_refuses_a_bad_split_seed(bad):
    sample_meta = {"format": "gpunet-model", "format_version": 1, "layer_sizes": [784, 10],
                   "training": {"seed": 0, "split_seed": bad}}
    with pytest.raises(ModelFileError, match=r"^m\.npz: metadata field training\.split_seed is .*; it must be a "
                                             r"whole number from 0 to"):
        metadata_from_json(json.dumps(sample_meta), "m.npz")
    del sample_meta["training"]["split_seed"]
    assert "split_seed" not in metadata_from_json(json.dumps(sample_meta), "m.npz")["training"]


def test_plot_finds_the_validation_digits_by_the_split_seed():
    from gpunet.files.data import split_validation
    from gpunet.frontends.plots import training_validation_digits

    meta = {"training": {"data": SAMPLE_NAME, "val_size": 300, "seed": 1, "split_seed": 0}}
    got = training_validation_digits(meta, "m.npz")
    np.testing.assert_array_equal(got.images, load_sample().images[held_out_rows(0, len(load_sample()), 300)])
    del meta["training"]["split_seed"]  # an older model: its seed
    np.testing.assert_array_equal(training_validation_digits(meta, "m.npz").images,
                                  split_validation(load_sample(), 300, 1)[1].images)
