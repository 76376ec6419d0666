"""Scoring predictions against labels."""

from __future__ import annotations

import numpy as np

from gpunet.nn.model import CLASSES


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, classes: int = CLASSES) -> np.ndarray:
    """counts[t, p]: how many digits labeled t were predicted as p."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (truth.astype(np.int64), predicted.astype(np.int64)), 1)
    return counts


def chance_accuracy(labels: np.ndarray, classes: int = CLASSES) -> float:
    """The accuracy of the best constant guess: the share of the most common class (1/classes when balanced)."""
    counts = np.bincount(labels.astype(np.int64), minlength=classes)
    return float(counts.max() / counts.sum())


def better_than_chance(accuracy: float, labels: np.ndarray, classes: int = CLASSES) -> bool:
    """Is ``accuracy`` on these labels clearly above the best constant guess?

    Clearly: by more than three standard errors of a guesser at that rate
    (sqrt(p(1-p)/m)), so that luck on a small set does not pass for learning.
    """
    chance = chance_accuracy(labels, classes)
    margin = 3 * (chance * (1 - chance) / len(labels)) ** 0.5
    return accuracy > chance + margin


def too_few_to_tell(labels: np.ndarray, classes: int = CLASSES) -> bool:
    """Whether these labels are too few for ``better_than_chance`` to say anything: not even a perfect score would pass."""
    return not better_than_chance(1.0, labels, classes)


def scored_on(val_accuracy, val_labels, train_accuracy, train_labels):
    """(which, accuracy, labels) a run is judged on: its validation digits, unless they are too few to tell."""
    if val_accuracy is not None and len(val_labels) and not too_few_to_tell(val_labels):
        return "validation", val_accuracy, val_labels
    return "training", train_accuracy, train_labels


# -- why a run learned nothing ---------------------------------------------------------------------
LOSS_MOVED = 0.01  # a training loss "moved" between two values when they differ by more than 1%


def unlearned_hint(history, train_labels, judged_on: str, config, option=lambda name: name,
                   classes: int = CLASSES) -> str:
    """What to change after a run no better than chance, read from the run's own history; one clause.

    ``history``: the run's EpochMetrics; ``judged_on``: "validation" or "training" (``scored_on``);
    ``option(name)`` writes a setting as the user gives it ("--lr" on the command line, "lr" in Python).
    The rule, first match wins:

    1. lr x weight decay >= 1: the decay alone wipes the weights out -> a smaller lr or weight decay;
    2. judged on validation, the final training accuracy is well above chance (more than halfway from
       it to 100%): the network memorised its training set -> more training samples (or labels that
       fit their inputs);
    3. one epoch only: no trend to read -> more epochs;
    4. the training loss rose by more than 1% from one epoch to the next, or ended more than 1% above
       its first value (a slow creep) -> a smaller lr;
    5. it hardly moved (ended within 1% of its first value) or was still falling by more than 1% in the
       last epoch -> a larger lr or more epochs;
    6. it fell, then settled: the units stopped responding -> a smaller lr, or another optimizer.
    """
    if config.lr * config.weight_decay >= 1:
        return weight_decay_hint(config, option)
    final = history[-1]
    if judged_on == "validation" and final.train_accuracy > (1 + chance_accuracy(train_labels, classes)) / 2:
        return (f"it fit its training set ({100 * final.train_accuracy:.2f}% accuracy there) but not the validation "
                f"set: it memorised too few training samples (or labels that do not match their inputs); "
                f"train on more (a smaller {option('val_size')}, or more data)")
    return loss_trend_hint([m.train_loss for m in history], config, option)


def loss_trend_hint(losses: list[float], config, option) -> str:
    """Rules 3-6 of ``unlearned_hint``: what the training loss of each epoch did, and the change it calls for."""
    lr = f"{option('lr')} (now {config.lr:g})"
    other = "" if config.optimizer == "adam" else f", or {option('optimizer')} adam"
    epochs = f"more {option('epochs')} (now {config.epochs})"
    if len(losses) == 1:
        return f"one epoch only (training loss {losses[0]:.4g}), too few to tell what the lr does: try {epochs}"
    rise = next((k for k in range(1, len(losses)) if losses[k] > losses[k - 1] * (1 + LOSS_MOVED)), None)
    if rise is not None:
        return (f"the training loss rose from {losses[rise - 1]:.4g} to {losses[rise]:.4g} in epoch {rise + 1}: "
                f"try a smaller {lr}{other}")
    if losses[-1] > losses[0] * (1 + LOSS_MOVED):  # by less than 1% an epoch, but it crept up
        return (f"the training loss crept up from {losses[0]:.4g} to {losses[-1]:.4g} over {len(losses)} epochs: "
                f"try a smaller {lr}{other}")
    if abs(losses[-1] - losses[0]) <= losses[0] * LOSS_MOVED:
        return (f"the training loss hardly moved from {losses[0]:.4g} (now {losses[-1]:.4g}): "
                f"try a larger {lr} or {epochs}")
    if losses[-1] < losses[-2] * (1 - LOSS_MOVED):
        return (f"the training loss was still falling ({losses[0]:.4g} to {losses[-1]:.4g}): "
                f"try a larger {lr} or {epochs}")
    return (f"the training loss fell from {losses[0]:.4g} and settled at {losses[-1]:.4g}: the units may have "
            f"stopped responding; try a smaller {lr}{other}")


def divergence_hint(config, option=lambda name: name) -> str:
    """What to change after a diverged run (the command line and the estimator alike); the weight decay too
    where it alone makes the weights grow (lr x weight decay >= 1)."""
    if config.lr * config.weight_decay >= 1:
        return weight_decay_hint(config, option)
    return f"try a smaller {option('lr')} (now {config.lr:g})"


def weight_decay_hint(config, option=lambda name: name) -> str:
    """The hint where lr x weight decay >= 1: from there the decay flips the weights' sign each step."""
    product = config.lr * config.weight_decay
    return (f"try a smaller {option('lr')} (now {config.lr:g}) or {option('weight_decay')} (now "
            f"{config.weight_decay:g}): their product is {product:g}, and from 1 up the decay flips the weights' "
            "sign and makes them grow instead of shrinking them")
