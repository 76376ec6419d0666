"""gpunet: the digit network of the design notes, written once against an array module.

From Python (scikit-learn's conventions; see :mod:`gpunet.frontends.estimator`)::

    import pandas as pd, gpunet
    df = pd.read_csv("train.csv.gz")
    clf = gpunet.Classifier(epochs=5).fit(df.drop(columns="label"), df.label)
    clf.save("model.npz")                        # `gpunet predict --model model.npz` reads it
    clf = gpunet.load("model.npz")               # so does this, for models `gpunet train` wrote

The pieces a learner reads: :class:`Network` (the notes' forward and backward
passes), :func:`train` (the training loop) with :class:`TrainConfig`, and
:func:`get_backend` (NumPy, or CuPy with custom CUDA kernels).
"""

__version__ = "0.1.0"

# Imported on first use, so that `gpunet train` does not pay for scikit-learn's import.
_EXPORTS = {
    "Classifier": "gpunet.frontends.estimator",
    "load": "gpunet.frontends.estimator",
    "mean_proba": "gpunet.frontends.estimator",
    "Network": "gpunet.nn.model",
    "train": "gpunet.training.loop",
    "TrainConfig": "gpunet.training.loop",
    "get_backend": "gpunet.backends.devices",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpunet' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted([*globals(), *_EXPORTS])
