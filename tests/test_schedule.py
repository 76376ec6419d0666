"""The learning-rate schedule's warm-up (``TrainConfig.warmup``, ``gpunet train --warmup``, ``Classifier(warmup=)``):
the rates against their formula in float64, today's one-epoch warm-up bit for bit, the setting carried from the
command line and the estimator to the loop and into model files, and a bad value refused in one line."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gpunet.backends.cpu import CpuBackend
from gpunet.errors import ModelFileError
from gpunet.files.checkpoint import load_model
from gpunet.files.data import load_sample
from gpunet.frontends.estimator import Classifier, load
from gpunet.training.loop import SettingError, TrainConfig, learning_rate, steps_per_epoch, train
from tests.conftest import run, sample_npz
from tests.test_training import separable_digits
from tests.tolerances import TRANSCENDENTAL_ULPS, assert_within, unit_roundoff

OLD_MODEL = Path(__file__).resolve().parent / "data" / "model_v1_dense_16_16.npz"  # written before --warmup


def reference_rates(lr: float, epochs: int, steps: int, warmup: float) -> np.ndarray:
    """The cosine schedule of every step of the run, in float64 from its formula: lr (k + 1) / W for the first
    W steps, W = warmup . steps to the nearest whole step (a half up), then lr / 2 (1 + cos(pi (k - W) / (N - W)))
    of the run's N steps."""
    n = epochs * steps
    w = warm_up_steps(warmup, steps)
    k = np.arange(n, dtype=np.float64)
    warm = lr * (k + 1) / max(w, 1)
    decay = lr / 2 * (1 + np.cos(np.pi * (k - w) / max(n - w, 1)))
    return np.where(k < w, warm, decay)


def old_learning_rate(config, step: int, steps_per_epoch: int) -> float:
    """gpunet's schedule before --warmup, as it was written (a warm-up of exactly one epoch)."""
    if config.schedule == "constant":
        return config.lr
    warmup = steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.epochs * steps_per_epoch - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def warm_up_steps(warmup: float, steps: int) -> int:
    """W: the warm-up in whole steps, the nearest to warmup . steps, a half up (0.5 of a one-step epoch is 1)."""
    return int(math.floor(warmup * steps + 0.5))


def schedule_bound(lr: float, want: np.ndarray) -> np.ndarray:
    """How far two evaluations of the formula may differ. cos's argument x = pi (k - W) / (N - W) <= pi is
    rounded twice on each side, in another order (pi . (k - W) first here, the quotient first in the loop):
    |dx| <= 4 u pi, and |d cos| <= |dx|. Each cos comes from its own library, within TRANSCENDENTAL_ULPS ulps of
    a value at most 1 (ulps of at most u). Both scaled by lr / 2; then a few roundings of each result."""
    u = unit_roundoff(np.float64)
    return lr / 2 * (2 * TRANSCENDENTAL_ULPS * u + 4 * math.pi * u) + 4 * u * np.abs(want)


# (warmup, epochs, steps an epoch): none, a quarter, today's one epoch, two, the whole run; an odd epoch;
# one step an epoch (full batch), where a quarter of it rounds to no warm-up; halves of a step, which round up
# (0.5 and 2.5 of one step, 0.25 of two: 1, 3 and 1 steps, where halves to even would give 0, 2 and 0).
CASES = [(0, 3, 8), (0.25, 3, 8), (1, 3, 8), (2, 3, 8), (3, 3, 8), (0.25, 4, 657), (0.25, 4, 1), (2, 4, 1),
         (0.5, 4, 1), (2.5, 4, 1), (0.25, 3, 2)]


@pytest.mark.parametrize("warmup, epochs, steps", CASES)
def test_the_cosine_rates_are_the_formulas(warmup, epochs, steps):
    config = TrainConfig(lr=0.1, epochs=epochs, warmup=warmup)
    got = np.array([learning_rate(config, k, steps) for k in range(epochs * steps)])
    want = reference_rates(0.1, epochs, steps, warmup)
    assert_within(got, want, schedule_bound(0.1, want), f"rates of warm-up {warmup}")
    w = warm_up_steps(warmup, steps)
    if w:  # the warm-up climbs in equal steps to lr
        assert np.all(np.diff(got[:w]) > 0) and got[0] == pytest.approx(0.1 / w)
    if w < epochs * steps:  # the first step past it at lr exactly (cos 0 = 1), then down towards 0
        assert got[w] == 0.1 and np.all(np.diff(got[w:]) < 0)
        assert got[-1] < 0.1 or w == epochs * steps - 1  # (a decay of one step is that step, at lr)
    else:  # a warm-up of the whole run: its last step reaches lr
        assert got[-1] == pytest.approx(0.1)


def test_no_warm_up_starts_at_the_full_rate():
    assert learning_rate(TrainConfig(lr=0.1, epochs=3, warmup=0), 0, 8) == 0.1


@pytest.mark.parametrize("lr, epochs, steps", [(0.01, 30, 657), (0.1, 10, 5), (0.002, 4, 329), (0.1, 500, 1)])
def test_a_one_epoch_warm_up_gives_todays_rates_bit_for_bit(lr, epochs, steps):
    """The default, 1, is what every run did before the option: the same floats, so the same weights."""
    default, given = TrainConfig(lr=lr, epochs=epochs), TrainConfig(lr=lr, epochs=epochs, warmup=1)
    assert default.warmup == 1.0
    for config in (default, given):
        assert all(learning_rate(config, k, steps) == old_learning_rate(config, k, steps)
                   for k in range(epochs * steps))


def test_the_constant_schedule_ignores_the_warm_up():
    config = TrainConfig(lr=0.1, epochs=3, schedule="constant", warmup=2)
    assert [learning_rate(config, k, 5) for k in range(15)] == [0.1] * 15


def test_the_loop_steps_at_the_warm_ups_rates():
    """Each epoch's recorded rate is its last step's (EpochMetrics.lr): the loop follows the setting."""
    train_digits = separable_digits(200)
    config = TrainConfig(hidden=(8,), epochs=3, batch_size=32, lr=0.01, warmup=0.25, val_size=0)
    steps = steps_per_epoch(len(train_digits), config.batch_size)
    result = train(CpuBackend(), train_digits, separable_digits(0, seed=1), config)
    want = reference_rates(0.01, 3, steps, 0.25)[steps - 1::steps]
    assert_within(np.array([m.lr for m in result.history]), want, schedule_bound(0.01, want), "epochs' rates")


# -- refused in one line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-0.25, float("nan"), float("inf"), "0.25", True, None])
def test_a_warm_up_that_is_no_count_of_epochs_is_refused(value):
    with pytest.raises(SettingError, match="^warmup=") as caught:
        TrainConfig(warmup=value)
    assert caught.value.name == "warmup" and "finite number of epochs >= 0" in str(caught.value)


def test_a_warm_up_longer_than_the_run_is_refused_and_one_as_long_is_not():
    with pytest.raises(SettingError) as caught:
        TrainConfig(epochs=3, warmup=3.5)
    assert str(caught.value) == "warmup=3.5: must be at most epochs (3): a warm-up longer than the run"
    assert TrainConfig(epochs=3, warmup=3).warmup == 3.0 and type(TrainConfig(warmup=np.float32(0.5)).warmup) is float


@pytest.mark.parametrize("args, says", [
    (["--warmup", "-0.5"], "Invalid value for '--warmup': must be a finite number of epochs >= 0 (0: none) (got -0.5)"),
    (["--warmup", "nan"], "'--warmup': must be a finite number of epochs >= 0"),
    (["--warmup", "inf"], "'--warmup': must be a finite number of epochs >= 0"),
    (["--warmup", "1e400"], "'--warmup': must be a finite number of epochs >= 0"),  # a float too large: inf
    (["--warmup", "-1"], "'--warmup': must be a finite number of epochs >= 0"),
    (["--warmup", "5", "--epochs", "3"], "'--warmup': must be at most --epochs (3): a warm-up longer than the run"),
    (["--warmup", "soon"], "Invalid value for '--warmup': 'soon' is not a valid float"),
])
def test_the_command_line_refuses_a_bad_warm_up_in_one_line(capsys, tmp_path, args, says):
    code, out, err = run(capsys, "train", "--device", "cpu", *args, "--out", str(tmp_path / "m.npz"))
    assert code == 2 and out == "" and err.count("\n") == 1 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "m.npz").exists()


def test_a_presets_warm_up_longer_than_the_epochs_given_names_epochs_and_the_preset(capsys, tmp_path, monkeypatch):
    """--preset fast --epochs 1, where the preset warms up for 2 epochs: the user gave --epochs, not --warmup, so
    the line names --epochs, the preset's warm-up and the way out."""
    from gpunet.training.presets import PRESETS

    monkeypatch.setitem(PRESETS["fast"], "warmup", 2.0)
    code, out, err = run(capsys, "train", "--device", "cpu", "--preset", "fast", "--epochs", "1",
                         "--out", str(tmp_path / "m.npz"))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert ("Invalid value for '--epochs': 1 is shorter than --preset fast's warm-up of 2 epochs; give --warmup "
            "at most 1 too") in err, err


# -- the command line, the estimator, model files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return sample_npz(tmp_path_factory.mktemp("warmup"), 600)


def test_the_command_line_trains_with_the_warm_up_says_it_and_records_it(capsys, tmp_path, small_data):
    model = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--device", "cpu", "--data", str(small_data), "--val-size", "100",
                         "--hidden", "8", "--epochs", "2", "--warmup", "0.25", "--out", str(model))
    assert code in (0, 3), err  # two epochs of 500 digits need not learn; the model is written either way
    assert "784-8-10, adam lr 0.01 (cosine, warm-up 0.25 epoch), batch 64, 2 epochs" in out, out
    _, meta = load_model(model)
    assert meta["training"]["warmup"] == 0.25
    steps = steps_per_epoch(500, 64)
    want = reference_rates(0.01, 2, steps, 0.25)[steps - 1::steps]
    assert_within(np.array([m["lr"] for m in meta["history"]]), want, schedule_bound(0.01, want), "epochs' rates")


def test_the_constant_schedule_takes_a_warm_up_longer_than_the_run_as_it_ignores_it(capsys, tmp_path, small_data):
    """--optimizer gd trains at a constant rate (its default schedule), which has no warm-up: a --warmup given
    there is ignored, as --help says, rather than refused as longer than the run."""
    assert TrainConfig(epochs=1, schedule="constant", warmup=2).warmup == 2.0
    code, out, err = run(capsys, "train", "--device", "cpu", "--data", str(small_data), "--val-size", "100",
                         "--hidden", "8", "--optimizer", "gd", "--epochs", "1", "--warmup", "2",
                         "--out", str(tmp_path / "m.npz"))
    assert code in (0, 3), err  # one full-batch step need not learn
    assert "adam" not in out and "gd lr 0.1 (constant), full batch, 1 epoch" in out, out


@pytest.mark.parametrize("settings, steps, says", [
    (dict(), 100, "cosine"), (dict(warmup=1), 100, "cosine"), (dict(warmup=0), 100, "cosine, no warm-up"),
    (dict(warmup=0.25), 100, "cosine, warm-up 0.25 epoch"), (dict(warmup=2, epochs=3), 100, "cosine, warm-up 2 epochs"),
    (dict(warmup=0.5, schedule="constant"), 100, "constant"),
    # 0.25 of a 4-step epoch is one step: its one rate is lr, no warm-up; 0.5 of a 1-step epoch rounds to 1 too
    (dict(warmup=0.25), 4, "cosine, no warm-up"), (dict(warmup=0.5), 1, "cosine, no warm-up"),
    (dict(warmup=0.5), 4, "cosine, warm-up 0.5 epoch")])
def test_the_banner_names_a_warm_up_that_is_not_one_epoch(settings, steps, says):
    from gpunet.frontends.cli import schedule_text

    assert schedule_text(TrainConfig(**settings), steps) == says


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # two epochs: the rates are the point
def test_the_estimator_takes_warmup_as_scikit_learn_does(tmp_path):
    from sklearn.base import clone

    clf = Classifier(warmup=0.25, epochs=2, batch_size=16, device="cpu")
    assert clf.get_params()["warmup"] == 0.25 and clone(clf).warmup == 0.25
    assert Classifier().warmup == 1.0 and Classifier().set_params(warmup=0).warmup == 0
    assert Classifier(warmup="x").warmup == "x"  # stored as given; fit checks it
    X, y = np.random.default_rng(0).normal(size=(64, 3)), np.arange(64) % 2
    clf.fit(X, y)
    assert clf.config_.warmup == 0.25
    want = reference_rates(0.01, 2, 4, 0.25)[3::4]
    assert_within(np.array([h["lr"] for h in clf.history_]), want, schedule_bound(0.01, want), "epochs' rates")
    clf.save(tmp_path / "m.npz")
    again = load(tmp_path / "m.npz")
    assert again.warmup == 0.25 and again.config_.warmup == 0.25


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "0.25", True])
def test_the_estimator_refuses_a_bad_warm_up_at_fit(value):
    X, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    with pytest.raises(ValueError, match="^warmup=") as caught:
        Classifier(warmup=value, device="cpu").fit(X, y)
    assert isinstance(caught.value, SettingError)
    with pytest.raises(SettingError, match="^warmup=4: must be at most epochs"):
        Classifier(warmup=4, epochs=3, device="cpu").fit(X, y)


def test_a_model_from_before_the_option_loads_as_a_one_epoch_warm_up():
    _, meta = load_model(OLD_MODEL)
    assert "warmup" not in meta["training"]
    clf = load(OLD_MODEL)
    assert clf.warmup == 1.0 and clf.config_.warmup == 1.0
    assert clf.predict(load_sample().images[:5]).shape == (5,)


def with_training(path, tmp_path, **changes):
    """The old model's weights with its training record changed, at a new path."""
    with np.load(path, allow_pickle=False) as arrays:
        kept = {key: arrays[key] for key in arrays.files}
    meta = json.loads(str(kept["metadata"][()]))
    meta["training"].update(changes)
    kept["metadata"] = np.array(json.dumps(meta))
    out = tmp_path / "edited.npz"
    np.savez(out, **kept)
    return out


@pytest.mark.parametrize("value, says", [
    (-1, "metadata field training.warmup is -1; it must be a number at least 0"),
    (float("nan"), "metadata field training.warmup is nan; it must be a number at least 0"),
    ("1", "metadata field training.warmup is the text '1'; it must be a number at least 0")])
def test_a_model_whose_recorded_warm_up_is_bad_is_refused_in_one_line(capsys, tmp_path, value, says):
    model = with_training(OLD_MODEL, tmp_path, warmup=value)
    with pytest.raises(ModelFileError) as caught:
        load(model)
    assert str(caught.value) == f"{model}: {says}"
    data = tmp_path / "digits.npz"
    np.savez(data, images=load_sample().images[:10])
    code, _, err = run(capsys, "predict", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "s.csv"))
    assert code == 1 and err == f"Error: {model}: {says}\n", err


def test_a_model_recording_a_warm_up_longer_than_its_run_is_refused_by_gpunet_load(tmp_path):
    model = with_training(OLD_MODEL, tmp_path, warmup=9.5)  # a number, so the schema passes it; its run had 2
    with pytest.raises(ModelFileError) as caught:
        load(model)
    assert str(caught.value) == (f"{model}: its training settings cannot be used: warmup=9.5: must be at most "
                                 "epochs (2): a warm-up longer than the run")
