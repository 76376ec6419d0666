"""Issue 17, "signals: what the exit code says is not what happened" (findings 7, 8): the handlers only note a
signal; the command reads the note where stopping loses nothing. Exit 130/143 means --out was not replaced; a run
whose save had begun when the signal was read finishes, says it saved and exits 0.

Every signal here is sent by the process to itself from a known point of the run (a patched step, report or
save), so no test depends on how fast a signal arrives."""

import signal
import subprocess
import sys

import pytest

from gpunet.files.checkpoint import load_model

# The run, with a hook at one known point that sends the signal (argv: out, hook, signal name, extra train args).
SCRIPT = """
import signal, sys
import gpunet.frontends.cli as cli
import gpunet.files.outputs as outputs

out, hook, name = sys.argv[1:4]
number = getattr(signal, name)


class Finalizer:  # as tqdm.__del__: an object collected in the middle of a step
    def __del__(self):
        signal.raise_signal(number)


real_bar_call = cli.ProgressBar.__call__
def bar_call(self, n):
    real_bar_call(self, n)
    if hook == "finalizer" and not getattr(cli, "sent", False):
        cli.sent = True
        Finalizer()  # collected at once: the signal lands inside __del__
cli.ProgressBar.__call__ = bar_call


real_report = cli.EpochReporter.__call__
def report(self, metrics):
    real_report(self, metrics)
    if hook == "last epoch" and metrics.epoch == self.epochs:
        signal.raise_signal(number)  # after the last step, before the save begins
cli.EpochReporter.__call__ = report


real_save = outputs.save_replacing_only
def save(*args, **kwargs):
    if hook == "during save":
        real_write = args[3]
        def write(path):  # the model file is being written when the signal comes
            signal.raise_signal(number)
            real_write(path)
        args = (*args[:3], write)
    saved = real_save(*args, **kwargs)
    if hook == "after save":
        signal.raise_signal(number)  # the model has replaced --out; the run has not said so yet
    return saved
cli.save_replacing_only = save

sys.argv = ["gpunet", "train", "--device", "cpu", "--out", out, *sys.argv[4:]]
if hook == "after main":  # the process's own entry point, then a signal once its work is done
    from gpunet.__main__ import run
    run()
    signal.raise_signal(number)
elif hook == "at shutdown":  # a signal from a finalizer run as the interpreter tears its modules down: by then
    import os                # Python has put SIG_DFL back in place of its own handlers

    class LateFinalizer:
        def __del__(self):
            os.kill(os.getpid(), number)

    cli.late_finalizer = LateFinalizer()
    from gpunet.__main__ import run
    run()
else:
    cli.main(sys.argv[1:])
"""


def train_with(out, hook, name, *args):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(out), hook, name, *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model.npz"
    proc = subprocess.run([sys.executable, "-m", "gpunet", "train", "--device", "cpu", "--epochs", "1", "--hidden",
                           "32", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


# -- finding 7: a Ctrl-C landing in a finalizer was swallowed, and the run replaced --out with exit 0 ---------------
def test_ctrl_c_landing_in_a_finalizer_still_stops_the_run(tmp_path, model_bytes):
    out = tmp_path / "model.npz"
    out.write_bytes(model_bytes)
    proc = train_with(out, "finalizer", "SIGINT", "--epochs", "3")
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "Interrupted in epoch 1" in proc.stderr and "saved" not in proc.stdout, proc.stdout[-2000:]
    assert out.read_bytes() == model_bytes  # not replaced


# -- finding 8: exit 130/143 after the completed model had replaced --out -------------------------------------------
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("hook", ["during save", "after save", "after main", "at shutdown"])
def test_a_signal_once_the_save_has_begun_exits_0_and_says_it_saved(tmp_path, model_bytes, hook, name):
    out = tmp_path / "model.npz"
    out.write_bytes(model_bytes)
    proc = train_with(out, hook, name, "--epochs", "1", "--seed", "4")
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.rstrip().endswith(f"saved {out}") and "Aborted" not in proc.stderr, proc.stderr[-2000:]
    assert load_model(out)[1]["training"]["seed"] == 4  # replaced, and said so
    assert (tmp_path / "model.previous.npz").read_bytes() == model_bytes
    if hook not in ("after main", "at shutdown"):
        assert f"Note: {name} came while the result was being saved; it is saved, exit 0" in proc.stderr


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_before_the_save_begins_exits_128_plus_n_and_replaces_nothing(tmp_path, model_bytes, name):
    out = tmp_path / "model.npz"
    out.write_bytes(model_bytes)
    proc = train_with(out, "last epoch", name, "--epochs", "2")
    assert proc.returncode == 128 + getattr(signal, name), proc.stderr[-2000:]
    beside = tmp_path / "model.interrupted.npz"
    assert str(beside) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert out.read_bytes() == model_bytes and load_model(beside)[1]["stop_reason"] == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.interrupted.npz", "model.npz"]


def test_the_handler_only_notes_the_signal():
    from gpunet.frontends.cli import StopSignals

    stop = StopSignals()
    stop.handle(signal.SIGTERM, None)  # returns: never raises
    assert stop.asked() and stop.exit_code() == 143
    with pytest.raises(KeyboardInterrupt):
        stop.stop_if_asked()  # the command stops where it reads the note
    assert not stop.commit()  # a signal before the commit: the command replaces nothing
    stop.reset()
    assert stop.commit()
    stop.handle(signal.SIGINT, None)  # after the commit: only reported
    assert not stop.asked() and stop.exit_code_after(0) == 0 and "SIGINT" in stop.late_note()


def test_a_signal_while_predict_reads_replaces_nothing_and_exits_143(capsys, monkeypatch, tmp_path, model_bytes):
    import gpunet.files.data
    from gpunet.frontends import cli
    from tests.conftest import run
    from tests.test_your_files import digits_csv

    model, out = tmp_path / "model.npz", tmp_path / "submission.csv"
    model.write_bytes(model_bytes)
    out.write_text("ImageId,Label\n1,7\n")
    data = digits_csv(tmp_path / "test.csv")
    real_load = gpunet.files.data.load_digits

    def load_then_terminated(*args, **kwargs):
        assert signal.getsignal(signal.SIGTERM) == cli.STOP_SIGNALS.handle  # never the default: it would end pytest
        signal.raise_signal(signal.SIGTERM)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(gpunet.files.data, "load_digits", load_then_terminated)
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                            "--out", str(out))
    assert code == 143 and err.strip() == "Aborted." and stdout == "", err
    assert out.read_text() == "ImageId,Label\n1,7\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.npz", "submission.csv", "test.csv"]


# -- review of issue 17: commands that write nothing stop at once (Ctrl-C no longer waited for the end) ------------
def signal_once(monkeypatch, owner, name, number=signal.SIGINT):
    """Make ``owner.name`` send the process ``number`` the first time it is called, then do its work."""
    real = getattr(owner, name)
    sent = []

    def send_then_work(*args, **kwargs):
        if not sent:
            sent.append(True)
            signal.raise_signal(number)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, send_then_work)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_evaluate_stops_at_once_on_a_signal(capsys, monkeypatch, tmp_path, model_bytes, name):
    from gpunet.frontends import cli
    from tests.conftest import run
    from gpunet.files.data import load_sample

    model = tmp_path / "model.npz"
    model.write_bytes(model_bytes)
    sample = load_sample()
    data = tmp_path / "other.csv"  # labeled digits, not the model's training data
    data.write_text("\n".join(["label," + ",".join(f"pixel{i}" for i in range(784))] + [
        ",".join(map(str, [label, *row])) for label, row in zip(sample.labels[-40:], sample.images[-40:])]) + "\n")
    signal_once(monkeypatch, cli, "predict_labels", getattr(signal, name))  # while evaluating
    code, stdout, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(model), "--data", str(data))
    assert code == 128 + getattr(signal, name) and err.strip() == "Aborted.", err
    assert "accuracy" not in stdout and "Confusion" not in stdout, stdout  # stopped, not run to the end


def test_predict_image_stops_at_once_on_a_signal(capsys, monkeypatch, tmp_path, model_bytes):
    import numpy as np

    import gpunet.frontends.images
    from tests.conftest import run

    model = tmp_path / "model.npz"
    model.write_bytes(model_bytes)
    monkeypatch.setattr(gpunet.frontends.images, "load_digit", lambda path: np.zeros(784))
    signal_once(monkeypatch, gpunet.frontends.images, "load_digit")
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--image", "a.png", "b.png")
    assert code == 130 and err.strip() == "Aborted." and stdout == "", (stdout, err)


def test_predict_stops_at_once_while_it_reads_and_replaces_nothing(capsys, monkeypatch, tmp_path, model_bytes):
    import gpunet.files.data
    import gpunet.nn.ensemble
    from tests.conftest import run
    from tests.test_your_files import digits_csv

    model, out = tmp_path / "model.npz", tmp_path / "submission.csv"
    model.write_bytes(model_bytes)
    out.write_text("ImageId,Label\n1,7\n")
    data = digits_csv(tmp_path / "test.csv")
    reached = []
    real_probabilities = gpunet.nn.ensemble.Ensemble.probabilities

    def probabilities(self, images):
        reached.append(True)
        return real_probabilities(self, images)

    monkeypatch.setattr(gpunet.nn.ensemble.Ensemble, "probabilities", probabilities)
    signal_once(monkeypatch, gpunet.files.data, "load_digits")  # reading: nothing written yet
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                            "--out", str(out))
    assert code == 130 and err.strip() == "Aborted." and stdout == "" and not reached, err  # stopped in the read
    assert out.read_text() == "ImageId,Label\n1,7\n"
