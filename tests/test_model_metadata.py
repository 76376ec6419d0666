"""Model metadata read against its schema (gpunet/files/model_schema.py): a field of the wrong type, range, size
or depth, a member count or a member name built to hurt, is one line naming the file and what is wrong, in
every command that reads a model (predict, evaluate, plot, serve) and in gpunet.load; never a traceback.

The findings of issue 17 reproduced as written: 10 (metadata nested 100,000 deep in a 1,001-byte model),
11 (stop_reason ["diverged"]; training.seed -1 with a matching data_sha256; training a list or a text;
history an object), 12 (an architecture of 1.4 million dropout layers), 13 (a member named with terminal
escape sequences; 200,000 members).
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from gpunet.errors import ModelFileError, printable
from gpunet.files import checkpoint
from gpunet.files.checkpoint import load_model, load_metadata
from gpunet.files.data import fingerprint, load_digits, load_sample
from gpunet.files.model_schema import MAX_DEPTH, nesting_depth
from gpunet.nn.model import MAX_LAYERS
from tests.conftest import run, sample_npz
from tests.test_untrusted_files import assert_refused_in_bounded_memory, baseline_peak, predict_with, zip_archive

__all__ = ["baseline_peak"]  # a fixture, imported to be used here

COMMANDS = ("predict", "evaluate", "plot", "serve", "gpunet.load")
ESCAPES = "\x1b[2J\x1b[31mEVIL\x1b]0;title\x07\u202e"  # clear the screen, red, a window title, right-to-left


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory) -> Path:
    """1,000 labeled digits of the bundled sample as an .npz data file."""
    return sample_npz(tmp_path_factory.mktemp("data"), 1000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_file) -> Path:
    """A dense model trained by `gpunet train` on digits_file, holding out 200 of them."""
    from gpunet.frontends.cli import main

    model = tmp_path_factory.mktemp("model") / "model.npz"
    try:
        main(["train", "--device", "cpu", "--epochs", "3", "--hidden", "8", "--val-size", "200",
              "--data", str(digits_file), "--out", str(model)])
    except SystemExit as exit:
        assert not exit.code
    return model


def metadata_of(model: Path) -> dict:
    with np.load(model, allow_pickle=False) as arrays:
        return json.loads(str(arrays["metadata"][()]))


def rewritten(model: Path, path: Path, metadata, compressed: bool = False) -> Path:
    """``model``'s weights with ``metadata`` (a dict, or the JSON text as it is) at ``path``."""
    with np.load(model, allow_pickle=False) as arrays:
        kept = {key: arrays[key] for key in arrays.files if key != "metadata"}
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    (np.savez_compressed if compressed else np.savez)(path, **kept, metadata=np.array(text))
    return path


def refused_everywhere(capsys, tmp_path: Path, model: Path, data: Path, command: str) -> str:
    """The one line ``command`` refuses ``model`` with (exit 1, no traceback), the file named first."""
    from gpunet.frontends import server

    def no_serving(*args, **kwargs):
        raise AssertionError("the model was accepted: serve would serve it")

    server.make_server, kept = no_serving, server.make_server
    try:
        return _refused_everywhere(capsys, tmp_path, model, data, command)
    finally:
        server.make_server = kept


def _refused_everywhere(capsys, tmp_path: Path, model: Path, data: Path, command: str) -> str:
    if command == "gpunet.load":
        import gpunet

        with pytest.raises(ModelFileError) as refused:
            gpunet.load(model)
        line = str(refused.value)
        assert "\n" not in line
    else:
        if command == "plot":
            pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install 'gpunet[plot]')")
        args = {"predict": ["--device", "cpu", "--data", str(data), "--out", str(tmp_path / "submission.csv")],
                "evaluate": ["--device", "cpu", "--data", str(data)],
                "plot": ["--out", str(tmp_path / "plots")],
                "serve": ["--port", "0"]}[command]
        code, out, err = run(capsys, command, "--model", str(model), *args)
        assert code == 1, (out, err)
        assert re.fullmatch(r"Error: [^\n]+\n", err), err  # one line, no traceback
        line = err.removeprefix("Error: ").rstrip("\n")
        assert not (tmp_path / "submission.csv").exists() and not (tmp_path / "plots").exists()
    assert line.startswith(f"{model}: "), line
    return line


# --- finding 10: nesting ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_metadata_nested_100000_deep_in_a_1001_byte_model_is_one_line(capsys, tmp_path, digits_file, command):
    """Finding 10 as written: json.loads recursed into it (RecursionError) in every command and gpunet.load."""
    path = tmp_path / "deep.npz"
    np.savez_compressed(path, metadata=np.array("[" * 100_000 + "]" * 100_000))
    assert path.stat().st_size < 1100  # the finding's 1,001 bytes, give or take zip's timestamps
    line = refused_everywhere(capsys, tmp_path, path, digits_file, command)
    assert line.endswith(f"metadata is nested 100,000 levels deep; gpunet model files hold at most {MAX_DEPTH}")


def test_nesting_depth_agrees_with_the_parsed_json():
    """Against a walk of what json.loads gives, on random JSON with brackets and escaped quotes inside strings."""
    rng = random.Random(0)

    def value(depth: int):
        kind = rng.choice("lds" if depth < 6 else "s")
        if kind == "l":
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        if kind == "d":
            keys = ["a", "[", "}{", 'q"[', "\\[", "\\", "\\\\\"", "é[", "\ud800]"]
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(3))}
        return rng.choice([1, 2.5, None, True, "x", "[[[", "]]}", '\\"[', '"{"', "\\", "\\\\", "ü]", "\x1b{"])

    def depth_of(parsed) -> int:
        children = parsed.values() if isinstance(parsed, dict) else parsed if isinstance(parsed, list) else None
        return 0 if children is None else 1 + max(map(depth_of, children), default=0)

    for _ in range(1000):
        parsed = value(0)
        for text in (json.dumps(parsed), json.dumps(parsed, ensure_ascii=False)):  # escaped, and as UTF-8
            assert nesting_depth(text) == depth_of(parsed), text
    assert nesting_depth("[" * 3_000_000 + "]" * 3_000_000) == 3_000_000
    assert nesting_depth("[" + '"[",' * 300 + "[[]]]") == 3  # 600 quotes: their uint8 count wraps, its parity stays
    assert nesting_depth('["' + "\\\\" * 300 + '", [[]]]') == 3  # 600 backslashes escape one another


def test_metadata_nested_one_level_more_than_allowed_is_refused(tmp_path, trained):
    meta = metadata_of(trained)
    meta["training"]["data"] = "[" * 100  # brackets inside a text are no nesting
    meta["notes"] = json.loads("[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2))  # MAX_DEPTH - 1 with the top
    load_model(rewritten(trained, tmp_path / "ok.npz", meta))
    meta["notes"] = json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(ModelFileError, match=f"metadata is nested {MAX_DEPTH + 1} levels deep"):
        load_model(rewritten(trained, tmp_path / "deep.npz", meta))


# --- finding 11: fields of the wrong type or range ---------------------------------------------------

WRONG_FIELDS = {  # finding 11 as written: what a command crashed on, and the words that now name it
    "stop_reason a list": (lambda meta: meta.update(stop_reason=["diverged"]),
                           "metadata field stop_reason is a list of 1 item; it must be a name"),
    "training.seed -1": (lambda meta: meta["training"].update(seed=-1),
                         "metadata field training.seed is -1; it must be a whole number from 0 to "),
    "training a list": (lambda meta: meta.update(training=[1, 2]),
                        "metadata field training is a list of 2 items; it must be a JSON object"),
    "training a text": (lambda meta: meta.update(training="settings"),
                        "metadata field training is the text 'settings'; it must be a JSON object"),
    "history an object": (lambda meta: meta.update(history={"epoch": 1}),
                          "metadata field history is an object; it must be a list, each an object"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("wrong", WRONG_FIELDS)
def test_metadata_fields_of_the_wrong_type_are_one_line(capsys, tmp_path, trained, digits_file, wrong, command):
    """Finding 11 as written: TypeError (stop_reason), ValueError (a negative seed with the data's own SHA-256,
    so that evaluate and plot re-split the training data), AttributeError/TypeError (training, history)."""
    meta = metadata_of(trained)
    change, says = WRONG_FIELDS[wrong]
    change(meta)
    if wrong == "training.seed -1":  # the run's own data: evaluate and plot split it again with this seed
        assert meta["training"]["data_sha256"] == fingerprint(*_arrays(digits_file))
        assert meta["training"]["data"] == str(digits_file)
    path = rewritten(trained, tmp_path / "model.npz", meta)
    assert says in refused_everywhere(capsys, tmp_path, path, digits_file, command)


def _arrays(path: Path):
    digits = load_digits(path, labeled=True)
    return digits.images, digits.labels


# Every field's rule, one breach each: (a change to a valid dense model's metadata, the words naming it).
BREACHES = [
    ({"format_version": 1.0}, "model format version 1.0 is not supported"),
    ({"format_version": True}, "model format version true is not supported"),
    ({"layer_sizes": [784, 8, "10"]}, "metadata field layer_sizes[2] is the text '10'"),
    ({"layer_sizes": [784] * (MAX_LAYERS + 3)}, f"metadata field layer_sizes is a list of {MAX_LAYERS + 3:,} items"),
    ({"gpunet_version": 1}, "metadata field gpunet_version is 1"),
    ({"classes": list(range(9))}, "metadata field classes is a list of 9 items; it must be one label for each of "
                                  "the network's 10 outputs"),
    ({"classes": [[0]] * 10}, "metadata field classes[0] is a list of 1 item; it must be a class label"),
    ({"classes": None}, "metadata field classes is null"),
    ({"normalization": {"scale": 0}}, "metadata field normalization.scale is 0; it must be a number above 0"),
    ({"normalization": {"scale": "1/255"}}, "metadata field normalization.scale is the text '1/255'"),
    ({"normalization": [1]}, "metadata field normalization is a list of 1 item; it must be a JSON object"),
    ({"feature_names": ["a"]}, "metadata field feature_names is a list of 1 item; it must be null or one name "
                               "for each of the network's 784 inputs"),
    ({"training": {"val_size": -5}}, "metadata field training.val_size is -5"),
    ({"training": {"val_size": True}}, "metadata field training.val_size is true"),
    ({"training": {"lr": 0}}, "metadata field training.lr is 0; it must be a number above 0"),
    ({"training": {"epochs": 0}}, "metadata field training.epochs is 0"),
    ({"training": {"hidden": [8, 0]}}, "metadata field training.hidden[1] is 0"),
    ({"training": {"data": ["train.csv"]}}, "metadata field training.data is a list of 1 item; it must be text"),
    ({"training": {"data_sha256": "abc"}}, "metadata field training.data_sha256 is the text 'abc'; it must be 64 "
                                           "hexadecimal digits"),
    ({"training": {"optimizer": "adam\x1b[2J"}}, "metadata field training.optimizer is the text 'adam\\x1b[2J'"),
    ({"training": {"seed": 10**30}}, "metadata field training.seed is a number of 31 digits"),
    ({"estimator": {"lr": float("nan")}}, "metadata field estimator.lr is nan"),
    ({"estimator": {"hidden": [1, {"a": [float("inf")]}]}}, "metadata field estimator.hidden is a list of 2 items"),
    ({"estimator": {"\x1b[2J": ["x" * 5000]}}, "metadata field estimator.\\x1b[2J is a list of 1 item"),
    ({"history": [{"epoch": 1}, {"lr": 0.1}]}, "metadata field history[1].epoch is missing; it must be a whole number"),
    ({"history": [{"epoch": 1, "train_loss": "low"}]}, "metadata field history[0].train_loss is the text 'low'"),
    ({"history": [{"epoch": 1, "val_accuracy": 1.5}]}, "metadata field history[0].val_accuracy is 1.5; it must be "
                                                       "null or a number at least 0 and at most 1"),
    ({"history": [{"epoch": 1, "seconds": float("nan")}]}, "metadata field history[0].seconds is nan"),
    ({"history": [{"epoch": 1, "train_loss": float("inf")}]}, "metadata field history[0].train_loss is inf"),
    ({"best_epoch": 4}, "metadata field best_epoch is 4; it must be an epoch of the history (1 to 3), or null"),
    ({"best_epoch": "2"}, "metadata field best_epoch is the text '2'"),
    ({"stop_reason": "x" * 65}, "metadata field stop_reason is the text 'xxxx"),
    ({"final_metrics": {"epoch": 0}}, "metadata field final_metrics.epoch is 0"),
]


@pytest.mark.parametrize("change, says", BREACHES, ids=[says.split(";")[0][-40:] for _, says in BREACHES])
def test_every_field_is_checked_against_its_rule(tmp_path, trained, change, says):
    meta = metadata_of(trained)
    for key, value in change.items():
        meta[key] = {**meta[key], **value} if key == "training" else value
    with pytest.raises(ModelFileError) as refused:
        load_model(rewritten(trained, tmp_path / "m.npz", meta))
    line = str(refused.value)
    assert line.startswith(f"{tmp_path / 'm.npz'}: ") and says in line and "\n" not in line, line
    assert "\x1b" not in line


@pytest.mark.parametrize("parameter, value", [("hidden", {"a": 1}), ("device", [1]), ("val_size", "half"),
                                              ("optimizer", {"name": "adam"}), ("arch", ["conv2k5"])])
def test_estimator_parameters_of_another_kind_are_refused_by_gpunet_load(tmp_path, trained, parameter, value):
    """The schema lets any plain JSON value through as a Classifier parameter; the estimator's own checks, which
    gpunet.load runs, refuse the ones it cannot use in one line."""
    import gpunet

    meta = metadata_of(trained)
    meta["estimator"] = {parameter: value}
    path = rewritten(trained, tmp_path / "m.npz", meta)
    with pytest.raises(ModelFileError) as refused:
        gpunet.load(path)
    line = str(refused.value)
    assert line.startswith(f"{path}: its training settings cannot be used: {parameter}") and "\n" not in line, line


def test_models_gpunet_writes_pass_the_schema(capsys, tmp_path, trained, digits_file):
    """Every field gpunet itself writes (a CLI run, a CNN run, the estimator with text labels and feature names)."""
    import pandas as pd

    import gpunet

    assert load_metadata(trained) == load_model(trained)[1]
    cnn = tmp_path / "cnn.npz"
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--arch", "conv2k5,pool4,dropout0.5,dense8",
                       "--data", str(digits_file), "--val-size", "200", "--out", str(cnn))
    assert code in (0, 3) and cnn.exists(), err  # 3: saved, having learned too little in one epoch
    assert load_metadata(cnn)["architecture"] == "conv2k5,pool4,dropout0.5,dense8"
    sample = load_sample()
    X = pd.DataFrame(sample.images[:300] / 255.0, columns=[f"p{i}" for i in range(784)])
    y = np.array(["zero", "one", "two"])[sample.labels[:300] % 3]
    with warnings.catch_warnings():  # two epochs may learn nothing much, and say so
        warnings.simplefilter("ignore")
        clf = gpunet.Classifier(hidden=(8,), epochs=2, val_size=0.2, device="cpu").fit(X, y)
    clf.save(tmp_path / "clf.npz")
    loaded = gpunet.load(tmp_path / "clf.npz")
    assert list(loaded.classes_) == ["one", "two", "zero"] and list(loaded.feature_names_in_) == list(X.columns)


# --- finding 12: the architecture's length --------------------------------------------------------


@pytest.fixture(scope="module")
def cnn(tmp_path_factory, digits_file) -> Path:
    """A version 2 model (a stack of layers) trained by `gpunet train`."""
    from gpunet.frontends.cli import main

    path = tmp_path_factory.mktemp("cnn") / "cnn.npz"
    try:
        main(["train", "--device", "cpu", "--epochs", "1", "--arch", "conv2k5,pool4", "--lr", "0.05",
              "--data", str(digits_file), "--val-size", "200", "--out", str(path)])
    except SystemExit as exit:
        assert not exit.code
    return path


def test_an_architecture_of_1_4_million_dropout_layers_is_refused_in_bounded_memory(tmp_path, cnn, baseline_peak):
    """Finding 12 as written: a ~230 KB model whose spec lists 1.4 million dropout layers; predict ran 4 min 38 s
    and peaked at 1.04 GB. Now one line, within the bounded readers' memory."""
    meta = metadata_of(cnn)
    meta["architecture"] = "conv2k5,pool4," + ",".join(["dropout0.5"] * 1_400_000)
    path = rewritten(cnn, tmp_path / "model.npz", meta, compressed=True)
    assert path.stat().st_size < 300_000
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, "gpunet reads at most",
                                     *predict_with(tmp_path, path))


@pytest.mark.parametrize("layers, says", [
    (300_000, "metadata field architecture is a text of 2,700,013 characters; it must be text of at most 32,000"),
    (MAX_LAYERS + 1, f"names {MAX_LAYERS + 3:,} layers; at most {MAX_LAYERS:,}"),
])
def test_an_architecture_longer_than_max_layers_is_refused(tmp_path, cnn, layers, says):
    """Under the metadata's size limit: refused by the spec's length in characters, then in layers."""
    meta = metadata_of(cnn)
    meta["architecture"] = "conv2k5,pool4," + ",".join(["dropout0"] * layers)
    path = rewritten(cnn, tmp_path / "model.npz", meta, compressed=True)
    for read in (load_model, load_metadata):
        with pytest.raises(ModelFileError) as refused:
            read(path)
        assert says in str(refused.value) and "\n" not in str(refused.value)
    meta["architecture"] = "conv2k5,pool4," + ",".join(["dropout0"] * (MAX_LAYERS - 2))  # the most there may be
    assert load_model(rewritten(cnn, tmp_path / "longest.npz", meta))[1]["architecture"] == meta["architecture"]


def test_arch_option_is_held_to_max_layers(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--device", "cpu", "--arch", ",".join(["dropout0"] * (MAX_LAYERS + 1)),
                       "--out", str(tmp_path / "m.npz"))
    assert code == 2 and f"names {MAX_LAYERS + 1:,} layers; at most {MAX_LAYERS:,}" in err and err.count("\n") == 1


# --- finding 13: members ----------------------------------------------------------------------------


def members_of(model: Path) -> dict[str, dict]:
    """The model's members as zip_archive takes them, stored."""
    with zipfile.ZipFile(model) as archive:
        return {info.filename: stored(archive.read(info)) for info in archive.infolist()}


def stored(content: bytes) -> dict:
    """A stored member, its name in UTF-8 (flag 0x800, as zipfile writes names beyond ASCII)."""
    return {"packed": content, "crc": zlib.crc32(content), "size": len(content), "method": zipfile.ZIP_STORED,
            "flags": 0x800}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("content", ["not an array", "an array"])
def test_a_member_named_with_terminal_escape_sequences_is_printed_escaped(capsys, tmp_path, trained, digits_file,
                                                                         content, command):
    """Finding 13 as written: the name reached the terminal byte for byte (where the member is no .npy array)."""
    members = members_of(trained)
    members[f"{ESCAPES}.npy"] = stored(b"hello" if content == "not an array" else npy_bytes(np.zeros(3, np.float32)))
    path = tmp_path / "model.npz"
    path.write_bytes(zip_archive(members))
    line = refused_everywhere(capsys, tmp_path, path, digits_file, command)
    assert printable(ESCAPES) in line and not any(c in line for c in "\x1b\x07\u202e"), line


def test_npz_data_member_names_are_printed_escaped(tmp_path):
    from gpunet.errors import DataError

    path = tmp_path / "digits.npz"
    path.write_bytes(zip_archive({f"{ESCAPES}.npy": stored(b"hello")}))
    with pytest.raises(DataError) as refused:
        load_digits(path, labeled=True)
    assert printable(ESCAPES) in str(refused.value) and "\x1b" not in str(refused.value)


def many_members(trained: Path, count: int, content: bytes = b"") -> bytes:
    members = members_of(trained)
    members.update({f"x{k}.npy": stored(content) for k in range(count)})
    return zip64_archive(members) if len(members) > 0xFFFF else zip_archive(members)


def zip64_archive(members: dict[str, dict]) -> bytes:
    """zip_archive's members, its end record saying 0xFFFF and a zip64 end record holding the counts: what zipfile
    writes past 65,535 members."""
    local, central = io.BytesIO(), io.BytesIO()
    for name, entry in members.items():
        offset = local.tell()
        common = (20, entry["flags"], entry["method"], 0, 0x21, entry["crc"], len(entry["packed"]), entry["size"],
                  len(name.encode()))
        local.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", *common, 0) + name.encode() + entry["packed"])
        central.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, *common, 0, 0, 0, 0, 0, offset) + name.encode())
    count, directory, start = len(members), len(central.getvalue()), local.tell()
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, directory, start)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, start + directory, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local.getvalue() + central.getvalue() + record + locator + end


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array)
    return out.getvalue()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_model_of_200000_members_is_refused_before_any_is_read(capsys, tmp_path, trained, digits_file, command,
                                                                monkeypatch):
    """Finding 13 as written: 40 s, 243 MB and a 2 MB error "line". Now refused from the zip's end record alone:
    zipfile, which reads the whole directory when it opens a file, is never asked to."""
    path = tmp_path / "model.npz"
    path.write_bytes(many_members(trained, 200_000))

    def never(*args, **kwargs):
        raise AssertionError("the zip's directory was read")

    monkeypatch.setattr(checkpoint.zipfile, "ZipFile", never)
    line = refused_everywhere(capsys, tmp_path, path, digits_file, command)
    assert line.endswith(f": holds 200,005 members; a gpunet model holds at most {checkpoint.MAX_MEMBERS:,}")
    assert len(line) < 200 + len(str(path))


def test_a_model_of_200000_members_is_refused_in_bounded_memory(tmp_path, trained, baseline_peak):
    path = tmp_path / "model.npz"
    path.write_bytes(many_members(trained, 200_000))
    assert_refused_in_bounded_memory(tmp_path, baseline_peak, path, "holds 200,005 members",
                                     *predict_with(tmp_path, path))


def test_members_at_the_bound_are_read_and_one_more_is_refused(tmp_path, trained):
    """MAX_MEMBERS members reach the member checks (unexpected arrays, shown five at most); one more does not."""
    path = tmp_path / "model.npz"
    path.write_bytes(many_members(trained, checkpoint.MAX_MEMBERS - 5, npy_bytes(np.zeros(1, np.float32))))
    with pytest.raises(ModelFileError, match=r"unexpected arrays \['x0', 'x1', 'x10', 'x100', 'x1000', \.\.\. "
                                             rf"\({checkpoint.MAX_MEMBERS - 5:,} in all\)\]$"):
        load_model(path)
    path.write_bytes(many_members(trained, checkpoint.MAX_MEMBERS - 4))
    with pytest.raises(ModelFileError, match=f"holds {checkpoint.MAX_MEMBERS + 1:,} members"):
        load_model(path)


def test_a_zip_directory_of_long_names_is_refused_before_it_is_read(tmp_path, trained, monkeypatch):
    """Few members, each named with 60,000 characters: the directory's size is bounded as its count is."""
    members = members_of(trained)
    members.update({f"{k}{'n' * 60_000}.npy": stored(b"") for k in range(40)})
    path = tmp_path / "model.npz"
    path.write_bytes(zip_archive(members))
    monkeypatch.setattr(checkpoint.zipfile, "ZipFile", lambda *a, **k: pytest.fail("the directory was read"))
    with pytest.raises(ModelFileError, match=r"its zip directory is [\d,]+ bytes; a gpunet model's is at most"):
        load_model(path)


def test_a_zip64_end_record_is_read_for_the_count(tmp_path, trained, monkeypatch):
    """Past 65,535 members a zip's end record says 0xFFFF and a zip64 record holds the count: it is read there."""
    path = tmp_path / "model.npz"
    path.write_bytes(zip64_archive(members_of(trained)))
    with zipfile.ZipFile(path) as archive:  # zipfile reads it as such
        assert len(archive.infolist()) == 5
    assert load_model(path)[1] == metadata_of(trained)
    monkeypatch.setattr(checkpoint, "MAX_MEMBERS", 4)
    with pytest.raises(ModelFileError, match="holds 5 members"):  # not the end record's 65,535
        load_model(path)


# --- the metadata alone, for telling a gpunet model from another file -------------------------------


def test_load_metadata_reads_no_weights(tmp_path, trained):
    """A model whose weights are damaged has readable metadata; load_model refuses the weights."""
    members = members_of(trained)
    members["W1.npy"] = stored(b"not an array")
    path = tmp_path / "model.npz"
    path.write_bytes(zip_archive(members))
    assert load_metadata(path) == metadata_of(trained)
    with pytest.raises(ModelFileError, match="'W1.npy' is not a readable .npy array"):
        load_model(path)


@pytest.mark.parametrize("metadata, says", [
    ('{"run": 42}', "not a gpunet model (format is not 'gpunet-model')"),
    ('{"format": "gpunet-model", "format_version": 3}', "model format version 3 is not supported"),
    ('{"format": "gpunet-model", "format_version": 1}', "metadata field layer_sizes is missing"),
])
def test_load_metadata_refuses_what_is_not_a_gpunet_model(tmp_path, metadata, says):
    """The issue's own example of a user's file with a metadata member (finding 1) is no gpunet model."""
    path = tmp_path / "experiment.npz"
    np.savez(path, metadata=np.array(metadata), measurements=np.arange(10.0))
    with pytest.raises(ModelFileError, match=re.escape(f"{path}: {says}")):
        load_metadata(path)
