"""Each optimizer's update against its textbook formula, computed independently in float64."""

import numpy as np
import pytest

from gpunet.optimizers import Adam, GradientDescent, Momentum


def run(optimizer_class, steps, lr, weight_decay, backend, **kwargs):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((4, 3)), rng.standard_normal((4, 1))]
    grads = [[rng.standard_normal(p.shape) for p in start] for _ in range(steps)]
    params = [backend.asarray(p.copy()) for p in start]
    optimizer = optimizer_class(params, lr, weight_decay, **kwargs)
    for g in grads:
        optimizer.step([backend.asarray(x.copy()) for x in g])
    return start, grads, [backend.to_numpy(p) for p in params]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_gradient_descent_is_w_minus_alpha_dw(backend, weight_decay):
    start, grads, result = run(GradientDescent, 3, 0.5, weight_decay, backend)
    W, b = start
    for dW, db in grads:
        W = W - 0.5 * weight_decay * W - 0.5 * dW  # the decay touches weights, not biases
        b = b - 0.5 * db
    np.testing.assert_allclose(result[0], W, rtol=1e-12)
    np.testing.assert_allclose(result[1], b, rtol=1e-12)


def test_momentum_matches_heavy_ball_formula(backend):
    start, grads, result = run(Momentum, 4, 0.1, 0.0, backend, beta=0.9)
    for k, p in enumerate(start):
        v = np.zeros_like(p)
        for g in grads:
            v = 0.9 * v + g[k]
            p = p - 0.1 * v
        np.testing.assert_allclose(result[k], p, rtol=1e-12)


def test_adam_matches_kingma_ba(backend):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    start, grads, result = run(Adam, 5, lr, 0.0, backend)
    for k, p in enumerate(start):
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t, g in enumerate(grads, start=1):
            m = b1 * m + (1 - b1) * g[k]
            v = b2 * v + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        # The folded bias correction moves eps by a factor sqrt(1 - b2^t): a relative change ~eps/|g|.
        np.testing.assert_allclose(result[k], p, rtol=1e-6)


def test_float32_parameters_stay_float32(backend):
    params = [backend.asarray(np.ones((3, 2), dtype=np.float32))]
    optimizer = Adam(params, 0.01, 0.1)
    optimizer.step([backend.asarray(np.ones((3, 2), dtype=np.float32))])
    assert params[0].dtype == np.float32
