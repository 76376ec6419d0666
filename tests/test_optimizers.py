"""Each optimizer's update against its textbook formula, computed independently in float64.

Several steps, a learning rate that changes between them (as the schedules
change it), decoupled weight decay on and off, ordinary gradients and tiny
ones (|g| ~ 1e-8, where Adam's eps decides the step), in float64 and float32.
Tolerances come from the parameters' dtype.
"""

import math

import numpy as np
import pytest

from gpunet.nn.optimizers import OPTIMIZERS, Adam, GradientDescent, Momentum, flush_subnormals, make_optimizer

STEPS = 5
LRS = [0.01 * (k + 1) for k in range(STEPS)]  # a warm-up-like ramp: every step has its own alpha
BETA, BETA1, BETA2, EPS = 0.9, 0.9, 0.999, 1e-8  # the classes' defaults


def reference(name, start, grads, lrs, weight_decay):
    """The textbook updates in float64. params alternate W, b; the decay touches the W only.

    gd/sgd:   W <- W - alpha.lambda.W;  W <- W - alpha.dW
    momentum: the same decay;  v <- beta.v + dW;  W <- W - alpha.v
    adam:     the same decay;  m <- b1.m + (1-b1).dW;  s <- b2.s + (1-b2).dW^2;
              W <- W - alpha_t.m / (sqrt(s) + eps),  alpha_t = alpha.sqrt(1-b2^t) / (1-b1^t)
              (Kingma & Ba, section 2's efficient form of the bias corrections)
    """
    params = [p.astype(np.float64) for p in start]
    state = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    for t, (g_all, lr) in enumerate(zip(grads, lrs), start=1):
        for k, (p, g) in enumerate(zip(params, g_all)):
            if k % 2 == 0:
                p = p - lr * weight_decay * p
            if name in ("gd", "sgd"):
                p = p - lr * g
            elif name == "momentum":
                state[k][0] = BETA * state[k][0] + g
                p = p - lr * state[k][0]
            else:
                m, s = state[k]
                m, s = BETA1 * m + (1 - BETA1) * g, BETA2 * s + (1 - BETA2) * g * g
                state[k] = [m, s]
                alpha_t = lr * math.sqrt(1 - BETA2**t) / (1 - BETA1**t)
                p = p - alpha_t * m / (np.sqrt(s) + EPS)
            params[k] = p
    return params


def run(name, backend, dtype, weight_decay, scale):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((4, 1)).astype(dtype)]
    grads = [[(scale * rng.standard_normal(p.shape)).astype(dtype) for p in start] for _ in range(STEPS)]
    params = [backend.asarray(p.copy()) for p in start]
    optimizer = make_optimizer(name, params, LRS[0], weight_decay)
    for g, lr in zip(grads, LRS):
        optimizer.lr = lr
        optimizer.step([backend.asarray(x.copy()) for x in g])
    expected = reference(name, start, [[x.astype(np.float64) for x in g] for g in grads], LRS, weight_decay)
    return [backend.to_numpy(p) for p in params], expected


@pytest.mark.parametrize("scale", [1.0, 1e-8], ids=["g~1", "g~1e-8"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_matches_the_textbook_formula(backend, name, dtype, weight_decay, scale):
    got, expected = run(name, backend, dtype, weight_decay, scale)
    # Each step rounds a handful of operations in the parameters' dtype: allow 16 eps a step,
    # relative to the largest parameter (a parameter near zero has no relative precision to keep).
    tol = 16 * STEPS * float(np.finfo(dtype).eps)
    for p, want in zip(got, expected):
        assert p.dtype == dtype
        np.testing.assert_allclose(p, want, rtol=tol, atol=tol * float(np.abs(want).max()))


def test_the_checks_can_tell_the_variants_apart(backend):
    """The reference cases move the parameters by more than the tolerance: eps and the decay matter."""
    for name in ("momentum", "adam"):
        with_decay, _ = run(name, backend, np.float64, 0.1, 1.0)
        without, _ = run(name, backend, np.float64, 0.0, 1.0)
        assert np.abs(with_decay[0] - without[0]).max() > 1e-4
    tiny, expected = run("adam", backend, np.float64, 0.0, 1e-8)
    start = run("gd", backend, np.float64, 0.0, 0.0)[0]  # no gradient: the parameters as they started
    step = np.abs(tiny[0] - start[0]).max()
    assert 1e-3 < step < 0.5 * sum(LRS)  # with |g| ~ eps, sqrt(s) + eps halves Adam's usual step or more


def test_optimizer_names_make_their_classes():
    params = [np.zeros((2, 2)), np.zeros((2, 1))]
    kinds = {name: type(make_optimizer(name, params, 0.1)) for name in OPTIMIZERS}
    assert kinds == {"gd": GradientDescent, "sgd": GradientDescent, "momentum": Momentum, "adam": Adam}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_subnormals_zeroes_the_subnormal_numbers_only(dtype):
    tiny = np.finfo(dtype).tiny
    x = np.array([tiny, -tiny, tiny / 2, -tiny / 4, tiny * 2**-20, 0.0, -0.0, 1.5, -3.0, np.inf, -np.inf, np.nan],
                 dtype=dtype)
    expected = np.array([tiny, -tiny, 0.0, -0.0, 0.0, 0.0, -0.0, 1.5, -3.0, np.inf, -np.inf, np.nan], dtype=dtype)
    flush_subnormals(x, np.empty_like(x))
    np.testing.assert_array_equal(x, expected)  # NaN where NaN was, and each zero's sign
    assert list(np.signbit(x)) == list(np.signbit(expected))


def subnormal_count(arrays) -> int:
    return sum(int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny))) for a in arrays)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_a_moment_whose_gradient_went_to_zero_decays_to_zero_not_to_subnormal_numbers(backend, name, dtype):
    """A border pixel's weight: one gradient, then only zeros. Its moment decays by 0.9 a step; unflushed it
    would be subnormal after ~750 steps (float32; ~7,000 for float64) and stay there, slow on x86 CPUs."""
    steps = 7_200 if dtype == np.float64 else 900
    params = [backend.asarray(np.ones((3, 2), dtype)), backend.asarray(np.ones((3, 1), dtype))]
    optimizer = make_optimizer(name, params, 0.01)
    optimizer.step([backend.asarray(np.full(p.shape, 1e-3, dtype)) for p in params])
    zeros = [backend.asarray(np.zeros(p.shape, dtype)) for p in params]
    for _ in range(steps):
        optimizer.step(zeros)
    moments = optimizer.velocity if name == "momentum" else optimizer.mean
    moments = [backend.to_numpy(v) for v in moments]
    if isinstance(params[0], np.ndarray):
        assert subnormal_count(moments) == 0
        assert all(np.all(v == 0) for v in moments)  # decayed below the normal range: now exactly 0
    # The weights moved by the first step's momentum only, as in float64 without any flush.
    first = 0.01 * 1e-3 if name == "momentum" else 0.01
    ratio = sum(BETA**k for k in range(steps + 1)) if name == "momentum" else None
    if ratio is not None:
        expected = 1 - first * ratio
        for p in params:
            np.testing.assert_allclose(backend.to_numpy(p), expected, rtol=(steps + 2) * np.finfo(dtype).eps)
