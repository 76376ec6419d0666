"""The notes' math against independent references: float64 formulas and central differences."""

import numpy as np
import pytest

from gpunet.nn.model import Network, init_params, layer_sizes
from tests.tolerances import assert_within, gamma, pass_bounds, softmax_cross_entropy_bounds


def reference_softmax_ce(Z, labels):
    """Direct float64 formulas on the host, written independently of gpunet.nn.loss."""
    Z = np.asarray(Z, dtype=np.float64)
    m = Z.shape[1]
    shifted = Z - Z.max(axis=0)
    P = np.exp(shifted) / np.exp(shifted).sum(axis=0)
    losses = np.log(np.exp(shifted).sum(axis=0)) - shifted[labels, np.arange(m)]
    Y = np.zeros_like(P)
    Y[labels, np.arange(m)] = 1.0
    return (P - Y) / m, losses


def random_digits(rng, m):
    return rng.integers(0, 256, size=(m, 784), dtype=np.uint8), rng.integers(0, 10, size=m).astype(np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_softmax_cross_entropy_matches_float64_formula(backend, dtype, scale):
    rng = np.random.default_rng(1)
    m = 37
    Z = (rng.standard_normal((10, m)) * scale).astype(dtype)
    Z[:, 0] = [1e4, -1e4, 0, 0, 0, 0, 0, 0, 0, 0] if scale == 1e4 else Z[:, 0]
    labels = rng.integers(0, 10, size=m).astype(np.int32)
    dZ, losses = backend.softmax_cross_entropy(backend.asarray(Z), backend.asarray(labels))
    dZ, losses = backend.to_numpy(dZ), backend.to_numpy(losses)
    ref_dZ, ref_losses = reference_softmax_ce(Z, labels)
    assert dZ.dtype == dtype and dZ.shape == Z.shape and losses.shape == (m,)
    assert np.isfinite(losses).all() and np.isfinite(dZ).all()
    # The dtype's rounding of a 10-term sum, a few exps and a log; the float64 reference's own, likewise.
    bounds = [a + b for a, b in zip(softmax_cross_entropy_bounds(Z, labels, dtype),
                                    softmax_cross_entropy_bounds(Z, labels, np.float64))]
    assert_within(dZ, ref_dZ, bounds[0], "dZ")
    assert_within(losses, ref_losses, bounds[1], "losses")


def test_loss_of_extreme_logits_is_exact(backend):
    # Label on the -1e4 logit: the loss is 2e4, not inf; on the +1e4 logit it is 0.
    Z = np.array([[1e4, 1e4], [-1e4, -1e4]] + [[0.0, 0.0]] * 8, dtype=np.float32)
    labels = np.array([1, 0], dtype=np.int32)
    _, losses = backend.softmax_cross_entropy(backend.asarray(Z), backend.asarray(labels))
    assert_within(backend.to_numpy(losses), [2e4, 0.0], softmax_cross_entropy_bounds(Z, labels, np.float32)[1])


def test_parameters_are_shaped_as_in_the_notes():
    params = init_params(layer_sizes((16, 16)), "seed", seed=0, dtype=np.float64)
    assert [p.shape for p in params] == [(16, 784), (16, 1), (16, 16), (16, 1), (10, 16), (10, 1)]
    # The notes' initialisation: np.random.rand - 0.5, uniform in [-0.5, 0.5).
    flat = np.concatenate([p.ravel() for p in params])
    assert flat.min() >= -0.5 and flat.max() < 0.5 and abs(flat.mean()) < 0.02


def test_he_initialisation_has_variance_two_over_fan_in():
    W1 = init_params(layer_sizes((64,)), "he", seed=0, dtype=np.float64)[0]
    assert W1.shape == (64, 784)
    assert W1.var() == pytest.approx(2 / 784, rel=0.05)


def mean_loss(network, A0, labels):
    Z, _ = network.forward(A0)
    _, losses = network.backend.softmax_cross_entropy(Z, labels)
    return float(losses.mean())


@pytest.mark.parametrize("hidden", [(7, 5), (6,), ()])
@pytest.mark.paths
def test_backprop_matches_central_differences_for_every_parameter(backend, hidden):
    rng = np.random.default_rng(2)
    images, labels = random_digits(rng, 6)
    net = Network(backend, init_params(layer_sizes(hidden), "he", seed=3, dtype=np.float64))
    # Random biases too, so that relu' and db are exercised away from zero.
    for b in net.biases:
        b[...] = backend.asarray(rng.standard_normal(b.shape) * 0.1)
    A0 = backend.gather_scaled(backend.asarray(images), None, np.float64)
    y = backend.asarray(labels)
    Z, activations = net.forward(A0.copy())
    grads, _ = net.backward(Z, activations, y)

    h = 1e-6
    for p, g in zip(net.params, grads):
        numeric = np.zeros(p.shape)
        flat = p.reshape(-1)  # a view: perturbing it perturbs the network's parameter
        for i in range(flat.size):
            saved = float(flat[i])
            flat[i] = saved + h
            up = mean_loss(net, A0.copy(), y)
            flat[i] = saved - h
            down = mean_loss(net, A0.copy(), y)
            flat[i] = saved
            numeric.reshape(-1)[i] = (up - down) / (2 * h)
        # Central differences: truncation O(h^2) ~ 1e-12 (relative), and rounding the two losses (~2.3, each
        # to ~eps) gives |up - down| an error of a few eps.L, i.e. eps.L/h in the slope: atol is 64x that.
        # rtol 1e-5 leaves room for a perturbation that crosses a ReLU's kink (a slope change within h).
        eps = float(np.finfo(np.float64).eps)
        atol = 64 * eps * max(1.0, abs(mean_loss(net, A0.copy(), y))) / h
        np.testing.assert_allclose(backend.to_numpy(g), numeric, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("hidden", [(16, 16), ()])
@pytest.mark.paths
def test_float32_backprop_matches_float64(backend, hidden):
    """The float32 gradients are the float64 ones (checked by central differences above), up to float32 rounding."""
    rng = np.random.default_rng(6)
    images, labels = random_digits(rng, 64)
    params32 = init_params(layer_sizes(hidden), "he", seed=4, dtype=np.float32)
    grads = {}
    for dtype in (np.float32, np.float64):
        net = Network(backend, [backend.asarray(p.astype(dtype)) for p in params32])  # the same values
        A0 = backend.gather_scaled(backend.asarray(images), None, dtype)
        Z, activations = net.forward(A0)
        grads[dtype], _ = net.backward(Z, activations, backend.asarray(labels))
    # The same sums, rounded in float32 and in float64: apart by no more than both passes' bounds.
    bounds = pass_bounds(params32, images, labels, np.float32, other_dtype=np.float64)
    for k, (got, want, bound) in enumerate(zip(grads[np.float32], grads[np.float64], bounds.grads)):
        got, want = backend.to_numpy(got), backend.to_numpy(want)
        assert got.dtype == np.float32
        assert_within(got, want, bound, f"gradient {k}")


def test_gather_scaled_puts_samples_in_columns(backend):
    rng = np.random.default_rng(4)
    images, _ = random_digits(rng, 50)
    index = np.array([7, 3, 3, 49, 0], dtype=np.int64)
    for dtype in (np.float32, np.float64):
        A0 = backend.to_numpy(backend.gather_scaled(backend.asarray(images), backend.asarray(index), dtype))
        assert A0.shape == (784, 5) and A0.dtype == dtype
        exact = images[index].T.astype(np.float64) / 255
        assert_within(A0, exact, gamma(2, dtype) * exact)  # x . fl(1/255): two roundings


def test_bias_relu_and_its_backward_rule(backend):
    rng = np.random.default_rng(5)
    Z = rng.standard_normal((16, 33))
    b = rng.standard_normal((16, 1))
    dA = rng.standard_normal((16, 33))
    A = backend.to_numpy(backend.bias_relu(backend.asarray(Z.copy()), backend.asarray(b)))
    np.testing.assert_array_equal(A, np.maximum(Z + b, 0))
    dZ = backend.to_numpy(backend.relu_backward(backend.asarray(dA.copy()), backend.asarray(A)))
    np.testing.assert_array_equal(dZ, dA * (Z + b > 0))


def test_count_correct(backend):
    Z = np.eye(10, 4, dtype=np.float32)  # argmax of columns: 0, 1, 2, 3
    labels = np.array([0, 1, 5, 3], dtype=np.int32)
    assert backend.count_correct(backend.asarray(Z), backend.asarray(labels)) == 3


def test_count_correct_takes_the_first_of_tied_logits_and_nan_as_largest(backend):
    """As numpy.argmax (the reference): the first largest logit wins a tie, and a NaN counts as largest."""
    Z = np.zeros((10, 6), dtype=np.float32)
    Z[[3, 7], 2] = 5.0  # tie between 3 and 7
    Z[4, 4] = np.nan
    Z[[1, 8], 5] = np.nan  # the first NaN
    labels = np.array([0, 1, 3, 7, 4, 1], dtype=np.int32)  # right: 0, 2, 4, 5
    assert list(Z.argmax(axis=0)) == [0, 0, 3, 0, 4, 1]
    assert int(backend.count_correct(backend.asarray(Z), backend.asarray(labels))) == 4
