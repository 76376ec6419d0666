"""The CUDA backend against the CPU: every kernel, one training step, three epochs.

Each test runs twice:

* ``[device]`` (marked ``gpu``): CupyBackend on a real CUDA device; skipped,
  with the reason, where none is usable. ``pytest -m gpu`` runs these, and the
  backend-generic tests (the ``backend`` fixture of conftest.py) on CuPy.
* ``[stand-in]`` (marked ``kernels``): the same CupyBackend code on the CuPy
  stand-in of tests/cupy_stand_in.py, every kernel walked on the CPU. It shows,
  on machines without a GPU, that these tests and the code they drive hold
  up, so a first run on a device tests the device, not the tests.

The operations are compared with the CPU backend (the reference): elementwise
work bit for bit, sums within bounds from the dtype and the sums' lengths
(tests/tolerances.py), for cuBLAS and CuPy add up in their own order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpunet.backends import cuda as backend_cuda, kernels
from gpunet.backends.cpu import CpuBackend
from gpunet.backends.devices import get_backend
from gpunet.files.data import Digits, load_sample, split_validation
from gpunet.nn.layers import Conv2D
from gpunet.nn.model import Network, init_params, layer_sizes
from gpunet.training.loop import DeviceData, TrainConfig, evaluate, learning_rate, steps_per_epoch, train
from tests.kernel_support import logits
from tests.tolerances import (assert_counts_within, assert_within, gamma, pass_bounds, softmax_cross_entropy_bounds,
                              training_bounds)

REASON = backend_cuda.unavailable_reason()
needs_device = pytest.mark.skipif(REASON is not None, reason=f"no usable CUDA device: {REASON}")
DTYPES = (np.float32, np.float64)
CPU = CpuBackend()


@pytest.fixture
def device():
    """CupyBackend on the current CUDA device."""
    backend, notice = get_backend("cuda")
    assert notice is None
    return backend


@pytest.fixture(
    params=[
        pytest.param("device", marks=[pytest.mark.gpu, needs_device]),
        pytest.param("stand-in", marks=pytest.mark.kernels),
    ]
)
def cuda(request):
    """CupyBackend on the device, or on the stand-in with its kernels walked on the CPU."""
    return request.getfixturevalue("device" if request.param == "device" else "stand_in_cuda")


@pytest.fixture
def launched(cuda, monkeypatch):
    """The names of the kernels launched during a test (after ``cuda`` has chosen the launcher)."""
    names = []
    real = kernels.cuda_launch

    def spy(launch):
        names.append(launch.name)
        real(launch)

    monkeypatch.setattr(kernels, "cuda_launch", spy)
    return names


# -- the backend ------------------------------------------------------------------
@pytest.mark.gpu
@needs_device
def test_cuda_backend_is_chosen_and_describes_the_device(device):
    assert device.name == "cuda" and device.xp is backend_cuda.cupy
    assert "compute capability" in device.describe()
    auto, notice = get_backend("auto")
    assert auto.name == "cuda" and notice is None


@pytest.mark.gpu
@needs_device
def test_device_report_lists_the_device_and_compiles_for_it():
    lines = backend_cuda.device_report()
    assert any(line.startswith("device 0: ") and "compute capability" in line for line in lines)
    targets = ", ".join(f"sm_{arch}" for arch in kernels.compile_archs())
    assert lines[-1].startswith(f"kernels: compile with NVRTC for {targets}")


def test_moving_data(cuda):
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    device = cuda.asarray(host)
    assert isinstance(device, backend_cuda.cupy.ndarray)
    cuda.synchronize()
    back = cuda.to_numpy(device)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)  # a copy there and back


# -- every kernel on the device against the reference ---------------------------------------
@pytest.mark.parametrize("m", (1, 7, 257, 100_003))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy(cuda, launched, dtype, m):
    rng = np.random.default_rng(m)
    Z = logits(rng, 10, m, dtype)
    labels = rng.integers(0, 10, size=m)
    dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels.astype(np.int32)))
    assert launched == [f"softmax_cross_entropy<{kernels.CTYPES[np.dtype(dtype)]}>"]
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z, labels)
    assert_same_loss(cuda, (dZ, losses), (ref_dZ, ref_losses), Z, labels, dtype)


def assert_same_loss(cuda, got, want, Z, labels, dtype):
    """(dZ, losses) of the device against the CPU's: each within its bounds of the exact values of Z.

    The same formulas, but with the device's own exp and log (CUDA's, which flush subnormal floats to 0;
    the host's libm on the stand-in) and, on the CPU, NumPy's order of the sum over the classes.
    """
    B_dZ, B_losses = softmax_cross_entropy_bounds(Z, labels, dtype)
    assert_within(cuda.to_numpy(got[0]), want[0], 2 * B_dZ, "dZ")
    assert_within(cuda.to_numpy(got[1]), want[1], 2 * B_losses, "losses")


@pytest.mark.parametrize("m", (1, 257, 100_003))
@pytest.mark.parametrize("dtype", DTYPES)
def test_count_correct(cuda, launched, dtype, m):
    rng = np.random.default_rng(m)
    Z = rng.integers(-2, 3, size=(10, m)).astype(dtype)  # ties: the first largest wins; comparisons only: exact
    labels = rng.integers(0, 10, size=m)
    assert cuda.count_correct(cuda.asarray(Z), cuda.asarray(labels)) == CPU.count_correct(Z, labels)
    assert launched == [f"count_correct<{kernels.CTYPES[np.dtype(dtype)]}>"]


@pytest.mark.parametrize("m", (1, 257, 41_000))
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_and_relu_backward(cuda, launched, dtype, m):
    rng = np.random.default_rng(m)
    Z = (rng.standard_normal((16, m)) * 3).astype(dtype)
    b = rng.standard_normal((16, 1)).astype(dtype)
    dA = rng.standard_normal((16, m)).astype(dtype)
    dA.flat[::7] = np.inf
    expected_A = CPU.bias_relu(Z.copy(), b)
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, on purpose
        expected_dZ = CPU.relu_backward(dA.copy(), expected_A)
    A = cuda.bias_relu(cuda.asarray(Z), cuda.asarray(b))
    np.testing.assert_array_equal(cuda.to_numpy(A), expected_A)  # elementwise (one add, one max): the same bits
    dZ = cuda.relu_backward(cuda.asarray(dA), A)
    np.testing.assert_array_equal(cuda.to_numpy(dZ), expected_dZ)  # a multiply by 1 or 0
    ctype = kernels.CTYPES[np.dtype(dtype)]
    assert launched == [f"bias_relu<{ctype}>", f"relu_backward<{ctype}>"]


@pytest.mark.parametrize("batch", (1, 128, 4099))
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_scaled(cuda, launched, dtype, batch):
    rng = np.random.default_rng(batch)
    images = rng.integers(0, 256, size=(5000, 784), dtype=np.uint8)
    index = rng.permutation(len(images))[:batch]
    on_device = cuda.asarray(images)
    A0 = cuda.gather_scaled(on_device, cuda.asarray(index), dtype)
    np.testing.assert_array_equal(cuda.to_numpy(A0), CPU.gather_scaled(images, index, dtype))  # a cast, a multiply
    everything = cuda.gather_scaled(on_device, None, dtype)
    np.testing.assert_array_equal(cuda.to_numpy(everything), CPU.gather_scaled(images, None, dtype))
    ctype = kernels.CTYPES[np.dtype(dtype)]
    assert launched == [f"gather_scaled<{ctype}>", f"transpose_scaled<{ctype}>"]


def test_results_written_into_given_arrays(cuda, launched):
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(100, 784), dtype=np.uint8)
    index = rng.permutation(100)[:64]
    A0 = cuda.empty_batch(784, 64, np.float32)
    got = cuda.gather_scaled(cuda.asarray(images), cuda.asarray(index), np.float32, out=A0)
    assert got is A0
    np.testing.assert_array_equal(cuda.to_numpy(A0), CPU.gather_scaled(images, index, np.float32))  # elementwise
    Z = logits(rng, 10, 64, np.float32)
    labels = rng.integers(0, 10, size=64)
    out = (cuda.xp.empty((10, 64), np.float32), cuda.xp.empty(64, np.float32))
    dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels), out=out)
    assert dZ is out[0] and losses is out[1]
    assert_same_loss(cuda, (dZ, losses), CPU.softmax_cross_entropy(Z, labels), Z, labels, np.float32)
    assert launched == ["gather_scaled<float>", "softmax_cross_entropy<float>"]


def test_bad_index_and_label_give_nan_on_the_device(cuda):
    images = cuda.asarray(np.full((3, 784), 255, np.uint8))
    A0 = cuda.to_numpy(cuda.gather_scaled(images, cuda.asarray(np.array([0, 3, -1])), np.float32))
    assert (A0[:, 0] == 1).all() and np.isnan(A0[:, 1:]).all()
    Z = cuda.asarray(np.zeros((10, 2), np.float32))
    _, losses = cuda.softmax_cross_entropy(Z, cuda.asarray(np.array([1, 10], np.int32)))
    losses = cuda.to_numpy(losses)
    assert np.isclose(losses[0], np.log(10)) and np.isnan(losses[1])


def test_other_dtypes_and_layouts_take_the_generic_path(cuda, launched):
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((10, 6)).astype(np.float16)
    labels = np.arange(6) % 10
    dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels))
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z, labels)
    tol = 16 * float(np.finfo(np.float16).eps)  # CuPy's float16 exp and sums may round otherwise than NumPy's
    np.testing.assert_allclose(cuda.to_numpy(dZ), ref_dZ, rtol=tol, atol=tol / 6)
    F = cuda.xp.asfortranarray(cuda.asarray(rng.standard_normal((16, 6)).astype(np.float32)))
    dA = cuda.xp.ones_like(F)
    cuda.relu_backward(dA, F)
    np.testing.assert_array_equal(cuda.to_numpy(dA), (cuda.to_numpy(F) > 0).astype(np.float32))  # 1 times 1 or 0
    assert launched == []


@pytest.mark.parametrize("m", (1, 257))
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_kernels(cuda, launched, dtype, m):
    """im2col, col2im, max-pooling and dropout's mask against the CPU's generic code, bit for bit: copies,
    comparisons, a multiply by 1 or 0, integer arithmetic, and col2im's additions in the generic order (normal
    numbers only here: a GPU flushes subnormal results to 0, -ftz=true)."""
    rng = np.random.default_rng(m)
    x = rng.standard_normal((3, 7, 6, m)).astype(dtype)
    x.flat[::9] = np.nan
    x.flat[1::5] = 1.0  # ties in the pooling windows
    columns = cuda.im2col(cuda.asarray(x), 3, (1, 1))
    np.testing.assert_array_equal(cuda.to_numpy(columns), CPU.im2col(x, 3, (1, 1)))
    dcolumns = rng.standard_normal(columns.shape).astype(dtype)
    dx = cuda.col2im(cuda.asarray(dcolumns), x.shape, 3, (1, 1))
    np.testing.assert_array_equal(cuda.to_numpy(dx), CPU.col2im(dcolumns, x.shape, 3, (1, 1)))
    y, argmax = cuda.max_pool(cuda.asarray(x), 2)
    want_y, want_argmax = CPU.max_pool(x, 2)
    np.testing.assert_array_equal(cuda.to_numpy(y), want_y)
    np.testing.assert_array_equal(cuda.to_numpy(argmax), want_argmax)
    dy = rng.standard_normal(want_y.shape).astype(dtype)
    dx = cuda.max_pool_backward(cuda.asarray(dy), argmax, x.shape, 2)
    np.testing.assert_array_equal(cuda.to_numpy(dx), CPU.max_pool_backward(dy, want_argmax, x.shape, 2))
    mask = cuda.dropout_mask(x.shape, 0.3, 17, 2**40, dtype)
    np.testing.assert_array_equal(cuda.to_numpy(mask), CPU.dropout_mask(x.shape, 0.3, 17, 2**40, dtype))
    t = kernels.CTYPES[np.dtype(dtype)]
    assert launched == [f"im2col<{t}>", f"col2im<{t}>", f"max_pool<{t}>", f"max_pool_backward<{t}>",
                        f"dropout_mask<{t}>"]


# -- training on both backends ---------------------------------------------------------------
LR = 0.1


@pytest.mark.paths
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_training_step_agrees_with_the_cpu(cuda, dtype):
    from gpunet.nn.optimizers import make_optimizer

    sample = load_sample()
    params = init_params(layer_sizes((16, 16)), "he", seed=3, dtype=dtype)
    index = np.random.default_rng(4).permutation(len(sample.labels))[:512]
    labels = sample.labels[index].astype(np.int32)
    results = {}
    for backend in (CPU, cuda):
        network = Network(backend, [p.copy() for p in params])  # the CPU one updates its arrays in place
        optimizer = make_optimizer("gd", network.params, LR)
        images = backend.asarray(sample.images)
        A0 = backend.gather_scaled(images, backend.asarray(index), network.dtype)
        Z, activations = network.forward(A0)
        grads, losses = network.backward(Z, activations, backend.asarray(labels))
        host = [backend.to_numpy(x).copy() for x in (Z, losses, *grads)]
        optimizer.step(grads)
        results[backend.name] = host + network.host_params()
    # cuBLAS and NumPy's BLAS add up each product in their own order: apart within the bounds of the sums'
    # lengths; the step's, LR times the gradients' bound and the update's own roundings (training_bounds).
    one_pass = pass_bounds(params, sample.images[index], labels, dtype)
    step = training_bounds(params, sample.images, sample.labels, [(index, LR)], "gd", 0.0, dtype)
    bounds = [one_pass.logits, one_pass.losses, *one_pass.grads, *step.params]
    names = ["logits", "losses"] + [f"gradient {k}" for k in range(len(params))] + \
        [f"parameter {k} after the step" for k in range(len(params))]
    for got, want, bound, name in zip(results["cuda"], results["cpu"], bounds, names, strict=True):
        assert_within(got, want, bound, name)


CNN = "conv4k3same,pool2,conv6k3,pool2,dense16,dropout0.25"


@pytest.mark.paths
def test_one_cnn_training_step_agrees_with_the_cpu(cuda, launched):
    """A CNN's forward and backward pass and an SGD step, in float64, through every layer kernel: within the
    bounds of their sums (``cnn_step_bounds``) of the CPU's. (In float32 a pool's two nearly equal entries or a
    ReLU's input near 0 may go either way and route a gradient elsewhere: no entrywise bound holds.)"""
    from gpunet.nn.model import LayerStack, build_layers, init_stack_params, parse_arch_text

    arch, dtype = parse_arch_text(CNN), np.float64
    params = init_stack_params(build_layers(arch, (1, 28, 28), 10), "he", 5, dtype)
    sample = load_sample()
    index = np.random.default_rng(6).permutation(len(sample.labels))[:64]
    labels = sample.labels[index].astype(np.int32)
    results = {}
    for backend in (CPU, cuda):
        network = LayerStack(backend, arch, [p.copy() for p in params], (1, 28, 28), seed=7)
        network.step = 3
        A0 = backend.gather_scaled(backend.asarray(sample.images), backend.asarray(index), dtype)
        Z, saved = network.forward(A0)
        grads, losses = network.backward(Z, saved, backend.asarray(labels))
        host = [backend.to_numpy(a).copy() for a in (Z, losses, *grads)]
        for p, g in zip(network.params, grads):
            p -= dtype(LR) * g
        results[backend.name] = host + network.host_params()
    reference = LayerStack(CPU, arch, params, (1, 28, 28), seed=7)
    reference.step = 3
    B_Z, B_losses, B_grads = cnn_step_bounds(reference, CPU.gather_scaled(sample.images, index, dtype), labels)
    B_params = [LR * B + gamma(2, dtype) * 2 * (np.abs(p) + LR * np.abs(g))
                for B, p, g in zip(B_grads, params, results["cpu"][2:2 + len(params)])]
    bounds = [2 * B_Z, 2 * B_losses, *(2 * B for B in B_grads), *B_params]
    names = ["logits", "losses"] + [f"gradient {k}" for k in range(len(params))] + \
        [f"parameter {k} after the step" for k in range(len(params))]
    for got, want, bound, name in zip(results["cuda"], results["cpu"], bounds, names, strict=True):
        assert_within(got, want, bound, name)
    for kernel in ("im2col", "col2im", "max_pool", "max_pool_backward", "dropout_mask", "bias_relu", "relu_backward"):
        assert f"{kernel}<double>" in launched, f"{kernel} fell back to the generic path"


def cnn_step_bounds(network, A0, labels):
    """Bounds on how far one float64 computation of a LayerStack's logits, losses and gradients, adding its sums
    in any order, may land from the exact values, to first order, with every ReLU, argmax and mask as here.

    The forward pass: each logit within gamma_N of its sum of |terms| through every layer (abs_forward), N the
    roundings along the way. The loss: tolerances' softmax bounds, carrying the logits'. The backward pass is
    linear in dZ_L: a gradient is off by at most |backward|(dZ_L's bound) for the error carried from dZ_L, plus
    gamma_N.|backward|(|dZ_L|) for its own and the forward values' roundings, where |backward| runs each layer's
    backward rule on |parameters| and |inputs| (abs_forward's values) with this pass's ReLU masks, argmaxes and
    dropout masks: every term's magnitude, in every sum.
    """
    from tests.tolerances import _softmax_cross_entropy

    dtype = network.dtype
    Z, saved = network.forward(A0)
    abs_Z, abs_saved = _with_abs_params(network, lambda: network.forward(np.abs(A0)))
    kinks = [s if not isinstance(s, tuple) else (a[0], s[1]) for s, a in zip(saved, abs_saved)]
    depth = sum(getattr(layer, "fan_in", 0) + getattr(layer, "outputs", 0) + getattr(layer, "k", 1) ** 2 + 2
                for layer in network.layers)  # forward sums, backward sums (W^T.dZ, col2im's k.k) and scalings
    longest = max(A0.shape[1] * math.prod(layer.output_shape[1:]) for layer in network.layers
                  if isinstance(layer, Conv2D))  # dW's sum: over positions and samples
    gamma_all = gamma(depth + longest, dtype)
    B_Z = gamma(depth, dtype) * abs_Z
    _, dZ, B_dZ, _, B_losses = _softmax_cross_entropy(Z, B_Z, labels, dtype)
    carried = _with_abs_params(network, lambda: _abs_backward(network, kinks, B_dZ))
    rounding = _with_abs_params(network, lambda: _abs_backward(network, kinks, np.abs(dZ)))
    return B_Z, B_losses, [c + gamma_all * r for c, r in zip(carried, rounding)]


def _with_abs_params(network, run):
    """``run()`` with the network's parameters replaced by their absolute values."""
    kept = [p.copy() for p in network.params]
    try:
        for p in network.params:
            np.abs(p, out=p)
        return run()
    finally:
        for p, value in zip(network.params, kept):
            p[...] = value


def _abs_backward(network, saved, dZ):
    """The parameters' gradients of each layer's backward rule from a non-negative dZ (all terms non-negative)."""
    grads, dy = [], dZ.copy()
    for index in reversed(range(len(network.layers))):
        layer = network.layers[index]
        dy, layer_grads = layer.backward(dy, saved[index], None, input_grad=index > 0)
        grads[:0] = layer_grads
    return grads


def test_three_epochs_on_the_sample_learn_on_both_backends(cuda):
    """What users run: float32 Adam, 470 steps. No rounding bound spans so many steps (each step's
    differences feed the next: training_bounds's, even in float64, outgrow the weights themselves within
    100 steps), so each run must learn; test_training_agrees_with_the_cpu_within_its_bounds compares steps."""
    train_digits, val_digits = split_validation(load_sample(), 1000, seed=0)
    config = TrainConfig(epochs=3, seed=0)
    accuracy = {backend.name: train(backend, train_digits, val_digits, config).history[-1].val_accuracy
                for backend in (CPU, cuda)}
    assert min(accuracy.values()) > 0.8, accuracy


def few_digits(count=600, val_size=200):
    """The sample's first digits, split: few enough steps for training_bounds to stay tight."""
    sample = load_sample()
    return split_validation(Digits(sample.images[:count], sample.labels[:count], f"the sample's first {count} digits"),
                            val_size, seed=0)


@pytest.mark.paths
@pytest.mark.parametrize("optimizer, batch_size", [("adam", 64), ("gd", 0)])
def test_training_agrees_with_the_cpu_within_its_bounds(cuda, optimizer, batch_size):
    """Two epochs: Adam in float64 (in float32 an entry of m within rounding of 0 steps by +-lr either way),
    full-batch gradient descent in float32."""
    train_digits, val_digits = few_digits()
    config = TrainConfig.for_optimizer(optimizer, hidden=(16,), epochs=2, batch_size=batch_size, seed=0,
                                       dtype="float64" if optimizer == "adam" else "float32")
    got = train(cuda, train_digits, val_digits, config)
    want = train(CPU, train_digits, val_digits, config)
    assert_trainings_within(got, want, train_digits, val_digits, config)


@pytest.mark.paths
def test_training_as_a_cuda_graph_agrees_with_the_cpu_within_its_bounds(cuda):
    """--cuda-graph: the two epochs of Adam above with every whole step after the run's first a graph launch (the
    last, partial batch eager), within the same bounds of the CPU's. On the stand-in a graph gives the eager run's
    bits (tests/test_cuda_graph.py); on a device cuBLAS may choose another algorithm for a captured product,
    a different order of the same sums, which these bounds cover. Where CuPy refuses cuBLAS while capturing (as
    CuPy 14.2 does), the products are gpunet's matmul kernel (kernels/matmul.cu) and the step is captured all the
    same: its sums in another order than cuBLAS's, within the same bounds."""
    from gpunet.backends.cost_model import network_layers

    train_digits, val_digits = few_digits()
    config = TrainConfig.for_optimizer("adam", hidden=(16,), epochs=2, batch_size=64, seed=0, dtype="float64")
    cuda.cuda_graph = True
    captures = cuda.captures_products() or cuda.takes_products(network_layers(config.hidden), config.batch_size)
    assert captures
    got = train(cuda, train_digits, val_digits, config)
    want = train(CPU, train_digits, val_digits, config)
    assert (got.network.__dict__["_graph_step"].graph is not None) == captures  # captured where it can be
    assert_trainings_within(got, want, train_digits, val_digits, config)


def training_plan(config, m):
    """train()'s steps as [(sample indices, learning rate), ...]: a shuffle an epoch drawn from seed + 1."""
    full_batch = config.batch_size <= 0 or config.batch_size >= m
    size = m if full_batch else config.batch_size
    steps = steps_per_epoch(m, config.batch_size)
    rng = np.random.default_rng(config.seed + 1)
    plan = []
    for epoch in range(config.epochs):
        order = np.arange(m) if full_batch else rng.permutation(m)
        plan += [(order[k * size:(k + 1) * size], learning_rate(config, epoch * steps + k, steps))
                 for k in range(steps)]
    return plan


def assert_trainings_within(got, want, train_digits, val_digits, config):
    """Two train() runs of ``config`` (a dense network, no early stopping), summing in other orders.

    Their weights and each epoch's training loss and accuracy within training_bounds; ``got``'s last
    validation scores, those of its own weights scored on the CPU (pass_bounds). A full batch must be
    one chunk on both backends (``full_batch_chunk``): training_bounds does not count a chunk's rescaling.
    """
    dtype, m = np.dtype(config.dtype), len(train_digits)
    plan = training_plan(config, m)
    start = init_params(layer_sizes(config.hidden), config.init, config.seed, dtype)
    bounds = training_bounds(start, train_digits.images, train_digits.labels, plan, config.optimizer,
                             config.weight_decay, dtype)
    for k, (g, w, bound) in enumerate(zip(got.network.host_params(), want.network.host_params(), bounds.params)):
        assert_within(g, w, bound, f"parameter {k}")
    assert len(got.history) == len(want.history) == config.epochs
    per_epoch = len(plan) // config.epochs
    for epoch, (g, w) in enumerate(zip(got.history, want.history), start=1):
        assert g.lr == w.lr, f"epoch {epoch}: learning rate {g.lr} != {w.lr}"  # the schedule, on the host
        steps = slice((epoch - 1) * per_epoch, epoch * per_epoch)
        assert_within(g.train_loss, w.train_loss, sum(bounds.losses[steps]) / m + mean_rounding(w.train_loss, m),
                      f"epoch {epoch} training loss")
        assert_counts_within(round(g.train_accuracy * m), round(w.train_accuracy * m), sum(bounds.ambiguous[steps]),
                             f"epoch {epoch} correct count")
    assert_scores_its_weights(got, val_digits, dtype)


def assert_scores_its_weights(result, val_digits, dtype):
    """The last epoch's validation loss and accuracy: those of its weights scored on the CPU, within their bounds."""
    params, m = result.network.host_params(), len(val_digits)
    want_loss, want_accuracy = evaluate(Network(CPU, params), DeviceData(CPU, val_digits))
    bounds = pass_bounds(params, val_digits.images, val_digits.labels, dtype)
    last = result.history[-1]
    assert_within(last.val_loss, want_loss, bounds.losses.sum() / m + mean_rounding(want_loss, m), "validation loss")
    assert_counts_within(round(last.val_accuracy * m), round(want_accuracy * m), bounds.ambiguous,
                         "validation correct count")


def mean_rounding(mean_loss, m):
    """How far two means of m per-sample losses, summed in float64 in other orders, may differ by rounding alone."""
    return 2 * gamma(m + 1, np.float64) * abs(mean_loss)
