"""Issue 16, point 5: a run stopped by Ctrl-C (or SIGTERM) and resumed from its checkpoint gives the uninterrupted
run's weights, bit for bit: the same computation, on the same machine with the same settings. A checkpoint that
cannot be resumed from (damaged, foreign, of other data) is one line.

Every stop here is asked at a known point (``train``'s ``stop`` callable, or a signal the process sends itself
from a patched report), so no test depends on how fast a signal arrives."""

import json
import signal
import zipfile

import numpy as np
import pytest

import gpunet.frontends.cli as cli
from gpunet.backends.devices import get_backend
from gpunet.files.checkpoint import load_model
from gpunet.files.outputs import CHECKPOINT, MODEL, kind_of, refusal
from gpunet.files.resume_file import CheckpointError, load_run_state, save_run_state
from gpunet.nn.optimizers import OPTIMIZERS, make_optimizer
from gpunet.training.loop import TrainingInterrupted, train
from gpunet.training.run_state import ResumeMismatch
from tests.conftest import run, sample_npz
from tests.test_training import separable_digits, small_config

CPU = get_backend("cpu")[0]

# The runs compared: the notes' network with Adam (the default), a layer stack with dropout and augmentation (its
# masks follow the step count, its transforms the epoch), momentum, SGD with early stopping's bookkeeping, and the
# notes' full-batch gradient descent (one step an epoch), and a warm-up that goes on past the stop (epoch 3's middle).
CASES = {
    "default-adam": small_config(epochs=5),
    "adam-warm-up-past-the-stop": small_config(epochs=5, warmup=2.5),
    "stack-dropout-augment": small_config(hidden=(), arch="conv4k5,pool2,dense16,dropout0.3", epochs=4,
                                          augment=True),
    "momentum": small_config(optimizer="momentum", lr=0.05, epochs=5),
    "sgd-patience": small_config(optimizer="sgd", lr=0.1, epochs=5, patience=3),
    "notes-full-batch-gd": small_config(optimizer="gd", batch_size=0, lr=0.5, epochs=6, init="seed",
                                        schedule="constant", weight_decay=0.0),
}


def digits():
    return separable_digits(300), separable_digits(60, seed=1)


def stop_in_epoch(epoch: int, asks: int):
    """A ``stop`` for ``train`` that says true at its ``asks``-th question once epoch ``epoch`` has begun (1: at
    the epoch's start, before any step; 2: after its first progress report, some of its steps done), and the
    ``on_epoch`` that counts the epochs done."""
    done, asked = [], []

    def stop():
        if len(done) >= epoch - 1:
            asked.append(True)
        return len(asked) >= asks

    return stop, done.append


def interrupted(backend, config, epoch: int, asks: int):
    """The RunState of a run of ``config`` stopped in ``epoch`` (TrainingInterrupted's)."""
    stop, on_epoch = stop_in_epoch(epoch, asks)
    with pytest.raises(TrainingInterrupted) as caught:
        train(backend, *digits(), config, stop=stop, on_epoch=on_epoch)
    return caught.value.run_state


def weights(result):
    return result.network.host_params()


def assert_same_bits(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("asks", [1, 2], ids=["between-epochs", "inside-an-epoch"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_run_gives_the_uninterrupted_runs_weights(tmp_path, case, asks):
    config = CASES[case]
    whole = train(CPU, *digits(), config)
    state = interrupted(CPU, config, epoch=3, asks=asks)
    assert state.epochs_done == 2  # the epoch it stopped in is done again
    save_run_state(tmp_path / "run.checkpoint.npz", state)  # through the file, as the command line goes
    resumed = train(CPU, *digits(), config, resume_from=load_run_state(tmp_path / "run.checkpoint.npz"))
    assert_same_bits(weights(resumed), weights(whole))
    assert [vars(m) | {"seconds": 0} for m in resumed.history] == [vars(m) | {"seconds": 0} for m in whole.history]
    assert (resumed.best_epoch, resumed.stop_reason) == (whole.best_epoch, whole.stop_reason)


def test_a_run_resumed_twice_gives_the_uninterrupted_runs_weights_on_every_backend(backend):
    config = small_config(epochs=5)
    whole = train(backend, *digits(), config)
    first = interrupted(backend, config, epoch=2, asks=2)
    stop, on_epoch = stop_in_epoch(epoch=3, asks=1)  # after two epochs of its own (2, 3): at epoch 4's start
    with pytest.raises(TrainingInterrupted) as caught:
        train(backend, *digits(), config, resume_from=first, stop=stop, on_epoch=on_epoch)
    second = caught.value.run_state
    assert (first.epochs_done, second.epochs_done) == (1, 3)
    assert_same_bits(weights(train(backend, *digits(), config, resume_from=second)), weights(whole))


@pytest.mark.parametrize("forget", ["shuffle", "optimizer"])
def test_the_comparison_sees_a_resume_that_forgets_the_shuffle_or_the_optimizer(forget):
    """What the tests above guard against: a resumed run that starts the shuffle over, or the optimizer's moments
    and step count from zero, ends with other weights."""
    config = CASES["default-adam"]
    whole = train(CPU, *digits(), config)
    state = interrupted(CPU, config, epoch=3, asks=1)
    if forget == "shuffle":
        state.rng = np.random.default_rng(config.seed + 1).bit_generator.state
    else:
        state.optimizer = {"mean": [np.zeros_like(a) for a in state.optimizer["mean"]],
                           "square": [np.zeros_like(a) for a in state.optimizer["square"]], "t": 0}
    resumed = train(CPU, *digits(), config, resume_from=state)
    assert not all(np.array_equal(a, b) for a, b in zip(weights(resumed), weights(whole)))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_an_optimizers_state_put_back_gives_its_next_steps(backend, name):
    """state() then load_state() into a fresh optimizer: the next steps are the first one's, bit for bit."""
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 1)).astype(np.float32)]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in start] for _ in range(6)]

    def optimizer_on(params):
        return make_optimizer(name, [backend.asarray(p.copy()) for p in params], 0.01, 0.1, backend=backend)

    def steps(optimizer, some):
        for g in some:
            optimizer.step([backend.asarray(x.copy()) for x in g])

    first = optimizer_on(start)
    steps(first, grads[:3])
    state = first.state()
    assert all(isinstance(a, np.ndarray) for value in state.values() if isinstance(value, list) for a in value)
    after_three = [backend.to_numpy(p) for p in first.params]
    second, fresh = optimizer_on(after_three), optimizer_on(after_three)
    second.load_state(state)
    for optimizer in (first, second, fresh):
        steps(optimizer, grads[3:])
    assert_same_bits([backend.to_numpy(p) for p in second.params], [backend.to_numpy(p) for p in first.params])
    if name in ("momentum", "adam"):  # without the state put back the next steps are others: the check can fail
        assert not np.array_equal(backend.to_numpy(fresh.params[0]), backend.to_numpy(first.params[0]))


def test_an_optimizers_state_is_refused_by_another_optimizer():
    adam = make_optimizer("adam", [np.zeros((2, 2), np.float32), np.zeros((2, 1), np.float32)], 0.01)
    momentum = make_optimizer("momentum", [np.zeros((2, 2), np.float32), np.zeros((2, 1), np.float32)], 0.01)
    with pytest.raises(ValueError, match="Momentum optimizer's state holds"):
        momentum.load_state(adam.state())
    smaller = make_optimizer("adam", [np.zeros((1, 2), np.float32), np.zeros((1, 1), np.float32)], 0.01)
    with pytest.raises(ValueError, match="shapes"):
        smaller.load_state(adam.state())


def test_a_run_state_of_other_digits_or_settings_is_refused_in_one_line():
    config = CASES["default-adam"]
    state = interrupted(CPU, config, epoch=2, asks=1)
    train_digits, val_digits = digits()
    other = separable_digits(300, seed=5)
    with pytest.raises(ResumeMismatch, match="the run trained on 300 training and 60 validation digits"):
        train(CPU, other, val_digits, config, resume_from=state)
    with pytest.raises(ResumeMismatch, match="lr=0.01, not 0.02"):
        train(CPU, train_digits, val_digits, small_config(epochs=5, lr=0.02), resume_from=state)


# -- the file --------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "run.checkpoint.npz"
    save_run_state(path, interrupted(CPU, CASES["sgd-patience"], epoch=3, asks=1))
    return path


def rewritten(path, change_json=None, change_arrays=None):
    """The checkpoint at ``path`` written again with its JSON and arrays changed."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {key: f[key] for key in f.files}
    header = json.loads(str(arrays["run_state"]))
    if change_json:
        change_json(header)
    arrays["run_state"] = np.array(json.dumps(header))
    if change_arrays:
        change_arrays(arrays)
    np.savez(path, **arrays)
    return path


def test_a_checkpoint_is_its_own_kind_of_file_not_a_model(checkpoint):
    assert kind_of(checkpoint) == CHECKPOINT
    assert refusal(checkpoint, MODEL) == "holds a gpunet checkpoint, not a gpunet model"
    assert refusal(checkpoint, CHECKPOINT) is None


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a zip archive"),
    (lambda p: p.write_bytes(p.read_bytes()[:200] + b"\0" * 64 + p.read_bytes()[264:]),
     "not a readable gpunet checkpoint"),
    (lambda p: p.write_text("epoch,loss\n"), "not a gpunet checkpoint (not a zip archive)"),
    (lambda p: np.savez(p, images=np.zeros((2, 784), np.uint8)), "not a gpunet checkpoint (no run_state"),
    (lambda p: rewritten(p, lambda h: h.update(format="gpunet-model")), "format is not 'gpunet-checkpoint'"),
    (lambda p: rewritten(p, lambda h: h.update(version=2)), "checkpoint version 2 is not read"),
    (lambda p: rewritten(p, lambda h: h["rng"]["state"].update(state=-1)), "field rng.state.state is -1"),
    (lambda p: rewritten(p, lambda h: h["config"].update(lr="fast")), "recorded setting lr='fast'"),
    (lambda p: rewritten(p, lambda h: h["config"].update(wings=2)), "a setting this gpunet does not know (wings)"),
    (lambda p: rewritten(p, lambda h: h.update(epochs_done=4)), "history does not hold epochs 1 to 4"),
    (lambda p: rewritten(p, lambda h: h["config"].update(epochs=2)), "records all 2 epochs of its run done"),
    (lambda p: rewritten(p, lambda h: h["extra"].update(out="run\x00.npz")),
     "field extra.out is the text 'run\\x00.npz'; it must be null or a path without control characters"),
    (lambda p: rewritten(p, change_arrays=lambda a: a.update(params=a["params"][:-1])), "params is float32"),
    (lambda p: rewritten(p, change_arrays=lambda a: a.update(params=a["params"].astype(np.float64))),
     "expected float32"),
    (lambda p: rewritten(p, change_arrays=lambda a: a["params"].__setitem__(0, np.nan)), "params holds NaN"),
    (lambda p: rewritten(p, change_arrays=lambda a: a.update(extra=np.zeros(3, np.float32))),
     "unexpected array 'extra'"),
    (lambda p: rewritten(p, change_arrays=lambda a: a.update(params=np.array([None] * 3, object))),
     "params is object"),
])
def test_a_bad_checkpoint_is_one_line_naming_the_file(checkpoint, damage, says):
    damage(checkpoint)
    with pytest.raises(CheckpointError) as caught:
        load_run_state(checkpoint)
    message = str(caught.value)
    assert message.startswith(f"{checkpoint}: ") and "\n" not in message and says in message, message


def test_fields_a_newer_gpunet_may_add_are_read_by_nobody(checkpoint):
    def add_fields(header):
        header["history"][0]["momentum"] = 0.9
        header["rng"]["note"] = "x"
        header["comment"] = "from a newer gpunet"

    state = load_run_state(rewritten(checkpoint, add_fields))
    assert state.epochs_done == 2 and "note" not in state.rng


def test_a_zip_of_many_members_is_refused_from_its_directory(tmp_path):
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for k in range(100):
            archive.writestr(f"a{k}.npy", b"")
    with pytest.raises(CheckpointError, match="holds 100 members; a gpunet checkpoint holds at most 16"):
        load_run_state(path)


# -- the command line ------------------------------------------------------------------------------------------


@pytest.fixture
def small_data(tmp_path):
    """2,000 of the bundled sample's digits: a few quick epochs."""
    return sample_npz(tmp_path, 2000)


def ctrl_c_after_epoch(monkeypatch, epoch: int, signum=signal.SIGINT):
    """The signal, sent by the process to itself once epoch ``epoch``'s line is printed."""
    real = cli.EpochReporter.__call__

    def report(self, metrics):
        real(self, metrics)
        if metrics.epoch == epoch:
            signal.raise_signal(signum)

    monkeypatch.setattr(cli.EpochReporter, "__call__", report)


TRAIN = ("train", "--hidden", "16", "--epochs", "4", "--val-size", "500", "--optimizer", "momentum")


@pytest.mark.parametrize("signum, exit_code, given", [(signal.SIGINT, 130, ()), (signal.SIGTERM, 143, ()),
                                                     (signal.SIGINT, 130, ("--warmup", "0.25"))])
def test_the_command_line_resumes_a_stopped_run_to_the_uninterrupted_runs_model(capsys, monkeypatch, tmp_path,
                                                                                small_data, signum, exit_code, given):
    """``given``: options of the run, which the checkpoint records and the resumed run keeps (a short warm-up)."""
    code, _, err = run(capsys, *TRAIN, *given, "--data", str(small_data), "--out", str(tmp_path / "whole.npz"))
    assert code == 0, err
    with monkeypatch.context() as patch:
        ctrl_c_after_epoch(patch, 2, signum)
        code, _, err = run(capsys, *TRAIN, *given, "--data", str(small_data), "--out", str(tmp_path / "run.npz"))
    checkpoint = tmp_path / "run.checkpoint.npz"
    assert code == exit_code
    assert (f"Saved the run as it was after epoch 2 to {checkpoint}; to go on from the start of epoch 3 of 4: "
            f"gpunet train --resume {checkpoint}") in err
    assert kind_of(checkpoint) == CHECKPOINT
    code, out, err = run(capsys, "train", "--resume", str(checkpoint))  # its data and --out are recorded
    assert code == 0, err
    assert f"Resuming {checkpoint}: 2 epochs of 4 done" in out and "epoch 3/4" in out and "epoch 1/4" not in out
    resumed, meta = load_model(tmp_path / "run.npz")
    whole, whole_meta = load_model(tmp_path / "whole.npz")
    assert_same_bits(resumed, whole)
    assert meta["stop_reason"] == "completed" and len(meta["history"]) == 4
    warmup = float(given[1]) if given else 1.0
    assert meta["training"]["warmup"] == whole_meta["training"]["warmup"] == warmup
    assert [m["lr"] for m in meta["history"]] == [m["lr"] for m in whole_meta["history"]]


def test_the_command_line_refuses_what_would_change_a_resumed_run_in_one_line(capsys, monkeypatch, tmp_path,
                                                                             small_data):
    with monkeypatch.context() as patch:
        ctrl_c_after_epoch(patch, 1)
        code, _, _ = run(capsys, *TRAIN, "--data", str(small_data), "--out", str(tmp_path / "run.npz"))
    assert code == 130
    checkpoint = tmp_path / "run.checkpoint.npz"
    code, _, err = run(capsys, "train", "--resume", str(checkpoint), "--lr", "0.5")
    assert code == 2 and err.count("\n") == 1 and "--lr with --resume" in err, err
    code, _, err = run(capsys, "train", "--resume", str(checkpoint), "--data", str(small_data), "--epochs", "9")
    assert code == 2 and err.count("\n") == 1 and "--epochs with --resume" in err, err
    code, _, err = run(capsys, "train", "--resume", str(checkpoint), "--warmup", "0.25")
    assert code == 2 and err.count("\n") == 1 and "--warmup with --resume" in err, err
    other = tmp_path / "other.npz"
    with np.load(small_data) as f:
        np.savez(other, images=f["images"][::-1], labels=f["labels"][::-1])
    code, _, err = run(capsys, "train", "--resume", str(checkpoint), "--data", str(other))
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"Error: {checkpoint}: cannot go on with {other}: the run trained on 1,500 training") \
        and f"its data was {small_data}" in err, err
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    code, _, err = run(capsys, "train", "--resume", str(checkpoint))
    assert code == 1 and err == f"Error: {checkpoint}: not a gpunet checkpoint (not a zip archive)\n", err
    code, _, err = run(capsys, "train", "--resume", str(tmp_path / "run.npz"))  # the interrupted model
    assert code == 1 and err.count("\n") == 1 and "a model file is not a checkpoint" in err, err


def test_a_checkpoint_whose_arrays_do_not_fit_the_run_is_one_line(capsys, monkeypatch, tmp_path, small_data):
    with monkeypatch.context() as patch:
        ctrl_c_after_epoch(patch, 1)
        run(capsys, *TRAIN, "--data", str(small_data), "--out", str(tmp_path / "run.npz"))
    checkpoint = tmp_path / "run.checkpoint.npz"
    rewritten(checkpoint, lambda h: h.update(shapes=[list(reversed(s)) for s in h["shapes"]]))
    code, _, err = run(capsys, "train", "--resume", str(checkpoint))
    assert code == 1 and err == (f"Error: {checkpoint}: cannot go on with this run: its parameters' shapes are "
                                 "not those of the run's network\n"), err

    def as_adam(arrays):
        for k in (0, 1):
            arrays[f"optimizer.mean.{k}"] = arrays.pop(f"optimizer.velocity.{k}")

    rewritten(checkpoint, lambda h: h.update(shapes=[list(reversed(s)) for s in h["shapes"]]), as_adam)  # back
    code, _, err = run(capsys, "train", "--resume", str(checkpoint))
    assert code == 1 and err == (f"Error: {checkpoint}: cannot go on with this run: the Momentum optimizer's state "
                                 "holds ['velocity'], not ['mean']\n"), err


def test_a_stopped_run_never_replaces_a_users_file_with_its_checkpoint(capsys, monkeypatch, tmp_path, small_data):
    mine = tmp_path / "run.checkpoint.npz"
    mine.write_text("my notes\n")
    with monkeypatch.context() as patch:
        ctrl_c_after_epoch(patch, 1)
        code, _, err = run(capsys, *TRAIN, "--data", str(small_data), "--out", str(tmp_path / "run.npz"))
    assert code == 130 and mine.read_text() == "my notes\n"
    beside = tmp_path / "run.checkpoint.new.npz"
    assert kind_of(beside) == CHECKPOINT and f"gpunet train --resume {beside}" in err, err


def test_early_stopping_after_a_resume_stops_where_the_uninterrupted_run_stops(tmp_path):
    """Validation labels shuffled: the validation loss rises as training fits, the best epoch is an early one and
    patience runs out. The resumed run counts the epochs since the best from where the run was, and keeps the
    best weights the checkpoint holds (best_params, not the last epoch's)."""
    train_digits, val_digits = digits()
    val_digits.labels[:] = np.random.default_rng(3).integers(0, 10, size=len(val_digits))
    config = small_config(epochs=40, lr=0.05, patience=3, weight_decay=0.0)
    whole = train(CPU, train_digits, val_digits, config)
    assert whole.stop_reason == "early_stopping"
    done = []
    stop = lambda: len(done) == whole.best_epoch + 1  # noqa: E731 - one epoch past the best: since_best is 1
    with pytest.raises(TrainingInterrupted) as caught:
        train(CPU, train_digits, val_digits, config, stop=stop, on_epoch=done.append)
    state = caught.value.run_state
    assert (state.best_epoch, state.since_best) == (whole.best_epoch, 1)
    save_run_state(tmp_path / "run.checkpoint.npz", state)
    resumed = train(CPU, train_digits, val_digits, config, resume_from=load_run_state(tmp_path / "run.checkpoint.npz"))
    assert (resumed.stop_reason, resumed.best_epoch, len(resumed.history)) == \
        ("early_stopping", whole.best_epoch, len(whole.history))
    assert_same_bits(weights(resumed), weights(whole))


# -- found in review ---------------------------------------------------------------------------------------------


def test_a_compressed_checkpoint_is_refused_before_its_arrays_are_read(checkpoint, monkeypatch):
    """gpunet writes checkpoints uncompressed (np.savez). A compressed array is what a zip bomb is made of (a
    megabyte of deflated zeros inflates to a gigabyte that the JSON's shapes may claim): it is refused from the
    zip's directory, before any array is read, so that reading a checkpoint costs no more than its size."""
    import gpunet.files.resume_file as resume_file

    with np.load(checkpoint, allow_pickle=False) as f:
        arrays = {key: f[key] for key in f.files}
    np.savez_compressed(checkpoint, **arrays)
    read, real = [], resume_file.read_npy
    monkeypatch.setattr(resume_file, "read_npy", lambda archive, info, npy: read.append(info.filename) or
                        real(archive, info, npy))
    with pytest.raises(CheckpointError) as caught:
        load_run_state(checkpoint)
    assert str(caught.value) == (f"{checkpoint}: params is compressed; gpunet writes a checkpoint's arrays "
                                 "uncompressed, so that reading one costs no more memory than its size")
    assert read == ["run_state.npy"]


def test_a_checkpoint_that_lacks_a_setting_is_one_line_naming_it(checkpoint):
    """A setting left out would silently take today's default and make another run (here: another split of the
    digits, then reported as other data)."""
    rewritten(checkpoint, lambda h: h["config"].pop("val_size"))
    with pytest.raises(CheckpointError) as caught:
        load_run_state(checkpoint)
    assert str(caught.value) == f"{checkpoint}: records no setting val_size"


def test_a_checkpoint_from_before_the_warm_up_setting_resumes_with_a_one_epoch_warm_up(checkpoint):
    """Checkpoints written before --warmup record no warmup: those runs warmed up for one epoch, so its absence
    means 1 (resume_file.ADDED_SETTINGS), and a stop of the same run replaces such a checkpoint as its own."""
    from gpunet.files.resume_file import is_of_run

    state = load_run_state(checkpoint)
    assert state.config.warmup == 1.0
    rewritten(checkpoint, lambda h: h["config"].pop("warmup"))
    old = load_run_state(checkpoint)
    assert old.config == state.config and is_of_run(checkpoint, state)
    rewritten(checkpoint, lambda h: h["config"].update(warmup=0.5))
    assert not is_of_run(checkpoint, state)  # another run's


@pytest.mark.parametrize("value, says", [
    (-1, "recorded setting warmup=-1: must be a finite number of epochs >= 0 (0: none)"),
    (float("nan"), "recorded setting warmup=nan: must be a finite number of epochs >= 0 (0: none)"),
    ("1", "recorded setting warmup='1': must be a finite number of epochs >= 0 (0: none)"),
    (9, "recorded setting warmup=9: must be at most epochs (5): a warm-up longer than the run")])
def test_a_checkpoint_whose_warm_up_is_bad_is_one_line(checkpoint, value, says):
    rewritten(checkpoint, lambda h: h["config"].update(warmup=value))
    with pytest.raises(CheckpointError) as caught:
        load_run_state(checkpoint)
    assert str(caught.value) == f"{checkpoint}: {says}"


def test_an_optimizers_arrays_numbered_with_a_gap_are_refused(tmp_path):
    path = tmp_path / "run.checkpoint.npz"
    save_run_state(path, interrupted(CPU, CASES["momentum"], epoch=2, asks=1))
    rewritten(path, change_arrays=lambda a: a.update({"optimizer.velocity.7": a.pop("optimizer.velocity.1")}))
    with pytest.raises(CheckpointError) as caught:
        load_run_state(path)
    assert str(caught.value) == f"{path}: its optimizer arrays velocity are numbered [0, 7], not 0 to 1"


def test_a_stopped_run_saves_its_checkpoint_even_where_its_model_cannot_be_saved(capsys, monkeypatch, tmp_path,
                                                                                 small_data):
    """Every name beside --out for the interrupted model taken: the model is not saved, but the run's state is
    (it is worth more: the run goes on from it), then the model's failure is the error line."""
    out = tmp_path / "run.npz"
    run(capsys, *TRAIN, "--epochs", "1", "--data", str(small_data), "--out", str(out))  # a model at --out
    for name in ["run.interrupted.npz"] + [f"run.interrupted-{k}.npz" for k in range(1, 101)]:
        (tmp_path / name).mkdir()
    with monkeypatch.context() as patch:
        ctrl_c_after_epoch(patch, 1)
        code, _, err = run(capsys, *TRAIN, "--data", str(small_data), "--out", str(out))
    checkpoint = tmp_path / "run.checkpoint.npz"
    assert code == 130 and kind_of(checkpoint) == CHECKPOINT, err
    assert f"gpunet train --resume {checkpoint}" in err
    assert err.endswith(f"Error: interrupted in epoch 2; {out}: 100 earlier interrupted models are beside it; "
                        "remove some and run again\n"), err


def test_a_checkpoint_given_for_a_model_says_what_it_is(checkpoint, capsys, small_data):
    from gpunet.errors import ModelFileError
    from gpunet.files.checkpoint import load_metadata

    says = f"{checkpoint}: a gpunet checkpoint, not a model: go on with its run with gpunet train --resume {checkpoint}"
    for read in (load_model, load_metadata):
        with pytest.raises(ModelFileError) as caught:
            read(checkpoint)
        assert str(caught.value) == says
    code, _, err = run(capsys, "evaluate", "--model", str(checkpoint), "--data", str(small_data))
    assert code == 1 and err == f"Error: {says}\n", err


def test_a_run_stopped_on_the_cpu_and_resumed_on_another_backend_agrees_within_rounding(backend):
    """README: a run may go on on another --device; its weights then agree with the uninterrupted run's within
    the bounds of the sums' lengths (``training_bounds``), not bit for bit. The notes' full-batch gradient
    descent in float64, stopped on the CPU after epoch 2 and resumed on each backend."""
    from gpunet.training.loop import new_network
    from tests.tolerances import assert_within, training_bounds

    config = small_config(optimizer="gd", batch_size=0, lr=0.5, epochs=4, init="seed", schedule="constant",
                          weight_decay=0.0, dtype="float64")
    train_digits, val_digits = digits()
    whole = train(CPU, train_digits, val_digits, config)
    resumed = train(backend, train_digits, val_digits, config, resume_from=interrupted(CPU, config, epoch=3, asks=1))
    everyone = np.arange(len(train_digits))
    bounds = training_bounds(new_network(CPU, config, train_digits.images.shape[1]).host_params(), train_digits.images,
                             train_digits.labels, [(everyone, config.lr)] * config.epochs, "gd", 0.0, np.float64)
    for k, (got, want, bound) in enumerate(zip(weights(resumed), weights(whole), bounds.params, strict=True)):
        assert_within(got, want, bound, f"parameter {k}")


def test_the_data_and_out_a_checkpoint_recorded_are_named_as_its_own_when_they_fail(capsys, monkeypatch, tmp_path,
                                                                                      small_data):
    """The user gave neither --data nor --out: a line about them says they are what the checkpoint recorded, and
    what to give instead."""
    with monkeypatch.context() as patch:
        ctrl_c_after_epoch(patch, 1)
        run(capsys, *TRAIN, "--data", str(small_data), "--out", str(tmp_path / "run.npz"))
    checkpoint = tmp_path / "run.checkpoint.npz"
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    rewritten(checkpoint, lambda h: h["extra"].update(out=str(notes)))
    code, _, err = run(capsys, "train", "--resume", str(checkpoint))
    assert code == 1 and err == (f"Error: {checkpoint}: its recorded --out {notes}: holds another kind of file, not "
                                 "a gpunet model; refusing to replace it, give another name\n"), err
    assert notes.read_text() == "mine\n"
    small_data.rename(tmp_path / "moved.npz")
    code, _, err = run(capsys, "train", "--resume", str(checkpoint), "--out", str(tmp_path / "new.npz"))
    assert code == 1 and err == (f"Error: {checkpoint}: its recorded data {small_data} is not there; give --data "
                                 "with the same digits\n"), err


def test_an_optimizers_array_numbered_twice_is_refused(tmp_path):
    """optimizer.velocity.0 and optimizer.velocity.00 would be one array twice: only gpunet's own numbering is
    read."""
    path = tmp_path / "run.checkpoint.npz"
    save_run_state(path, interrupted(CPU, CASES["momentum"], epoch=2, asks=1))
    rewritten(path, change_arrays=lambda a: a.update({"optimizer.velocity.00": a["optimizer.velocity.0"] + 1}))
    with pytest.raises(CheckpointError) as caught:
        load_run_state(path)
    assert str(caught.value) == f"{path}: unexpected array 'optimizer.velocity.00'"


def test_a_checkpoint_path_that_is_not_a_file_is_named_so(tmp_path):
    import os

    fifo = tmp_path / "run.checkpoint.npz"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError) as caught:
        load_run_state(fifo)
    assert str(caught.value) == f"{fifo}: is not a regular file (a checkpoint is one)"


def test_a_stopped_run_never_replaces_another_runs_checkpoint(capsys, monkeypatch, tmp_path, small_data):
    """Two runs with the same --out: the second's stop keeps the first's checkpoint (its run can still go on) and
    saves its own beside it; a stop of the same run again replaces its own."""
    out = tmp_path / "run.npz"
    with monkeypatch.context() as patch:
        ctrl_c_after_epoch(patch, 1)
        run(capsys, *TRAIN, "--data", str(small_data), "--out", str(out))
        first = (tmp_path / "run.checkpoint.npz").read_bytes()
        code, _, err = run(capsys, *TRAIN, "--lr", "0.02", "--data", str(small_data), "--out", str(out))
    assert code == 130 and (tmp_path / "run.checkpoint.npz").read_bytes() == first
    beside = tmp_path / "run.checkpoint.new.npz"
    assert (f"Note: {tmp_path / 'run.checkpoint.npz'} holds another run's checkpoint; saved the checkpoint as "
            f"{beside}") in err, err
    assert load_run_state(beside).config.lr == 0.02
    with monkeypatch.context() as patch:
        ctrl_c_after_epoch(patch, 1)
        code, _, err = run(capsys, *TRAIN, "--data", str(small_data), "--out", str(out))
    assert code == 130 and "Note:" not in err and not (tmp_path / "run.checkpoint.new-1.npz").exists(), err
