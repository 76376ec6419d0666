"""Scoring predictions against labels."""

from __future__ import annotations

import numpy as np

from gpunet.model import CLASSES


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, classes: int = CLASSES) -> np.ndarray:
    """counts[t, p]: how many digits labeled t were predicted as p."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (truth.astype(np.int64), predicted.astype(np.int64)), 1)
    return counts
