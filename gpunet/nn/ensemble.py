"""Several trained networks read as one: the mean of their class probabilities (soft voting).

    p(class | x) = (1/K) . sum_k softmax(Z_L^(k))          K networks, any architectures

The networks must score the same classes in the same order; each reads the same uint8 digits. A
mean of probabilities is a probability again (each row sums to 1), and its argmax is the ensemble's
label. An ensemble of one gives its network's probabilities unchanged (p / 1).
"""

from __future__ import annotations

import numpy as np


class Ensemble:
    """The mean of ``networks``' probabilities; each is a ``Network`` or ``LayerStack`` (anything with
    ``probabilities(images)`` and ``classes``). ValueError where they score different numbers of classes."""

    def __init__(self, networks):
        self.networks = list(networks)
        if not self.networks:
            raise ValueError("an ensemble needs at least one network")
        counts = {network.classes for network in self.networks}
        if len(counts) > 1:
            raise ValueError(f"the networks score different numbers of classes: {sorted(counts)}")

    @property
    def classes(self) -> int:
        """How many classes each network scores."""
        return self.networks[0].classes

    def probabilities(self, images) -> np.ndarray:
        """The mean of the networks' softmax outputs for uint8 digits (m, 784): float64 (m, classes),
        added in the networks' order."""
        total = self.networks[0].probabilities(images)
        for network in self.networks[1:]:
            total = total + network.probabilities(images)
        return total / len(self.networks)
