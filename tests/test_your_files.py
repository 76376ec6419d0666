"""Issue 17, "a user's file replaced" (findings 1-6, 9, 23): one rule for the files gpunet may replace, a replaced
model kept as model.previous.npz, a save that fails or dies leaving nothing of its own and saying what was kept."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from gpunet.errors import GpunetError
from gpunet.files.checkpoint import load_model
from tests.conftest import run


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    """A small gpunet model trained through the CLI, as bytes."""
    out = tmp_path_factory.mktemp("model") / "model.npz"
    run_quietly("train", "--device", "cpu", "--epochs", "1", "--hidden", "32", "--out", str(out))
    return out.read_bytes()


def run_quietly(*args):
    from gpunet.frontends.cli import main

    try:
        main(list(args))
    except SystemExit as exit:
        assert not exit.code, exit.code


def digits_csv(path, count=40):
    from gpunet.files.data import load_sample

    images = load_sample().images[:count]
    rows = [",".join(f"pixel{i}" for i in range(784))] + [",".join(map(str, row)) for row in images]
    path.write_text("\n".join(rows) + "\n")
    return path


def hidden_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def train_then(monkeypatch, action):
    """Make the CLI's training call ``action()`` once training is done, before the save (another process's doing)."""
    import gpunet.training.loop

    real_train = gpunet.training.loop.train

    def train_then_act(*args, **kwargs):
        result = real_train(*args, **kwargs)
        action()
        return result

    monkeypatch.setattr(gpunet.training.loop, "train", train_then_act)


# -- finding 1: train replaced any .npz with a metadata member --------------------------------------------------
def experiment_npz(path):
    np.savez(path, metadata=np.array('{"run":42}'), measurements=np.arange(1e5))
    return path.read_bytes()


def test_train_refuses_an_npz_whose_metadata_is_not_gpunets(capsys, tmp_path):
    out = tmp_path / "experiment.npz"
    before = experiment_npz(out)
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 1 and err.count("\n") == 1 and "refusing to replace it" in err and str(out) in err, err
    assert "not a gpunet model" in err and "Traceback" not in err
    assert stdout == "" and out.read_bytes() == before  # refused before any work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.npz"]


@pytest.mark.parametrize("metadata", ['{"format": "gpunet-model", "format_version": 99}', '{"format": "other"}',
                                      '[1, 2]'])
def test_train_refuses_a_model_of_no_known_version_and_metadata_without_the_marker(capsys, tmp_path, metadata):
    out = tmp_path / "m.npz"
    np.savez(out, metadata=np.array(metadata), W1=np.zeros((3, 784)))
    before = out.read_bytes()
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 1 and "refusing to replace it" in err and stdout == "" and out.read_bytes() == before, err


def test_an_npz_with_metadata_appearing_at_out_during_training_is_kept(capsys, monkeypatch, tmp_path, model_bytes):
    out = tmp_path / "model.npz"
    out.write_bytes(model_bytes)
    train_then(monkeypatch, lambda: (out.unlink(), experiment_npz(out)))
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    beside = tmp_path / "model.completed.npz"
    assert code == 0 and "a file gpunet does not replace" in err and str(beside) in err, err
    assert set(np.load(out)) == {"metadata", "measurements"}  # the experiment, whole
    assert load_model(beside)[1]["stop_reason"] == "completed"


def hostile_reader(monkeypatch, error):
    """Make the model reader fail on any file with ``error`` (not an OSError): a file built to break it."""
    import gpunet.files.checkpoint

    def load_metadata(path, *args, **kwargs):
        raise error

    monkeypatch.setattr(gpunet.files.checkpoint, "load_metadata", load_metadata)


@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), GpunetError("hostile")])
def test_a_file_whose_kind_cannot_be_told_appearing_at_out_during_training_is_kept(capsys, monkeypatch, tmp_path,
                                                                                   error):
    out = tmp_path / "model.npz"
    hostile = b"PK\x03\x04 a zip that breaks the reader"
    hostile_reader(monkeypatch, error)
    train_then(monkeypatch, lambda: out.write_bytes(hostile))
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    beside = tmp_path / "model.completed.npz"
    assert code == 0 and "Traceback" not in err and "a file gpunet does not replace" in err, err
    assert str(beside) in err and f"saved {beside}" in stdout, stdout
    assert out.read_bytes() == hostile and load_model(beside)[1]["stop_reason"] == "completed"


@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), GpunetError("hostile")])
def test_a_file_whose_kind_cannot_be_told_is_refused_before_any_work_in_one_line(capsys, monkeypatch, tmp_path,
                                                                                 error):
    out = tmp_path / "model.npz"
    out.write_bytes(b"PK\x03\x04 a zip that breaks the reader")
    hostile_reader(monkeypatch, error)
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(out) in err and "cannot be told" in err and "refusing to replace it" in err and stdout == "", err


# -- finding 2: predict replaced any file starting ImageId,Label --------------------------------------------------
@pytest.mark.parametrize("content", [b"ImageId,LabelerName,Hours,Notes\n1,alice,3,x\n",  # as the issue writes it
                                     b"ImageId,Label\n1,alice\n", b"ImageId,Label,Notes\n1,7,x\n",
                                     b"ImageId,Label\n1,7\n2,3.5\n", b"ImageId,Label\n1,7\n\n# my notes\n"])
def test_predict_refuses_a_file_that_only_starts_like_a_submission(capsys, tmp_path, model_bytes, content):
    model = tmp_path / "model.npz"
    model.write_bytes(model_bytes)
    data = digits_csv(tmp_path / "test.csv")
    out = tmp_path / "labeling_log.csv"
    out.write_bytes(content)
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                            "--out", str(out))
    assert code == 1 and err.count("\n") == 1 and "refusing to replace it" in err and str(out) in err, err
    assert out.read_bytes() == content and stdout == ""


def test_predict_replaces_a_submission_of_whole_numbers(capsys, tmp_path, model_bytes):
    model = tmp_path / "model.npz"
    model.write_bytes(model_bytes)
    data = digits_csv(tmp_path / "test.csv")
    out = tmp_path / "submission.csv"
    out.write_bytes(b"ImageId,Label\r\n1,7\r\n2,0\r\n")  # Windows line ends too
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                       "--out", str(out))
    assert code == 0 and err == "", err
    assert len(out.read_text().splitlines()) == 41 and hidden_files(tmp_path) == []


PROBABILITIES_HEADER = b"ImageId,p0,p1,p2,p3,p4,p5,p6,p7,p8,p9"


@pytest.mark.parametrize("content", [PROBABILITIES_HEADER + b"\n# my notes\n",  # as the reviewer wrote it
                                     PROBABILITIES_HEADER + b",notes\n1,0,0,0,0,0,0,0,0,0,1,x\n",
                                     PROBABILITIES_HEADER + b"\n1,0.5,0.5,0,0,0,0,0,0,0\n",  # nine numbers
                                     PROBABILITIES_HEADER + b"\n1,0.5,0.5,0,0,0,0,0,0,0,zero\n",
                                     PROBABILITIES_HEADER + b"\n1.5,1,0,0,0,0,0,0,0,0,0\n"])
def test_probabilities_refuses_a_file_that_only_starts_like_one(capsys, tmp_path, model_bytes, content):
    model = tmp_path / "model.npz"
    model.write_bytes(model_bytes)
    data = digits_csv(tmp_path / "test.csv")
    probs = tmp_path / "probs.csv"
    probs.write_bytes(content)
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                            "--out", str(tmp_path / "submission.csv"), "--probabilities", str(probs))
    assert code == 1 and err.count("\n") == 1 and "refusing to replace it" in err and str(probs) in err, err
    assert probs.read_bytes() == content and stdout == "" and not (tmp_path / "submission.csv").exists()


def test_probabilities_replaces_a_file_of_a_whole_number_and_ten_decimal_numbers_a_row(tmp_path):
    from gpunet.files import outputs

    probs = tmp_path / "probs.csv"
    probs.write_bytes(PROBABILITIES_HEADER + b"\r\n1,0.25,0.75,0,0,0,0,0,0,1e-05,5e-324\r\n2,1.0,0,0,0,0,0,0,0,0,0")
    assert outputs.check_out_path("--probabilities", probs, outputs.PROBABILITIES) == probs
    probs.write_bytes(PROBABILITIES_HEADER + b"\n" + b"1,1,0,0,0,0,0,0,0,0,0\n" * (outputs.SUBMISSION_LIMIT // 22))
    with pytest.raises(GpunetError, match="too large to be a file of class probabilities"):
        outputs.check_out_path("--probabilities", probs, outputs.PROBABILITIES)  # read with the submission's bound


def test_a_submission_too_large_to_check_is_refused(tmp_path):
    from gpunet.files import outputs

    out = tmp_path / "big.csv"
    rows = b"1,7\n" * (outputs.SUBMISSION_LIMIT // 4 + 1)  # every row two whole numbers: only the bound refuses it
    out.write_bytes(b"ImageId,Label\n" + rows)
    with pytest.raises(GpunetError, match="too large to be a Kaggle submission"):
        outputs.check_out_path("--out", out, outputs.SUBMISSION)


# -- finding 3: predict did not check --out again before its rename ----------------------------------------------
def test_a_file_written_at_out_while_predict_reads_is_kept(capsys, monkeypatch, tmp_path, model_bytes):
    import gpunet.files.data

    model = tmp_path / "model.npz"
    model.write_bytes(model_bytes)
    data = digits_csv(tmp_path / "test.csv")
    out = tmp_path / "submission.csv"
    real_load = gpunet.files.data.load_digits

    def load_while_notes_are_written(*args, **kwargs):  # predict reads a large CSV; the user writes notes meanwhile
        out.write_text("my notes\n")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(gpunet.files.data, "load_digits", load_while_notes_are_written)
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                            "--out", str(out))
    beside = tmp_path / "submission.new.csv"
    assert code == 0 and out.read_text() == "my notes\n", err
    assert err.count("\n") == 1 and "a file gpunet does not replace" in err and str(beside) in err, err
    assert stdout.strip() == f"Wrote 40 predictions to {beside}"
    assert beside.read_text().splitlines()[0] == "ImageId,Label" and len(beside.read_text().splitlines()) == 41
    assert hidden_files(tmp_path) == []


# -- finding 4: Classifier.save had no guard -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted():
    from gpunet import Classifier
    from gpunet.files.data import load_sample

    sample = load_sample()
    return Classifier(hidden=(32,), epochs=2, device="cpu").fit(sample.images[:3000], sample.labels[:3000])


def test_classifier_save_refuses_a_csv_and_a_link(tmp_path, fitted):
    csv = tmp_path / "mydata.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(GpunetError, match=re.escape(str(csv)) + ".*refusing to replace it"):
        fitted.save(str(csv))
    assert csv.read_text() == "a,b\n1,2\n"
    target = tmp_path / "real.npz"
    fitted.save(target)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    with pytest.raises(GpunetError, match="symbolic link"):
        fitted.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    fitted.save(target)  # a gpunet model is replaced, as gpunet train replaces one
    assert load_model(target)[1]["format"] == "gpunet-model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "mydata.csv", "real.npz"]


def test_classifier_save_checks_again_just_before_the_rename(monkeypatch, tmp_path, fitted):
    import gpunet.files.checkpoint

    out = tmp_path / "model.npz"
    real_save = gpunet.files.checkpoint.save_model

    def save_while_a_csv_appears(path, *args):
        out.write_text("a,b\n1,2\n")
        real_save(path, *args)

    monkeypatch.setattr(gpunet.files.checkpoint, "save_model", save_while_a_csv_appears)
    with pytest.raises(GpunetError, match="refusing to replace it"):
        fitted.save(out)
    assert out.read_text() == "a,b\n1,2\n" and sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


# -- finding 5: two runs at once on one --out both said "saved" over each other ------------------------------------
def saved_path(stdout):
    return stdout.strip().splitlines()[-1].rsplit("saved ", 1)[1]


def test_two_runs_writing_one_out_at_once_each_keep_their_model_and_say_where(tmp_path):
    out = tmp_path / "same.npz"
    runs = {"16,16": [784, 16, 16, 10], "64": [784, 64, 10]}
    procs = {hidden: subprocess.Popen([sys.executable, "-m", "gpunet", "train", "--device", "cpu", "--epochs", "2",
                                       "--hidden", hidden, "--out", str(out)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for hidden in runs}
    outputs = {hidden: proc.communicate(timeout=300) for hidden, proc in procs.items()}
    assert [proc.returncode for proc in procs.values()] == [0, 0], outputs
    for hidden, (stdout, err) in outputs.items():
        where = saved_path(stdout)
        other_stdout = outputs[next(h for h in runs if h != hidden)][0]
        sizes = load_model(where)[1]["layer_sizes"]
        if sizes != runs[hidden]:  # replaced since: only by the other run, which must say so and keep it
            assert where == str(out) and f"kept it as {tmp_path / 'same.previous.npz'}" in other_stdout, outputs
            assert load_model(tmp_path / "same.previous.npz")[1]["layer_sizes"] == runs[hidden]
        if where != str(out):
            assert f"another run wrote {out} after this one started" in err, err
    found = {tuple(load_model(p)[1]["layer_sizes"]) for p in tmp_path.iterdir()}
    assert found == {tuple(sizes) for sizes in runs.values()}  # both models, whichever finished first
    assert hidden_files(tmp_path) == []


def test_a_model_another_run_wrote_at_out_after_this_one_started_is_not_replaced(capsys, monkeypatch, tmp_path,
                                                                                  model_bytes):
    out = tmp_path / "model.npz"
    out.write_bytes(model_bytes)
    other = tmp_path / "other.npz"
    other.write_bytes(model_bytes)
    train_then(monkeypatch, lambda: os.replace(other, out))  # as a second run saves: a new file at --out
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--seed", "9", "--out", str(out))
    beside = tmp_path / "model.completed.npz"
    assert code == 0, err
    assert err.count("\n") == 1 and f"another run wrote {out} after this one started" in err and str(beside) in err
    assert stdout.rstrip().endswith(f"saved {beside}") and f"saved {out}" not in stdout
    assert out.read_bytes() == model_bytes and load_model(beside)[1]["training"]["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.completed.npz", "model.npz"]


# -- finding 6: a replaced model was lost without a word -----------------------------------------------------------
def test_a_replaced_cnn_is_kept_as_previous_and_named(capsys, monkeypatch, tmp_path):
    cnn = tmp_path / "cnn.npz"
    run_quietly("train", "--device", "cpu", "--arch", "conv2k5,pool4", "--epochs", "1", "--out", str(cnn))
    accuracy = load_model(cnn)[1]["final_metrics"]["val_accuracy"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.npz").write_bytes(cnn.read_bytes())  # cp cnn.npz model.npz
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1")  # the default --out
    assert code == 0, err
    assert (tmp_path / "model.previous.npz").read_bytes() == cnn.read_bytes()
    assert (f"Replaced the model conv2k5,pool4, validation accuracy {100 * accuracy:.2f}%; "
            f"kept it as model.previous.npz") in stdout, stdout
    assert load_model(tmp_path / "model.npz")[1]["layer_sizes"] == [784, 16, 16, 10]
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--seed", "3")  # one generation
    assert code == 0 and "Replaced the model 784-16-16-10" in stdout, err
    assert load_model(tmp_path / "model.previous.npz")[1]["layer_sizes"] == [784, 16, 16, 10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.npz", "model.npz", "model.previous.npz"]


def test_a_previous_that_is_not_a_model_is_kept_and_the_run_saves_beside(capsys, tmp_path, model_bytes):
    out = tmp_path / "model.npz"
    out.write_bytes(model_bytes)
    (tmp_path / "model.previous.npz").write_text("my notes\n")
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    beside = tmp_path / "model.completed.npz"
    assert code == 0 and str(beside) in err and stdout.rstrip().endswith(f"saved {beside}"), err
    assert out.read_bytes() == model_bytes and (tmp_path / "model.previous.npz").read_text() == "my notes\n"


# -- finding 9: a save on a full disk said "No space left on device" and no more ---------------------------------
FULL_DISK = """
import errno, os, signal, sys
import numpy as np
import gpunet.frontends.cli as cli

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

np.savez = no_space
if sys.argv[2] == "sigterm":  # SIGTERM during training, sent once the first epoch is done
    real_report = cli.EpochReporter.__call__
    def report_then_terminated(self, metrics):
        real_report(self, metrics)
        signal.raise_signal(signal.SIGTERM)
    cli.EpochReporter.__call__ = report_then_terminated
cli.main(["train", "--device", "cpu", "--epochs", "3", "--out", sys.argv[1]])
"""


@pytest.mark.parametrize("when", ["sigterm", "completed"])
def test_a_save_on_a_full_disk_names_the_path_and_what_was_kept(tmp_path, model_bytes, when):
    out = tmp_path / "model.npz"
    out.write_bytes(model_bytes)
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(out), when], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == (128 + signal.SIGTERM if when == "sigterm" else 1), proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "No space left on device" in proc.stderr and str(out) in proc.stderr
    assert "nothing was saved" in proc.stderr and f"{out} is as it was" in proc.stderr, proc.stderr
    if when == "sigterm":
        assert proc.stderr.startswith("Error: interrupted in epoch 2;"), proc.stderr  # read before its first step
    assert out.read_bytes() == model_bytes and sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


# -- finding 23: SIGKILL left hidden temporary files for good; no fsync before the rename ---------------------------
KILLED_IN_SAVE = """
import os, signal, sys
import numpy as np
from gpunet.frontends.cli import main

real_savez = np.savez

def savez_then_killed(file, **arrays):  # half the model written, then SIGKILL
    file.write(b"PK half a model")
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = savez_then_killed
main(["train", "--device", "cpu", "--epochs", "1", "--out", sys.argv[1]])
"""


def test_a_save_removes_the_temporary_files_a_killed_process_left(capsys, tmp_path, model_bytes):
    out = tmp_path / "model.npz"
    out.write_bytes(model_bytes)
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_SAVE, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = hidden_files(tmp_path)
    assert any(name.endswith(".new") for name in left) and any(name.endswith(".tmp") for name in left), left
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 0, err
    assert hidden_files(tmp_path) == []
    assert load_model(out)[1]["stop_reason"] == "completed"


def test_a_save_keeps_the_temporary_files_of_running_processes(capsys, tmp_path):
    from gpunet.files.outputs import HOST

    live = tmp_path / f".gpunet-{HOST}-{os.getpid()}-abcdefgh.new"  # a running process's (this one's)
    live.write_bytes(b"being written")
    other_host = tmp_path / ".gpunet-00000000-1-abcdefgh.new"  # another machine's, on a shared folder
    other_host.write_bytes(b"being written")
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "model.npz"))
    assert code == 0, err
    assert hidden_files(tmp_path) == sorted([live.name, other_host.name])


def test_the_save_flushes_the_file_before_the_rename_and_the_folder_after(capsys, monkeypatch, tmp_path):
    out = tmp_path / "model.npz"
    events, real_fsync, real_replace, real_link = [], os.fsync, os.replace, os.link

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", "folder" if target == str(tmp_path) else os.path.basename(target)))
        real_fsync(fd)

    def publish(real):
        def call(src, dst, *args, **kwargs):
            events.append(("publish", os.path.basename(src), os.path.basename(dst)))
            return real(src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", publish(real_replace))
    monkeypatch.setattr(os, "link", publish(real_link))
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 0, err
    (final,) = [k for k, e in enumerate(events) if e[0] == "publish" and e[2] == "model.npz"]
    temporary = events[final][1]
    assert ("fsync", temporary) in events[:final], events  # the complete file is on the disk before it is named
    assert ("fsync", "folder") in events[final + 1:], events  # and so is its name, after


# -- review of issue 17: refusals say each thing once; a failed save says what was saved -----------------------------
def test_refusals_say_what_the_file_holds_once(capsys, tmp_path, model_bytes):
    out = tmp_path / "m.npz"
    np.savez(out, metadata=np.array('{"run": 42}'))
    code, _, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 1 and err == (f"Error: --out {out}: holds a zip archive that is not a gpunet model this version "
                                 "reads; refusing to replace it, give another name\n"), err
    model, data = tmp_path / "model.npz", digits_csv(tmp_path / "test.csv")
    model.write_bytes(model_bytes)
    csv = tmp_path / "log.csv"
    csv.write_text("ImageId,Label,Notes\n1,7,x\n")
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                       "--out", str(csv))
    assert code == 1 and err == (f"Error: --out {csv}: holds a file starting ImageId,Label that is not a Kaggle "
                                 "submission (a header of exactly ImageId,Label, then rows of two whole numbers); "
                                 "refusing to replace it, give another name\n"), err
    csv.write_text("my notes\n")
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                       "--out", str(csv))
    assert code == 1 and err == (f"Error: --out {csv}: holds another kind of file, not a Kaggle submission; "
                                 "refusing to replace it, give another name\n"), err


def test_a_replaced_model_is_named_in_one_plain_sentence(capsys, monkeypatch, tmp_path):
    import gpunet.files.checkpoint
    from gpunet.files.outputs import describe_model

    out = tmp_path / "model.npz"
    run_quietly("train", "--device", "cpu", "--epochs", "1", "--val-size", "0", "--out", str(out))
    code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", "--out", str(out))
    assert code == 0 and (f"Replaced the model 784-16-16-10 with no validation accuracy recorded; kept it as "
                          f"{tmp_path / 'model.previous.npz'}\n") in stdout, stdout
    monkeypatch.setattr(gpunet.files.checkpoint, "load_metadata", lambda path: {})  # no network, no accuracy
    assert describe_model(out) == "a gpunet model with no validation accuracy recorded"


def test_a_failed_submission_save_says_the_probabilities_were_saved(capsys, monkeypatch, tmp_path, model_bytes):
    import errno

    from gpunet.files import outputs

    model, data = tmp_path / "model.npz", digits_csv(tmp_path / "test.csv")
    model.write_bytes(model_bytes)
    out, probs = tmp_path / "submission.csv", tmp_path / "probs.csv"
    real_fsync, calls = outputs.fsync_file, []

    def second_fails(path):  # the probabilities' save goes through, the submission's finds the disk full
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(path)

    monkeypatch.setattr(outputs, "fsync_file", second_fails)
    code, stdout, err = run(capsys, "predict", "--device", "cpu", "--model", str(model), "--data", str(data),
                            "--out", str(out), "--probabilities", str(probs))
    assert code == 1 and err.count("\n") == 1 and "nothing was saved" not in err, err
    assert err == (f"Error: {out}: could not save the submission: No space left on device; the submission was not "
                   f"saved (only the probabilities, to {probs}), nothing is at {out}\n"), err
    assert probs.read_text().startswith("ImageId,p0") and not out.exists()
