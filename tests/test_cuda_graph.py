"""A whole training step as one CUDA graph launch (``gpunet train --cuda-graph``), without a GPU.

1. The kernels a replayed step adds (kernels/step.cu's batch_begin and batch_end, optimizers.cu's
   ``*_update_at``), walked on the CPU against the generic code, with a broken variant of each shown to fail.
2. The CuPy stand-in captures as CUDA does: nothing runs while capturing, the launches are recorded and
   replayed by ``Graph.launch``; an allocation, a synchronisation and a transfer are refused.
3. Training with --cuda-graph on the stand-in (the real CupyBackend and loop) gives the eager run's
   parameters and metrics bit for bit: a replayed step runs the same kernels, in the same order, on the same
   numbers (the optimizer's kernel reads, from a table, the numbers the eager step passes it, rounded to the
   same dtype; its per-element body is the eager kernel's), so there is no rounding to bound. A capture that
   fails falls back to eager steps with one notice.
"""

from __future__ import annotations

import numpy as np
import pytest
from cupy_backends.cuda.api.runtime import CUDARuntimeError

from gpunet.backends import cuda as backend_cuda, kernels
from gpunet.files.data import Digits, load_sample
from gpunet.nn import layers
from gpunet.nn.optimizers import make_optimizer
from gpunet.training import graph_epoch, loop
from tests.cupy_stand_in import GRAPH, stand_in_backend
from tests.kernel_support import HostWalk, WalkProcess, build_walk
from tests.test_kernels import DTYPES, SHAPES, update_case

pytestmark = pytest.mark.kernels


# -- 1. the kernels --------------------------------------------------------------------------------------------
def check_update_at(walk, dtype, rule, sizes, shape):
    """Three steps of ``rule`` (cosine-like rates, Adam's bias corrections), each the *_update_at kernel reading
    its row of a table filled up front: the eager kernel's parameters and state, bit for bit (the generic
    optimizer on the CPU is the reference; test_kernels holds the eager kernel to it)."""
    params, grads = update_case(np.random.default_rng(sum(sizes) + 1), dtype, *sizes, steps=3)
    rates = (0.01, 0.004, 0.0007)
    reference = make_optimizer(rule, [p.copy() for p in params], rates[0], 0.1)
    replayed = make_optimizer(rule, [p.copy() for p in params], rates[0], 0.1)
    rows = []
    for rate in rates:  # what graph_epoch does at the start of an epoch
        replayed.lr = rate
        replayed.advance()
        rows.append(kernels.update_scalars(rule, dtype, **replayed.scalars()))
    table, step = np.stack(rows), np.zeros(1, np.int64)
    walked = walk.shaped(**SHAPES[shape])
    with np.errstate(invalid="ignore", over="ignore"):
        for k, (rate, pair) in enumerate(zip(rates, grads)):
            reference.lr = rate
            reference.step([g.copy() for g in pair])
            step[0] = k
            kernels.optimizer_update_at(rule, replayed.params, [g.copy() for g in pair], replayed.state_arrays(), table, step,
                                        launcher=walked)
    assert [launch.kernel for launch in walked.launches] == [f"{rule}_update_at"] * 3
    for got, want in zip(replayed.params, reference.params):
        np.testing.assert_array_equal(got, want)
    for got_list, want_list in zip(replayed.state_arrays(), reference.state_arrays()):
        for got, want in zip(got_list, want_list):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sizes", [(1, 1), (7, 3), (12_960, 42)])
@pytest.mark.parametrize("rule", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_update_at(walk, dtype, rule, sizes, shape):
    check_update_at(walk, dtype, rule, sizes, shape)


def check_batch_ends(walk, m: int, batch: int, shape: str):
    """batch_begin and batch_end over an epoch of m samples: the generic slices (order[k.batch:...], labels[index],
    losses[k.batch:...] = batch losses), the step number advanced once a step, nothing past m written."""
    rng = np.random.default_rng(m)
    rows = m + 5
    labels = rng.integers(0, 10, size=rows).astype(np.int32)
    order = rng.permutation(rows)[:m].astype(np.int64)
    losses = np.full(m, -7.0, np.float32)
    step = np.zeros(1, np.int64)
    walked = walk.shaped(**SHAPES[shape])
    for k in range(-(-m // batch)):
        index, batch_labels = np.zeros(batch, np.int64), np.zeros(batch, np.int32)
        kernels.batch_begin(order, labels, step, index, batch_labels, np.float32, launcher=walked)
        want = order[k * batch:(k + 1) * batch]
        np.testing.assert_array_equal(index[:len(want)], want)
        np.testing.assert_array_equal(batch_labels[:len(want)], labels[want])
        assert (index[len(want):] == -1).all() and (batch_labels[len(want):] == -1).all()  # past m
        batch_losses = rng.standard_normal(batch).astype(np.float32)
        kernels.batch_end(batch_losses, losses, step, launcher=walked)  # one thread works, whatever the grid
        np.testing.assert_array_equal(losses[k * batch:(k + 1) * batch], batch_losses[:len(want)])
        assert step[0] == k + 1
    assert (losses != -7.0).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m, batch", [(10, 3), (300, 64), (600, 300)])
def test_batch_begin_and_end(walk, m, batch, shape):
    check_batch_ends(walk, m, batch, shape)


def check_dropout_mask_at(walk, dtype, shape, first_sample: int, first: int, k: int, walk_shape: str):
    """The mask for the run's step first + k, read on the device: the generic mask of that step, bit for bit."""
    mask = np.empty(shape, dtype)
    walked = walk.shaped(**SHAPES[walk_shape])
    kernels.dropout_mask_at(mask, 0.3, 11, np.array([first], np.int64), np.array([k], np.int64),
                            first_sample=first_sample, launcher=walked)
    np.testing.assert_array_equal(mask, layers.dropout_mask(np, shape, 0.3, 11, first + k, dtype, first_sample))


@pytest.mark.parametrize("walk_shape", SHAPES)
@pytest.mark.parametrize("shape, first_sample", [((7,), 0), ((16, 64), 0), ((3, 5, 4, 7), 5)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_at(walk, dtype, shape, first_sample, walk_shape):
    for first, k in ((0, 0), (641, 3), (2**40, 17)):
        check_dropout_mask_at(walk, dtype, shape, first_sample, first, k, walk_shape)


BROKEN = {  # one slip in each: a row's stride, a batch's place, a step number not advanced, the epoch's first
    "optimizers": [("const T* s = table + step[0] * 7;", "const T* s = table + step[0] * 6;"),
                   ("const T* s = table + step[0] * 2;", "const T* s = table + step[0];")],
    "step": [("    const long long place = k * batch + j;\n    if (place < 0 || place >= m) {",
              "    const long long place = k + j;\n    if (place < 0 || place >= m) {"),
             ("    step[0] = k + 1;", "    step[0] = k;")],
    "dropout": [("mix64(seed_state + (unsigned long long)(first_step[0] + step[0]))",
                 "mix64(seed_state + (unsigned long long)(step[0]))")],
}


def test_broken_step_kernels_fail_the_comparisons(tmp_path, monkeypatch):
    """The tests above can fail: each slip of BROKEN, built into a walk of its own, fails its comparison."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    for path in kernels.source_dir().iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(folder))
    checks = {"optimizers": [lambda walk: check_update_at(walk, np.float32, "adam", (7, 3), "package"),
                             lambda walk: check_update_at(walk, np.float32, "sgd", (7, 3), "package")],
              "step": [lambda walk: check_batch_ends(walk, 300, 64, "package")] * 2,
              "dropout": [lambda walk: check_dropout_mask_at(walk, np.float32, (16, 64), 0, 641, 3, "package")]}
    for module, slips in BROKEN.items():
        source = (folder / f"{module}.cu").read_text()
        for (old, new), check in zip(slips, checks[module]):
            assert source.count(old) == 1, old
            (folder / f"{module}.cu").write_text(source.replace(old, new))
            build = tmp_path / f"{module}-{len(new)}"
            build.mkdir()
            process = WalkProcess(build_walk(build), build)
            try:
                with pytest.raises(AssertionError):
                    check(HostWalk(process))
            finally:
                process.close()
        (folder / f"{module}.cu").write_text(source)


# -- 2. the stand-in captures as CUDA does ----------------------------------------------------------------------
def test_capture_records_launches_and_runs_nothing_until_the_graph_is_launched(stand_in_cuda):
    """An elementwise kernel into out=, a custom kernel and a cuBLAS product, captured: nothing changes until
    ``Graph.launch``, which runs them in order, as one launch; then again on the arrays' new contents (the
    product captured as a cuBLAS that captures would be, which CuPy's is not)."""
    xp = stand_in_cuda.xp
    xp.cublas_in_capture = True
    W = xp.asarray(np.array([[1.0, -2.0], [0.5, 1.0]], np.float32))
    A = xp.asarray(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    Z, b = xp.zeros((2, 2), np.float32), xp.asarray(np.array([[1.0], [-9.0]], np.float32))
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        np.multiply(A, np.float32(2), out=A)
        xp.matmul(W, A, out=Z)
        stand_in_cuda.bias_relu(Z, b)  # a custom kernel, in place
        graph = stream.end_capture()
    assert [node.kind for node in graph.nodes] == ["elementwise", "cublas", "kernel"]
    assert A.get().tolist() == [[1.0, 2.0], [3.0, 4.0]] and Z.get().tolist() == [[0.0, 0.0], [0.0, 0.0]]
    before = len(xp.events)
    for _ in range(2):
        graph.launch()
        host_A = A.get()
        want = np.maximum(W.get() @ host_A + b.get(), 0)
        np.testing.assert_array_equal(Z.get(), want)
    assert [event.kind for event in xp.events[before:] if event.kind == GRAPH] == [GRAPH, GRAPH]
    assert A.get().tolist() == [[4.0, 8.0], [12.0, 16.0]]  # doubled once per launch


@pytest.mark.parametrize("refused", ["allocation", "new result", "gather", "to host", "scalar read", "synchronize",
                                     "from host", "set"])
def test_the_stand_in_refuses_what_cuda_refuses_while_capturing(stand_in_cuda, refused):
    """What CUDA does not allow on a capturing stream raises CuPy's CUDARuntimeError (900,
    cudaErrorStreamCaptureUnsupported) and is not recorded; the stream can then end its capture."""
    xp = stand_in_cuda.xp
    a = xp.asarray(np.arange(4, dtype=np.float32))
    index = xp.asarray(np.array([1, 0]))
    actions = {
        "allocation": lambda: xp.empty(3, np.float32),
        "new result": lambda: a + a,
        "gather": lambda: a[index],
        "to host": lambda: a.get(),
        "scalar read": lambda: float(a[0]),
        "synchronize": lambda: xp.cuda.get_current_stream().synchronize(),
        "from host": lambda: xp.asarray(np.ones(2)),
        "set": lambda: a.set(np.ones(4, np.float32)),
    }
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
            actions[refused]()
        assert stream.end_capture().nodes == ()
    actions[refused]()  # allowed once the capture has ended


@pytest.mark.parametrize("product", ["matmul", "dot"])
def test_the_stand_in_refuses_cublas_while_capturing_as_cupy_does(stand_in_cuda, product):
    """CuPy (14.2 as installed: cupy_backends/cuda/libs/cublas.pyx, setStream) refuses every cuBLAS call on a
    capturing stream with this NotImplementedError, before anything is queued; the stand-in does the same
    unless a test models a cuBLAS that captures (``cublas_in_capture``)."""
    xp = stand_in_cuda.xp
    W, A, Z = xp.ones((2, 2), np.float32), xp.ones((2, 2), np.float32), xp.zeros((2, 2), np.float32)
    stream = xp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match="^calling cuBLAS API during stream capture is currently "
                                                      "unsupported$"):
            getattr(xp, product)(W, A, out=Z)
        assert stream.end_capture().nodes == ()
    getattr(xp, product)(W, A, out=Z)  # allowed once the capture has ended
    assert Z.get().tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_capture_graph_refuses_a_step_that_allocates(stand_in_cuda):
    """CupyBackend.capture_graph refuses an allocation itself (CuPy's relaxed capture would let its pool hand
    the graph a block that is later reused): the step's error, and the stream no longer captures."""
    xp = stand_in_cuda.xp
    with pytest.raises(backend_cuda.AllocationInCapture):
        stand_in_cuda.capture_graph(lambda: xp.zeros(3, np.float32))
    assert xp.capture is None
    a = xp.zeros(2, np.float32)
    graph = stand_in_cuda.capture_graph(lambda: np.add(a, np.float32(1), out=a))
    graph.launch()
    assert a.get().tolist() == [1.0, 1.0]


# -- 3. training with --cuda-graph ------------------------------------------------------------------------------
def train_on_stand_in(process, config, train_digits, val_digits, cuda_graph: bool, patch=None,
                      cublas_in_capture: bool = False, own_products: bool = False):
    """``loop.train`` on the stand-in: (result, the device's events, the graph notices said); ``result.params``: the
    network's parameters on the host. ``cublas_in_capture``: whether the stand-in captures the step's cuBLAS
    products (as a cuBLAS that captures would; CuPy refuses them, as by default). ``own_products``: an eager run
    whose small products are gpunet's matmul kernel, as a --cuda-graph run's are."""
    notices = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        backend = stand_in_backend(monkeypatch, HostWalk(process))
        backend.cuda_graph = cuda_graph
        backend.own_products = own_products
        backend.xp.cublas_in_capture = cublas_in_capture
        monkeypatch.setattr(graph_epoch, "notify", notices.append)
        if patch is not None:
            patch(monkeypatch)
        with np.errstate(all="ignore"):
            result = loop.train(backend, train_digits, val_digits, config)
        result.params = result.network.host_params()
        return result, backend.xp.events, notices


def eager_and_graph_runs(walk_exe, tmp_path, config, train_digits, val_digits, patch=None, own_products=True):
    """(the eager run, the --cuda-graph run) of ``config`` on the stand-in, each train_on_stand_in's (result, events,
    notices). The eager run's small products are gpunet's matmul kernel, as a --cuda-graph run's are (cuBLAS where
    ``own_products`` is False); ``patch`` is applied to the graph run."""
    process = WalkProcess(walk_exe, tmp_path)
    try:
        eager = train_on_stand_in(process, config, train_digits, val_digits, False, own_products=own_products)
        graph = train_on_stand_in(process, config, train_digits, val_digits, True, patch=patch)
    finally:
        process.close()
    return eager, graph


def assert_fell_back(eager_run, graph_run, notice: str):
    """The --cuda-graph run said ``notice`` alone, launched no graph, and is the eager run, bit for bit."""
    (eager, _, _), (fell_back, events, notices) = eager_run, graph_run
    assert notices == [notice]
    assert not any(event.kind == GRAPH for event in events)
    assert_same_run(fell_back, eager)


def digits_for(m: int, val: int = 40):
    digits = load_sample()
    return (Digits(digits.images[:m], digits.labels[:m], "train"),
            Digits(digits.images[m:m + val], digits.labels[m:m + val], "validation"))


def assert_same_run(got, want):
    assert len(got.params) == len(want.params)
    for g, w in zip(got.params, want.params):
        np.testing.assert_array_equal(g, w)
    assert [(h.train_loss, h.train_accuracy, h.val_loss, h.val_accuracy) for h in got.history] == \
        [(h.train_loss, h.train_accuracy, h.val_loss, h.val_accuracy) for h in want.history]


GRAPH_RUNS = {  # (settings, digits per epoch): each with a partial last batch, which runs eagerly
    "adam": (dict(optimizer="adam"), 2 * 64 + 20),
    "sgd": (dict(optimizer="sgd"), 2 * 64 + 20),
    "momentum": (dict(optimizer="momentum"), 2 * 64 + 20),
    "adam, augmented": (dict(optimizer="adam", augment=True), 2 * 64 + 20),
    "adam, dense32,dropout0.5": (dict(optimizer="adam", hidden=(), arch="dense32,dropout0.5"), 2 * 64 + 20),
    "adam, conv4k5,pool2,dense16, batch 16": (dict(optimizer="adam", hidden=(), arch="conv4k5,pool2,dense16",
                                                   batch_size=16), 2 * 16 + 5),
}


@pytest.mark.parametrize("run", GRAPH_RUNS)
def test_graph_replay_gives_the_eager_parameters(walk_exe, tmp_path, run):
    """Three epochs with --cuda-graph on a stand-in that refuses cuBLAS while capturing, as CuPy does (the first
    step of the run eager, then captured; every later whole step a graph launch): its small products are
    gpunet's matmul kernel, so the step captures, and it gives the parameters, losses and accuracies of the eager
    run whose products are that kernel too, bit for bit (module docstring: the same kernels on the same
    numbers). The eager run's products are the kernel's, no cuBLAS call."""
    given, m = GRAPH_RUNS[run]
    settings = {"batch_size": 64, **given}
    config = loop.TrainConfig.for_optimizer(settings.pop("optimizer"), epochs=3, val_size=40, seed=0, **settings)
    train_digits, val_digits = digits_for(m)
    (eager, eager_events, _), (graph, graph_events, notices) = eager_and_graph_runs(
        walk_exe, tmp_path, config, train_digits, val_digits)
    whole_steps = m // config.batch_size
    assert sum(event.kind == GRAPH for event in graph_events) == 3 * whole_steps - 1
    assert not any(event.kind == GRAPH for event in eager_events) and notices == []
    steps = [event for event in eager_events if event.kind in ("cublas", "kernel")]
    assert any(event.name.startswith("matmul<") for event in steps)
    assert_same_run(graph, eager)


def test_the_graph_steps_take_the_warm_ups_rates(walk_exe, tmp_path):
    """The table of a replayed epoch's rates follows the schedule's warm-up (here a quarter epoch: W = 1 of an
    epoch's 3 steps, the nearest to 3/4, where the default would warm up over all 3): each whole step's rate is the
    formula's, in float64 (tests/test_schedule.py), and the run is the eager run's, bit for bit."""
    from tests.test_schedule import reference_rates, schedule_bound
    from tests.tolerances import assert_within

    config = loop.TrainConfig.for_optimizer("adam", epochs=3, batch_size=64, val_size=40, seed=0, warmup=0.25)
    m = 2 * 64 + 20
    train_digits, val_digits = digits_for(m)
    tabled = []

    def record_rates(monkeypatch):
        real = kernels.update_scalars

        def update_scalars(rule, dtype, **scalars):
            tabled.append(scalars["lr"])
            return real(rule, dtype, **scalars)

        monkeypatch.setattr(kernels, "update_scalars", update_scalars)

    (eager, _, _), (graph, graph_events, notices) = eager_and_graph_runs(
        walk_exe, tmp_path, config, train_digits, val_digits, patch=record_rates)
    assert notices == [] and any(event.kind == GRAPH for event in graph_events)
    steps = loop.steps_per_epoch(m, 64)
    want = np.array([rate for k, rate in enumerate(reference_rates(config.lr, 3, steps, 0.25)) if k % steps < 2])
    assert_within(np.array(tabled), want, schedule_bound(config.lr, want), "the table's rates")
    assert_same_run(graph, eager)


def test_a_graph_run_agrees_with_the_cublas_run_within_its_bounds(walk_exe, tmp_path):
    """The --cuda-graph run's products are the matmul kernel's sums, in another order than cuBLAS's (NumPy's on
    the stand-in): two epochs of float64 Adam land within the training bounds of the eager cuBLAS run
    (tests/tolerances.py, as tests/test_gpu.py compares a GPU with the CPU), and a graph was launched."""
    from gpunet.backends.cpu import CpuBackend
    from gpunet.nn.model import Network
    from tests.test_gpu import assert_trainings_within, few_digits

    train_digits, val_digits = few_digits()
    config = loop.TrainConfig.for_optimizer("adam", hidden=(16,), epochs=2, batch_size=64, seed=0, dtype="float64",
                                            val_size=len(val_digits))
    (cublas, cublas_events, _), (graph, graph_events, notices) = eager_and_graph_runs(
        walk_exe, tmp_path, config, train_digits, val_digits, own_products=False)
    assert notices == [] and any(event.kind == GRAPH for event in graph_events)
    assert not any(event.name.startswith("matmul<") for event in cublas_events)
    for result in (graph, cublas):  # their weights, on the host (the stand-in is gone)
        result.network = Network(CpuBackend(), result.params)
    assert_trainings_within(graph, cublas, train_digits, val_digits, config)


def test_a_capture_that_fails_falls_back_with_its_notice(walk_exe, tmp_path):
    """A step that reads a number back while it is captured: the capture fails, one notice says why, and the run
    goes on eagerly, to the parameters of the eager run with the same products (matmul.cu's)."""
    config = loop.TrainConfig.for_optimizer("adam", epochs=2, batch_size=64, val_size=40, seed=0)
    train_digits, val_digits = digits_for(3 * 64)
    step_gradients = loop.step_gradients

    def reading(network, images, index, labels, losses, counter=None, transforms=None):
        result = step_gradients(network, images, index, labels, losses, counter, transforms)
        int(counter[0])  # a copy to the host: CUDA refuses it while capturing
        return result

    eager, fell_back = eager_and_graph_runs(
        walk_exe, tmp_path, config, train_digits, val_digits,
        patch=lambda monkeypatch: monkeypatch.setattr(loop, "step_gradients", reading))
    assert_fell_back(eager, fell_back, "CUDA graph: capture failed (CUDARuntimeError: "
                     "cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing); the steps "
                     "run eagerly")


def test_cupy_refusing_cublas_in_capture_falls_back_with_its_notice(walk_exe, tmp_path):
    """As CuPy is (it refuses every cuBLAS call on a capturing stream), --cuda-graph cannot capture a step whose
    products are too large for the matmul kernel (784-512-10: 512 x 784 . 784 x 64 is 25.7 M multiply-adds, over
    kernels.SMALL_PRODUCT, so cuBLAS): one notice names the refusal, no graph is launched, and the run is the
    eager run with the same products (the first layer's cuBLAS, the output layer's matmul.cu)."""
    config = loop.TrainConfig.for_optimizer("adam", hidden=(512,), epochs=2, batch_size=64, val_size=40, seed=0)
    train_digits, val_digits = digits_for(3 * 64)
    eager, fell_back = eager_and_graph_runs(walk_exe, tmp_path, config, train_digits, val_digits)
    assert_fell_back(eager, fell_back, "CUDA graph: capture failed (NotImplementedError: calling cuBLAS API during "
                     "stream capture is currently unsupported); the steps run eagerly")


def test_what_is_not_captured_says_why():
    """Where a step cannot be replayed (split between cores, an optimizer the backend does not fuse, no whole batch:
    none of which train() gives the CUDA backend), the refusal names why."""
    optimizer = make_optimizer("adam", [np.zeros(2, np.float32)] * 2, 0.01)
    network, data = type("Network", (), {"backend": None})(), range(100)
    assert graph_epoch.graph_refusal(network, optimizer, data, 64, parts=2) == "the step is split between cores"
    assert graph_epoch.graph_refusal(network, optimizer, data, 64, parts=1) is None
    assert graph_epoch.graph_refusal(network, optimizer, data, 128, parts=1) == "no whole batch in an epoch"
    optimizer.backend = "another"
    assert graph_epoch.graph_refusal(network, optimizer, data, 64, parts=1) == \
        "the adam update is not one kernel on this backend"


def test_a_graph_is_not_reused_for_another_optimizer_that_has_a_freed_ones_id(walk_exe, tmp_path, monkeypatch):
    """A run's graph steps are kept for the optimizer and data they were made for. CPython gives a freed object's id
    to the next one made (simulated here: every id the same), so an optimizer made after another one was freed
    must still get graph steps of its own, which update its parameters' moments, not the freed one's."""
    process = WalkProcess(walk_exe, tmp_path)
    try:
        backend = stand_in_backend(monkeypatch, HostWalk(process))
        backend.cuda_graph = True
        monkeypatch.setattr(graph_epoch, "notify", lambda line: pytest.fail(line))
        config = loop.TrainConfig.for_optimizer("adam", batch_size=64, seed=0)
        train_digits, _ = digits_for(2 * 64)  # whole batches only: every step but the first is a graph launch
        network = loop.new_network(backend, config, 784)
        data = loop.DeviceData(backend, train_digits)
        monkeypatch.setattr(graph_epoch, "id", lambda obj: 0, raising=False)  # every id reused
        for _ in range(2):  # the first optimizer is dropped when the second is made
            optimizer = make_optimizer("adam", network.groups, 0.01, backend=backend)
            with np.errstate(all="ignore"):
                loop.train_epoch(network, optimizer, data, 64, np.random.default_rng(1))
            assert all(bool((m.get() != 0).any()) for m in optimizer.mean)  # its moments were updated
    finally:
        process.close()
