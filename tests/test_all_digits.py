"""Final training on every labelled digit: `gpunet train --val-size 0` runs its fixed schedule and says what it lacks."""

import numpy as np

from gpunet.files.checkpoint import load_model
from gpunet.files.data import fingerprint, load_sample
from tests.conftest import run


def test_val_size_0_trains_on_every_digit_for_the_whole_schedule_and_says_so(capsys, tmp_path):
    model = tmp_path / "final.npz"
    code, out, err = run(capsys, "train", "--device", "cpu", "--hidden", "32", "--epochs", "3", "--val-size", "0",
                         "--out", str(model))
    assert code == 0, err
    sample = load_sample()
    assert f"{len(sample):,} training, 0 validation" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    assert "val_acc" not in out and "Validation accuracy" not in out
    assert "No validation accuracy: trained on every digit (--val-size 0)" in out
    _, meta = load_model(model)
    # The model records that it had no validation set: none held out, nothing scored on one.
    assert meta["training"]["val_size"] == 0
    assert meta["training"]["data_sha256"] == fingerprint(sample.images, sample.labels)
    assert all(m["val_loss"] is None and m["val_accuracy"] is None for m in meta["history"])
    assert meta["final_metrics"]["val_accuracy"] is None
    assert meta["best_epoch"] == 3 and meta["stop_reason"] == "completed"  # the fixed schedule's last weights

    # evaluate on the training file scores the digits it learned from as such, and asks for other digits.
    code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(model), "--data",
                         str(sample_path()))
    assert code == 0, err
    assert f"Training digits (it learned from these; no estimate for new digits): {len(sample):,} digits" in out
    assert "No validation digits were held out (--val-size 0)" in out


def sample_path():
    from pathlib import Path

    import gpunet

    return Path(gpunet.__file__).parent / "sample" / "digits.npz"


def test_val_size_0_with_a_layer_stack_keeps_its_last_weights(capsys, tmp_path):
    model = tmp_path / "final.npz"
    code, out, err = run(capsys, "train", "--device", "cpu", "--arch", "dense32,dropout0.2", "--epochs", "2",
                         "--val-size", "0", "--out", str(model))
    assert code == 0, err
    params, meta = load_model(model)
    assert meta["training"]["val_size"] == 0 and meta["best_epoch"] == 2
    assert all(np.isfinite(p).all() for p in params)
