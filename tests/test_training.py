"""The training loop: learning, determinism, early stopping, divergence and Ctrl-C."""

import math
from dataclasses import dataclass

import numpy as np
import pytest

from gpunet.training.loop import (TrainConfig, TrainingDiverged, TrainingInterrupted, evaluate, DeviceData,
                             learning_rate, train)


@dataclass
class Digits:
    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


def separable_digits(m, seed=0):
    """Synthetic 'digits': class k lights up its own block of pixels, plus noise. Learnable to ~100%."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=m).astype(np.uint8)
    images = rng.integers(0, 60, size=(m, 784)).astype(np.uint8)
    for k in range(10):
        images[labels == k, k * 78 : k * 78 + 40] = 220
    return Digits(images, labels)


def small_config(**changes):
    return TrainConfig(**{"hidden": (16, 16), "epochs": 3, "batch_size": 32, "lr": 0.01, **changes})


def test_training_learns(backend):
    result = train(backend, separable_digits(600), separable_digits(200, seed=1), small_config())
    first, last = result.history[0], result.history[-1]
    assert last.val_accuracy >= 0.95
    assert last.train_loss < first.train_loss
    assert result.best_epoch == 3 and result.stop_reason == "completed"


def test_full_batch_gradient_descent_of_the_notes(backend):
    config = small_config(optimizer="gd", batch_size=0, lr=0.5, epochs=60, init="seed", schedule="constant",
                          weight_decay=0.0)
    result = train(backend, separable_digits(300), separable_digits(100, seed=1), config)
    losses = [m.train_loss for m in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1].val_accuracy >= 0.9


@pytest.mark.paths
def test_same_seed_gives_identical_weights(backend):
    runs = [train(backend, separable_digits(200), separable_digits(50, seed=1), small_config(seed=7))
            for _ in range(2)]
    for a, b in zip(*(r.network.host_params() for r in runs)):
        np.testing.assert_array_equal(a, b)
    other = train(backend, separable_digits(200), separable_digits(50, seed=1), small_config(seed=8))
    assert not np.array_equal(runs[0].network.host_params()[0], other.network.host_params()[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept(backend, dtype):
    result = train(backend, separable_digits(100), separable_digits(20, seed=1), small_config(epochs=1, dtype=dtype))
    assert all(p.dtype == np.dtype(dtype) for p in result.network.params)


def test_huge_learning_rate_stops_with_last_good_weights(backend):
    history = []
    with pytest.raises(TrainingDiverged) as caught:
        train(backend, separable_digits(200), separable_digits(50, seed=1),
              small_config(optimizer="sgd", lr=1e6, epochs=5, weight_decay=0.0), on_epoch=history.append)
    error = caught.value
    assert not math.isfinite(error.value)
    params = error.result.network.host_params()
    assert all(np.isfinite(p).all() for p in params)
    assert error.epoch == len(error.result.history) + 1


def assert_val_loss_is(network, digits, recorded):
    """evaluate() with BLAS on one thread, as training validates: the same computation, so the recorded bits."""
    with network.backend.compute_threads():
        val_loss, _ = evaluate(network, DeviceData(network.backend, digits))
    assert val_loss == recorded


@pytest.mark.paths
def test_early_stopping_restores_the_best_weights(backend):
    train_digits, val_digits = separable_digits(200), separable_digits(50, seed=1)
    # Shuffled validation labels: their loss rises while training fits, so early stopping must fire.
    val_digits.labels[:] = np.random.default_rng(3).integers(0, 10, size=50)
    config = small_config(epochs=40, lr=0.05, patience=2, weight_decay=0.0)
    result = train(backend, train_digits, val_digits, config)
    assert result.stop_reason == "early_stopping"
    best = min(result.history, key=lambda m: m.val_loss)
    assert result.best_epoch == best.epoch
    assert len(result.history) == best.epoch + 2  # patience 2: stopped after two epochs without improvement
    assert_val_loss_is(result.network, val_digits, best.val_loss)


@pytest.mark.paths
def test_ctrl_c_keeps_the_best_weights_so_far(backend):
    def interrupt_at_epoch_3(metrics):
        if metrics.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as caught:
        train(backend, separable_digits(200), separable_digits(50, seed=1), small_config(epochs=10),
              on_epoch=interrupt_at_epoch_3)
    result = caught.value.result
    assert result.stop_reason == "interrupted" and len(result.history) == 3
    assert_val_loss_is(result.network, separable_digits(50, seed=1), result.history[result.best_epoch - 1].val_loss)


def test_cosine_schedule_warms_up_for_an_epoch_then_decays_towards_zero():
    config = TrainConfig(lr=0.1, epochs=10, schedule="cosine")
    rates = [learning_rate(config, step, steps_per_epoch=5) for step in range(50)]
    assert rates[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert rates[5] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(rates[5:], rates[6:])) and 0 < rates[-1] < 0.001
    # After the warm-up: lr/2 (1 + cos(pi k/K)) for the k-th of the K = 45 remaining steps, from lr towards 0.
    expected = [0.05 * (1 + np.cos(np.pi * k / 45)) for k in range(45)]
    np.testing.assert_allclose(rates[5:], expected, rtol=4 * np.finfo(float).eps, atol=1e-17)
    assert learning_rate(TrainConfig(lr=0.1, epochs=10, schedule="constant"), 7, 5) == 0.1


# -- the hint after a run that learned nothing (metrics.unlearned_hint) -------------------------------
def history_of(losses, train_accuracy=0.1):
    """EpochMetrics with these training losses, every accuracy at ``train_accuracy``."""
    from gpunet.training.loop import EpochMetrics

    return [EpochMetrics(k + 1, 0.01, loss, train_accuracy, 2.3, 0.1, 0.0) for k, loss in enumerate(losses)]


BALANCED = np.repeat(np.arange(10, dtype=np.uint8), 50)  # chance 10%


@pytest.mark.parametrize("losses, says, not_says", [
    ([2.326, 2.326, 2.326], "hardly moved", "smaller"),  # --lr 1e-300
    ([2.3258, 2.3256, 2.3253, 2.325, 2.3247], "hardly moved", "smaller"),  # gd with lr 0.001 for 5 epochs
    ([4.44, 4.05, 3.81, 3.63, 3.50], "still falling", "smaller"),  # gd: still 3.7% down in the last epoch
    ([2.33, 2.13, 5.87, 37.9, 2.31, 2.30], "rose from 2.13 to 5.87 in epoch 3", "larger"),
    ([2.02, 2.38, 2.35, 2.32, 2.31], "rose from 2.02 to 2.38 in epoch 2", "larger"),
    ([6.0, 2.5, 2.31, 2.303, 2.3026], "settled at 2.303", "larger"),  # fell to a constant guess's loss, stuck there
    # Up by under 1% an epoch, but 4% in all: a rise, not "hardly moved" (it said a larger lr).
    ([2.30, 2.32, 2.34, 2.36, 2.38, 2.40], "crept up from 2.3 to 2.4 over 6 epochs", "larger"),
    ([2.30, 2.31, 2.30, 2.31, 2.32], "hardly moved", "smaller"),  # ends 0.9% up: within the 1% it may move
])
def test_the_unlearned_hint_reads_the_training_loss(losses, says, not_says):
    from gpunet.training.metrics import unlearned_hint

    hint = unlearned_hint(history_of(losses), BALANCED, "validation", TrainConfig(optimizer="sgd", lr=0.5,
                                                                                  weight_decay=0.0, epochs=9))
    assert says in hint and not_says not in hint, hint
    if "smaller" in hint:
        assert "smaller lr (now 0.5), or optimizer adam" in hint
    else:
        assert "larger lr (now 0.5) or more epochs (now 9)" in hint
    assert "\n" not in hint


def test_the_unlearned_hint_after_one_epoch_asks_for_more_epochs_only():
    from gpunet.training.metrics import unlearned_hint

    hint = unlearned_hint(history_of([2.3026]), BALANCED, "validation", TrainConfig(lr=1e-300, epochs=1))
    assert "one epoch only (training loss 2.303)" in hint and "more epochs (now 1)" in hint, hint
    assert "hardly moved" not in hint and "larger" not in hint and "smaller" not in hint, hint


def test_the_divergence_hint_names_the_weight_decay_where_it_makes_the_weights_grow():
    from gpunet.training.metrics import divergence_hint

    assert divergence_hint(TrainConfig(lr=50, weight_decay=0.0)) == "try a smaller lr (now 50)"
    hint = divergence_hint(TrainConfig(lr=50, weight_decay=0.1), lambda name: "--" + name.replace("_", "-"))
    assert "--lr (now 50) or --weight-decay (now 0.1): their product is 5" in hint, hint


def test_the_unlearned_hint_names_options_as_the_caller_spells_them():
    from gpunet.training.metrics import unlearned_hint

    hint = unlearned_hint(history_of([2.3, 2.3]), BALANCED, "validation", TrainConfig(lr=1e-300),
                          option=lambda name: "--" + name.replace("_", "-"))
    assert "a larger --lr (now 1e-300) or more --epochs (now 30)" in hint
    hint = unlearned_hint(history_of([2.3, 2.3], train_accuracy=0.9), BALANCED, "validation", TrainConfig(),
                          option=lambda name: "--" + name.replace("_", "-"))
    assert "a smaller --val-size" in hint


def test_a_training_set_fit_well_above_chance_is_called_memorised():
    from gpunet.training.metrics import unlearned_hint

    config = TrainConfig()
    # Halfway from chance (10%) to 100% is 55%: above it, the network fit its training digits.
    assert "memorised" in unlearned_hint(history_of([2.3, 0.1], train_accuracy=0.56), BALANCED, "validation", config)
    assert "memorised" not in unlearned_hint(history_of([2.3, 0.1], 0.54), BALANCED, "validation", config)
    # Judged on the training digits themselves (too few validation digits), there is nothing to memorise apart.
    assert "memorised" not in unlearned_hint(history_of([2.3, 2.3], 0.56), BALANCED, "training", config)


def test_the_unlearned_hint_names_a_weight_decay_that_wipes_the_weights_first():
    from gpunet.training.metrics import unlearned_hint

    hint = unlearned_hint(history_of([2.3, 2.3], 0.9), BALANCED, "validation", TrainConfig(lr=0.01, weight_decay=200))
    assert "weight_decay (now 200)" in hint and "product is 2" in hint


# -- the settings' one check (TrainConfig), shared by the command line and the estimator --------------
@pytest.mark.parametrize("name, value", [("epochs", 0), ("epochs", 2.5), ("batch_size", -1), ("lr", 0.0),
                                         ("lr", float("nan")), ("lr", float("inf")), ("weight_decay", -0.1),
                                         ("weight_decay", float("inf")), ("patience", 0), ("seed", -1),
                                         ("seed", True), ("val_size", -1), ("optimizer", "rmsprop"),
                                         ("schedule", "linear"), ("init", "zeros"), ("dtype", "float16"),
                                         ("hidden", (0,)), ("hidden", (-3,)), ("hidden", (16.5,)), ("hidden", 16),
                                         ("hidden", (True,)), ("hidden", (100_001,)), ("hidden", "16,x"),
                                         ("hidden", "{x}"), ("arch", "bogus"), ("arch", 5), ("arch", "dense{x}")])
def test_a_training_config_refuses_a_setting_it_cannot_train_with(name, value):
    from gpunet.errors import GpunetError
    from gpunet.training.loop import SettingError

    with pytest.raises(SettingError, match=f"^{name}=") as caught:
        TrainConfig(**{name: value})
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, GpunetError)
    assert caught.value.name == name


def test_patience_without_validation_digits_is_refused_by_the_config():
    from gpunet.training.loop import SettingError

    with pytest.raises(SettingError, match="^patience=2: needs validation samples") as caught:
        TrainConfig(patience=2, val_size=0)
    assert caught.value.describe(lambda name: "--" + name.replace("_", "-")).endswith("--val-size holds out none")


def test_a_config_holds_numpy_scalars_as_python_numbers():
    config = TrainConfig(epochs=np.int64(3), seed=np.uint8(2), lr=np.float32(0.5), patience=np.int32(2))
    assert [type(v) for v in (config.epochs, config.seed, config.lr, config.patience)] == [int, int, float, int]


def test_a_config_holds_hidden_as_a_tuple_of_python_ints_from_any_form_it_takes():
    for given in ((np.int64(8), 4), [8, 4], "8,4", " 8, 4 "):
        config = TrainConfig(hidden=given)
        assert config.hidden == (8, 4) and [type(h) for h in config.hidden] == [int, int], given
    assert TrainConfig(hidden="none").hidden == () and TrainConfig(arch="conv4k5,pool2,dense16").arch is not None


def test_an_epoch_line_names_the_epoch_out_of_all():
    from gpunet.training.loop import EpochMetrics

    line = EpochMetrics(3, 0.01, 0.12345, 0.9512, 0.2, 0.9, 1.234).describe(30)
    assert line == "epoch  3/30  loss 0.1235  acc  95.12%  val_loss 0.2000  val_acc  90.00%  (1.23s)"
    no_validation = EpochMetrics(1, 0.01, 0.5, 0.5, None, None, 0.5)
    assert no_validation.describe(1) == "epoch 1/1  loss 0.5000  acc  50.00%  (0.50s)"
