"""scripts/pytorch_recipe.py, scripts/bench_presets.py and predict_step_times.py --presets run and read right.

Nothing here is timed or compared with a time: these show, on a few hundred digits of the bundled sample,
that the scripts run, that they train and time what they say (the presets' own settings, the same layers on
both sides, gpunet's held-out digits), and that what they read from their children's output is what the
children recorded.
"""

import gzip
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpunet.backends.cpu import CpuBackend
from gpunet.files.checkpoint import load_model
from gpunet.files.data import load_sample, validation_rows
from gpunet.training.presets import PRESETS
from tests.test_schedule import reference_rates, schedule_bound
from tests.tolerances import assert_within

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def presets_script():
    sys.path.insert(0, str(SCRIPTS))  # bench_presets imports bench.py from beside it
    try:
        yield load_script("bench_presets")
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def recipe_script():
    return load_script("pytorch_recipe")


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    """300 digits of the bundled sample as a Kaggle train.csv.gz (label, pixel0..pixel783)."""
    digits = load_sample()
    path = tmp_path_factory.mktemp("data") / "train.csv.gz"
    rows = np.column_stack([digits.labels[:300], digits.images[:300]])
    with gzip.open(path, "wt") as f:
        f.write("label," + ",".join(f"pixel{i}" for i in range(784)) + "\n")
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return path


# -- the PyTorch recipe ------------------------------------------------------------------------------------------
def test_the_recipe_holds_out_gpunets_digits(recipe_script):
    for m, val_size, seed in [(300, 100, 0), (42_000, 1000, 0), (42_000, 5000, 3)]:
        train_rows, val_rows = recipe_script.split(m, val_size, seed)
        expected_train, expected_val = validation_rows(m, val_size, seed)
        assert np.array_equal(train_rows, expected_train) and np.array_equal(val_rows, expected_val)


def test_the_recipe_trains_gpunets_lenet(recipe_script, presets_script):
    """The recipe's hand-written network is, layer for layer, the PyTorch twin of gpunet's
    conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5 that bench.py builds from gpunet's own layers."""
    torch = pytest.importorskip("torch")
    config = presets_script.TrainConfig(arch="conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5")
    twin = presets_script.bench.torch_modules(torch.nn, presets_script.built_layers(config))
    recipe = list(recipe_script.lenet(torch.nn))
    assert [type(m).__name__ for m in recipe] == [type(m).__name__ for m in twin]
    assert [tuple(p.shape) for m in recipe for p in m.parameters()] == \
        [tuple(p.shape) for m in twin for p in m.parameters()]
    assert [m.p for m in recipe if isinstance(m, torch.nn.Dropout)] == [0.5]
    # valid convolutions: 28 -> 24 -> pool 12 -> 8 -> pool 4, so 64 x 4 x 4 into the dense layer
    assert recipe[7].in_features == 64 * 4 * 4 and recipe[0].padding == (0, 0)


def test_the_recipe_runs_and_prints_what_the_driver_reads(small_csv, presets_script):
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, str(SCRIPTS / "pytorch_recipe.py"), "--data", str(small_csv),
                           "--val-size", "100", "--epochs", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)  # a guard against a hang, not a timing
    assert done.returncode == 0, done.stderr
    assert "300 digits -> 200 training, 100 validation (split seed 0)" in done.stdout
    accuracy = presets_script.parse_accuracy(done.stdout)
    line = re.search(r"^Validation accuracy (\S+)% \(100 digits\)$", done.stdout, re.MULTILINE)
    assert line and accuracy == float(line.group(1)) and 0 <= accuracy <= 100
    seconds, planned = presets_script.parse_epoch_seconds(done.stdout)
    timings = re.search(r"^Timings: .*\(epochs (\S+) (\S+) s\)", done.stdout, re.MULTILINE)
    assert planned == 2 and len(seconds) == 2 and timings, done.stdout
    assert [round(s, 1) for s in seconds] == [float(timings.group(1)), float(timings.group(2))]


@pytest.mark.parametrize("content, says", [
    (None, "No such file"),
    ("label,pixel0\n3,0\n", "has 2 columns, not 785"),
    ("label," + ",".join(f"pixel{i}" for i in range(784)) + "\n" + ",".join(["1"] * 785) + "\n", "holds only 1 digits"),
])
def test_the_recipe_refuses_bad_data_in_one_line(tmp_path, content, says):
    pytest.importorskip("torch")
    path = tmp_path / "train.csv"
    if content is not None:
        path.write_text(content)
    done = subprocess.run([sys.executable, str(SCRIPTS / "pytorch_recipe.py"), "--data", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: --") and says in done.stderr, done.stderr


# -- reading gpunet train's output -----------------------------------------------------------------------------------
def test_what_is_read_from_gpunet_train_is_what_it_recorded(small_csv, tmp_path, presets_script):
    """gpunet train (--preset notes, 60 epochs, so that it prints every other epoch's line): the accuracy and the
    epoch seconds read from its output are those of the model file's history."""
    out = tmp_path / "notes.npz"
    done = subprocess.run([sys.executable, "-m", "gpunet", "train", "--preset", "notes", "--epochs", "60",
                           "--data", str(small_csv), "--val-size", "100", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env=presets_script.child_environment(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    history = load_model(out)[1]["history"]
    run = presets_script.Run(0, 1.0, 1.0, done.stdout, "")
    assert run.accuracy == round(100 * history[-1]["val_accuracy"], 2)
    printed = [1, *range(2, 61, 2)]  # every 60 // 25 = 2nd epoch, and the first
    assert run.planned == 60 and run.epochs == [round(history[e - 1]["seconds"], 2) for e in printed]
    rest = run.epochs[1:]
    assert run.epoch_seconds == pytest.approx(run.epochs[0] + 59 * sum(rest) / len(rest))


def test_the_parsers_on_texts_of_their_formats(presets_script):
    text = ("Preset fast\nepoch 1/2  loss 0.5  acc  82.67%  val_loss 0.1  val_acc  96.10%  (7.78s)\n"
            "epoch 2/2  loss 0.1  acc  92.67%  val_loss 0.1  val_acc  97.25%  (12.01s)\n"
            "Validation accuracy 97.25% (epoch 2); saved model.npz\n")
    assert presets_script.parse_accuracy(text) == 97.25
    assert presets_script.parse_epoch_seconds(text) == ([7.78, 12.01], 2)
    assert presets_script.Run(0, 25.0, 30.0, text, "").epoch_seconds == pytest.approx(19.79)
    assert presets_script.parse_accuracy("No validation accuracy: trained on every digit") is None
    assert presets_script.Run(1, 1.0, 1.0, "Error: x", "").epoch_seconds is None


# -- the recipe table and its goal ---------------------------------------------------------------------------------
def fake_run(presets_script, wall, accuracy, returncode=0, epochs=(10.0, 20.0)):
    text = "".join(f"epoch {i}/{len(epochs)}  loss 1.0  ({s:.2f}s)\n" for i, s in enumerate(epochs, 1))
    text += "" if accuracy is None else f"Validation accuracy {accuracy:.2f}% (epoch 2); saved x\n"
    return presets_script.Run(returncode, wall, 2 * wall, text, "")


def table_rows(table):
    return {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:])}


def test_the_recipe_table_and_goal(presets_script):
    runs = {"pytorch recipe": [fake_run(presets_script, 80.0, 99.21), fake_run(presets_script, 84.0, 99.21)],
            "gpunet --preset fast": [fake_run(presets_script, 19.0, 99.05, epochs=(4.0, 5.0, 6.0, 5.0)),
                                     fake_run(presets_script, 21.0, 99.05, epochs=(4.0, 5.0, 6.0, 7.0))],
            "gpunet --preset cnn": [fake_run(presets_script, 1.0, None, returncode=1)]}
    rows = table_rows(presets_script.recipe_table(runs))
    assert rows["pytorch recipe"] == ["82.0 (80.0 84.0)", "164.0", "30.0", "15.00", "1.00x", "99.21%", "1.00x"]
    # epochs: 20 and 22 s, median 21; a mean epoch of 5 and 5.5 s, median 5.25, against the recipe's 15
    assert rows["gpunet --preset fast"] == ["20.0 (19.0 21.0)", "40.0", "21.0", "5.25", f"{5.25 / 15:.2f}x",
                                            "99.05%", f"{20 / 82:.2f}x"]
    assert rows["gpunet --preset cnn"][0] == "failed (exit 1)"
    goal = presets_script.goal_line(runs["gpunet --preset fast"], runs["pytorch recipe"], "fast")
    assert "20.0 s against 20.5 s (82.0 s / 4): met" in goal and "99.05%: met" in goal
    slow = [fake_run(presets_script, 21.0, 98.9)]
    goal = presets_script.goal_line(slow, runs["pytorch recipe"], "fast")
    assert "21.0 s against 20.5 s (82.0 s / 4): NOT met" in goal and "98.90%: NOT met" in goal
    assert "not measured" in presets_script.goal_line(runs["gpunet --preset cnn"], runs["pytorch recipe"], "cnn")


def test_the_children_run_without_the_openblas_settings(presets_script, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "262144")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = presets_script.child_environment(tmp_path)
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env
    assert env["PYTHONPATH"].split(":") == [str(presets_script.ROOT), "/elsewhere"]
    assert env["GPUNET_CACHE_DIR"] == str(tmp_path)


def test_the_recipe_mode_runs_both_in_fresh_processes(small_csv, presets_script):
    """bench_presets.py recipe end to end on 300 digits: the recipe and gpunet train --preset notes (full-batch
    steps, quick on so few digits) and --also default, each a process of its own, and the table of them."""
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, str(SCRIPTS / "bench_presets.py"), "recipe", "--data", str(small_csv),
                           "--val-size", "100", "--preset", "notes", "--also", "default", "--threads", "1"],
                          capture_output=True, text=True, timeout=900,
                          env={**presets_script.child_environment(None), "OPENBLAS_CORETYPE": "Haswell"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "children without OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE" in done.stdout
    assert "empty for each run (cold start)" in done.stdout
    table = "\n".join(line for line in done.stdout.splitlines() if line.startswith("|"))
    rows = table_rows(table)
    assert list(rows) == ["pytorch recipe", "gpunet --preset notes", "gpunet --preset default"]
    walls = {name: float(cells[0]) for name, cells in rows.items()}
    for name, cells in rows.items():
        assert float(cells[1]) > 0 and float(cells[2].split()[0]) >= 0 and re.fullmatch(r"\d+\.\d\d%", cells[5])
        assert float(cells[3]) >= 0 and re.fullmatch(r"\d+\.\d\dx", cells[4])
        ratio, reference = walls[name] / walls["pytorch recipe"], walls["pytorch recipe"]
        # the walls printed to 0.1 s, the ratio (of the unrounded walls) to 0.01
        assert float(cells[6].rstrip("x")) == pytest.approx(ratio, abs=0.005 + ratio * 0.05 * (1 / walls[name]
                                                                                                + 1 / reference))
    assert "(from the epochs printed)" in rows["gpunet --preset notes"][2]  # 500 epochs: every 20th printed
    assert re.search(r"^Goal: --preset notes <= 1/4 of the recipe's wall time: .* (met|NOT met)$",
                     done.stdout, re.MULTILINE)


# -- epochs: each preset against PyTorch's same layers ---------------------------------------------------------------
def cli_config(name, monkeypatch, capsys):
    """The TrainConfig gpunet train --preset NAME hands its training loop (caught there, nothing trained)."""
    from gpunet.frontends.cli import main
    from gpunet.training import loop

    class Caught(Exception):
        pass

    seen = []

    def train(backend, train_digits, val_digits, config, **_):
        seen.append(config)
        raise Caught

    monkeypatch.setattr(loop, "train", train)
    with pytest.raises(Caught):
        main(["train", "--preset", name, "--device", "cpu", "--out", "unused.npz"])
    capsys.readouterr()
    return seen[0]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_config_is_what_gpunet_train_runs(name, presets_script, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert presets_script.preset_config(name) == cli_config(name, monkeypatch, capsys)


def test_presets_of_one_network_and_optimizer_share_a_row(presets_script):
    groups = presets_script.epoch_groups(list(PRESETS))
    assert sorted(name for names, _ in groups for name in names) == sorted(PRESETS)
    for names, config in groups:
        for name in names:
            other = presets_script.preset_config(name, augment=False)
            assert not other.augment  # augmentation left out of both sides
            assert (other.hidden, other.arch, other.batch_size, other.optimizer, other.weight_decay > 0) == \
                (config.hidden, config.arch, config.batch_size, config.optimizer, config.weight_decay > 0)
        assert not config.augment
    keys = [(c.hidden, c.arch, c.batch_size, c.optimizer, c.weight_decay > 0) for _, c in groups]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("name", list(PRESETS))
def test_both_sides_train_the_presets_layers_and_optimizer(name, presets_script):
    """gpunet's side is the network gpunet train builds; PyTorch's has the same parameters, layer by layer, the
    same dropout and the optimizer's twin (decay on the weights alone), and one epoch changes every parameter."""
    torch = pytest.importorskip("torch")
    config = presets_script.preset_config(name, augment=False)
    digits = presets_script.bench.Digits(*(lambda d: (d.images[:256], d.labels[:256]))(load_sample()))
    ours = presets_script.gpunet_side(CpuBackend(), digits, config)
    theirs = presets_script.torch_side(torch, "cpu", digits, config)
    our_shapes = [tuple(s) for layer in presets_script.built_layers(config) for s in layer.param_shapes()]
    their_shapes = [tuple(p.shape) for p in theirs.model.parameters()]
    assert [math.prod(s) for s in their_shapes] == [math.prod(s) for s in our_shapes]
    assert [m.p for m in theirs.model if isinstance(m, torch.nn.Dropout)] == \
        [float(part[len("dropout"):]) for part in (config.arch or "").split(",") if part.startswith("dropout")]
    optimizer = theirs.optimizer
    assert type(optimizer).__name__ == {"adam": "AdamW", "gd": "SGD", "sgd": "SGD", "momentum": "SGD"}[config.optimizer]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [config.weight_decay, 0.0]
    assert all(p.dim() > 1 for p in optimizer.param_groups[0]["params"])
    assert optimizer.param_groups[0]["lr"] == config.lr
    before = [p.detach().clone() for p in theirs.model.parameters()]
    flat = [p.copy() for p in ours.network.host_params()]
    ours.run(config.batch_size)
    theirs.run(config.batch_size)
    assert all(not torch.equal(p, q) for p, q in zip(theirs.model.parameters(), before))
    assert all(not np.array_equal(p, q) for p, q in zip(ours.network.host_params(), flat))
    assert np.isfinite(ours.loss)


def test_the_epochs_table(presets_script):
    torch = pytest.importorskip("torch")
    digits = presets_script.bench.Digits(*(lambda d: (d.images[:300], d.labels[:300]))(load_sample()))
    groups = presets_script.epoch_groups(["default", "notes"])
    rows = presets_script.measure_presets("cpu", CpuBackend(), digits, groups, 1, torch)
    assert [row[1] for row in rows] == ["default", "notes"]
    assert rows[1][3] == "gd, full batch (a step)" and rows[0][3].endswith(f"batch {PRESETS['default']['batch_size']}")
    for row in rows:
        ours, theirs = (float(cell.split()[0]) for cell in row[4:6])
        assert ours >= 0 and theirs >= 0 and re.fullmatch(r"\d+\.\d\dx", row[6]), row


def test_the_epochs_mode_refuses_an_unknown_preset(capsys, presets_script):
    assert presets_script.main(["epochs", "--presets", "fast,quick"]) == 2
    assert capsys.readouterr().err == \
        f"error: --presets fast,quick: unknown quick (the presets: {', '.join(PRESETS)})\n"


# -- the cost model's presets ----------------------------------------------------------------------------------------
def test_the_predictions_script_prints_a_row_per_preset():
    done = subprocess.run([sys.executable, str(SCRIPTS / "predict_step_times.py"), "--presets"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| preset", "| ---"))]
    assert [row[0] for row in rows] == list(PRESETS)
    for row in rows:
        preset = PRESETS[row[0]]
        # issue 15's stand-in counts (tests/test_launch_budget.py): 16 for the notes' network, 36 for the CNN
        if preset.get("hidden") == "16,16" and "arch" not in preset:
            assert row[3] == "16"
        if preset.get("arch") == "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5":
            assert row[3] == "36"
        steps = 1 if preset["batch_size"] == 0 else math.ceil(41_000 / preset["batch_size"])
        for cell in row[4:]:
            step_us, epoch, run = cell.split(", ")  # "19,657 us, 19.7 ms, 9.83 s"
            step = float(step_us.replace(",", "").split()[0]) * 1e-6
            rel = 0.5e-6 / step + 0.005  # the step printed to the microsecond, the others to 3 digits
            assert seconds(epoch) == pytest.approx(step * steps, rel=rel)
            assert seconds(run) == pytest.approx(step * steps * preset["epochs"], rel=rel)


def seconds(text):
    number, unit = text.split()
    return float(number.replace(",", "")) * {"ms": 1e-3, "s": 1.0, "min": 60.0}[unit]


@pytest.mark.kernels
def test_the_epochs_rows_on_the_cuda_stand_in(presets_script, stand_in_cuda):
    """The GPU rows' code (gpunet's epochs on the CUDA backend) on the stand-in, its kernels walked on the CPU."""
    digits = presets_script.bench.Digits(*(lambda d: (d.images[:200], d.labels[:200]))(load_sample()))
    groups = presets_script.epoch_groups(["default", "notes"])
    rows = presets_script.measure_presets("cuda", stand_in_cuda, digits, groups, 1)
    assert [row[:2] for row in rows] == [("cuda", "default"), ("cuda", "notes")]
    for row in rows:
        assert float(row[4].split()[0]) >= 0 and row[5:] == ("-", "-"), row  # no PyTorch side asked for


# -- frontier: the cheapest setting at 99.0% ---------------------------------------------------------------------
SMALL_ARCH = "conv8k5,pool2,conv16k5,pool2,dense64"


@pytest.mark.parametrize("text, expected", [
    ("epochs=3", [{"epochs": 3}]),
    ("epochs=2, warmup=0.1", [{"epochs": 2, "warmup": 0.1}]),
    (f"arch={SMALL_ARCH},epochs=4", [{"arch": SMALL_ARCH, "epochs": 4}]),
    (f"epochs=4,arch={SMALL_ARCH}", [{"epochs": 4, "arch": SMALL_ARCH}]),
    ("batch-size=64,lr=0.005,augment=true,optimizer=momentum", [{"batch_size": 64, "lr": 0.005, "augment": True,
                                                                 "optimizer": "momentum"}]),
    ('{"epochs": 3, "warmup": 0}', [{"epochs": 3, "warmup": 0}]),
    ('[{"epochs": 2}, {"arch": "dense64", "batch-size": 256}]',
     [{"epochs": 2}, {"arch": "dense64", "batch_size": 256}]),
])
def test_frontier_reads_its_settings(presets_script, text, expected):
    settings = presets_script.parse_settings(text)
    assert settings == expected
    assert [[type(v) for v in s.values()] for s in settings] == [[type(v) for v in s.values()] for s in expected]


@pytest.mark.parametrize("text, says", [
    ("seed=3", "seed: not a setting to change"),
    ("epochs=3,val_size=100", "val_size: not a setting to change"),
    ("pool2,epochs=3", "'pool2' is no key=value"),
    ("epochs=3,epochs=4", "epochs given twice"),
    ('{"epochs": 3', "not JSON"),
    ("[3, 4]", "not an object or a list of objects"),
])
def test_frontier_refuses_a_bad_setting_in_one_line(presets_script, capsys, text, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        presets_script.parse_settings(text)
    assert presets_script.main(["frontier", "--settings", text, "--data", "nowhere.csv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --settings {text}: ") and says in err, err


@pytest.mark.parametrize("option, value, says", [
    ("--settings", "epochs=0", "error: --settings epochs=0: epochs 0: must be a whole number"),
    ("--settings", "arch=conv8k5,blob3", "error: --settings arch=conv8k5,blob3: layer 2 'blob3' is not a layer"),
    ("--seeds", "0,x", "error: --seeds 0,x: give whole numbers >= 0"),
    ("--data", "nowhere.csv", "error: --data nowhere.csv: no such file"),
])
def test_frontier_refuses_bad_options_in_one_line(presets_script, capsys, option, value, says):
    args = ["frontier", option, value] + (["--data", "nowhere.csv"] if option != "--data" else [])
    assert presets_script.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(says), err


def cli_options(changes):
    """``changes`` as gpunet train's options: {"batch_size": 64} -> ["--batch-size", "64"]."""
    options = []
    for key, value in changes.items():
        option = "--" + key.replace("_", "-")
        options += ([option if value else "--no-" + option[2:]] if isinstance(value, bool) else [option, str(value)])
    return options


@pytest.mark.parametrize("changes", [{}, {"epochs": 3, "warmup": 0.1}, {"arch": SMALL_ARCH, "epochs": 5},
                                     {"batch_size": 64, "lr": 0.005, "epochs": 2}, {"hidden": "32,32"},
                                     {"augment": True, "weight_decay": 0.0}])
def test_a_frontier_setting_is_the_preset_changed_where_asked(changes, presets_script, monkeypatch, capsys, tmp_path):
    """A setting's config is what ``gpunet train --preset fast`` runs with those options, --seed 1 and the split's
    --split-seed 0 --val-size 5000 given; and it differs from the preset's only in those."""
    monkeypatch.chdir(tmp_path)
    config = presets_script.setting_config(changes, 1, 5000)
    from gpunet.frontends.cli import main
    from gpunet.training import loop

    seen = []

    class Caught(Exception):
        pass

    def train(backend, train_digits, val_digits, config, **_):
        seen.append(config)
        raise Caught

    monkeypatch.setattr(loop, "train", train)
    with pytest.raises(Caught):
        main(["train", "--preset", "fast", *cli_options(changes), "--seed", "1", "--split-seed", "0",
              "--val-size", "5000", "--device", "cpu", "--out", "unused.npz"])
    capsys.readouterr()
    assert config == seen[0]
    preset = presets_script.preset_config("fast").as_dict()
    differ = {key for key, value in config.as_dict().items() if preset[key] != value}
    asked = {"arch" if key == "hidden" else key for key in changes} | {"seed", "val_size"} | \
        ({"hidden"} if "hidden" in changes else set())
    assert differ == asked


def fake_result(presets_script, side, label, accuracy, seconds, failed=()):
    result = presets_script.Result(side, label, 3)
    result.accuracy = dict(enumerate(accuracy))
    result.seconds = dict(enumerate(seconds))
    result.failed = {seed: "TrainingDiverged: loss became nan" for seed in failed}
    return result


def test_the_cheapest_setting_at_99_on_every_seed(presets_script):
    fake = lambda *a, **k: fake_result(presets_script, *a, **k)  # noqa: E731
    results = [fake("gpunet", "fast", [99.00, 99.10], [18.0, 18.4]),
               fake("gpunet", "fast, epochs short", [99.40, 98.98], [9.0, 9.0]),  # one seed short of 99.0%
               fake("gpunet", "small", [99.02, 99.04], [12.0, 13.0]),
               fake("gpunet", "failed", [99.50], [1.0], failed=[1]),  # seed 1 failed: a miss
               fake("pytorch", "fast", [98.9, 98.8], [4.0, 4.0]),
               fake("pytorch + BN", "fast", [99.2, 99.3], [5.0, 7.0])]
    assert [r.passed for r in results] == [True, False, True, False, False, True]
    assert presets_script.cheapest_passing(results, "gpunet") is results[2]  # 12.5 s, under fast's 18.2 s
    assert presets_script.cheapest_passing(results, "pytorch") is None
    assert presets_script.cheapest_passing(results, "pytorch + BN") is results[5]
    assert presets_script.cheapest_passing([], "gpunet") is None
    lines = presets_script.frontier_lines(results, 6.0)
    assert lines == ["gpunet: cheapest at 99.0% on every seed: small, 3 epochs, 12.5 s of training against the "
                     "budget's 6.0 s: 2.1x it",
                     "pytorch: no setting reached 99.0% on every seed",
                     "pytorch + BN: cheapest at 99.0% on every seed: fast, 3 epochs, 6.0 s of training against the "
                     "budget's 6.0 s: within it"]
    rows = table_rows(presets_script.frontier_table(results, [0, 1]))  # keyed by the side: the last row of each
    assert rows["pytorch + BN"] == ["fast", "3", "99.20%", "99.30%", "99.25%", "6.0", "yes"]
    assert rows["gpunet"][3:] == ["failed (TrainingDiverged: loss became nan)", "99.50%", "1.0", "no"]


def bn_problems(nn, modules) -> list[str]:
    """What keeps ``modules`` from being the plain twin with BN after each hidden convolution and dense layer:
    every Conv2d/Linear that a ReLU follows in the plain twin must here be the same layer without its bias,
    then BatchNorm of its outputs, then the ReLU; the output layer as it was, bias and all, no BN after it."""
    problems = []
    kinds = [type(m).__name__ for m in modules]
    for i, module in enumerate(modules):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            outputs = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            after = kinds[i + 1:i + 3]
            norm = "BatchNorm2d" if isinstance(module, nn.Conv2d) else "BatchNorm1d"
            if after and after[0] == "ReLU":
                problems.append(f"{i}: {kinds[i]} straight into a ReLU")
            elif after == [norm, "ReLU"]:
                if module.bias is not None:
                    problems.append(f"{i}: {kinds[i]} keeps its bias before BN")
                if modules[i + 1].num_features != outputs:
                    problems.append(f"{i + 1}: BN of {modules[i + 1].num_features}, not {outputs}")
            elif i != len(modules) - 1 or module.bias is None:
                problems.append(f"{i}: {kinds[i]} followed by {after}")
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(modules[i - 1],
                                                                                      (nn.Conv2d, nn.Linear)):
            problems.append(f"{i}: BN after {kinds[i - 1]}")
    return problems


@pytest.mark.parametrize("arch", ["conv16k5,pool2,conv32k5,pool2,dense128", SMALL_ARCH, "dense64,dense32"])
def test_the_batch_norm_twin(arch, presets_script):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    layers = presets_script.built_layers(presets_script.TrainConfig(arch=arch))
    plain = presets_script.bench.torch_modules(nn, layers)
    twin = presets_script.batch_norm_twin(nn, layers)
    assert bn_problems(nn, twin) == []
    # the same weights, layer by layer; BN's scale and shift where the biases were, but for the output layer's
    weights = lambda ms: [tuple(m.weight.shape) for m in ms if isinstance(m, (nn.Conv2d, nn.Linear))]  # noqa: E731
    assert weights(twin) == weights(plain)
    hidden = [m.weight.shape[0] for m in plain if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    assert [m.num_features for m in twin if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))] == hidden
    assert twin[-1].bias is not None and isinstance(twin[-1], nn.Linear)
    # the broken ones the check must see: the plain twin, a bias left on, BN after the ReLU instead of before
    assert bn_problems(nn, plain)
    with_bias = [nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size) if isinstance(m, nn.Conv2d) else
                 nn.Linear(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m for m in twin]
    assert any("keeps its bias" in p for p in bn_problems(nn, with_bias))
    swapped = list(twin)
    at = next(i for i, m in enumerate(swapped) if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)))
    swapped[at], swapped[at + 1] = swapped[at + 1], swapped[at]
    assert bn_problems(nn, swapped)
    model = nn.Sequential(*twin)  # and it runs: a batch of 4 in training mode, then in evaluation mode
    x = torch.rand(4, *layers[0].input_shape)
    assert model(x).shape == (4, 10) and model.eval()(x).shape == (4, 10)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_pytorch_runs_at_gpunets_rates_on_the_held_out_digits(presets_script, monkeypatch, batch_norm):
    """torch_run: every step at the schedule's rate (checked against the formula), AdamW with decay on the
    weights alone, each epoch scoring the given held-out digits: the accuracy it returns is theirs."""
    torch = pytest.importorskip("torch")
    sample = load_sample()
    train_digits = presets_script.bench.Digits(sample.images[:300], sample.labels[:300])
    val_digits = presets_script.bench.Digits(sample.images[300:350], sample.labels[300:350])
    config = presets_script.setting_config({"epochs": 2, "warmup": 0.5, "arch": "conv4k5,pool2,dense16"}, 0, 50)
    seen_rates, optimizers, models = [], [], []
    make = presets_script.bench.torch_optimizer

    def torch_optimizer(torch_, model, name, lr, weight_decay):
        optimizer = make(torch_, model, name, lr, weight_decay)
        step = optimizer.step
        optimizer.step = lambda: (seen_rates.append([g["lr"] for g in optimizer.param_groups]), step())[1]
        optimizers.append(optimizer)
        models.append(model)
        return optimizer

    monkeypatch.setattr(presets_script.bench, "torch_optimizer", torch_optimizer)
    accuracy, seconds = presets_script.torch_run(torch, train_digits, val_digits, config, batch_norm, None)
    steps = 3  # 300 digits in batches of 128
    # the schedule's formula in float64 (tests/test_schedule.py), within its derived bound; warm-up: 0.5 * 3 = 1.5
    # steps, a half up: 2
    expected = reference_rates(0.01, 2, steps, 0.5)
    assert_within(np.array([rates[0] for rates in seen_rates]), expected, schedule_bound(0.01, expected),
                  "PyTorch's rates")
    assert all(len(set(rates)) == 1 for rates in seen_rates)
    assert type(optimizers[0]).__name__ == "AdamW"
    assert [g["weight_decay"] for g in optimizers[0].param_groups] == [0.1, 0.0]
    assert all(p.dim() > 1 for p in optimizers[0].param_groups[0]["params"])
    model = models[0].eval()
    with torch.no_grad():
        x = torch.from_numpy(val_digits.images.reshape(-1, 1, 28, 28)).float() / 255
        predicted = model(x).argmax(1).numpy()
    assert accuracy == pytest.approx(100 * np.mean(predicted == val_digits.labels), abs=1e-9)
    assert seconds > 0


def test_frontier_trains_with_gpunets_own_train_on_the_split(presets_script, monkeypatch):
    """Each setting, for each seed, through loop.train (what gpunet train calls) with its config, on the digits
    split_validation gives for split seed 0; the accuracy and seconds are the history's last accuracy and its
    seconds added up."""
    from gpunet.files.data import split_validation
    from gpunet.training import loop

    digits = load_sample()
    calls = []

    def train(backend, train_digits, val_digits, config, **_):
        calls.append((train_digits, val_digits, config))
        history = [loop.EpochMetrics(e, 0.01, 1.0, 0.5, 1.0, 0.9 + e / 1000 + config.seed / 100, 1.5 * e)
                   for e in range(1, config.epochs + 1)]
        return loop.TrainResult(None, history, config.epochs)

    monkeypatch.setattr(loop, "train", train)
    settings = [{"epochs": 2}, {"epochs": 3, "warmup": 0.1}]
    results = presets_script.frontier_results(settings, [0, 1], digits, 500, report=lambda line: None)
    expected_train, expected_val = split_validation(digits, 500, 0)
    assert len(calls) == 1 + 4  # the untimed first run, then each setting for each seed
    for train_digits, val_digits, _ in calls[1:]:
        assert np.array_equal(train_digits.images, expected_train.images)
        assert np.array_equal(val_digits.labels, expected_val.labels)
    assert [c for _, _, c in calls[1:]] == [presets_script.setting_config(s, seed, 500)
                                            for s in settings for seed in (0, 1)]
    assert [(r.side, r.label, r.epochs) for r in results] == [("gpunet", "fast", 2), ("gpunet", "fast, warmup 0.1", 3)]
    assert results[0].accuracy == pytest.approx({0: 90.2, 1: 91.2}) and results[0].seconds == {0: 4.5, 1: 4.5}
    assert results[1].accuracy == pytest.approx({0: 90.3, 1: 91.3}) and results[1].seconds == {0: 9.0, 1: 9.0}


def test_the_frontier_mode_end_to_end(small_csv, presets_script, capsys):
    """bench_presets.py frontier on 300 digits, one epoch, both sides: the table's rows and the lines under it."""
    pytest.importorskip("torch")
    assert presets_script.main(["frontier", "--data", str(small_csv), "--val-size", "100", "--seeds", "0",
                                "--settings", "epochs=1,batch_size=64", "--torch", "--threads", "1",
                                "--budget", "5"]) == 0
    out = capsys.readouterr().out
    table = "\n".join(line for line in out.splitlines() if line.startswith("|"))
    lines = table.splitlines()[2:]
    assert [line.split("|")[1].strip() for line in lines] == ["gpunet", "pytorch", "pytorch + BN"]
    for line in lines:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1:3] == ["fast, batch size 64", "1"] and re.fullmatch(r"\d+\.\d\d%", cells[3])
        assert cells[4] == cells[3] and float(cells[5]) >= 0 and cells[6] == "no"  # nothing reaches 99% so
    assert "Budget: 5.0 s of training (--budget)" in out
    assert sum(line.startswith(("gpunet: ", "pytorch: ", "pytorch + BN: ")) and "every seed" in line
               for line in out.splitlines()) == 3
