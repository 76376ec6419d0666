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
