"""gpunet from Python: a scikit-learn classifier around the same network, training loop and model files.

    >>> import pandas as pd, gpunet
    >>> df = pd.read_csv("train.csv.gz")
    >>> clf = gpunet.Classifier(epochs=5).fit(df.drop(columns="label"), df.label)
    >>> clf.score(X_test, y_test); clf.save("model.npz")   # gpunet predict --model model.npz reads it

It keeps scikit-learn's conventions (its developer guide, "Developing
scikit-learn estimators"): ``__init__`` stores the training options unchanged,
with the command line's defaults; ``fit`` validates and learns and sets the
attributes that end in ``_``; labels of any kind are mapped through ``classes_``.

Inputs are scaled the way they were at fit, by a rule fixed there: integer
pixels 0-255 (uint8, or the int64 columns pandas reads from a Kaggle CSV) are
divided by 255, as the command line does; floats are used as they are (already
scaled pixels, or any real features). A model fitted on pixels takes pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from gpunet.nn.model import INPUTS

PIXEL_SCALE = 1 / 255
IMAGE_SIDE = 28
AUTO_HELD_OUT = 1000  # val_size="auto" with early stopping: as many as gpunet train holds out, or a tenth of fewer


class Samples:
    """What the training loop reads of a data set: ``images`` (m, features) and ``labels`` (m,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)


class Classifier(ClassifierMixin, BaseEstimator):
    """The network of the design notes (784 -> 16 ReLU -> 16 ReLU -> 10 softmax by default) as an estimator.

    Parameters are the options of ``gpunet train``, with its defaults; ``None``
    means the optimizer's own default (README's table).

    hidden : tuple of int or str, default (16, 16)
        Hidden layer sizes; ``()`` or ``"none"`` for softmax regression.
    arch : str or None, default None
        Instead of ``hidden``: layers as ``gpunet train --arch`` takes them, e.g.
        ``"conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5"`` (convolution and
        pooling take 28 x 28 digits).
    epochs, batch_size, lr, weight_decay, schedule : default None (the optimizer's)
    warmup : float, default 1.0
        Epochs of linear warm-up at the start of the ``"cosine"`` schedule (``gpunet train --warmup``): a
        fraction of one too, or 0 for none; at most ``epochs``. ``"constant"`` ignores it. Counted in whole
        steps, the nearest (a half up); ``None`` means 1.
    optimizer : {"adam", "momentum", "sgd", "gd"}, default "adam"
    init : {"he", "seed"}, default "he"
    val_size : "auto", int or float, default "auto"
        Samples held out (a seeded shuffle) for the per-epoch validation in
        ``history_`` and early stopping: a count, a fraction in (0, 1), or
        "auto": none, so that ``fit`` trains on all the data it is given as
        scikit-learn's classifiers do (in every cross-validation fold too),
        unless ``patience`` asks for early stopping, which then holds out 1,000
        as ``gpunet train`` does, or a tenth of smaller data sets. 0 trains on
        all of them. At least 2 samples must be left to train on.
    patience : int or None, default None
        Early stopping on validation loss, keeping the best weights (needs held-out samples).
    seed : int, default 0
        The split, the initial weights and the shuffle: one seed, as scikit-learn's ``random_state``. (No
        ``split_seed`` as ``gpunet train`` has: the split here only feeds ``history_`` and early stopping; to
        score several fitted estimators together, hold out the same rows of your own before ``fit``.)
    device : {"auto", "cpu", "cuda"}, default "auto"
    dtype : {"float32", "float64"}, default "float32"
    augment : bool, default False
        Each epoch, every training digit drawn through a fresh random affine transform (``gpunet train
        --augment``: rotation, zoom, shift; gpunet/nn/augment.py); needs 28 x 28 pixel digits.
    verbose : bool, default False
        Print one line per epoch, after a line saying why CUDA is not used where CuPy is installed but no GPU
        is usable (``device="auto"``; never a warning).

    Attributes
    ----------
    classes_ : ndarray, the labels seen in ``fit``, in sorted order.
    n_features_in_ : int; ``feature_names_in_`` : the DataFrame's columns, if fitted on one.
    history_ : list of dict, per-epoch ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``, ...
    best_epoch_ : int, the epoch whose weights the model holds.
    validation_indices_ : ndarray, the rows of X that ``fit`` held out for validation (``val_size`` of them).
    params_ : list of ndarray, [W1, b1, W2, b2, ...] as in the notes (W_k is (out, in)).
    input_scale_ : float, 1/255 for pixels, 1.0 for float features.
    """

    def __init__(self, hidden=(16, 16), arch=None, epochs=None, batch_size=None, lr=None, optimizer="adam", schedule=None,
                 weight_decay=None, init="he", val_size="auto", patience=None, seed=0, device="auto", dtype="float32",
                 verbose=False, augment=False, warmup=1.0):
        self.hidden = hidden
        self.arch = arch
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.schedule = schedule
        self.weight_decay = weight_decay
        self.init = init
        self.val_size = val_size
        self.patience = patience
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.verbose = verbose
        self.augment = augment
        self.warmup = warmup

    # -- learning --------------------------------------------------------------
    def fit(self, X, y):
        """Train a fresh network on X (m, features) or (m, 28, 28) and labels y; returns self."""
        from gpunet.files.data import check_val_size, validation_rows
        from gpunet.training.metrics import better_than_chance, divergence_hint, scored_on, unlearned_hint
        from gpunet.training.loop import TrainingDiverged, TrainingInterrupted, train

        X = _flatten_images(X)
        X, y = validate_data(self, X, y, dtype=None, ensure_all_finite=True, ensure_min_samples=2)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"Classifier needs at least two classes to learn; y holds one: {self.classes_[0]!r}")
        images, self.input_scale_ = _inputs_for_fit(X)
        config = self._config(len(images))
        given = "" if self.val_size == config.val_size else f" (val_size={self.val_size!r} comes to {config.val_size:,})"
        check_val_size(config.val_size, len(images), "samples" + given)  # a SettingError: a ValueError naming val_size
        learned_from, held_out = validation_rows(len(images), config.val_size, config.split_seed)
        train_set = Samples(images[learned_from], encoded[learned_from].astype(np.uint8 if len(self.classes_) <= 256 else np.int32))
        val_set = Samples(images[held_out], encoded[held_out].astype(train_set.labels.dtype))
        backend = self._backend(say_notice=self.verbose)
        backend, device_choice = self._follow_cost_model(backend, config, len(train_set), X.shape[1])
        if device_choice and self.verbose:
            print(device_choice)
        try:
            report = (lambda m: print(m.describe(config.epochs))) if self.verbose else None
            result = train(backend, train_set, val_set, config, on_epoch=report,
                           classes=len(self.classes_))
        except TrainingInterrupted:
            raise KeyboardInterrupt from None  # a search or a notebook must stop, not record a failed fit
        except TrainingDiverged as exc:
            if not exc.result.history:
                raise ValueError(f"training diverged in its first epoch (loss {exc.value}); "
                                 f"{divergence_hint(config)}") from None
            exc.result.stop_reason = "diverged"
            warnings.warn(f"training diverged in epoch {exc.epoch} (loss {exc.value}); kept the weights of epoch "
                          f"{exc.result.best_epoch}; {divergence_hint(config)}", RuntimeWarning, stacklevel=2)
            result = exc.result
        self.validation_indices_ = held_out
        self.params_ = result.network.host_params()
        self.history_ = [vars(m) for m in result.history]
        self.best_epoch_ = result.best_epoch
        self.config_ = config
        self.architecture_ = result.network.architecture()
        self.stop_reason_ = result.stop_reason
        final = result.final
        which, accuracy, labels = scored_on(final.val_accuracy, val_set.labels, final.train_accuracy, train_set.labels)
        if not better_than_chance(accuracy, labels, len(self.classes_)):
            self.stop_reason_ = "unlearned"
            hint = unlearned_hint(result.history, train_set.labels, which, config, classes=len(self.classes_))
            scaling = "; inputs scaled to about 0-1 may help too" if self.input_scale_ == 1.0 else ""
            warnings.warn(f"the network learned nothing: its {which} accuracy {100 * accuracy:.2f}% is no better than "
                          f"always guessing the most common class; {hint}{scaling}", ConvergenceWarning, stacklevel=2)
        return self

    def _config(self, samples: int | None = None, held_out: int | None = None):
        """The TrainConfig of these parameters (ValueError naming a bad one) for ``samples`` samples; ``held_out``:
        the count a fit already held out (a loaded model: its data is gone, a fraction of it cannot be counted)."""
        from gpunet.training.loop import TrainConfig

        _check_params(self)
        return TrainConfig.for_optimizer(
            self.optimizer, hidden=() if self.arch is not None else self.hidden, arch=self.arch, epochs=self.epochs,
            batch_size=self.batch_size, lr=self.lr,
            schedule=self.schedule, warmup=self.warmup, weight_decay=self.weight_decay, init=self.init,
            val_size=_validation_count(self.val_size, samples, self.patience) if held_out is None else held_out,
            patience=self.patience, seed=self.seed,
            dtype=self.dtype, augment=self.augment)

    def _backend(self, say_notice: bool = False):
        """The backend for ``device``. ``auto`` where CuPy is installed but no GPU is usable is the CPU, as a
        machine without CuPy gets: said only in ``verbose`` output (``say_notice``), never as a warning,
        which a CPU-only machine would get at every fit and predict and every fold of a search."""
        from gpunet.backends.devices import get_backend

        backend, notice = get_backend(self.device)
        if notice and say_notice:
            print(f"Note: {notice}")
        return backend

    def _follow_cost_model(self, backend, config, samples: int, features: int):
        """device="auto" with a usable GPU: the CPU where the cost model predicts this network's step slower on
        the GPU (as ``gpunet train --device auto``), and the line saying which and why."""
        from gpunet.backends.cost_model import training_step
        from gpunet.backends.devices import follow_cost_model

        if self.device != "auto" or backend.name != "cuda":
            return backend, None
        return follow_cost_model(self.device, backend, training_step(config, samples, features, len(self.classes_)))


    # -- using it --------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (m, n_classes), columns in the order of ``classes_``; rows sum to 1."""
        check_is_fitted(self, "params_")
        X = validate_data(self, _flatten_images(X), reset=False, dtype=None, ensure_all_finite=True)
        return self.network().probabilities(_inputs_for_predict(X, self.input_scale_))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each sample, from ``classes_``."""
        best = self.predict_proba(X).argmax(axis=1)
        return self.classes_[best]

    def network(self):
        """The trained network on the estimator's device, made from ``params_``: the notes'
        :class:`gpunet.nn.model.Network`, or a :class:`gpunet.nn.model.LayerStack` for ``arch``."""
        from gpunet.nn.model import LayerStack, Network, parse_arch_text

        check_is_fitted(self, "params_")
        stack = self.architecture_
        if not stack:
            return Network(self._backend(), self.params_)
        return LayerStack(self._backend(), parse_arch_text(stack["architecture"]), self.params_,
                          tuple(stack["input_shape"]), stack["outputs"], seed=int(self.seed))

    # -- model files -------------------------------------------------------------
    def save(self, path) -> None:
        """Write the model as a gpunet ``.npz`` (no pickle), readable by ``gpunet.load`` and ``gpunet predict``.

        Replaces only a gpunet model (as ``gpunet train`` does, ``gpunet.files.outputs``): a file of any other
        kind at ``path``, a link, a folder or a write-protected file raises GpunetError naming it, before the
        save and again just before the rename."""
        from gpunet.files.checkpoint import save_model
        from gpunet.files.outputs import MODEL, check_out_path, save_replacing_only

        check_is_fitted(self, "params_")
        final = self.history_[self.best_epoch_ - 1] if self.history_ else None
        names = getattr(self, "feature_names_in_", None)
        path = check_out_path("Classifier.save:", Path(path), MODEL)
        metadata = {
            **self.architecture_,
            "classes": [_json_label(c) for c in self.classes_],
            "normalization": {"scale": self.input_scale_, "offset": 0.0},
            "feature_names": None if names is None else [str(n) for n in names],
            "training": {**{key: _plain(value) for key, value in self.config_.as_dict().items()}, "hidden": list(self.config_.hidden), "data": "Python arrays",
                         "device": self.device},
            "estimator": {key: _plain(value) for key, value in self.get_params().items()},
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "stop_reason": getattr(self, "stop_reason_", "completed"),
            "final_metrics": final,
        }
        save_replacing_only(path, MODEL, "new", lambda temporary: save_model(temporary, self.params_, metadata),
                            refuse=True)

    # -- scikit-learn's tags -------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def load(path) -> Classifier:
    """A fitted :class:`Classifier` from a gpunet model file, whether ``gpunet train`` or ``Classifier.save`` wrote it."""
    from gpunet.errors import ModelFileError
    from gpunet.files.checkpoint import input_scale, load_model, stack_architecture
    from gpunet.nn.model import arch_text

    params, meta = load_model(path)
    stack = stack_architecture(meta, str(path))
    given = meta.get("estimator") if isinstance(meta.get("estimator"), dict) else {}
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    known = Classifier().get_params()
    # A setting a model from before it does not record takes Classifier's default, which is what its run did:
    # warmup 1 (the one-epoch warm-up, before --warmup).
    options = {key: training[key] for key in known if key in training and key != "device"}
    clf = Classifier(**{**options, **{k: v for k, v in given.items() if k in known}})
    if isinstance(clf.hidden, list):
        clf.hidden = tuple(clf.hidden)
    if clf.arch is not None:
        clf.hidden = Classifier().hidden  # the run recorded hidden=() beside its arch
    clf.params_ = params
    clf.classes_ = np.asarray(meta.get("classes", list(range(params[-1].shape[0]))))
    clf.architecture_ = {} if stack is None else {"architecture": arch_text(stack[0]), "input_shape": list(stack[1]),
                                                  "outputs": stack[2]}
    clf.n_features_in_ = int(params[0].shape[1]) if stack is None else int(np.prod(stack[1]))
    if meta.get("feature_names"):
        clf.feature_names_in_ = np.asarray(meta["feature_names"], dtype=object)
    clf.input_scale_ = input_scale(meta) or PIXEL_SCALE
    if clf.val_size == 1000 and "estimator" not in meta:
        clf.val_size = "auto"  # gpunet train's default, as the estimator's default says it (refits on any data)
    clf.stop_reason_ = meta.get("stop_reason", "completed")
    clf.history_ = meta.get("history", [])
    clf.best_epoch_ = meta.get("best_epoch")
    recorded = training.get("val_size")  # a fraction of data that is gone cannot be counted again
    counted = isinstance(recorded, int) and not isinstance(recorded, bool)
    try:
        clf.config_ = clf._config(held_out=recorded if counted else None)
    except ValueError as error:  # metadata edited by hand, or by another program: the file is to blame
        raise ModelFileError(f"{path}: its training settings cannot be used: {error}") from None
    return clf


def mean_proba(classifiers, X) -> np.ndarray:
    """The mean of fitted classifiers' ``predict_proba(X)``: soft voting over models fitted apart, of any
    architectures (``gpunet predict --model a.npz --model b.npz`` does the same with model files).

    ValueError where there are none, or where their ``classes_`` differ (the columns would not line up).
    scikit-learn's ``VotingClassifier(voting="soft")`` does the same for estimators it fits itself.
    """
    classifiers = list(classifiers)
    if not classifiers:
        raise ValueError("mean_proba needs at least one fitted classifier")
    for clf in classifiers:
        check_is_fitted(clf)
    first = classifiers[0].classes_
    for k, clf in enumerate(classifiers[1:], start=1):
        if not (len(clf.classes_) == len(first) and np.array_equal(clf.classes_, first)):
            raise ValueError(f"classifier {k}'s classes_ {list(clf.classes_)!r} are not classifier 0's "
                             f"{list(first)!r}: the probabilities' columns would not line up")
    total = classifiers[0].predict_proba(X)
    for clf in classifiers[1:]:
        total = total + clf.predict_proba(X)
    return total / len(classifiers)


def _flatten_images(X):
    """(m, 28, 28) image arrays -> (m, 784); anything else as it is (validate_data checks it)."""
    if isinstance(X, np.ndarray) and X.ndim == 3 and X.shape[1:] == (IMAGE_SIDE, IMAGE_SIDE):
        return X.reshape(len(X), INPUTS)
    return X


def _is_pixels(X: np.ndarray) -> bool:
    """Integer values 0-255 in an integer array: pixels, to be scaled by 1/255."""
    return X.dtype.kind in "ui" and (X.size == 0 or (X.min() >= 0 and X.max() <= 255))


def _inputs_for_fit(X: np.ndarray) -> tuple[np.ndarray, float]:
    """(the array the network reads, its scale): uint8 pixels and 1/255, or float features and 1."""
    if _is_pixels(X):
        return np.ascontiguousarray(X, dtype=np.uint8), PIXEL_SCALE
    return np.ascontiguousarray(X, dtype=_float_type(X)), 1.0


def _float_type(X: np.ndarray):
    """float32 features stay float32 (half the memory); anything else becomes float64."""
    return X.dtype if X.dtype in (np.float32, np.float64) else np.float64


def _inputs_for_predict(X: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return np.ascontiguousarray(X, dtype=_float_type(X))
    if not (_is_pixels(X) or (X.dtype.kind == "f" and np.all((X >= 0) & (X <= 255) & (X == np.round(X))))):
        raise ValueError("this model was fitted on pixels and takes pixels: whole numbers 0-255 "
                         "(fit it on floats to give it floats)")
    return np.ascontiguousarray(X, dtype=np.uint8)


def _plain(value):
    """A parameter as JSON holds it: NumPy scalars as Python numbers, tuples as lists (np.arange grids give them)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _json_label(label):
    """A class label as JSON holds it (NumPy scalars -> Python ones)."""
    return label.item() if isinstance(label, np.generic) else label


def _validation_count(val_size, samples: int | None, patience=None) -> int:
    """How many of ``samples`` to hold out for ``val_size`` ("auto", a count or a fraction).

    "auto" holds out none unless early stopping (``patience``) needs them, as scikit-learn's MLPClassifier
    holds out its validation_fraction only with early_stopping=True.
    """
    if isinstance(val_size, str):
        if patience is None:
            return 0
        return AUTO_HELD_OUT if samples is None else min(AUTO_HELD_OUT, samples // 10)
    if isinstance(val_size, float):
        return 0 if samples is None else int(val_size * samples)
    return int(val_size)


def _check_params(clf) -> None:
    """ValueError naming the first parameter of the estimator's own: device, the forms of val_size, hidden beside
    arch.

    The training settings (lr, epochs, hidden, arch, ...) are checked where the command line's are, by
    ``TrainConfig`` (a SettingError, which is a ValueError naming the parameter).
    """
    from gpunet.backends.devices import DEVICES

    if clf.device not in DEVICES:
        raise ValueError(f"device={clf.device!r}: must be one of {', '.join(map(repr, DEVICES))}")
    val_size = clf.val_size
    if not (val_size == "auto" or (isinstance(val_size, (int, np.integer)) and not isinstance(val_size, bool)
                                   and val_size >= 0) or (isinstance(val_size, float) and 0 < val_size < 1)):
        raise ValueError(f'val_size={val_size!r}: must be "auto", a count >= 0, or a fraction between 0 and 1')
    if clf.arch is not None and not (isinstance(clf.hidden, (tuple, list)) and tuple(clf.hidden) == (16, 16)):
        raise ValueError("give hidden or arch, not both (hidden=(16, 16) is arch='dense16,dense16')")
