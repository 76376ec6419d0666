"""The training loop: mini-batch or full-batch gradient descent with validation each epoch.

Everything on arrays goes through ``backend.xp`` and the backend's hot operations,
so the same loop trains on NumPy or CuPy. Inside an epoch only a few scalars
(loss sums and correct counts) cross from the device to the host.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from gpunet.errors import GpunetError
from gpunet.nn import augment
from gpunet.nn.layers import Conv2D
from gpunet.nn.model import (CLASSES, INITS, MAX_UNITS, LayerStack, Network, arch_input_shape, build_layers,
                          init_params, init_stack_params, layer_sizes, parse_arch_text, parse_hidden_text)
from gpunet.nn.optimizers import DEFAULTS, OPTIMIZERS, make_optimizer
from gpunet.training.run_state import Boundary

SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "float64")


class SettingError(GpunetError, ValueError):
    """A training setting that cannot be trained with. A ValueError too: scikit-learn's contract for bad parameters.

    ``problem`` may name other settings as ``{name}``: ``describe(option)`` writes them as the caller spells
    settings (``--val-size`` on the command line); ``str()`` as Python does (``val_size``).
    """

    def __init__(self, name: str, value, problem: str):
        self.name, self.value, self.problem = name, value, problem
        super().__init__(f"{name}={value!r}: {self.describe()}")

    def describe(self, option=lambda name: name) -> str:
        """The problem, with the settings it names spelled by ``option(name)``."""
        return self.problem.format_map({name: option(name) for name in TrainConfig.__dataclass_fields__})


def _is_whole(value, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low


def _is_finite(value, positive: bool) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value) and (value > 0 if positive else value >= 0))


def _one_of(choices):
    return (lambda value: isinstance(value, str) and value in choices,
            "one of " + ", ".join(map(repr, choices)))


# What each setting must be, checked once here for the command line, the estimator and gpunet.train alike:
# (test, what it must be). ``hidden`` and ``arch`` are read by their parsers (``checked_hidden``, ``check_arch_text``).
SETTINGS = {
    "epochs": (lambda v: _is_whole(v, 1), "a whole number of at least 1"),
    "batch_size": (lambda v: _is_whole(v, 0), "a whole number >= 0 (0: full batch)"),
    "lr": (lambda v: _is_finite(v, positive=True), "a positive finite number"),
    "weight_decay": (lambda v: _is_finite(v, positive=False), "a finite number >= 0"),
    "patience": (lambda v: v is None or _is_whole(v, 1), "a whole number of at least 1, or None (off)"),
    "seed": (lambda v: _is_whole(v, 0), "a whole number >= 0"),
    "split_seed": (lambda v: v is None or _is_whole(v, 0), "a whole number >= 0, or None (the seed's)"),
    "val_size": (lambda v: _is_whole(v, 0), "a whole number >= 0"),
    "optimizer": _one_of(OPTIMIZERS),
    "schedule": _one_of(SCHEDULES),
    "warmup": (lambda v: _is_finite(v, positive=False), "a finite number of epochs >= 0 (0: none)"),
    "init": _one_of(INITS),
    "dtype": _one_of(DTYPES),
    "augment": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
}


def check_setting(name: str, value) -> None:
    """SettingError naming ``name`` where ``value`` is not what that training setting must be."""
    test, must = SETTINGS[name]
    if not test(value):
        raise SettingError(name, value, f"must be {must}")


def literal_problem(text: str) -> str:
    """Text for a SettingError's problem as it is: braces in it (a user's own text) are not setting names."""
    return text.replace("{", "{{").replace("}", "}}")


def checked_hidden(value) -> tuple[int, ...]:
    """``hidden`` as sizes: a sequence of whole numbers 1..MAX_UNITS, or their text ("16,16", "none");
    SettingError naming it otherwise."""
    if isinstance(value, str):
        try:
            return parse_hidden_text(value)
        except ValueError as error:
            raise SettingError("hidden", value, literal_problem(str(error))) from None
    if isinstance(value, (tuple, list)) and all(_is_whole(size, 1) and size <= MAX_UNITS for size in value):
        return tuple(int(size) for size in value)
    raise SettingError("hidden", value, f"must be layer sizes such as (16, 16), each 1 to {MAX_UNITS:,}, or 'none'")


def check_arch_text(value) -> None:
    """SettingError naming ``arch`` unless it is None or a layer spec (model.ARCH_HELP) that parses."""
    if value is None:
        return
    if not isinstance(value, str):
        raise SettingError("arch", value, "must be a spec such as 'conv32k5,pool2,dense128', or None")
    try:
        parse_arch_text(value)
    except ValueError as error:
        raise SettingError("arch", value, literal_problem(str(error))) from None


@dataclass
class TrainConfig:
    """The settings of one training run: the options of ``gpunet train`` and of ``gpunet.Classifier``."""
    hidden: tuple[int, ...] = (16, 16)
    arch: str | None = None  # --arch's layers (model.ARCH_HELP), convolution or dropout among them; None: ``hidden``
    epochs: int = 30
    batch_size: int = 64  # 0: the whole training set in one batch (the notes' gradient descent)
    lr: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.1
    schedule: str = "cosine"
    warmup: float = 1.0  # epochs of linear warm-up at the start of ``cosine`` (learning_rate); may be a fraction or 0
    init: str = "he"
    val_size: int = 1000
    patience: int | None = None
    seed: int = 0
    split_seed: int | None = None  # which digits the caller holds out (validation_rows); None: ``seed``
    dtype: str = "float32"
    augment: bool = False  # each epoch, every training digit through a fresh random transform (nn/augment.py)

    def __post_init__(self):
        """Refuse a setting that cannot be trained with (SettingError), then hold NumPy scalars as Python ones."""
        self.hidden = checked_hidden(self.hidden)
        check_arch_text(self.arch)
        for name in SETTINGS:
            check_setting(name, getattr(self, name))
        if self.patience is not None and self.val_size == 0:
            raise SettingError("patience", self.patience, "needs validation samples to watch, and {val_size} "
                                                          "holds out none")
        if self.warmup > self.epochs and self.schedule == "cosine":  # constant has no warm-up, and ignores it
            raise SettingError("warmup", self.warmup, f"must be at most {{epochs}} ({self.epochs}): a warm-up "
                                                      "longer than the run")
        if self.split_seed is None:  # one seed for everything, as before --split-seed
            self.split_seed = self.seed
        for name in ("epochs", "batch_size", "seed", "split_seed", "val_size"):
            setattr(self, name, int(getattr(self, name)))
        self.lr, self.weight_decay, self.warmup = float(self.lr), float(self.weight_decay), float(self.warmup)
        self.augment = bool(self.augment)
        self.patience = None if self.patience is None else int(self.patience)

    def as_dict(self) -> dict:
        """The settings as plain values, for a model's metadata."""
        return asdict(self)

    @classmethod
    def for_optimizer(cls, optimizer: str = "adam", **given) -> "TrainConfig":
        """The settings given, the rest from the optimizer's defaults (``None`` means not given);
        SettingError naming a setting that cannot be trained with.

        ``gd`` is the notes' recipe: full batch, constant rate, 500 epochs, no decay.
        """
        check_setting("optimizer", optimizer)
        full_batch = optimizer == "gd"
        defaults = {**DEFAULTS[optimizer],
                    "epochs": 500 if full_batch else cls.epochs,
                    "batch_size": 0 if full_batch else cls.batch_size,
                    "schedule": "constant" if full_batch else cls.schedule}
        chosen = {key: value for key, value in given.items() if value is not None}
        return cls(optimizer=optimizer, **{**defaults, **chosen})


@dataclass
class EpochMetrics:
    """What one epoch measured: mean loss and accuracy while training and on the validation digits."""
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float

    def describe(self, epochs: int) -> str:
        """The epoch's line of ``gpunet train`` and of a verbose ``Classifier``: "epoch  3/30  loss 0.1234 ..."."""
        val = (f"  val_loss {self.val_loss:.4f}  val_acc {100 * self.val_accuracy:6.2f}%"
               if self.val_loss is not None else "")
        return (f"epoch {self.epoch:{len(str(epochs))}d}/{epochs}  loss {self.train_loss:.4f}  "
                f"acc {100 * self.train_accuracy:6.2f}%{val}  ({self.seconds:.2f}s)")


@dataclass
class TrainResult:
    """A run's network, its per-epoch history, and which epoch's weights the network holds."""
    network: Network | LayerStack
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int | None = None
    stop_reason: str = "completed"  # completed | early_stopping | diverged | interrupted

    @property
    def final(self) -> EpochMetrics | None:
        """Metrics of the epoch whose weights the network holds."""
        if self.best_epoch is None:
            return None
        return self.history[self.best_epoch - 1]


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the network holds the last good weights."""

    def __init__(self, epoch: int, value: float, result: TrainResult):
        super().__init__(f"loss became {value} in epoch {epoch}")
        self.epoch, self.value, self.result = epoch, value, result


class TrainingInterrupted(Exception):
    """Ctrl-C, or a stop asked for (``train``'s ``stop``): the network holds the best weights so far.
    ``run_state``: the run at the start of the epoch it stopped in, to resume from (``train(resume_from=)``);
    None where no epoch was done."""

    def __init__(self, epoch: int, result: TrainResult, run_state=None):
        super().__init__(f"interrupted in epoch {epoch}")
        self.epoch, self.result, self.run_state = epoch, result, run_state


def warm_up_steps(warmup: float, steps_per_epoch: int) -> int:
    """``warmup`` epochs as whole steps: the nearest, a half up (Python's round would take halves to even, so that
    0.5 and 2.5 of a one-step epoch gave 0 and 2 steps where 1.5 gave 2). Warm-up 1 is exactly an epoch's steps."""
    return math.floor(warmup * steps_per_epoch + 0.5)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The rate for optimizer step ``step`` (0-based), given the steps in one epoch.

    ``constant``: lr throughout (the notes). ``cosine``, for step k of the run's N = epochs . S steps (S an
    epoch's): a linear warm-up over ``warmup`` epochs, lr . (k + 1) / W for the first W steps, W = warmup . S
    to the nearest whole step, a half up (so W <= N; W of 0 or 1 starts at lr), then
    lr / 2 . (1 + cos(pi (k - W) / (N - W))), a decay from lr towards 0 by the last step. The default warm-up,
    one epoch, matters for a network as narrow as the notes': Adam's first full-size steps can push a 16-unit
    layer's ReLUs to never fire again, and how many die varies with the seed.
    """
    if config.schedule == "constant":
        return config.lr
    warmup = warm_up_steps(config.warmup, steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.epochs * steps_per_epoch - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


class DeviceData:
    """A labeled data set moved to the backend once: uint8 images and int32 labels."""

    def __init__(self, backend, digits):
        self.images = backend.asarray(digits.images)
        self.labels = backend.asarray(digits.labels.astype(np.int32))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def evaluate(network: Network, data: DeviceData) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the network on a data set, in chunks."""
    ops, xp = network.backend, network.backend.xp
    m = len(data)
    loss_sum = xp.zeros((), dtype=xp.float64)
    correct = 0
    for start in range(0, m, network.eval_chunk):
        index = xp.arange(start, min(start + network.eval_chunk, m))
        Z = network.logits(ops.gather_scaled(data.images, index, network.dtype))
        labels = data.labels[index]
        _, losses = ops.softmax_cross_entropy(Z, labels)
        loss_sum += losses.sum(dtype=xp.float64)
        correct += ops.count_correct(Z, labels)
    return float(loss_sum) / m, int(correct) / m


PART_FROM = 32  # samples: a convolutional stack's step is split between cores where each part gets this many


def step_parts(network, batch_size: int) -> int:
    """Into how many parts each mini-batch step of this network is split, one per core (``parallel_map``).

    A layer stack with a convolution: as many parts as the backend has (the CPU's cores; 1 on CUDA), each of
    at least PART_FROM samples. Each part's forward and backward pass runs on one core with BLAS on one
    thread, then one optimizer step. Measured on 2 cores with a throwaway timing loop (not kept; BENCHMARKS.md
    has the epochs), the LeNet-like CNN's steps took
    12.6 ms split against 14.8 at batch 64, 24.8 against 36.0 at 128, and tied at 32 (parts of 16); a stack
    of dense layers alone lost (dense256,dropout0.5: 2.3 ms against 1.4 at 64, 6.7 against 5.7 at 512), its
    products too small to pay for the threads. The notes' ``Network`` keeps its own steps (compiled or not).
    """
    if isinstance(network, Network) or not convolves(network):
        return 1
    parts = min(network.backend.parallel_parts(), batch_size // PART_FROM)
    return parts if parts > 1 else 1


def convolves(network) -> bool:
    """Whether a layer stack has a convolution (whose products are worth a core each)."""
    return any(isinstance(layer, Conv2D) for layer in network.layers)


def compute_threads(network, batch_size: int = 0):
    """The backend's threads for this network's steps of ``batch_size`` samples (0: scoring, full batch):
    the notes' small products on one BLAS thread (``Backend.compute_threads``), as a layer stack's split steps
    (each part one thread: ``step_parts``); a layer stack's other work on all of BLAS's, as a convolution's
    products (0.8 GFLOP a step for the LeNet-like CNN) share well between cores."""
    if isinstance(network, Network) or step_parts(network, batch_size) > 1:
        return network.backend.compute_threads()
    return contextlib.nullcontext()


def steps_per_epoch(m: int, batch_size: int) -> int:
    """Optimizer steps in one pass over m samples (1 for a full batch)."""
    return 1 if batch_size <= 0 else -(-m // batch_size)


def train_epoch(network, optimizer, data: DeviceData, batch_size: int, rng, progress=None, rate=None, first_step=0,
                transforms=None):
    """One pass over the shuffled training data; returns (mean loss, accuracy) seen while training.

    ``rate(k)``, if given, is the learning rate for the epoch's k-th step; ``first_step`` is the run's
    count of steps before this epoch (``network.step`` during each step: dropout's masks depend on it).
    ``transforms``, if given, are the epoch's augmentation, one row per training digit (``augment.draw_transforms``
    in the network's dtype, on the backend): each batch is drawn through them (``gather_augmented``).

    Each step writes into the network's preallocated workspace for its batch
    size; the per-sample losses go into one array for the epoch, summed once at
    its end. A batch of the whole training set is the notes' full-batch step,
    done in one pass over the data (``Network.full_batch_gradients``).
    """
    ops, xp = network.backend, network.backend.xp
    m = len(data)
    losses = xp.empty(m, dtype=network.dtype)
    if batch_size <= 0 or batch_size >= m:
        if rate is not None:
            optimizer.lr = rate(0)
        network.step = first_step
        compiled = compiled_path(network) if transforms is None else None
        result = None if compiled is None else compiled.full_batch_gradients(
            network, data.images, data.labels, losses, ops.full_batch_chunk(m), ops.parallel_parts(), ops.parallel_map)
        if result is None:  # augmented: the one batch is every digit drawn through its transform, as float rows
            images = data.images if transforms is None else \
                ops.gather_augmented(data.images, None, transforms, network.dtype).T
            counter = xp.zeros(1, dtype=np.int32)  # the correct count, where the network counts inside its loss
            result = network.full_batch_gradients(images, data.labels, losses, ops.full_batch_chunk(m),
                                                  ops.parallel_parts(), counter=counter)
        grads, correct = result
        optimizer.step(grads)
        if progress is not None:
            progress(m)
    else:
        with compute_threads(network, batch_size):
            correct = _minibatch_epoch(network, optimizer, data, batch_size, rng, losses, progress, rate, first_step,
                                       transforms)
    return float(losses.sum(dtype=xp.float64)) / m, int(correct) / m


def compiled_path(network, optimizer=None):
    """The backend's compiled loops for this network, or None: they run the notes' dense ``Network`` only."""
    if not isinstance(network, Network):
        return None
    return network.backend.compiled_path(network, optimizer)


def _minibatch_epoch(network, optimizer, data, batch_size, rng, losses, progress, rate, first_step,
                     transforms=None) -> int:
    xp = network.backend.xp
    m = len(data)
    if getattr(network.backend, "cuda_graph", False):  # --cuda-graph: each whole step one graph launch
        from gpunet.training import graph_epoch

        correct = graph_epoch.minibatch_epoch(network, optimizer, data, batch_size, rng, losses, progress, rate,
                                              first_step, transforms, step_gradients, step_parts(network, batch_size))
        if correct is not None:
            return correct
    order = xp.asarray(rng.permutation(m))  # reshuffle every epoch
    labels = data.labels[order]  # the epoch's labels in visiting order: each batch's are a slice
    compiled = compiled_path(network, optimizer) if transforms is None else None  # it reads the digits as they are
    if compiled is not None:  # the same steps as the loop below, as compiled code
        rates = [optimizer.lr if rate is None else rate(k) for k in range(steps_per_epoch(m, batch_size))]
        correct = compiled.minibatch_epoch(network, optimizer, data.images, order, labels, losses, batch_size, rates,
                                           progress)
        if correct is not None:
            return correct
    correct, parts = 0, step_parts(network, batch_size)
    counter = xp.zeros(1, dtype=np.int32)  # the epoch's correct count, added to on the device by each whole step
    for step, start in enumerate(range(0, m, batch_size)):
        if rate is not None:
            optimizer.lr = rate(step)
        network.step = first_step + step
        stop = min(start + batch_size, m)
        if parts > 1:
            grads, batch_correct = split_step_gradients(network, data.images, order[start:stop], labels[start:stop],
                                                        losses[start:stop], parts, transforms)
            correct += batch_correct
        else:
            grads, _ = step_gradients(network, data.images, order[start:stop], labels[start:stop],
                                      losses[start:stop], counter, transforms)
        optimizer.step(grads)
        if progress is not None:
            progress(stop - start)
    return counter[0] if parts == 1 else correct


def step_gradients(network, images, index, labels, losses, counter=None, transforms=None):
    """One step's forward and backward pass over ``images[index]`` in the workspace of its size:
    (grad_groups, correct count, on the device); the per-sample losses go into ``losses``. ``counter``: a
    one-element int32 array the correct count is added to (then the count returned is the counter's).
    ``transforms``: each digit drawn through its own first (augmentation), or None."""
    ops = network.backend
    ws = network.workspace(len(index))
    if transforms is None:
        A0 = ops.gather_scaled(images, index, network.dtype, out=ws.A0)
    else:
        A0 = ops.gather_augmented(images, index, transforms, network.dtype, out=ws.A0)
    if counter is not None and isinstance(network, Network):  # the output bias and the count inside the loss
        Z, activations = network.forward(A0, ws, output_bias=False)
        network.backward(Z, activations, labels, ws, losses=losses, counter=counter)
        return ws.grad_groups, counter[0]
    Z, activations = network.forward(A0, ws)
    correct = ops.count_correct(Z, labels, out=counter)
    network.backward(Z, activations, labels, ws, losses=losses)
    return ws.grad_groups, correct


def split_step_gradients(network, images, index, labels, losses, parts: int, transforms=None):
    """``step_gradients`` with the batch split into ``parts`` chunks of consecutive samples, walked in parallel
    (``full_batch_gradients``): the chunks' means weighted by their shares, added in order, and dropout's
    masks those of the whole batch (each chunk draws its own samples' columns)."""
    if transforms is None:
        batch = images[index]  # the batch's digits in visiting order, so that each chunk is a slice
    else:  # augmented: the drawn digits as float rows, which the chunks cast, not scale
        batch = network.backend.gather_augmented(images, index, transforms, network.dtype).T
    return network.full_batch_gradients(batch, labels, losses, -(-len(index) // parts), parts)


def check_augmentable(images) -> None:
    """SettingError naming ``augment`` unless the training images are digits it can draw: uint8 28 x 28 pixels."""
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != augment.SIDE ** 2:
        raise SettingError("augment", True, f"draws {augment.SIDE}x{augment.SIDE} pixel digits (uint8 0-255, "
                                            f"{augment.SIDE ** 2} a digit); these are {images.shape[1]} "
                                            f"{'pixels' if images.dtype == np.uint8 else 'float features'} a sample")


def epoch_transforms(backend, config: TrainConfig, epoch: int, m: int):
    """The epoch's augmentation on the backend, one row per training digit, in the run's dtype; None without it.

    Drawn on the host from (seed, epoch) alone (``augment.draw_transforms``): the CPU and a GPU get the same ones.
    """
    if not config.augment:
        return None
    return backend.asarray(augment.draw_transforms(config.seed, epoch, m).astype(config.dtype))


def new_network(backend, config: TrainConfig, inputs: int, classes: int = CLASSES):
    """A freshly initialised network for the run: the notes' ``Network`` of ``config.hidden``, or the
    ``LayerStack`` of ``config.arch`` (ValueError naming a layer that does not fit the inputs)."""
    dtype = np.dtype(config.dtype)
    if config.arch is None:
        sizes = layer_sizes(config.hidden, inputs=inputs, classes=classes)
        return Network(backend, init_params(sizes, config.init, config.seed, dtype))
    arch = parse_arch_text(config.arch)
    input_shape = arch_input_shape(arch, inputs)
    params = init_stack_params(build_layers(arch, input_shape, classes), config.init, config.seed, dtype)
    return LayerStack(backend, arch, params, input_shape, classes, seed=config.seed)


class StopAsked(Exception):
    """Raised between two steps where ``train``'s ``stop()`` says true; ``train`` turns it into TrainingInterrupted."""


def checking_between_steps(progress, stop):
    """The epoch's progress callable (called after every step, or every few compiled steps), which first
    advances ``progress`` and then raises StopAsked where ``stop()`` says true; None where neither is given."""
    if stop is None:
        return progress

    def step_done(samples: int) -> None:
        if progress is not None:
            progress(samples)
        if stop():
            raise StopAsked

    return step_done


def train(backend, train_digits, val_digits, config: TrainConfig, on_epoch=None, progress_factory=None,
          classes: int = CLASSES, stop=None, resume_from=None):
    """Train a fresh network on labels 0..classes-1, or go on with a run (``resume_from``); returns a TrainResult.

    ``train_digits`` and ``val_digits`` hold ``images`` (m, features) and
    ``labels`` (m,): uint8 pixels, scaled by 1/255 a batch at a time, or float
    features used as they are. The first layer takes as many inputs as there are features.

    ``on_epoch(metrics)`` is called after each epoch. ``progress_factory(total)``
    may return a callable advanced by the number of samples after each batch
    (a progress bar), with a ``close()`` method.

    ``stop()``, if given, is asked between steps and before each epoch (a signal handler sets what it reads:
    handlers never raise into the loop); where it says true, the run stops as Ctrl-C stops it.

    ``resume_from``: a ``run_state.RunState`` (TrainingInterrupted's ``run_state``) of a run of this ``config``
    on these digits (else ``run_state.ResumeMismatch``): training goes on from its epoch boundary to the run's
    end, as the run would have gone on.

    Raises TrainingDiverged or TrainingInterrupted carrying the result so far;
    in both cases the network already holds the weights to keep.
    """
    if config.augment:
        check_augmentable(train_digits.images)
    network = new_network(backend, config, train_digits.images.shape[1], classes)
    optimizer = make_optimizer(config.optimizer, network.groups, config.lr, config.weight_decay, backend=backend)
    train_data = DeviceData(backend, train_digits)
    val_data = DeviceData(backend, val_digits) if len(val_digits) else None
    rng = np.random.default_rng(config.seed + 1)  # the shuffle, independent of the init draws

    result = TrainResult(network)
    best_score, best_params, since_best = math.inf, network.host_params(), 0
    if resume_from is not None:
        resume_from.check_fits(config, train_digits, val_digits)
        best_score, best_params, since_best = resume_from.restore(network, optimizer, rng, result)
    last_good = network.host_params()
    steps = steps_per_epoch(len(train_data), config.batch_size)
    epoch, boundary = 0, None
    try:
        for epoch in range(len(result.history) + 1, config.epochs + 1):
            # What a run stopped in this epoch resumes from: taken before the stop is asked, so that a stop
            # between two epochs keeps the one just done.
            boundary = Boundary.take(epoch - 1, last_good, optimizer, rng, result.best_epoch, best_score,
                                     best_params, since_best)
            if stop is not None and stop():
                raise StopAsked
            started = time.perf_counter()
            first_step = (epoch - 1) * steps
            bar = progress_factory(len(train_data)) if progress_factory else None
            try:
                # A diverging run is reported below, once, rather than warned about at every overflow.
                with np.errstate(over="ignore", invalid="ignore"):
                    train_loss, train_acc = train_epoch(network, optimizer, train_data, config.batch_size, rng,
                                                        checking_between_steps(bar, stop),
                                                        rate=lambda k: learning_rate(config, first_step + k, steps),
                                                        first_step=first_step,
                                                        transforms=epoch_transforms(backend, config, epoch,
                                                                                    len(train_data)))
                    with compute_threads(network):  # BLAS threads left spinning would slow the next epoch
                        val_loss, val_acc = evaluate(network, val_data) if val_data else (None, None)
            finally:
                if bar is not None:
                    bar.close()

            bad = next((v for v in (train_loss, val_loss) if v is not None and not math.isfinite(v)), None)
            if bad is not None:
                network.load_params(last_good)
                result.best_epoch = len(result.history) or None
                raise TrainingDiverged(epoch, bad, result)

            metrics = EpochMetrics(epoch, optimizer.lr, train_loss, train_acc, val_loss, val_acc,
                                   time.perf_counter() - started)
            result.history.append(metrics)
            last_good = network.host_params()
            # The best epoch is judged on validation loss (training loss without a validation set).
            score = val_loss if val_loss is not None else train_loss
            if score < best_score:
                best_score, best_params, since_best = score, last_good, 0
                result.best_epoch = epoch
            else:
                since_best += 1
            if on_epoch is not None:
                on_epoch(metrics)
            if config.patience is not None and since_best >= config.patience:
                network.load_params(best_params)
                result.stop_reason = "early_stopping"
                return result
    except (KeyboardInterrupt, StopAsked):
        network.load_params(best_params)
        result.stop_reason = "interrupted"
        run_state = None if boundary is None else boundary.run_state(config, result.history, train_digits,
                                                                     val_digits)
        raise TrainingInterrupted(epoch, result, run_state) from None

    # Without early stopping the network keeps its last weights, as users expect.
    result.best_epoch = len(result.history)
    return result
