"""`gpunet train --preset NAME`: each preset is the options it stands for, and an option given wins over it."""

import click
import numpy as np
import pytest

from gpunet.files.checkpoint import load_model
from gpunet.frontends.cli import cli
from gpunet.training.loop import TrainConfig
from gpunet.training.presets import PRESETS, command_line
from tests.conftest import run, sample_npz

SOURCE = click.core.ParameterSource


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """600 digits of the bundled sample: small enough for a preset's whole schedule in a test."""
    return sample_npz(tmp_path_factory.mktemp("presets"), 600)


def parsed(*args):
    """The train command's options after click has read ``args`` (nothing runs): (values, context)."""
    ctx = cli.commands["train"].make_context("train", list(args))
    return ctx.params, ctx


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_sets_its_options_and_each_is_a_valid_training_setting(name):
    values, ctx = parsed("--preset", name)
    for option, value in PRESETS[name].items():
        assert ctx.get_parameter_source(option) is SOURCE.DEFAULT_MAP, option
        param = next(p for p in ctx.command.params if p.name == option)
        assert values[option] == param.process_value(ctx, value)  # the option's own conversion and checks
    network = {"hidden": values["hidden"], "arch": None if values["arch"] is None else ",".join(values["arch"])}
    if network["arch"] is not None:
        network["hidden"] = ()
    TrainConfig.for_optimizer(values["optimizer"], epochs=values["epochs"], batch_size=values["batch_size"],
                              lr=values["lr"], schedule=values["schedule"], warmup=values["warmup"],
                              weight_decay=values["weight_decay"], init=values["init"],
                              **network)  # a SettingError would fail the test


def test_an_option_given_overrides_the_presets_value_and_only_that_one():
    values, ctx = parsed("--preset", "cnn", "--epochs", "2", "--lr", "0.005")
    assert ctx.get_parameter_source("epochs") is SOURCE.COMMANDLINE and values["epochs"] == 2
    assert ctx.get_parameter_source("lr") is SOURCE.COMMANDLINE and values["lr"] == 0.005
    assert values["weight_decay"] == PRESETS["cnn"]["weight_decay"] and values["batch_size"] == PRESETS["cnn"]["batch_size"]
    assert ",".join(values["arch"]) == PRESETS["cnn"]["arch"]
    values, _ = parsed("--epochs", "2")  # no preset: the defaults as before
    assert values["lr"] is None and values["arch"] is None and values["hidden"] == (16, 16)


def model_settings(path):
    params, meta = load_model(path)
    return params, {k: v for k, v in meta["training"].items()}


def test_the_notes_preset_is_the_readmes_notes_command(capsys, tmp_path, small_data):
    preset, explicit = tmp_path / "preset.npz", tmp_path / "explicit.npz"
    common = ["train", "--device", "cpu", "--data", str(small_data), "--val-size", "100"]
    code, out, err = run(capsys, *common, "--preset", "notes", "--out", str(preset))
    assert code == 0, err
    assert "Preset notes\n" in out and "784-16-16-10, gd lr 0.1 (constant), full batch, 500 epochs" in out
    # README, "Other architectures": the notes' own recipe as options.
    code, _, err = run(capsys, *common, "--optimizer", "gd", "--batch-size", "0", "--init", "seed", "--lr", "0.1",
                       "--epochs", "500", "--out", str(explicit))
    assert code == 0, err
    (params_a, settings_a), (params_b, settings_b) = model_settings(preset), model_settings(explicit)
    assert settings_a == settings_b
    for a, b in zip(params_a, params_b, strict=True):  # the same computation twice: the same bits
        np.testing.assert_array_equal(a, b)


def test_the_default_preset_is_no_preset(capsys, tmp_path, small_data):
    common = ["train", "--device", "cpu", "--data", str(small_data), "--val-size", "100", "--epochs", "2"]
    code, out, err = run(capsys, *common, "--preset", "default", "--out", str(tmp_path / "a.npz"))
    assert code == 0, err
    assert "Preset default, with --epochs as given" in out
    code, _, err = run(capsys, *common, "--out", str(tmp_path / "b.npz"))
    assert code == 0, err
    (params_a, settings_a), (params_b, settings_b) = model_settings(tmp_path / "a.npz"), model_settings(tmp_path / "b.npz")
    assert settings_a == settings_b
    for a, b in zip(params_a, params_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_preset_run_records_its_values_with_the_options_given(capsys, tmp_path, small_data):
    model = tmp_path / "cnn.npz"
    code, out, err = run(capsys, "train", "--device", "cpu", "--data", str(small_data), "--val-size", "100",
                         "--preset", "cnn", "--epochs", "1", "--batch-size", "100", "--out", str(model))
    assert code in (0, 3), err  # one epoch on 500 digits need not learn; either way the model records its settings
    _, meta = load_model(model)
    training = meta["training"]
    assert training["epochs"] == 1 and training["batch_size"] == 100
    for option in ("arch", "optimizer", "lr", "weight_decay", "schedule", "init"):
        assert training[option] == PRESETS["cnn"][option], option


def test_a_network_given_replaces_the_presets_network(capsys, tmp_path, small_data):
    values, _ = parsed("--preset", "cnn", "--hidden", "32")
    assert values["hidden"] == (32,)  # the preset's arch is still in the parsed values; train drops it
    model = tmp_path / "m.npz"
    code, out, err = run(capsys, "train", "--device", "cpu", "--data", str(small_data), "--val-size", "100",
                         "--preset", "cnn", "--hidden", "32", "--epochs", "2", "--out", str(model))
    assert code == 0, err
    assert "Network 784-32-10, adam lr 0.002" in out and "with --hidden, --epochs as given" in out
    _, meta = load_model(model)
    assert meta["layer_sizes"] == [784, 32, 10] and meta["training"]["arch"] is None
    other = tmp_path / "other.npz"  # a run that learned nothing (exit 3) writes it too: nothing is there yet
    code, out, err = run(capsys, "train", "--device", "cpu", "--data", str(small_data), "--val-size", "100",
                         "--preset", "notes", "--arch", "dense8,dropout0.1", "--epochs", "2", "--out", str(other))
    assert code in (0, 3), err
    _, meta = load_model(other)
    assert meta["architecture"] == "dense8,dropout0.1" and meta["training"]["optimizer"] == "gd"


@pytest.mark.parametrize("preset", [[], ["--preset", "cnn"], ["--preset", "notes"]])
def test_hidden_and_arch_both_given_are_still_refused(capsys, tmp_path, preset):
    code, _, err = run(capsys, "train", *preset, "--hidden", "8", "--arch", "dense8", "--out", str(tmp_path / "m.npz"))
    assert code == 2 and "give --hidden or --arch, not both" in err and err.count("\n") == 1
    assert not (tmp_path / "m.npz").exists()


def test_an_unknown_preset_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--preset", "fastest", "--out", str(tmp_path / "m.npz"))
    assert code == 2 and "--preset" in err and "fastest" in err and err.count("\n") == 1


def test_help_lists_each_presets_settings(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for name in PRESETS:
        assert f"  {name}: {command_line(name)}" in out
    assert "--hidden 16,16 --optimizer gd --init seed --lr 0.1 --epochs 500 --batch-size 0" in command_line("notes")


def test_a_preset_that_augments_can_be_told_not_to():
    """cnn turns augmentation on; --no-augment given wins over it, as any option given does."""
    assert PRESETS["cnn"]["augment"] is True and "--augment" in command_line("cnn").split()
    values, ctx = parsed("--preset", "cnn")
    assert values["augment"] is True and ctx.get_parameter_source("augment") is SOURCE.DEFAULT_MAP
    values, ctx = parsed("--preset", "cnn", "--no-augment")
    assert values["augment"] is False and ctx.get_parameter_source("augment") is SOURCE.COMMANDLINE
    values, _ = parsed("--augment")
    assert values["augment"] is True


def test_a_preset_may_set_the_warm_up_and_an_option_given_overrides_it(monkeypatch):
    """No preset sets --warmup yet (the lead tunes them): one that does gives its value where --warmup is not given,
    lists it among its options, and --warmup given wins."""
    monkeypatch.setitem(PRESETS["fast"], "warmup", 0.25)
    assert "--schedule cosine --weight-decay 0.1 --warmup 0.25" in command_line("fast")
    values, ctx = parsed("--preset", "fast")
    assert values["warmup"] == 0.25 and ctx.get_parameter_source("warmup") is SOURCE.DEFAULT_MAP
    values, ctx = parsed("--preset", "fast", "--warmup", "0")
    assert values["warmup"] == 0 and ctx.get_parameter_source("warmup") is SOURCE.COMMANDLINE
    values, ctx = parsed("--preset", "default")
    assert values["warmup"] == 1.0 and ctx.get_parameter_source("warmup") is SOURCE.DEFAULT


def test_the_readme_lists_each_preset_as_the_options_it_stands_for():
    """README's table of presets is presets.py's: a preset changed in one place and not the other fails here."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in PRESETS:
        assert f"| `{name}` | `{command_line(name)}` |" in readme, name
