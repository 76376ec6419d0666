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
