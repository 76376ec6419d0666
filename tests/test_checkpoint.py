"""Model files: round trip, atomic writes, and refusal of anything that is not a gpunet model."""

import json
import zipfile

import numpy as np
import pytest

from gpunet.files.checkpoint import load_model, save_model
from gpunet.errors import ModelFileError
from gpunet.nn.model import init_params, layer_sizes


def params(hidden=(16, 16), dtype=np.float32):
    return init_params(layer_sizes(hidden), "he", seed=0, dtype=dtype)


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    path = tmp_path / "model.npz"
    original = params()
    save_model(path, original, {"history": [{"epoch": 1, "val_accuracy": 0.9}], "classes": list(range(10))})
    loaded, meta = load_model(path)
    for a, b in zip(original, loaded):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert meta["layer_sizes"] == [784, 16, 16, 10]
    assert meta["history"][0]["val_accuracy"] == 0.9
    assert meta["format"] == "gpunet-model"


def test_failed_write_leaves_the_old_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    save_model(path, params(), {})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        save_model(path, params((8,)), {})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary file left behind


def test_models_written_by_numpy_otherwise_load_as_numpy_reads_them(tmp_path):
    """Deflated members, Fortran order, big-endian floats: the header-checked reader gives np.load's arrays."""
    arrays = good_arrays()
    arrays["W1"] = np.asfortranarray(arrays["W1"])
    arrays["W2"] = arrays["W2"].astype(">f8")
    path = tmp_path / "m.npz"
    np.savez_compressed(path, **arrays)
    params, meta = load_model(path)
    with np.load(path, allow_pickle=False) as reference:
        for key, array in zip(["W1", "b1", "W2", "b2"], params):
            assert array.dtype == reference[key].dtype and array.shape == reference[key].shape
            np.testing.assert_array_equal(array, reference[key])
    assert meta["layer_sizes"] == [784, 4, 10]


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def good_arrays():
    p = params((4,))
    meta = {"format": "gpunet-model", "format_version": 1, "layer_sizes": [784, 4, 10]}
    return {"W1": p[0], "b1": p[1], "W2": p[2], "b2": p[3], "metadata": np.array(json.dumps(meta))}


@pytest.mark.parametrize("case, message", [
    ("missing", "no such model file"),
    ("text", "not a readable .npz"),
    ("truncated", "not a readable .npz"),
    ("pickled", "pickled"),
    ("no_metadata", "not a gpunet model"),
    ("foreign_format", "not a gpunet model"),
    ("future_version", "format version"),
    ("bad_json", "not valid JSON"),
    ("missing_weight", "missing W2"),
    ("wrong_shape", "W1 has shape"),
    ("nan", "NaN"),
])
def test_bad_model_files_are_refused_with_one_line(tmp_path, case, message):
    path = tmp_path / "m.npz"
    arrays = good_arrays()
    if case == "text":
        path.write_text("hello")
    elif case == "truncated":
        write_npz(path, **arrays)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "pickled":
        np.savez(path, W1=np.array([{"evil": 1}], dtype=object))
    elif case == "no_metadata":
        arrays.pop("metadata")
        write_npz(path, **arrays)
    elif case == "foreign_format":
        arrays["metadata"] = np.array(json.dumps({"format": "keras"}))
        write_npz(path, **arrays)
    elif case == "future_version":
        arrays["metadata"] = np.array(json.dumps({"format": "gpunet-model", "format_version": 99}))
        write_npz(path, **arrays)
    elif case == "bad_json":
        arrays["metadata"] = np.array("{not json")
        write_npz(path, **arrays)
    elif case == "missing_weight":
        arrays.pop("W2")
        write_npz(path, **arrays)
    elif case == "wrong_shape":
        arrays["W1"] = arrays["W1"][:, :100]
        write_npz(path, **arrays)
    elif case == "nan":
        arrays["b2"] = arrays["b2"] * np.nan
        write_npz(path, **arrays)
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    text = str(caught.value)
    assert message in text and "\n" not in text and str(path) in text


def test_loading_never_unpickles(tmp_path, monkeypatch):
    import pickle

    path = tmp_path / "m.npz"
    np.savez(path, metadata=np.array([object()], dtype=object))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(ModelFileError):
        load_model(path)
    assert zipfile.is_zipfile(path)


def test_model_file_gets_the_usual_permissions(tmp_path):
    import os

    path = tmp_path / "model.npz"
    mask = os.umask(0o022)
    try:
        save_model(path, params(), {})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
