"""The compiled CPU path (gpunet.backends.cpu_fused) gives the results of the NumPy path, gpunet's own generic operations.

Skipped where numba (or SciPy, whose BLAS it calls) is not installed. Correctness only; nothing here is timed.
"""

import numpy as np
import pytest

from gpunet.backends import cpu as backend_module
from gpunet.backends.cpu import CpuBackend
from gpunet.nn.model import Network, init_params, layer_sizes
from gpunet.nn.optimizers import make_optimizer
from gpunet.training.loop import DeviceData, TrainConfig, learning_rate, train_epoch
from tests.test_training import separable_digits
from tests.tolerances import assert_counts_within, assert_within, pass_bounds, training_bounds

cpu_fused = backend_module._cpu_fused()
pytestmark = [pytest.mark.skipif(cpu_fused is None, reason="numba or scipy is not installed: no compiled CPU path"),
              pytest.mark.paths]

NUMPY = CpuBackend(compiled=False)
COMPILED = CpuBackend(compiled=True)
HIDDEN = [(), (16, 16), (20, 12, 8)]


def network(backend, hidden, dtype, seed=3):
    net = Network(backend, init_params(layer_sizes(hidden), "he", seed=seed, dtype=dtype))
    rng = np.random.default_rng(seed)
    for b in net.biases:  # non-zero biases, so that db and relu' are exercised
        b[...] = (rng.standard_normal(b.shape) * 0.1).astype(dtype)
    return net


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("m", [1, 37, 200])  # 200: more than one BLAS block of samples
def test_forward_backward_matches_the_numpy_step(dtype, hidden, m):
    rng = np.random.default_rng(m)
    images = rng.integers(0, 256, size=(500, 784), dtype=np.uint8)
    index = rng.permutation(500)[:m]
    labels = rng.integers(0, 10, size=m).astype(np.int32)
    net = network(NUMPY, hidden, dtype)
    A0 = NUMPY.gather_scaled(images, index, net.dtype)
    Z, activations = net.forward(A0)
    want_grads, want_losses = net.backward(Z, activations, labels)
    want_correct = int(NUMPY.count_correct(Z, labels))

    bufs = cpu_fused.Buffers(net, 256)
    losses = np.empty(m, dtype)
    correct = cpu_fused._forward_backward(images, index.astype(np.int64), 0, labels, losses, bufs.Ws, bufs.bs,
                                          bufs.dWs, bufs.dbs, bufs.As, bufs.dZs, bufs.partials)
    # Blocks of BLOCK samples, another layout: the same sums in another order, within the bounds of their lengths.
    bounds = pass_bounds(net.host_params(), images[index], labels, dtype)
    assert_within(bufs.As[-1][:m].T, Z, bounds.logits, "logits")  # sample-major there
    for k, (A, bound) in enumerate(zip(activations, bounds.activations)):
        assert_within(bufs.As[k][:m].T, A, bound, f"A{k}")
    assert_within(losses, want_losses, bounds.losses, "losses")
    for k, (got, want, bound) in enumerate(zip(net.views_of(bufs.grad_flat), want_grads, bounds.grads)):
        assert got.dtype == dtype
        assert_within(got, want, bound, f"gradient {k}")
    assert_counts_within(correct, want_correct, bounds.ambiguous)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tied_logits_count_the_first_class_as_numpy_argmax_does(dtype):
    """Output weights and biases of zero: all ten logits tie, so every sample is predicted 0."""
    rng = np.random.default_rng(8)
    m = 300
    images = rng.integers(0, 256, size=(m, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=m).astype(np.int32)
    net = network(NUMPY, (16,), dtype)
    net.params[-2][...] = 0
    net.params[-1][...] = 0
    expected = int(np.sum(labels == 0))
    assert 0 < expected < m and int(NUMPY.count_correct(net.logits(NUMPY.gather_scaled(images, None, dtype)),
                                                         labels)) == expected
    bufs = cpu_fused.Buffers(net, 256)
    index = np.arange(256, dtype=np.int64)
    correct = cpu_fused._forward_backward(images, index, 0, labels[:256], np.empty(256, dtype), bufs.Ws, bufs.bs,
                                          bufs.dWs, bufs.dbs, bufs.As, bufs.dZs, bufs.partials)
    assert correct == int(np.sum(labels[:256] == 0))
    _, correct = cpu_fused.full_batch_gradients(net, images, labels, np.empty(m, dtype), 128, 2,
                                                COMPILED.parallel_map)
    assert correct == expected


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_optimizer_update_gives_the_same_bits(dtype, name):
    rng = np.random.default_rng(4)
    nets = [network(NUMPY, (6, 4), dtype) for _ in range(2)]
    grad_flat = np.empty_like(nets[0].flat)
    optimizers = [make_optimizer(name, net.groups, 0.01, 0.1) for net in nets]
    for step in range(4):
        grad_flat[...] = rng.standard_normal(grad_flat.shape)
        lr = 0.01 * (step + 1) / 4  # as a warm-up changes it
        optimizers[0].lr = lr
        optimizers[0].step([g.copy() for g in nets[0].groups_of(grad_flat)])
        opt = optimizers[1]
        kind, state1, state2, beta1, beta2, eps = cpu_fused._optimizer_state(opt)
        cpu_fused._update(kind, tuple(opt.params), tuple(nets[1].groups_of(grad_flat.copy())), state1, state2, lr,
                          0.1, beta1, beta2, eps, float(step + 1))
    np.testing.assert_array_equal(nets[1].flat, nets[0].flat)



@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_moments_are_flushed_to_zero_as_the_numpy_path_flushes_them(name):
    """Gradients that are 0 after the first steps (a border pixel's): the moments decay below the normal
    range within 900 float32 steps; both paths flush them to 0 (optimizers.flush_subnormals), the same bits."""
    rng = np.random.default_rng(5)
    nets = [network(NUMPY, (6, 4), np.float32) for _ in range(2)]
    grad_flat = np.empty_like(nets[0].flat)
    optimizers = [make_optimizer(name, net.groups, 0.01, 0.1) for net in nets]
    for step in range(900):
        grad_flat[...] = rng.standard_normal(grad_flat.shape) if step < 3 else 0
        grad_flat[::2] = 0  # half the entries never see a gradient after their first zero
        optimizers[0].step([g.copy() for g in nets[0].groups_of(grad_flat)])
        opt = optimizers[1]
        kind, state1, state2, beta1, beta2, eps = cpu_fused._optimizer_state(opt)
        cpu_fused._update(kind, tuple(opt.params), tuple(nets[1].groups_of(grad_flat.copy())), state1, state2, 0.01,
                          0.1, beta1, beta2, eps, float(step + 1))
    np.testing.assert_array_equal(nets[1].flat, nets[0].flat)
    states = [optimizer.velocity if name == "momentum" else optimizer.mean + optimizer.square
              for optimizer in optimizers]
    for mine, theirs in zip(*states):
        np.testing.assert_array_equal(mine, theirs)
    tiny = np.finfo(np.float32).tiny
    assert not any(np.any((s != 0) & (np.abs(s) < tiny)) for s in states[1])


LR, WEIGHT_DECAY = 0.01, 0.1


def run_epochs(backend, hidden, dtype, name, batch, m=300, epochs=2, schedule="cosine"):
    net = network(backend, hidden, dtype)
    optimizer = make_optimizer(name, net.groups, LR, WEIGHT_DECAY)
    data = DeviceData(backend, separable_digits(m))
    rng = np.random.default_rng(1)
    config = TrainConfig(epochs=epochs, schedule=schedule, lr=LR)
    steps = 1 if batch <= 0 else -(-m // batch)
    results = [train_epoch(net, optimizer, data, batch, rng,
                           rate=lambda k, e=e: learning_rate(config, e * steps + k, steps)) for e in range(epochs)]
    return net, optimizer, results


def epoch_plan(m, batch, epochs, schedule="cosine"):
    """run_epochs' steps as [(samples, learning rate), ...]: train_epoch draws one shuffle an epoch (mini-batches)."""
    rng = np.random.default_rng(1)
    config = TrainConfig(epochs=epochs, schedule=schedule, lr=LR)
    size = m if batch <= 0 else batch
    steps = -(-m // size)
    plan = []
    for epoch in range(epochs):
        order = np.arange(m) if batch <= 0 else rng.permutation(m)
        plan += [(order[k * size:(k + 1) * size], learning_rate(config, epoch * steps + k, steps))
                 for k in range(steps)]
    return plan


def assert_runs_within(got_run, want_run, hidden, dtype, name, batch, m=300, epochs=2):
    """Two run_epochs runs of the same steps, summed in other orders: apart by no more than their bounds."""
    (got_net, got_opt, got), (want_net, want_opt, want) = got_run, want_run
    digits = separable_digits(m)
    plan = epoch_plan(m, batch, epochs)
    bounds = training_bounds(network(NUMPY, hidden, dtype).host_params(), digits.images, digits.labels, plan, name,
                             WEIGHT_DECAY, dtype)
    for k, (g, w, bound) in enumerate(zip(got_net.host_params(), want_net.host_params(), bounds.params)):
        assert_within(g, w, bound, f"parameter {k}")
    per_epoch = len(plan) // epochs
    for epoch, ((got_loss, got_acc), (want_loss, want_acc)) in enumerate(zip(got, want)):
        steps = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        assert_within(got_loss, want_loss, sum(bounds.losses[steps]) / m, f"epoch {epoch} loss")
        assert_counts_within(round(got_acc * m), round(want_acc * m), sum(bounds.ambiguous[steps]))
    assert got_opt.lr == want_opt.lr
    assert getattr(got_opt, "t", None) == getattr(want_opt, "t", None)


# float32 Adam is left out: a gradient entry within rounding of 0 may step by +alpha in one run and
# -alpha in the other (m / sqrt(s) is its sign), so nothing short of the steps' size bounds the drift.
@pytest.mark.parametrize("dtype, name", [(np.float64, "sgd"), (np.float64, "momentum"), (np.float64, "adam"),
                                         (np.float32, "sgd"), (np.float32, "momentum")])
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("batch", [32, 70])  # 300 = 9 x 32 + 12 and 4 x 70 + 20: a last partial batch
def test_epochs_match_the_numpy_loop(dtype, hidden, name, batch):
    want = run_epochs(NUMPY, hidden, dtype, name, batch)
    got = run_epochs(COMPILED, hidden, dtype, name, batch)
    assert_runs_within(got, want, hidden, dtype, name, batch)


def test_training_uses_the_compiled_path_and_is_deterministic():
    first = run_epochs(COMPILED, (16, 16), np.float32, "adam", 64)[0].flat
    second = run_epochs(COMPILED, (16, 16), np.float32, "adam", 64)[0].flat
    np.testing.assert_array_equal(first, second)
    assert "numba" in COMPILED.describe() and "NumPy array calls" in NUMPY.describe()


def test_progress_is_reported_in_parts_adding_up_to_the_epoch(monkeypatch):
    monkeypatch.setattr(cpu_fused, "PROGRESS_SAMPLES", 100)
    net = network(COMPILED, (16,), np.float32)
    optimizer = make_optimizer("sgd", net.groups, 0.1)
    data = DeviceData(COMPILED, separable_digits(300))
    parts = []
    train_epoch(net, optimizer, data, 32, np.random.default_rng(0), progress=parts.append)
    assert sum(parts) == 300 and len(parts) == 4  # 3 steps of 32 per call: 96, 96, 96, 12


def test_unsupported_setups_take_the_numpy_path():
    net = network(COMPILED, (16,), np.float32)
    assert COMPILED.compiled_path(net, make_optimizer("adam", net.groups, 0.01)) is cpu_fused
    assert COMPILED.compiled_path(net, make_optimizer("adam", list(net.params), 0.01)) is None  # per-layer params
    assert NUMPY.compiled_path(net, make_optimizer("adam", net.groups, 0.01)) is None
    assert COMPILED.compiled_path(network(COMPILED, (16,), np.float16)) is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("m, chunk, parts", [(1000, 128, 1), (1000, 300, 2), (999, 1000, 2), (130, 64, 3)])
def test_full_batch_gradients_match_the_numpy_step(dtype, hidden, m, chunk, parts):
    rng = np.random.default_rng(m + chunk)
    images = rng.integers(0, 256, size=(m, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=m).astype(np.int32)
    net = network(NUMPY, hidden, dtype)
    Z, activations = net.forward(NUMPY.gather_scaled(images, None, net.dtype))
    want_grads, want_losses = net.backward(Z, activations, labels)
    losses = np.empty(m, dtype)
    groups, correct = cpu_fused.full_batch_gradients(net, images, labels, losses, chunk, parts, COMPILED.parallel_map)
    # Chunks and parts against one pass: the same sums of m terms in another order, each chunk's rescaled.
    bounds = pass_bounds(net.host_params(), images, labels, dtype, chunked=True)
    for k, (got, want, bound) in enumerate(zip(net.views_of(np.concatenate(groups)), want_grads, bounds.grads)):
        assert_within(got, want, bound, f"gradient {k}")
    assert_within(losses, want_losses, bounds.losses, "losses")
    assert_counts_within(correct, NUMPY.count_correct(Z, labels), bounds.ambiguous)


def test_full_batch_parts_in_parallel_give_the_bits_of_one_after_another_on_one_blas_thread():
    """parallel_map holds BLAS to one thread; so does this serial run: the same BLAS calls on the same buffers.

    (Against BLAS on its default threads, another split of each product, the parts agree within the
    bounds of their sums: test_full_batch_gradients_match_the_numpy_step.)
    """
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(2000, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=2000).astype(np.int32)
    net = network(COMPILED, (16, 16), np.float32)
    losses = np.empty(2000, np.float32)
    parallel = np.concatenate(cpu_fused.full_batch_gradients(net, images, labels, losses, 256, 2,
                                                             COMPILED.parallel_map)[0])
    with backend_module._blas_threads().limit(limits=1):
        serial = np.concatenate(cpu_fused.full_batch_gradients(net, images, labels, losses, 256, 2,
                                                               lambda fn, items: [fn(i) for i in items])[0])
    np.testing.assert_array_equal(parallel, serial)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_full_batch_epochs_match_the_numpy_path(name):
    want = run_epochs(NUMPY, (16, 16), np.float64, name, 0)
    got = run_epochs(COMPILED, (16, 16), np.float64, name, 0)
    assert_runs_within(got, want, (16, 16), np.float64, name, 0)


# -- the parallel mini-batch epoch: each step's blocks of BLOCK samples on numba's threads -----------------
def epoch_runner(dtype, hidden=(16, 16)):
    """run(images, labels, order, name, batch, parallel): two epochs on one network, reset before each run.

    The same network each run, so the same buffers (cpu_fused keeps them per network), and BLAS on
    one thread as training holds it (``compute_threads``): every run makes the same BLAS calls on the
    same memory, whichever numba thread runs which block. So parallel or not, the same bits.
    """
    net = network(COMPILED, hidden, dtype)
    start = net.flat.copy()

    def run(images, labels, order, name, batch, parallel, epochs=2):
        net.flat[...] = start
        optimizer = make_optimizer(name, net.groups, 0.01, 0.1)
        losses = np.empty(len(order), dtype)
        steps = -(-len(order) // batch)
        corrects = []
        with COMPILED.compute_threads():
            for epoch in range(epochs):
                rates = [0.01 * (epoch * steps + k + 1) / (epochs * steps) for k in range(steps)]
                corrects.append(cpu_fused.minibatch_epoch(net, optimizer, images, order, labels[order], losses, batch,
                                                          rates, parallel=parallel))
        return net.flat.copy(), losses, corrects, getattr(optimizer, "t", None)

    return run


def epoch_data(m, seed=7):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(m, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=m).astype(np.int32)
    return images, labels, rng.permutation(m)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("batch", [70, 128, 200, 512])  # 2, 2, 4 and 8 blocks; 600 samples: short last batches
def test_parallel_epoch_gives_the_bits_of_one_thread(dtype, name, batch):
    images, labels, order = epoch_data(600)
    run = epoch_runner(dtype)
    serial = run(images, labels, order, name, batch, parallel=False)
    parallel = run(images, labels, order, name, batch, parallel=True)
    np.testing.assert_array_equal(parallel[0], serial[0])
    np.testing.assert_array_equal(parallel[1], serial[1])
    assert parallel[2:] == serial[2:]


def test_parallel_epoch_with_other_layers_gives_the_bits_of_one_thread():
    images, labels, order = epoch_data(300)
    for hidden in [(), (20, 12, 8)]:
        run = epoch_runner(np.float32, hidden)
        serial = run(images, labels, order, "adam", 128, parallel=False)
        parallel = run(images, labels, order, "adam", 128, parallel=True)
        np.testing.assert_array_equal(parallel[0], serial[0])


def test_switching_ways_within_an_epoch_gives_the_same_bits(monkeypatch):
    """The default picks parallel or one thread per call of SLICE_SAMPLES by timing: the pick must not show."""
    images, labels, order = epoch_data(1000)
    run = epoch_runner(np.float32)
    serial = run(images, labels, order, "adam", 128, parallel=False)
    monkeypatch.setattr(cpu_fused, "SLICE_SAMPLES", 1024)  # calls of 8 steps, probes of 1
    picks = iter([(True, False), (False, False), (False, True), (True, True)] * 100)
    monkeypatch.setattr(cpu_fused, "_pick", lambda batch: next(picks))
    switched = run(images, labels, order, "adam", 128, parallel=None)
    np.testing.assert_array_equal(switched[0], serial[0])
    np.testing.assert_array_equal(switched[1], serial[1])
    assert switched[2:] == serial[2:]


def test_default_epoch_is_deterministic_and_a_held_pool_falls_back_to_one_thread():
    images, labels, order = epoch_data(700)
    run = epoch_runner(np.float32)
    want = run(images, labels, order, "sgd", 128, parallel=False)
    np.testing.assert_array_equal(run(images, labels, order, "sgd", 128, parallel=None)[0], want[0])
    with cpu_fused._parallel_lock:  # as while another thread's epoch runs parallel
        held = run(images, labels, order, "sgd", 128, parallel=None)
    np.testing.assert_array_equal(held[0], want[0])
    assert not cpu_fused._parallel_lock.locked()


def test_pick_takes_the_faster_way_and_now_and_then_times_the_other(monkeypatch):
    monkeypatch.setattr(cpu_fused, "_seconds_per_step", {})
    monkeypatch.setattr(cpu_fused, "_calls", [0])
    monkeypatch.setattr(cpu_fused, "_probe_every", {})
    assert cpu_fused._pick(128) == (True, False)  # untimed ways first
    cpu_fused._seconds_per_step[128, True] = [(2e-4, 1)]
    assert cpu_fused._pick(128) == (False, False)
    cpu_fused._seconds_per_step[128, False] = [(1e-4, 2)]
    cpu_fused._calls[0] = 2
    assert cpu_fused._pick(128) == (False, False)  # one thread was faster
    cpu_fused._calls[0] = 1 + cpu_fused.PROBE_EVERY
    assert cpu_fused._pick(128) == (True, True)  # parallel untimed for PROBE_EVERY calls: a short call times it
    cpu_fused._seconds_per_step[128, True] = [(2e-4, 1), (5e-5, 17), (6e-5, 18)]  # the median of the latest
    assert cpu_fused._pick(128) == (True, False)


def test_probes_of_a_way_that_keeps_losing_grow_rarer(monkeypatch):
    monkeypatch.setattr(cpu_fused, "_seconds_per_step", {})
    monkeypatch.setattr(cpu_fused, "_calls", [0])
    monkeypatch.setattr(cpu_fused, "_probe_every", {})
    cpu_fused._record(128, True, False, 5e-5)
    cpu_fused._record(128, False, False, 1e-4)
    probes = []
    for _ in range(2000):
        parallel, probe = cpu_fused._pick(128)
        probes += [cpu_fused._calls[0]] if probe else []
        cpu_fused._record(128, parallel, probe, 5e-5 if parallel else 1e-4)
        assert parallel or probe  # one thread only to time it
    gaps = np.diff(probes)
    assert probes[0] <= cpu_fused.PROBE_EVERY + 2 and gaps[0] == 2 * cpu_fused.PROBE_EVERY + 1
    assert gaps.max() == cpu_fused.PROBE_AT_MOST_EVERY + 1
    assert list(gaps) == sorted(gaps)
    cpu_fused._record(128, True, False, 1e-3)  # parallel slows down (another program took a core) ...
    cpu_fused._record(128, True, False, 1e-3)
    assert cpu_fused._pick(128) == (False, False)  # ... and the next call runs on one thread


def test_the_compiled_path_takes_the_notes_network_only():
    from gpunet.nn.model import LayerStack, build_layers, init_stack_params, parse_arch_text

    arch = parse_arch_text("dense16,dense16")
    params = init_stack_params(build_layers(arch, (784,), 10), "he", 0, np.float32)
    stack = LayerStack(CpuBackend(), arch, params, (784,))
    assert not cpu_fused.supports(stack)  # the same flat parameters, but its loops are not the stack's math
    assert cpu_fused.supports(Network(CpuBackend(), params))
