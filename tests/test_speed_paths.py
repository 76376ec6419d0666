"""The fast paths give the results of the plain formulas: workspaces, flat parameters, one-pass full batch.

Correctness only; nothing here is timed (scripts/bench.py measures speed).
"""

import numpy as np
import pytest

from gpunet.backends import cpu as backend_module
from gpunet.backends.cpu import CpuBackend
from gpunet.nn.model import Network, init_params, layer_sizes
from gpunet.nn.optimizers import make_optimizer
from gpunet.training.loop import DeviceData, train_epoch
from tests.test_training import separable_digits
from tests.tolerances import assert_counts_within, assert_within, pass_bounds

pytestmark = pytest.mark.paths


def network(backend, dtype=np.float32, hidden=(16, 16), seed=3):
    net = Network(backend, init_params(layer_sizes(hidden), "he", seed=seed, dtype=dtype))
    rng = np.random.default_rng(seed)
    for b in net.biases:  # non-zero biases, so that db and relu' are exercised
        b[...] = backend.asarray((rng.standard_normal(b.shape) * 0.1).astype(dtype))
    return net


def plain_gradients(net, images, labels):
    """The notes' step on freshly allocated arrays: forward and backward without a workspace."""
    ops = net.backend
    A0 = ops.gather_scaled(images, None, net.dtype)
    Z, activations = net.forward(A0)
    grads, losses = net.backward(Z, activations, labels)
    return [ops.to_numpy(g) for g in grads], ops.to_numpy(losses), ops.count_correct(Z, labels)


def on_host(backend, arrays):
    return [backend.to_numpy(a) for a in arrays]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1, 37, 200])
def test_workspace_step_gives_the_results_of_fresh_arrays(backend, dtype, m):
    rng = np.random.default_rng(m)
    images = backend.asarray(rng.integers(0, 256, size=(m, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, size=m).astype(np.int32))
    net = network(backend, dtype)
    expected, expected_losses, _ = plain_gradients(net, images, labels)
    ws = net.workspace(m)
    for _ in range(2):  # the second time the buffers hold the previous step's values
        A0 = backend.gather_scaled(images, None, net.dtype, out=ws.A0)
        Z, activations = net.forward(A0, ws)
        grads, losses = net.backward(Z, activations, labels, ws)
    # Other buffers (sample-major from SAMPLE_MAJOR_FROM samples): BLAS may add up each product in another order.
    bounds = pass_bounds(net.host_params(), backend.to_numpy(images), backend.to_numpy(labels), dtype)
    for k, (got, want, bound) in enumerate(zip(on_host(backend, grads), expected, bounds.grads)):
        assert_within(got, want, bound, f"gradient {k}")
    assert_within(backend.to_numpy(losses), expected_losses, bounds.losses, "losses")
    assert grads[0].dtype == dtype


def test_gather_scaled_into_a_buffer_matches_the_allocating_version(backend):
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.integers(0, 256, size=(300, 784), dtype=np.uint8))
    index = backend.asarray(rng.permutation(300)[:150])
    for dtype in (np.float32, np.float64):
        out = backend.empty_batch(784, 150, dtype)
        got = backend.gather_scaled(images, index, dtype, out=out)
        assert got is out
        np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(backend.gather_scaled(images, index, dtype)))


def test_softmax_cross_entropy_into_buffers_gives_the_same_bits(backend):
    rng = np.random.default_rng(1)
    Z = backend.asarray((rng.standard_normal((10, 33)) * 30).astype(np.float32))
    labels = backend.asarray(rng.integers(0, 10, size=33).astype(np.int32))
    dZ, losses = backend.softmax_cross_entropy(Z, labels)
    out = (backend.xp.empty_like(Z), backend.xp.empty(33, dtype=np.float32))
    got_dZ, got_losses = backend.softmax_cross_entropy(Z, labels, out=out)
    assert got_dZ is out[0] and got_losses is out[1]
    np.testing.assert_array_equal(backend.to_numpy(got_dZ), backend.to_numpy(dZ))
    np.testing.assert_array_equal(backend.to_numpy(got_losses), backend.to_numpy(losses))


def test_parameters_are_views_of_one_flat_array(backend):
    params = init_params(layer_sizes((7, 5)), "seed", seed=0, dtype=np.float64)
    net = Network(backend, params)
    for p, original in zip(net.params, params):
        np.testing.assert_array_equal(backend.to_numpy(p), original)
    weights, biases = net.groups
    assert weights.size == sum(W.size for W in params[0::2]) and biases.size == sum(b.size for b in params[1::2])
    net.flat[...] = 0
    assert all(float(abs(p).sum()) == 0 for p in net.params)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_optimizer_on_flat_groups_gives_the_same_bits_as_per_layer(backend, name):
    rng = np.random.default_rng(2)
    params = init_params(layer_sizes((6, 4)), "he", seed=1, dtype=np.float32)
    steps = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(3)]
    per_layer = [backend.asarray(p.copy()) for p in params]
    by_layer = make_optimizer(name, per_layer, 0.01, 0.1)
    net = Network(backend, params)
    grad_net = Network(backend, params)  # only for its flat layout: its params hold the gradients
    by_group = make_optimizer(name, net.groups, 0.01, 0.1)
    for grads in steps:
        by_layer.step([backend.asarray(g.copy()) for g in grads])
        for view, g in zip(grad_net.params, grads):
            view[...] = backend.asarray(g)
        by_group.step(grad_net.groups)
    for got, want in zip(on_host(backend, net.params), on_host(backend, per_layer)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, chunk, parts", [(1000, 128, 1), (1000, 128, 2), (1000, 300, 2), (999, 1000, 2),
                                             (130, 64, 3)])
def test_one_pass_full_batch_matches_the_plain_step(backend, dtype, m, chunk, parts):
    rng = np.random.default_rng(m + chunk)
    images = backend.asarray(rng.integers(0, 256, size=(m, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, size=m).astype(np.int32))
    net = network(backend, dtype)
    expected, expected_losses, expected_correct = plain_gradients(net, images, labels)
    losses = backend.xp.empty(m, dtype=dtype)
    groups, correct = net.full_batch_gradients(images, labels, losses, chunk, parts)
    flat = np.concatenate([backend.to_numpy(g) for g in groups])
    # Chunks and parts against one pass: the same sums of m terms in another order, each chunk's rescaled.
    bounds = pass_bounds(net.host_params(), backend.to_numpy(images), backend.to_numpy(labels), dtype, chunked=True)
    for k, (got, want, bound) in enumerate(zip(net.views_of(flat), expected, bounds.grads)):
        assert_within(got, want, bound, f"gradient {k}")
    assert_within(backend.to_numpy(losses), expected_losses, bounds.losses, "losses")
    assert_counts_within(correct, expected_correct, bounds.ambiguous)


def test_parallel_parts_give_the_same_bits_as_one_after_another(monkeypatch):
    """The CPU backend's two-core parallel_map (other backends run parts one after another).

    BLAS held to one thread both ways, the parts' buffers kept by the network: the same BLAS calls.
    """
    backend = CpuBackend()
    blas = backend_module._blas_threads()
    assert blas is not None, "threadpoolctl (a core dependency) finds no BLAS library under NumPy"
    rng = np.random.default_rng(5)
    images = backend.asarray(rng.integers(0, 256, size=(2000, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, size=2000).astype(np.int32))
    net = network(backend)
    losses = backend.xp.empty(2000, dtype=np.float32)
    parallel = [backend.to_numpy(g).copy() for g in net.full_batch_gradients(images, labels, losses, 256, 2)[0]]
    monkeypatch.setattr(type(backend), "parallel_map", lambda self, fn, items: [fn(i) for i in items])
    with blas.limit(limits=1):  # as in parallel_map: how many threads BLAS uses can change its sums
        serial = [backend.to_numpy(g) for g in net.full_batch_gradients(images, labels, losses, 256, 2)[0]]
    for a, b in zip(parallel, serial):
        np.testing.assert_array_equal(a, b)


def test_full_batch_epoch_takes_the_one_pass_path_and_learns(backend):
    digits = separable_digits(600)
    net = network(backend)
    optimizer = make_optimizer("gd", net.groups, 0.5)
    data = DeviceData(backend, digits)
    rng = np.random.default_rng(0)
    first_loss, _ = train_epoch(net, optimizer, data, 0, rng)
    for _ in range(20):
        loss, accuracy = train_epoch(net, optimizer, data, 0, rng)
    assert loss < 0.5 * first_loss and accuracy > 0.9
