"""gpunet.Classifier: scikit-learn's own estimator checks, arrays and DataFrames, model files both ways, composition."""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from joblib import parallel_backend
from threadpoolctl import threadpool_limits

import gpunet
from gpunet.data import load_sample
from gpunet.estimator import Classifier
from tests.conftest import run
from tests.test_cli import write_csv

PIXEL_COLUMNS = [f"pixel{i}" for i in range(784)]

# scikit-learn's data sets are a few hundred samples: no validation split (val_size counts samples).
# Every check applies; none is declared as not applying (see test_every_sklearn_check_applies).
# float64: the checks compare predict_proba on a subset, or in another order, against the whole at
# rtol 1e-7; BLAS sums other batch shapes in other orders, which float32 (eps 1.2e-7) cannot hold to.
CHECKED = [Classifier(val_size=0, device="cpu", dtype="float64"),
           Classifier(val_size=0, device="cpu", dtype="float64", hidden="none", optimizer="sgd")]


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check(estimator)


def test_every_sklearn_check_applies():
    tags = Classifier().__sklearn_tags__()
    assert tags.estimator_type == "classifier" and not tags.input_tags.allow_nan
    assert not getattr(tags, "_xfail_checks", None)


@pytest.fixture(scope="module")
def sample_frame():
    """The bundled sample as pandas reads a Kaggle train.csv: int64 pixel columns and a label column."""
    sample = load_sample()
    frame = pd.DataFrame(sample.images.astype(np.int64), columns=PIXEL_COLUMNS)
    frame.insert(0, "label", sample.labels.astype(np.int64))
    return frame


@pytest.fixture(scope="module")
def fitted(sample_frame):
    train = sample_frame.iloc[:6000]
    return Classifier(epochs=3, device="cpu").fit(train.drop(columns="label"), train.label)


def test_fit_on_a_dataframe_learns_the_digits(fitted, sample_frame):
    test = sample_frame.iloc[9000:]
    assert fitted.score(test.drop(columns="label"), test.label) > 0.85
    assert fitted.n_features_in_ == 784 and list(fitted.feature_names_in_) == PIXEL_COLUMNS
    assert list(fitted.classes_) == list(range(10))
    assert len(fitted.history_) == 3 and fitted.history_[-1]["val_accuracy"] > 0.8
    assert fitted.input_scale_ == 1 / 255


def test_the_validation_rows_are_the_ones_history_scored(fitted, sample_frame):
    rows = fitted.validation_indices_
    assert len(rows) == 1000 and len(set(rows)) == 1000 and rows.max() < 6000
    held_out = sample_frame.iloc[:6000].iloc[rows]
    accuracy = fitted.score(held_out.drop(columns="label"), held_out.label)
    # The loop scored them in chunks, predict_proba at once: argmax ties aside, the same count.
    assert abs(accuracy - fitted.history_[-1]["val_accuracy"]) <= 1.5 / 1000


def test_probabilities_are_the_networks_and_sum_to_one(fitted, sample_frame):
    X = sample_frame.drop(columns="label").iloc[9000:9100]
    probs = fitted.predict_proba(X)
    assert probs.shape == (100, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)  # float32 softmax, 10 terms
    expected = fitted.network().probabilities(X.to_numpy().astype(np.uint8))
    np.testing.assert_array_equal(probs, expected)  # the same computation
    np.testing.assert_array_equal(fitted.predict(X), probs.argmax(axis=1))


def test_images_as_28x28_arrays_give_what_rows_of_784_give(fitted, sample_frame):
    pixels = sample_frame.drop(columns="label").iloc[:50].to_numpy().astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fitted with feature names, given none
        np.testing.assert_array_equal(fitted.predict_proba(pixels.reshape(50, 28, 28)), fitted.predict_proba(pixels))


def test_a_dataframe_with_other_columns_is_refused(fitted, sample_frame):
    X = sample_frame.drop(columns="label").iloc[:10].rename(columns={"pixel0": "pixel_zero"})
    with pytest.raises(ValueError, match="feature names"):
        fitted.predict(X)


def test_a_pixel_model_refuses_scaled_floats(fitted, sample_frame):
    X = sample_frame.drop(columns="label").iloc[:10].to_numpy() / 255.0
    with pytest.raises(ValueError, match="fitted on pixels"):
        fitted.predict(X)


def test_string_labels_and_any_number_of_features_and_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 5)) * 4
    y = np.repeat(np.array(["cat", "dog", "eel"]), 200)
    X = centres[np.repeat(np.arange(3), 200)] + rng.normal(size=(600, 5))
    clf = Classifier(val_size=100, epochs=20, device="cpu").fit(X, y)
    assert clf.n_features_in_ == 5 and list(clf.classes_) == ["cat", "dog", "eel"] and clf.input_scale_ == 1.0
    assert clf.network().sizes == [5, 16, 16, 3]
    assert clf.score(X, y) > 0.95
    assert set(clf.predict(X)) <= {"cat", "dog", "eel"}


def test_options_are_the_command_lines_defaults():
    from gpunet.training import TrainConfig

    clf = Classifier()
    assert clf.get_params() == {"hidden": (16, 16), "epochs": None, "batch_size": None, "lr": None,
                                "optimizer": "adam", "schedule": None, "weight_decay": None, "init": "he",
                                "val_size": 1000, "patience": None, "seed": 0, "device": "auto",
                                "dtype": "float32", "verbose": False}
    assert clf._config() == TrainConfig.for_optimizer("adam")
    assert Classifier(optimizer="sgd", hidden="32")._config() == TrainConfig.for_optimizer("sgd", hidden=(32,))


# -- model files, both ways -----------------------------------------------------------------------
def test_a_model_saved_from_python_gives_gpunet_predict_the_same_submission(capsys, tmp_path, fitted, sample_frame):
    model = tmp_path / "model.npz"
    fitted.save(model)
    test = sample_frame.drop(columns="label").iloc[9000:9400]
    data = write_csv(tmp_path / "test.csv", test.to_numpy())
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                       "--out", str(tmp_path / "submission.csv"))
    assert code == 0, err
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert list(submission.ImageId) == list(range(1, 401))
    np.testing.assert_array_equal(submission.Label.to_numpy(), fitted.predict(test))
    again = gpunet.load(model)
    np.testing.assert_array_equal(again.predict_proba(test), fitted.predict_proba(test))
    assert again.get_params() == fitted.get_params() and list(again.feature_names_in_) == PIXEL_COLUMNS


def test_a_model_from_gpunet_train_loads_as_an_estimator(capsys, tmp_path, sample_frame):
    model = tmp_path / "model.npz"
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "2", "--hidden", "24", "--out", str(model))
    assert code == 0, err
    clf = gpunet.load(model)
    assert clf.get_params()["hidden"] == (24,) and clf.get_params()["epochs"] == 2
    X = sample_frame.drop(columns="label").iloc[:300].to_numpy().astype(np.uint8)
    from gpunet.backend import CpuBackend
    from gpunet.cli import load_network

    network, _ = load_network(model, CpuBackend())
    np.testing.assert_array_equal(clf.predict(X), network.probabilities(X).argmax(axis=1))


def test_string_classes_reach_the_submission(capsys, tmp_path, sample_frame):
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    train = sample_frame.iloc[:3000]
    clf = Classifier(epochs=2, val_size=0, device="cpu").fit(train.drop(columns="label"), names[train.label])
    clf.save(tmp_path / "words.npz")
    test = sample_frame.drop(columns="label").iloc[9000:9050]
    data = write_csv(tmp_path / "test.csv", test.to_numpy())
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(tmp_path / "words.npz"),
                       "--data", str(data), "--out", str(tmp_path / "s.csv"))
    assert code == 0, err
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "s.csv").Label.to_numpy(), clf.predict(test))


# -- composition ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(sample_frame):
    part = sample_frame.iloc[:1500]
    return part.drop(columns="label").to_numpy(), part.label.to_numpy()


def test_in_a_pipeline_and_cross_validated(small):
    X, y = small
    pipeline = make_pipeline(StandardScaler(), Classifier(epochs=3, val_size=0, device="cpu"))
    scores = cross_val_score(pipeline, X.astype(np.float64), y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.7


GRID = {"hidden": [(8,), (32,)], "lr": [0.003, 0.01]}


def grid_search(X, y, n_jobs):
    search = GridSearchCV(Classifier(epochs=2, val_size=0, device="cpu"), GRID, cv=2, n_jobs=n_jobs)
    if n_jobs == 1:
        with threadpool_limits(limits=1):  # one BLAS thread, as in every worker below
            return search.fit(X, y)
    if n_jobs == 2:
        with parallel_backend("loky", inner_max_num_threads=1):
            return search.fit(X, y)
    return search.fit(X, y)  # on Dask: its workers start with OPENBLAS_NUM_THREADS=1 (pre-spawn-environ)


def test_grid_search_on_two_processes_finds_what_one_finds(small):
    X, y = small
    one, two = grid_search(X, y, 1), grid_search(X, y, 2)
    assert one.best_params_ == two.best_params_
    # The same computations, one BLAS thread each, in other processes: the same scores, exactly.
    np.testing.assert_array_equal(one.cv_results_["mean_test_score"], two.cv_results_["mean_test_score"])


def test_grid_search_on_a_dask_cluster_finds_what_one_process_finds(small):
    distributed = pytest.importorskip("distributed", reason="the 'dask' extra is not installed")

    X, y = small
    one = grid_search(X, y, 1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        with parallel_backend("dask"):
            on_dask = grid_search(X, y, -1)
    assert on_dask.best_params_ == one.best_params_
    np.testing.assert_array_equal(on_dask.cv_results_["mean_test_score"], one.cv_results_["mean_test_score"])


def test_the_package_face():
    assert {"Classifier", "load", "Network", "train", "TrainConfig", "get_backend"} <= set(dir(gpunet))
    for name in ("Classifier", "load", "Network", "train", "TrainConfig", "get_backend"):
        assert getattr(gpunet, name).__doc__, name
    with pytest.raises(AttributeError):
        gpunet.nothing_here  # noqa: B018
