"""A training run's state at an epoch boundary: what ``train`` needs to go on as if it had never stopped.

The next epoch's arithmetic depends on the parameters, the optimizer's state (momentum's velocity, Adam's
moments and step count t), and the shuffle's generator (``default_rng(seed + 1)``, drawn once an epoch). The
rest of a run is fixed by its settings and the epoch's number: the rate by the step count (``learning_rate``),
dropout's masks by (seed, step, sample), augmentation by (seed, epoch). The run's bookkeeping goes with it:
the history, and the best epoch so far with its weights (early stopping, and the model an interrupted run
keeps). So a run stopped after epoch k and resumed from here gives the uninterrupted run's bits, on the same
machine with the same settings (tests/test_resume.py).

The state is taken at the start of each epoch (``Boundary.take``: host copies), so Ctrl-C in the middle of
an epoch loses that epoch's steps, which the resumed run does again. ``gpunet/files/resume_file.py`` writes and
reads it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from gpunet.errors import GpunetError


class ResumeMismatch(GpunetError):
    """A run state that does not fit the run it is to continue (other data, other settings): one line."""


@dataclass(frozen=True)
class DataIdentity:
    """The digits a run trains and validates on, told apart from others: their counts and one SHA-256."""
    train_count: int
    val_count: int
    sha256: str

    @classmethod
    def of(cls, train_digits, val_digits) -> "DataIdentity":
        digest = hashlib.sha256()
        for array in (train_digits.images, train_digits.labels, val_digits.images, val_digits.labels):
            digest.update(np.ascontiguousarray(array).data)
        return cls(len(train_digits), len(val_digits), digest.hexdigest())

    def describe(self) -> str:
        return f"{self.train_count:,} training and {self.val_count:,} validation digits (SHA-256 {self.sha256[:12]})"


@dataclass
class RunState:
    """A run after ``epochs_done`` epochs. Arrays are NumPy (host) copies; ``params`` and ``best_params`` are
    lists [W1, b1, W2, b2, ...] as ``host_params`` gives them; ``optimizer`` is the optimizer's ``state()``."""
    config: object  # the run's TrainConfig
    epochs_done: int
    params: list
    optimizer: dict
    rng: dict  # the shuffle generator's bit_generator.state
    history: list  # the EpochMetrics of epochs 1..epochs_done
    best_epoch: int | None
    best_score: float | None  # None: no epoch scored yet (inf)
    best_params: list
    since_best: int
    data: DataIdentity
    extra: dict = field(default_factory=dict)  # what the caller records besides (the command line: --data, --out)

    def check_fits(self, config, train_digits, val_digits) -> None:
        """ResumeMismatch unless this state continues a run of ``config`` on these digits."""
        recorded = self.config.as_dict()
        changed = [name for name, value in config.as_dict().items() if recorded.get(name) != value]
        if changed:
            name = changed[0]
            raise ResumeMismatch(f"the run was trained with {name}={recorded.get(name)!r}, not "
                                 f"{getattr(config, name)!r}")
        data = DataIdentity.of(train_digits, val_digits)
        if data != self.data:
            raise ResumeMismatch(f"the run trained on {self.data.describe()}, not on these: {data.describe()}")
        if self.epochs_done >= config.epochs:
            raise ResumeMismatch(f"the run had done all of its {config.epochs} epochs")

    def restore(self, network, optimizer, rng, result) -> tuple[float, list, int]:
        """Put the run back: the network's parameters, the optimizer's state, the shuffle generator's state and
        the result's history; returns (best score, best params, epochs since the best) for the loop."""
        if [np.shape(p) for p in self.params] != [tuple(shape) for shape in network.shapes]:
            raise ResumeMismatch("its parameters' shapes are not those of the run's network")
        try:
            optimizer.load_state(self.optimizer)
            rng.bit_generator.state = self.rng
        except (ValueError, TypeError) as error:  # another optimizer's state, or a generator state numpy refuses
            raise ResumeMismatch(str(error)) from None
        network.load_params(self.params)
        result.history = list(self.history)
        result.best_epoch = self.best_epoch
        best_score = np.inf if self.best_score is None else self.best_score
        return best_score, [np.array(p) for p in self.best_params], self.since_best


@dataclass
class Boundary:
    """The loop's state at the start of an epoch, held until the next one starts: what a RunState is made of
    if the run stops before then. Host copies, so that the epoch's steps do not change them."""
    epochs_done: int
    params: list
    optimizer: dict
    rng: dict
    best_epoch: int | None
    best_score: float
    best_params: list
    since_best: int

    @classmethod
    def take(cls, epochs_done, params, optimizer, rng, best_epoch, best_score, best_params, since_best):
        """``params`` and ``best_params``: host lists the loop no longer changes (it makes new ones)."""
        return cls(epochs_done, params, optimizer.state(), rng.bit_generator.state, best_epoch, best_score,
                   best_params, since_best)

    def run_state(self, config, history, train_digits, val_digits) -> RunState | None:
        """The RunState at this boundary; None before any epoch is done (a new run is the same)."""
        if self.epochs_done == 0:
            return None
        return RunState(config, self.epochs_done, self.params, self.optimizer, self.rng,
                        list(history[:self.epochs_done]), self.best_epoch,
                        None if not np.isfinite(self.best_score) else float(self.best_score), self.best_params,
                        self.since_best, DataIdentity.of(train_digits, val_digits))
