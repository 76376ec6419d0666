"""The layers (gpunet/nn/layers.py) against independent float64 references: plain loops and central differences.

Central differences are exact here up to rounding, and the tolerances say how much rounding. Every layer
is piecewise linear in any one entry of its input or parameters (a ReLU, a pool's argmax and a dropout
mask fix the piece), so a difference whose two ends lie on the base point's piece (checked at every
evaluation: each ReLU's signs, each pool's argmax and each dropout mask as at the base point) has no
truncation error; the softmax cross-entropy of the end-to-end check adds a bounded one (``truncation``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpunet.backends.cpu import CpuBackend
from gpunet.nn.layers import (GOLDEN, MASK64, MIX1, MIX2, Conv2D, Dense, Dropout, Flatten, MaxPool2D, as_maps,
                           dropout_mask, splitmix64)
from gpunet.nn.loss import softmax_cross_entropy
from gpunet.nn.model import init_params, layer_sizes
from tests.tolerances import TRANSCENDENTAL_ULPS, assert_within, gamma

BACKEND = CpuBackend(compiled=False)
H = 1e-5  # the central differences' step: no truncation error to shrink (see above), so not smaller than it needs


# -- parameters as views of one flat array, as model.Network lays them out -------------------------
def flat_views(array, shapes_per_layer):
    """Per layer, its [W, b] as views of ``array``: all weights first, then all biases."""
    views = [[None] * len(shapes) for shapes in shapes_per_layer]
    start = 0
    for slot in (0, 1):
        for layer_views, shapes in zip(views, shapes_per_layer):
            if shapes:
                size = math.prod(shapes[slot])
                layer_views[slot] = array[start:start + size].reshape(shapes[slot])
                start += size
    assert start == array.size
    return views


def build_stack(layers, input_shape, rng, dtype=np.float64):
    """Build the layers one after the other; random parameters (``seed`` init: random biases too) as views of
    one flat array; return the flat gradient array and its per-layer views, laid out the same way."""
    shape = input_shape
    for layer in layers:
        shape = layer.build(shape, BACKEND)
    shapes = [layer.param_shapes() for layer in layers]
    values = [layer.initial_params(rng, "seed") for layer in layers]
    flat = np.empty(sum(math.prod(s) for layer_shapes in shapes for s in layer_shapes), dtype=dtype)
    for layer, views, new in zip(layers, flat_views(flat, shapes), values):
        for view, value in zip(views, new):
            view[...] = value
        layer.params = views
    grad_flat = np.zeros_like(flat)
    return grad_flat, flat_views(grad_flat, shapes)


def forward_stack(layers, x, training=True):
    """(output, [saved per layer], kinks): kinks are what fixes each layer's linear piece."""
    saved, kinks = [], []
    for layer in layers:
        y, s = layer.forward(x, training)
        saved.append(s)
        kinks.append(kink_pattern(layer, y, s))
        x = y
    return x, saved, kinks


def backward_stack(layers, dy, saved, grad_views):
    """The input's gradient; the parameters' written into ``grad_views`` (checked to be where they went)."""
    for layer, s, views in zip(reversed(layers), reversed(saved), reversed(grad_views)):
        dy, grads = layer.backward(dy, s, grads=views or None)
        assert all(np.shares_memory(g, v) for g, v in zip(grads, views))
    return dy


def kink_pattern(layer, y, saved):
    """A ReLU layer's output signs, a pool's argmax, a dropout mask: the piece on which the layer is linear."""
    if isinstance(layer, (MaxPool2D, Dropout)):
        return None if saved is None else saved.copy()
    return y > 0 if getattr(layer, "relu", False) else None


def same_kinks(one, other) -> bool:
    return all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(one, other))


def abs_forward(layers, x):
    """The stack's output on |x| and |parameters|: each output's sum of |terms| through every layer.

    With everything non-negative, ReLU changes nothing and a pool's max is at least its argmax entry's
    value, so this bounds the |terms| whose rounding each output carries.
    """
    kept = [layer.params for layer in layers]
    try:
        for layer in layers:
            layer.params = [np.abs(p) for p in layer.params]
        return forward_stack(layers, np.abs(x))[0]
    finally:
        for layer, params in zip(layers, kept):
            layer.params = params


def sum_length(layers) -> int:
    """How many roundings deep an output's sums go: fan_in + 1 (the bias) for each affine layer, 1 for the rest."""
    return sum(getattr(layer, "fan_in", 0) + 1 for layer in layers)


# -- central differences -----------------------------------------------------------------------------
def central_differences(evaluate, array):
    """(numeric gradient, truncation bound) of evaluate()'s value in each entry of ``array``, perturbed in place.

    evaluate() -> (value, kinks, logits or None). The kinks at both ends of every difference must be the
    base point's. ``step`` is the difference of the two perturbed values as stored (not exactly 2H).
    """
    flat = array.reshape(-1)
    assert np.shares_memory(flat, array), "perturbing a copy would perturb nothing"
    _, base_kinks, _ = evaluate()
    numeric, truncation = np.empty(array.shape), np.zeros(array.shape)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = plus = saved + H
        up, kinks_up, logits_up = evaluate()
        flat[i] = minus = saved - H
        down, kinks_down, logits_down = evaluate()
        flat[i] = saved
        assert same_kinks(base_kinks, kinks_up) and same_kinks(base_kinks, kinks_down), \
            f"entry {i}: a step of {H} crosses a kink (ReLU sign, argmax); the check needs another seed"
        step = float(plus - minus)
        numeric.flat[i] = (up - down) / step
        if logits_up is not None:
            truncation.flat[i] = cross_entropy_truncation(logits_up, logits_down, step)
    return numeric, truncation


def cross_entropy_truncation(logits_up, logits_down, step):
    """Bound on the central difference's truncation error for the mean cross-entropy of logits linear in the entry.

    The logits move as z + t.v (v: their slopes); a sample's loss log-sum-exp(z + t.v) - z_y has third derivative
    E[(v - Ev)^3] under the softmax, at most range(v) . Var(v) <= range(v)^3 / 4 in size (Popoviciu); the
    central difference errs by at most H^2/6 times the third derivative.
    """
    slopes = (logits_up - logits_down) / step
    ranges = slopes.max(axis=0) - slopes.min(axis=0)
    return H**2 / 6 * float(np.mean(ranges**3 / 4))


def check_gradients(analytic, numeric, rounding, truncation, what):
    """|analytic - numeric| within what the differences' rounding and truncation allow.

    ``rounding`` bounds each evaluation's error, so the difference quotient's is 2.rounding/2H; twice that
    (and twice the truncation) leaves room for the analytic gradient's own rounding (gamma_n.sum|terms|, about
    H times smaller) and for the bound's change between the perturbed points.
    """
    assert_within(analytic, numeric, 2 * (2 * rounding / (2 * H) + truncation), what)


def check_layer_gradients(layer, input_shape, m, seed, training=True):
    """Input and parameter gradients of L = sum(y * R), R fixed and random, against central differences."""
    rng = np.random.default_rng(seed)
    _, grad_views = build_stack([layer], input_shape, rng)
    x = rng.standard_normal((*input_shape, m))
    R = rng.standard_normal((*layer.output_shape, m))

    def evaluate():
        y, saved, kinks = forward_stack([layer], x, training)
        return float(np.sum(y * R)), kinks, None

    y, saved, _ = forward_stack([layer], x, training)
    dx = backward_stack([layer], R.copy(), saved, grad_views)
    # Each evaluation of L sums the products R.y, each y a sum of fan_in + 1 terms: within
    # gamma_n.sum|R|.y(|x|, |params|), n the sums' total length (Higham 3.1), and 2 more for the products.
    rounding = gamma(sum_length([layer]) + R.size + 2, np.float64) * float(np.sum(np.abs(R) * abs_forward([layer], x)))
    for name, array, analytic in [("input", x, dx), *zip(("W", "b"), layer.params, grad_views[0])]:
        numeric, truncation = central_differences(evaluate, array)
        check_gradients(analytic, numeric, rounding, truncation, f"{type(layer).__name__} d{name}")


# -- independent float64 references: plain loops -------------------------------------------------------
def direct_dense(x, W, b, relu):
    inputs, m = x.shape
    Z = np.empty((W.shape[0], m))
    for o in range(W.shape[0]):
        for s in range(m):
            Z[o, s] = b[o, 0] + sum(W[o, i] * x[i, s] for i in range(inputs))
    return np.maximum(Z, 0) if relu else Z


def direct_conv(x, W, b, k, padding, relu):
    """out[f, y, x] = b[f] + sum over c, i, j of W[f, c, i, j] . in[c, y + i - top, x + j - left], zero outside.

    'same' pads k - 1 rows and columns in all, the odd one below and right (TensorFlow's rule).
    """
    C, height, width, m = x.shape
    filters = W.shape[0]
    kernel = W.reshape(filters, C, k, k)
    top = (k - 1) // 2 if padding == "same" else 0
    H_out, W_out = (height, width) if padding == "same" else (height - k + 1, width - k + 1)
    out = np.empty((filters, H_out, W_out, m))
    for f in range(filters):
        for row in range(H_out):
            for col in range(W_out):
                total = np.full(m, b[f, 0])
                for c in range(C):
                    for i in range(k):
                        for j in range(k):
                            r, q = row + i - top, col + j - top
                            if 0 <= r < height and 0 <= q < width:
                                total = total + kernel[f, c, i, j] * x[c, r, q]
                out[f, row, col] = total
    return np.maximum(out, 0) if relu else out


def direct_pool(x, size):
    """(max of each size x size window, dx routing dy = 1 to the first largest entry in row-major order)."""
    C, height, width, m = x.shape
    out = np.empty((C, height // size, width // size, m))
    routed = np.zeros_like(x)
    for c in range(C):
        for row in range(height // size):
            for col in range(width // size):
                for s in range(m):
                    best = None
                    for i in range(size):
                        for j in range(size):
                            value = x[c, row * size + i, col * size + j, s]
                            if best is None or value > best[0]:
                                best = (value, i, j)
                    out[c, row, col, s] = best[0]
                    routed[c, row * size + best[1], col * size + best[2], s] = 1
    return out, routed


def reference_mix64(z: int) -> int:
    """SplitMix64's finaliser, from Vigna's splitmix64.c, on Python integers."""
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def reference_kept(seed, step, n, p) -> bool:
    """Element n's fate as layers.dropout_mask documents it: key = mix(mix(seed + G) + step), value =
    mix(key + (n + 1).G), dropped where value's top 32 bits are below round(p.2^32)."""
    key = reference_mix64((reference_mix64((seed + GOLDEN) & MASK64) + step) & MASK64)
    value = reference_mix64((key + (n + 1) * GOLDEN) & MASK64)
    return (value >> 32) >= round(p * 2**32)


# -- Dense -------------------------------------------------------------------------------------------
DENSE_CASES = [(6, 4, 1, True), (5, 3, 7, False), (1, 2, 7, True)]  # inputs, units, m, relu


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("inputs, units, m, relu", DENSE_CASES)
def test_dense_forward_matches_direct_sums(inputs, units, m, relu, dtype):
    rng = np.random.default_rng(1)
    layer = Dense(units, relu=relu)
    build_stack([layer], (inputs,), rng, dtype)
    x = rng.standard_normal((inputs, m)).astype(dtype)
    y, _ = layer.forward(x)
    assert y.dtype == dtype and y.shape == (units, m)
    W, b = (p.astype(np.float64) for p in layer.params)
    want = direct_dense(x.astype(np.float64), W, b, relu)
    # The same sums of inputs + 1 terms in two orders, one rounded in dtype: gamma_n.sum|terms| each
    # (ReLU moves nothing more).
    bound = 2 * gamma(inputs + 1, dtype) * direct_dense(np.abs(x.astype(np.float64)), np.abs(W), np.abs(b), False)
    assert_within(y, want, bound, "dense forward")


@pytest.mark.parametrize("inputs, units, m, relu", DENSE_CASES)
def test_dense_gradients_match_central_differences(inputs, units, m, relu):
    check_layer_gradients(Dense(units, relu=relu), (inputs,), m, seed=2)


def test_dense_initial_params_are_model_init_params():
    """Layers give a dense network the very weights model.init_params does, for either init."""
    for init in ("he", "seed"):
        layers, shape = [Dense(7), Dense(5), Dense(3, relu=False)], (11,)
        for layer in layers:
            shape = layer.build(shape, BACKEND)
        rng = np.random.default_rng(9)
        got = [p for layer in layers for p in layer.initial_params(rng, init)]
        want = init_params(layer_sizes((7, 5), inputs=11, classes=3), init, seed=9, dtype=np.float64)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


# -- Conv2D ------------------------------------------------------------------------------------------
CONV_CASES = [  # channels, height, width, m, filters, k, padding, relu
    (1, 5, 4, 1, 2, 1, "valid", True),
    (3, 4, 6, 7, 2, 1, "same", True),
    (3, 6, 5, 7, 2, 3, "same", True),
    (1, 7, 5, 1, 3, 3, "valid", True),
    (1, 6, 7, 7, 2, 5, "same", True),
    (3, 7, 5, 1, 2, 5, "valid", True),  # 3x1 maps out
    (3, 5, 6, 1, 2, 2, "same", True),  # an even kernel: the odd row and column of zeros below and right
    (1, 5, 4, 7, 2, 4, "same", False),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("C, height, width, m, filters, k, padding, relu", CONV_CASES)
def test_conv_forward_matches_direct_convolution(C, height, width, m, filters, k, padding, relu, dtype):
    rng = np.random.default_rng(3)
    layer = Conv2D(filters, k, padding, relu=relu)
    build_stack([layer], (C, height, width), rng, dtype)
    x = rng.standard_normal((C, height, width, m)).astype(dtype)
    y, _ = layer.forward(x)
    assert y.dtype == dtype and y.shape == (*layer.output_shape, m)
    W, b = (p.astype(np.float64) for p in layer.params)
    want = direct_conv(x.astype(np.float64), W, b, k, padding, relu)
    # Sums of C.k.k + 1 terms in two orders, one rounded in dtype (float64's rounding is covered twice over).
    magnitude = direct_conv(np.abs(x.astype(np.float64)), np.abs(W), np.abs(b), k, padding, False)
    assert_within(y, want, 2 * gamma(C * k * k + 1, dtype) * magnitude, "conv forward")


@pytest.mark.parametrize("C, height, width, m, filters, k, padding, relu", CONV_CASES)
def test_conv_gradients_match_central_differences(C, height, width, m, filters, k, padding, relu):
    check_layer_gradients(Conv2D(filters, k, padding, relu=relu), (C, height, width), m, seed=4)


def test_conv_first_layer_skips_the_input_gradient():
    rng = np.random.default_rng(5)
    layer = Conv2D(2, 3)
    _, grad_views = build_stack([layer], (1, 6, 5), rng)
    x = rng.standard_normal((1, 6, 5, 3))
    y, saved = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx, grads = layer.backward(dy.copy(), saved, input_grad=False)
    _, want = layer.backward(dy.copy(), saved)
    assert dx is None
    for g, w in zip(grads, want):  # the same computation run twice
        np.testing.assert_array_equal(g, w)


def test_conv_he_init_has_variance_two_over_fan_in():
    layer = Conv2D(64, 5)
    layer.build((3, 9, 9), BACKEND)
    W, b = layer.initial_params(np.random.default_rng(0), "he")
    assert W.shape == (64, 75) and b.shape == (64, 1) and not b.any()
    assert W.var() == pytest.approx(2 / 75, rel=0.05)  # 4800 draws: the sample variance's sd is 2%


# -- MaxPool2D -----------------------------------------------------------------------------------------
POOL_CASES = [(1, 7, 5, 1, 2), (3, 6, 9, 7, 2), (2, 5, 7, 3, 3), (1, 4, 4, 7, 2)]  # C, height, width, m, size


@pytest.mark.parametrize("C, height, width, m, size", POOL_CASES)
def test_pool_matches_direct_max_and_routes_to_the_first_max(C, height, width, m, size):
    rng = np.random.default_rng(6)
    layer = MaxPool2D(size)
    out_shape = layer.build((C, height, width), BACKEND)
    assert out_shape == (C, height // size, width // size)  # floored: odd maps lose their last row, column
    x = rng.standard_normal((C, height, width, m))
    x[..., 0][x[..., 0] > 0.5] = 0.5  # ties among a sample's window entries: the first in row-major order wins
    y, saved = layer.forward(x)
    want, routed = direct_pool(x, size)
    np.testing.assert_array_equal(y, want)  # a max is exact
    dx, _ = layer.backward(np.ones_like(y), saved)
    np.testing.assert_array_equal(dx, routed)  # assignments only


@pytest.mark.parametrize("C, height, width, m, size", POOL_CASES)
def test_pool_gradients_match_central_differences(C, height, width, m, size):
    check_layer_gradients(MaxPool2D(size), (C, height, width), m, seed=7)


def test_pool_ties_go_to_the_first_entry_of_the_window():
    layer = MaxPool2D(2)
    layer.build((1, 2, 4), BACKEND)
    x = np.array([[1.0, 3.0, 2.0, 2.0], [3.0, 2.0, 2.0, 2.0]]).reshape(1, 2, 4, 1)
    y, saved = layer.forward(x)
    dx, _ = layer.backward(np.array([5.0, 7.0]).reshape(1, 1, 2, 1), saved)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 5, 7, 0], [0, 0, 0, 0]])


def test_pool_keeps_a_nan_in_sight():
    """A window holding NaN pools to NaN (its gradient to its last entry); a NaN gradient is not zeroed away."""
    layer = MaxPool2D(2)
    layer.build((1, 2, 4), BACKEND)
    x = np.array([[np.nan, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 4, 1)
    y, saved = layer.forward(x)
    np.testing.assert_array_equal(y.reshape(-1), [np.nan, 3.0])
    dx, _ = layer.backward(np.array([5.0, 7.0]).reshape(1, 1, 2, 1), saved)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 0, 0, 7], [0, 5, 0, 0]])
    dx, _ = layer.backward(np.array([np.nan, 7.0]).reshape(1, 1, 2, 1), saved)
    assert np.isnan(dx[0, :, :2, 0]).all()

# -- Dropout -------------------------------------------------------------------------------------------
def test_splitmix64_gives_the_published_reference_outputs():
    """The first outputs of SplitMix64 seeded 1234567 (Rosetta Code, "Pseudo-random numbers/Splitmix64")."""
    want = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
            16408922859458223821]
    assert splitmix64(np, 1234567, 5).tolist() == want


def reference_mask_kept(seed, step, shape, p, first_sample=0):
    """Which elements of a mask (units..., k) are kept: unit u (C order), sample s draws n = (first + s).units + u."""
    units, k = math.prod(shape[:-1]), shape[-1]
    kept = [[reference_kept(seed, step, (first_sample + s) * units + u, p) for s in range(k)] for u in range(units)]
    return np.array(kept, dtype=bool).reshape(shape)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_is_a_pure_function_of_seed_step_sample_and_unit(p):
    shape = (37, 29)
    mask = dropout_mask(np, shape, p, seed=5, step=11, dtype=np.float64)
    np.testing.assert_array_equal(mask, dropout_mask(np, shape, p, seed=5, step=11, dtype=np.float64))
    np.testing.assert_array_equal(mask != 0, reference_mask_kept(5, 11, shape, p))
    np.testing.assert_array_equal(mask[mask != 0], 1 / (1 - p))  # one division, correctly rounded everywhere
    later = dropout_mask(np, (37, 4), p, seed=5, step=11, dtype=np.float64, first_sample=30)
    np.testing.assert_array_equal(later != 0, reference_mask_kept(5, 11, (37, 4), p, first_sample=30))
    longer = dropout_mask(np, (3 * mask.size,), p, seed=5, step=11, dtype=np.float64)  # one unit: n = s
    np.testing.assert_array_equal(longer != 0, reference_mask_kept(5, 11, longer.shape, p))
    assert dropout_mask(np, shape, p, seed=5, step=11, dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("shape", [(6, 11), (3, 4, 2, 9), (1, 10), (5, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_masks_of_a_split_batch_are_the_whole_batchs_bit_for_bit(shape, dtype):
    """Every split of a batch into chunks, at every point: each chunk's mask (its first sample passed) is the
    whole batch's columns, so a batch split between threads drops what the whole batch would."""
    whole = dropout_mask(np, shape, 0.5, seed=3, step=7, dtype=dtype)
    m = shape[-1]
    for cut in range(m + 1):
        for first, stop in ((0, cut), (cut, m)):
            chunk = dropout_mask(np, (*shape[:-1], stop - first), 0.5, 3, 7, dtype, first_sample=first)
            np.testing.assert_array_equal(chunk, whole[..., first:stop])
    thirds = [dropout_mask(np, (*shape[:-1], len(part)), 0.5, 3, 7, dtype, first_sample=int(part[0]))
              for part in np.array_split(np.arange(m), 3) if len(part)]
    np.testing.assert_array_equal(np.concatenate(thirds, axis=-1), whole)


def test_dropout_masks_of_a_chunk_differ_from_the_batchs_other_samples():
    """Two halves of a batch draw different masks (the old numbering by position in the chunk drew the same)."""
    first = dropout_mask(np, (64, 32), 0.5, 1, 2, np.float32)
    second = dropout_mask(np, (64, 32), 0.5, 1, 2, np.float32, first_sample=32)
    binomial_within(int(((first != 0) & (second != 0)).sum()), first.size, 0.25, "kept in both halves")


def binomial_within(count, n, q, what):
    """A Binomial(n, q) count within 6 standard deviations of n.q: an ideal coin misses this once in 5e8.

    The hash is fixed, so the test is deterministic: a hash that mixes poorly fails it every time.
    """
    bound = 6 * math.sqrt(n * q * (1 - q))
    assert abs(count - n * q) <= bound, f"{what}: {count} of {n}, expected {n * q:.0f} +- {bound:.0f}"


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("seed, step", [(0, 0), (3, 1), (12345, 999)])
@pytest.mark.parametrize("shape, first_sample", [((1 << 17,), 0), ((256, 512), 0), ((512, 256), 100)])
def test_dropout_keeps_each_unit_with_probability_one_minus_p_independently(p, seed, step, shape, first_sample):
    n = math.prod(shape)
    kept = dropout_mask(np, shape, p, seed, step, np.float64, first_sample) != 0
    binomial_within(int(kept.sum()), n, 1 - p, "kept units")
    # Disjoint pairs: neighbouring samples, neighbouring units, the same unit at the next step and the next seed.
    binomial_within(int((kept[..., 0::2] & kept[..., 1::2]).sum()), n // 2, (1 - p) ** 2, "neighbours both kept")
    if len(shape) > 1:
        binomial_within(int((kept[0::2] & kept[1::2]).sum()), n // 2, (1 - p) ** 2, "neighbouring units both kept")
    next_step = dropout_mask(np, shape, p, seed, step + 1, np.float64, first_sample) != 0
    binomial_within(int((kept & next_step).sum()), n, (1 - p) ** 2, "kept at step and step + 1")
    next_seed = dropout_mask(np, shape, p, seed + 1, step, np.float64, first_sample) != 0
    binomial_within(int((kept & next_seed).sum()), n, (1 - p) ** 2, "kept with seed and seed + 1")


def test_dropout_forward_scales_the_kept_units_and_predicts_unchanged():
    layer = Dropout(0.25, seed=4)
    layer.build((6,), BACKEND)
    layer.step = 3
    x = np.random.default_rng(8).standard_normal((6, 200))
    y, mask = layer.forward(x, training=True)
    kept = reference_mask_kept(4, 3, x.shape, 0.25)
    np.testing.assert_array_equal(y, np.where(kept, x * (1 / 0.75), 0.0))  # elementwise: bit for bit
    later, _ = layer.forward(x[:, 150:], training=True, first_sample=150)  # a chunk: the batch's columns
    np.testing.assert_array_equal(later, y[:, 150:])
    # The index is the (unit, sample) position, not the memory's order: a Fortran-ordered batch draws the same.
    np.testing.assert_array_equal(layer.forward(np.asfortranarray(x), training=True)[0], y)
    same, saved = layer.forward(x, training=False)
    assert same is x and saved is None
    assert layer.backward(x, saved)[0] is x


@pytest.mark.parametrize("shape, m, p", [((5,), 7, 0.5), ((3, 4, 5), 1, 0.2)])
def test_dropout_gradients_match_central_differences_with_the_mask_held(shape, m, p):
    layer = Dropout(p, seed=2)
    layer.step = 17
    check_layer_gradients(layer, shape, m, seed=9)  # the kinks check asserts that the mask stayed the same


# -- Flatten and the digits' maps ----------------------------------------------------------------------
def test_flatten_reads_channels_then_rows_then_columns():
    x = np.random.default_rng(10).standard_normal((3, 4, 5, 2))
    layer = Flatten()
    assert layer.build((3, 4, 5), BACKEND) == (60,)
    y, saved = layer.forward(x)
    for c, row, col, s in np.ndindex(x.shape):
        assert y[(c * 4 + row) * 5 + col, s] == x[c, row, col, s]
    np.testing.assert_array_equal(layer.backward(y, saved)[0], x)


def test_flatten_gradients_match_central_differences():
    check_layer_gradients(Flatten(), (3, 4, 5), 7, seed=11)


def test_digits_become_one_channel_maps_row_by_row():
    images = np.random.default_rng(12).integers(0, 256, (5, 784), dtype=np.uint8)
    A0 = BACKEND.gather_scaled(images, None, np.float64)
    maps = as_maps(A0, (1, 28, 28))
    assert maps.shape == (1, 28, 28, 5)
    for s in range(5):  # gather_scaled multiplies by fl(1/255): elementwise, bit for bit
        np.testing.assert_array_equal(maps[0, :, :, s], images[s].reshape(28, 28) * (1 / 255))
    np.testing.assert_array_equal(Flatten().forward(maps)[0], A0)


# -- a small network, end to end -------------------------------------------------------------------------
@pytest.mark.parametrize("input_shape, m, padding", [((1, 7, 6), 5, "same"), ((3, 8, 7), 1, "valid")])
def test_stack_loss_gradient_matches_central_differences(input_shape, m, padding):
    """conv -> pool (odd maps) -> flatten -> dense relu -> dropout -> dense: the mean cross-entropy's gradient."""
    rng = np.random.default_rng(13)
    dropout = Dropout(0.3, seed=1)
    dropout.step = 2
    layers = [Conv2D(2, 3, padding), MaxPool2D(2), Flatten(), Dense(5), dropout, Dense(3, relu=False)]
    _, grad_views = build_stack(layers, input_shape, rng)
    x = rng.standard_normal((*input_shape, m))
    labels = rng.integers(0, 3, m)

    def evaluate():
        Z, _, kinks = forward_stack(layers, x)
        return float(softmax_cross_entropy(np, Z, labels)[1].mean()), kinks, Z

    Z, saved, _ = forward_stack(layers, x)
    dZ, losses = softmax_cross_entropy(np, Z, labels)
    dx = backward_stack(layers, dZ, saved, grad_views)
    # Each logit within gamma_n.(its sum of |terms|), n the sums' total length; a logit error d moves a
    # sample's loss by at most 2d. The loss's own roundings: the shift, the exps and the log (each within
    # a few ulps), the sums over classes and samples, on values up to |Z| and the loss.
    logit_bounds = gamma(sum_length(layers) + 2, np.float64) * abs_forward(layers, x)
    own = gamma(Z.shape[0] + m + 2 * TRANSCENDENTAL_ULPS, np.float64) * (1 + losses.mean() + np.abs(Z).max())
    rounding = float(np.mean(2 * logit_bounds.max(axis=0))) + own
    arrays = [("input", x, dx)] + [(f"layer {k} {name}", p, g) for k, layer in enumerate(layers)
                                   for name, p, g in zip(("W", "b"), layer.params, grad_views[k] or [])]
    for what, array, analytic in arrays:
        numeric, truncation = central_differences(evaluate, array)
        check_gradients(analytic, numeric, rounding, truncation, what)  # analytic: read from the flat array


# -- bad shapes and settings: one line naming the layer ---------------------------------------------------
@pytest.mark.parametrize("make, input_shape, says", [
    (lambda: Dense(4), (1, 5, 5), "put a flatten before it"),
    (lambda: Conv2D(2, 3), (10,), "takes maps"),
    (lambda: Conv2D(2, 5), (1, 4, 6), "does not fit"),
    (lambda: MaxPool2D(2), (1, 1, 5), "hold no 2x2 window"),
    (lambda: MaxPool2D(3), (784,), "takes maps"),
    (lambda: Conv2D(2, 3, "full"), None, "padding 'full'"),
    (lambda: Conv2D(0, 3), None, "at least 1 filter"),
    (lambda: Dense(0), None, "at least 1"),
    (lambda: MaxPool2D(1), None, "from 2 to 16"),
    (lambda: Dropout(1.0), None, "below 1"),
    (lambda: Dropout(-0.1), None, "at least 0"),
    (lambda: Dropout(float("nan")), None, "below 1"),
])
def test_bad_layers_are_refused_in_one_line(make, input_shape, says):
    with pytest.raises(ValueError) as refused:
        make().build(input_shape, BACKEND)
    message = str(refused.value)
    assert says in message and "\n" not in message
