"""scripts/bench.py runs and fills its table (on the CPU, and on the CuPy stand-in for its GPU rows).

Nothing here is timed or compared: these only show that the benchmark works,
so that a run on a GPU machine measures rather than fails.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpunet.backends.cpu import CpuBackend

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_digits(bench, m=600):
    rng = np.random.default_rng(0)
    return bench.Digits(rng.integers(0, 256, size=(m, 784), dtype=np.uint8),
                        rng.integers(0, 10, size=m).astype(np.uint8))


CNN_ROWS = ["CNN epoch, batch 128, Adam", "floor: FLOPs of a CNN epoch"]
# conv32k5,pool2,conv64k5,pool2,dense256 + the output, counted by hand: W (outputs, fan_in) and b per layer
CNN_LAYERS = [  # (outputs, fan_in, positions per sample)
    (32, 1 * 5 * 5, 24 * 24),  # conv32k5 on 28x28 -> 24x24 ('valid'), pool2 -> 12x12
    (64, 32 * 5 * 5, 8 * 8),  # conv64k5 on 12x12 -> 8x8, pool2 -> 4x4
    (256, 64 * 4 * 4, 1),  # dense256 on the flattened 64x4x4 maps
    (10, 256, 1),  # the output layer
]


def check_rows(rows, device, batches, cnn=False):
    works = [row[1] for row in rows]
    assert works == ["full-batch GD step", *(f"SGD epoch, batch {b}" for b in batches), *(CNN_ROWS if cnn else []),
                     "floor: read X once", "floor: FLOPs of a step"]
    for row in rows:
        assert row[0] == device
        milliseconds = float(row[2].split()[0])  # "   1.82 (1.75)" -> 1.82 (a fast step may print 0.00)
        assert np.isfinite(milliseconds) and milliseconds >= 0, row
    assert re.fullmatch(r"\d+\.\d MB at \d+\.\d GB/s copy", rows[-2][4]), rows[-2]


def test_measure_on_the_cpu(bench):
    rows = bench.measure("cpu", CpuBackend(), small_digits(bench), [128], repeats=1)
    check_rows(rows, "cpu", [128])
    assert [row[3] for row in rows[:2]] == ["-", "-"]  # no PyTorch side asked for


def test_the_cnn_rows_on_the_cpu(bench):
    rows = bench.measure("cpu", CpuBackend(), small_digits(bench, 300), [], repeats=1, cnn_repeats=1)
    check_rows(rows, "cpu", [], cnn=True)
    assert rows[1][3] == "-" and rows[1][4] == "-"  # no PyTorch side asked for: no time, no ratio
    per_sample = sum(2 * outputs * fan_in * positions for outputs, fan_in, positions in CNN_LAYERS)
    backward = per_sample - 2 * 32 * 25 * 24 * 24  # the first layer's input gradient is never computed
    assert bench.cnn_epoch_flops(300) == 300 * (2 * per_sample + backward)
    assert re.fullmatch(r"\d+ GFLOP at \d+ GFLOP/s \(large sgemm\)", rows[2][4]), rows[2]


def test_the_gpunet_cnn_is_the_spec_and_trains(bench):
    """GpunetCNN is gpunet's LayerStack of CNN_ARCH, and its timed epoch is a real training epoch."""
    side = bench.GpunetCNN(CpuBackend(), small_digits(bench, 256))
    assert side.network.arch == tuple(bench.CNN_ARCH.split(","))
    assert [tuple(shape) for shape in side.network.shapes] == [
        shape for outputs, fan_in, _ in CNN_LAYERS for shape in ((outputs, fan_in), (outputs, 1))]
    before = side.network.flat.copy()
    side.run(bench.CNN_BATCH)
    assert side.optimizer.t == 2  # 256 digits at batch 128: two Adam steps
    assert np.isfinite(side.loss) and side.loss > 0
    assert not np.array_equal(side.network.flat, before)


def test_the_pytorch_cnn_has_the_same_layers(bench):
    torch = pytest.importorskip("torch")
    side = bench.TorchCNN(torch, "cpu", small_digits(bench, 256))
    shapes = [tuple(p.shape) for p in side.model.parameters()]
    # PyTorch's conv weights are (filters, C, k, k): gpunet's W (filters, C.k.k) unfolded
    assert [int(np.prod(shape)) for shape in shapes] == [
        n for outputs, fan_in, _ in CNN_LAYERS for n in (outputs * fan_in, outputs)]
    before = [p.detach().clone() for p in side.model.parameters()]
    side.run(bench.CNN_BATCH)
    assert all(not torch.equal(p, q) for p, q in zip(side.model.parameters(), before))


@pytest.mark.kernels
def test_measure_on_the_cuda_stand_in(bench, stand_in_cuda, monkeypatch):
    """The GPU rows' code (CupyBackend, the device's floors) on the stand-in, its kernels walked on the CPU."""
    monkeypatch.setitem(bench.MATMUL_SIZES, "cuda", 256)
    rows = bench.measure("cuda", stand_in_cuda, small_digits(bench, 300), [128], repeats=1)
    check_rows(rows, "cuda", [128])


@pytest.mark.kernels
def test_measure_on_the_cuda_stand_in_as_a_graph(bench, stand_in_cuda, monkeypatch):
    """bench.py --cuda-graph: the same rows, the epochs' whole steps replayed as graph launches, on a stand-in that
    refuses cuBLAS while capturing as CuPy does (the products are gpunet's matmul kernel in a graph run)."""
    from tests.cupy_stand_in import GRAPH

    monkeypatch.setitem(bench.MATMUL_SIZES, "cuda", 256)
    stand_in_cuda.cuda_graph = True
    rows = bench.measure("cuda", stand_in_cuda, small_digits(bench, 300), [128], repeats=1)
    check_rows(rows, "cuda", [128])
    assert sum(event.kind == GRAPH for event in stand_in_cuda.xp.events) > 0


def run_script(tmp_path, *options, block_torch=False):
    """bench.py on 1,000 synthetic digits (the test does not depend on ../shared); (stdout, the table's rows)."""
    missing = tmp_path / "train.csv.gz"
    argv = [str(SCRIPT), "--samples", "1000", "--repeats", "1", "--batches", "256", "--device", "cpu",
            "--data", str(missing), *options]
    if block_torch:  # as on a machine without PyTorch, whether or not this one has it
        command = [sys.executable, "-c", "import runpy, sys; sys.modules['torch'] = None; sys.argv = "
                   f"{argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"]
    else:
        command = [sys.executable, *argv]
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=300)  # a guard against a hang, not a timing check
    assert done.returncode == 0, done.stderr
    assert "Data: synthetic uint8 digits, 1,000 x 784" in done.stdout
    table = [[cell.strip() for cell in line.split("|")[1:-1]] for line in done.stdout.splitlines()
             if line.startswith("| cpu")]
    return done.stdout, table


def test_the_script_prints_its_table(tmp_path):
    _, table = run_script(tmp_path, "--cnn-repeats", "0")
    assert [row[1] for row in table[:4]] == [
        "full-batch GD step", "SGD epoch, batch 256", "floor: read X once", "floor: FLOPs of a step"]


def test_the_script_times_the_cnn_without_pytorch(tmp_path):
    stdout, table = run_script(tmp_path, "--cnn-repeats", "1", "--threads", "1", block_torch=True)
    assert "PyTorch: not installed (no comparison column)" in stdout
    assert "CNN: conv32k5,pool2,conv64k5,pool2,dense256 + a 10-way output" in stdout
    assert [row[1] for row in table[:6]] == ["full-batch GD step", "SGD epoch, batch 256", *CNN_ROWS,
                                             "floor: read X once", "floor: FLOPs of a step"]
    for row in table[:3]:  # timed by gpunet; no PyTorch time, no ratio
        assert float(row[2].split()[0]) >= 0 and row[3:] == ["-", "-"], row


def test_pytorch_keeps_the_threads_it_was_given(bench, monkeypatch):
    """--threads holds for every PyTorch step, also after gpunet's compiled epochs (where numba's parallel loops
    run, they set the OpenMP thread count that PyTorch shares back to all cores)."""
    torch = pytest.importorskip("torch")
    digits = small_digits(bench)
    gpunet, pytorch = bench.Gpunet(CpuBackend(), digits), bench.Torch(torch, "cpu", digits)
    seen = []
    step = pytorch.step
    monkeypatch.setattr(pytorch, "step", lambda xb, yb: (seen.append(torch.get_num_threads()), step(xb, yb)))
    monkeypatch.setattr(bench.Torch, "threads", 1)
    original = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for _ in range(2):
            gpunet.run(256)  # batch 256: the compiled path's parallel steps, where numba is installed
            pytorch.run(256)
    finally:
        torch.set_num_threads(original)
    assert seen and set(seen) == {1}


def test_the_dense_paths_benchmark_times_both_paths_at_each_width():
    pytest.importorskip("numba")
    script = SCRIPT.parent / "bench_dense_paths.py"
    run = subprocess.run([sys.executable, str(script), "--samples", "256", "--widths", "8,8", "24", "--repeats", "1",
                          "--batch", "32", "--data", str(SCRIPT.parent / "no such file")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if re.match(r"\| (8,8|24) \|", line)]
    assert len(rows) == 2, run.stdout
    for row in rows:
        compiled, numpy, ratio = (float(re.sub(r"[^\d.]", "", cell.split("(")[0])) for cell in row.split("|")[2:5])
        assert compiled > 0 and numpy > 0 and abs(ratio - compiled / numpy) < 0.01 + 0.01 * ratio


def test_the_dense_paths_benchmark_reports_a_failing_path_in_its_row(monkeypatch, capsys):
    pytest.importorskip("numba")
    spec = importlib.util.spec_from_file_location("bench_dense_paths", SCRIPT.parent / "bench_dense_paths.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    real_run = script.DenseEpoch.run

    def run(self, batch):
        if not self.backend.compiled_path(self.network, self.optimizer):
            raise MemoryError("no room")
        real_run(self, batch)

    monkeypatch.setattr(script.DenseEpoch, "run", run)
    monkeypatch.setattr(sys, "argv", ["bench_dense_paths.py", "--samples", "256", "--widths", "8,8", "--repeats", "1",
                                      "--batch", "32", "--data", str(SCRIPT.parent / "no such file")])
    script.main()
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 8,8 |"))
    assert "MemoryError: no room" in row


def test_the_cnn_alone_benchmark_times_gpunets_epochs():
    script = SCRIPT.parent / "bench_cnn_alone.py"
    run = subprocess.run([sys.executable, str(script), "gpunet", "--samples", "256", "--epochs", "2",
                          "--data", str(SCRIPT.parent / "no such file")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    line = run.stdout.strip().splitlines()[-1]
    epochs = [float(t.replace(",", "")) for t in line.split("CNN epochs ")[1].split(" ms;")[0].split()]
    assert line.startswith("gpunet alone (synthetic") and len(epochs) == 2 and all(t > 0 for t in epochs), line


def test_bench_augment_runs_on_a_small_sample():
    """scripts/bench_augment.py: the augmented and plain epochs and the passes alone, with their ratio."""
    script = SCRIPT.parent / "bench_augment.py"
    run = subprocess.run([sys.executable, str(script), "--samples", "200", "--rounds", "1",
                          "--data", str(SCRIPT.parent / "no such file")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("CNN conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5, batch 64, 200 digits (synthetic")
    assert [line.split(":")[0].strip() for line in lines[1:5]] == ["plain", "augmented", "augmentation alone",
                                                                     "numpy pass"]
    assert lines[-1].startswith("augmented epoch / plain epoch: ") and "% of a plain epoch" in lines[-1]


def test_bench_read_times_fresh_processes_of_each_checkout(tmp_path):
    """scripts/bench_read.py: one line per checkout and file, with the digits each child read; a bad file is one line."""
    script = SCRIPT.parent / "bench_read.py"
    other = tmp_path / "other"  # another checkout: a copy of this one's package
    shutil.copytree(SCRIPT.parent.parent / "gpunet", other / "gpunet", ignore=shutil.ignore_patterns("__pycache__"))
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    good, bad = tmp_path / "train.csv", tmp_path / "bad.csv"
    good.write_text(header + "\n" + ("3," + ",".join(["7"] * 784) + "\n") * 5)
    bad.write_text(header + "\n3,x\n")
    run = subprocess.run([sys.executable, str(script), "--runs", "2", "--gpunet-root", str(other), str(good)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("train.csv ")]
    assert [row[1] for row in rows] == [str(SCRIPT.parent.parent), str(other)], run.stdout
    assert all(row[2:5] == ["5", "digits", "load"] for row in rows), run.stdout
    run = subprocess.run([sys.executable, str(script), "--runs", "1", str(bad)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "bad.csv" in run.stderr and "line 2 has 2 columns" in run.stderr, run.stderr


@pytest.mark.parametrize("args, says", [(["--runs", "0"], "--runs 0: give 1 or more"),
                                        (["nowhere.csv"], "nowhere.csv: no such file")])
def test_bench_read_refuses_bad_options_in_one_line(tmp_path, args, says):
    run = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_read.py"), *args], capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and says in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_bench_read_reads_labels_where_the_header_has_them_whatever_the_files_name(tmp_path):
    """A file without a label column is read as test digits though its name is not test*, and one with labels
    as training digits though its name is test*: the header says which, not the name."""
    header = ",".join(f"pixel{i}" for i in range(784))
    unlabeled, labeled = tmp_path / "digits.csv", tmp_path / "test_copy.csv"
    unlabeled.write_text(header + "\n" + (",".join(["7"] * 784) + "\n") * 4)
    labeled.write_text("label," + header + "\n" + ("3," + ",".join(["7"] * 784) + "\n") * 3)
    run = subprocess.run([sys.executable, str(SCRIPT.parent / "bench_read.py"), "--runs", "1", str(unlabeled),
                          str(labeled)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line.split() for line in run.stdout.splitlines() if ".csv " in line}
    assert rows["digits.csv"][2:4] == ["4", "digits"] and rows["test_copy.csv"][2:4] == ["3", "digits"], run.stdout
    assert rows["test_copy.csv"][-1] == "labeled" and rows["digits.csv"][-1] == "unlabeled", run.stdout
