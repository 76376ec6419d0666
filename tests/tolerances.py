"""How far apart two computations of the same formulas may land, from the dtype and the lengths of the sums.

Two computations that add up the same terms in different orders (another BLAS kernel, memory layout or
thread split; the compiled loops against NumPy's calls; a GPU against the CPU; chunks against one pass)
need not agree to the bit: BLAS promises no order of summation. What is guaranteed is the classic bound:
a sum of n products, added up in any order, lies within

    gamma_n . sum |a_i b_i|,   gamma_n = n.u / (1 - n.u),   u = eps / 2 (the unit roundoff),

of its exact value (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1), so two
evaluations lie within twice that of each other: about n.eps.sum|a_i b_i|.

``pass_bounds`` carries this through the network's forward and backward pass, and ``training_bounds``
through training steps, on float64 reference values. Each result's bound is its own sums' rounding,
gamma_n.sum|terms| as above, plus what its inputs' errors carry into it. That second part is a model,
not a proof: the inputs' errors add as independent errors do, sqrt(sum (w_i.err_i)^2), rather than all
with the sign of their weight, sum |w_i|.err_i. That worst case compounds a factor sum|w| / |sum w| per
layer: after two float32 layers a bound the size of the gradients themselves, which would let a wrong
gradient through. Against the differences measured between OpenBLAS's SkylakeX, Haswell and Sandybridge
kernels, thread counts and paths, the bounds are 200 times larger or more for one step, 90 times over
two epochs. In float64 they are 1e-12 to 1e-10 of a gradient: these comparisons catch a gradient entry
off by 0.1%. In float32 (1e-3 to 1e-1 of a gradient after 2-3 layers) they catch a dropped term or a
lost digit, not so small a defect.

Bit-for-bit equality is for the same computation run twice, and for elementwise work (each +, -, *, /
and sqrt is correctly rounded everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRANSCENDENTAL_ULPS = 4  # exp and log (NumPy's SIMD loops, libm, CUDA): each within a few ulps
UPDATE_ROUNDINGS = 8  # at most this many roundings of each value along an optimizer's update


def unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def gamma(n: int, dtype) -> float:
    """gamma_n: a sum of n terms, in any order, is within gamma_n.sum|terms| of its exact value."""
    nu = n * unit_roundoff(dtype)
    assert nu < 0.5, f"a sum of {n} terms is beyond what {np.dtype(dtype).name} can bound"
    return nu / (1 - nu)


def assert_within(got, want, bound, what: str = "values") -> None:
    """|got - want| <= bound, entry by entry (``bound`` broadcasts); names the worst entry when not."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    error = np.abs(got - want)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), error.shape)
    over = ~(error <= bound)  # a NaN on either side is over
    if over.any():
        worst = np.unravel_index(np.argmax(np.where(over, error - bound, -np.inf)), error.shape)
        raise AssertionError(f"{what}: {int(over.sum())} of {error.size} entries apart by more than their bound; "
                             f"worst at {tuple(int(i) for i in worst)}: got {got[worst]!r}, want {want[worst]!r}, "
                             f"apart {error[worst]:.3g} > bound {bound[worst]:.3g}")


def assert_counts_within(got, want, ambiguous: int, what: str = "correct count") -> None:
    """Counts of argmaxes agree, except on samples whose top two logits are within rounding of each other."""
    assert abs(int(got) - int(want)) <= ambiguous, f"{what}: {got} != {want} ({ambiguous} samples near a tie)"


# -- augmentation (gpunet/nn/augment.py) -------------------------------------------------------
def augment_bound(transforms, dtype, side: int = 28) -> np.ndarray:
    """How far apart two computations of gpunet.nn.augment.affine_sample's A0 (side.side, k) in ``dtype`` may
    land, per element, from the same ``transforms`` (k, 6) (already in ``dtype``).

    Each coordinate xs = a.xo + b.yo + c0 is within gamma_3.(|a.xo| + |b.yo| + |c0|) of its exact value in any
    order, fused into multiply-adds or not (the bound of the module docstring): two computations are twice that
    apart. The exact interpolation is continuous (across floor's steps too) and moves by at most |dxs| + |dys|:
    pixels are 0..1 after scaling, the border 0, so no slope is above 1 per pixel. And each computation is
    within about 10u of the exact interpolation at its own coordinates (results are at most 1): fx and gx = 1 - fx
    off by u and 2u, which top and bottom carry (2u) beside their own products and sum (gamma_2), the value
    carrying theirs and its weights' beside its own (8u in all), and the scaling by fl(1/255) (2u). gamma_16 is
    taken for each, with room. Plus a few of the dtype's smallest normal numbers, which a GPU flushes to zero.
    """
    t = np.abs(np.asarray(transforms, dtype=np.float64))
    grid = np.arange(side, dtype=np.float64)
    xo, yo = np.tile(grid, side)[None, :], np.repeat(grid, side)[None, :]
    reach_x = t[:, 0:1] * xo + t[:, 1:2] * yo + t[:, 2:3]
    reach_y = t[:, 3:4] * xo + t[:, 4:5] * yo + t[:, 5:6]
    bound = 2 * gamma(3, dtype) * (reach_x + reach_y) + 2 * gamma(16, dtype) + 8 * float(np.finfo(dtype).tiny)
    return np.ascontiguousarray(bound.T)


# -- one forward and backward pass -----------------------------------------------------------------
@dataclass
class PassBounds:
    """Bounds on |x - x'| for each quantity x of a forward and backward pass computed twice.

    Shaped as in the notes, samples as columns: ``activations`` = [A0, A1, ..., A_{L-1}],
    ``grads`` = [dW1, db1, dW2, ...]; ``ambiguous``: how many samples' top two logits are
    close enough that rounding may change which is the larger (argmax, correct counts).
    """

    logits: np.ndarray
    activations: list
    losses: np.ndarray
    grads: list
    ambiguous: int


def pass_bounds(params, images, labels, dtype, other_dtype=None, chunked: bool = False) -> PassBounds:
    """Bounds on how far apart two computations of one step's forward and backward pass may land.

    One computation in ``dtype``, the other in ``other_dtype`` (default: ``dtype`` too), each adding
    its sums in any order, from the same ``params`` (cast exactly) and uint8 ``images`` (m, 784),
    one sample a row. ``chunked``: a full-batch step in chunks (``Network.full_batch_gradients``).
    """
    params = [np.asarray(p, dtype=np.float64) for p in params]
    A0, labels = _inputs(images, labels)
    one = _one_pass(params, None, A0, labels, dtype, chunked)
    other = one if other_dtype is None or np.dtype(other_dtype) == np.dtype(dtype) else \
        _one_pass(params, None, A0, labels, other_dtype, chunked)
    logits = one.logits + other.logits
    return PassBounds(logits, [a + b for a, b in zip(one.activations, other.activations)],
                      one.losses + other.losses, [a + b for a, b in zip(one.grads, other.grads)],
                      _near_ties(one.Z, logits))


def softmax_cross_entropy_bounds(Z, labels, dtype):
    """Bounds on how far (dZ, losses) computed in ``dtype`` from the logits Z may land from the exact values."""
    _, _, B_dZ, _, B_losses = _softmax_cross_entropy(np.asarray(Z, dtype=np.float64), 0.0,
                                                     np.asarray(labels).astype(np.int64), dtype)
    return B_dZ, B_losses


def _inputs(images, labels):
    """A0 = x / 255 as columns (float64) and the labels as integers."""
    return np.asarray(images, dtype=np.float64).T / 255, np.asarray(labels).astype(np.int64)


def _near_ties(Z, apart) -> int:
    """Samples whose top two logits are within the two computations' bounds of each other."""
    ranked = np.sort(Z, axis=0)
    return int(np.sum(ranked[-1] - ranked[-2] <= 2 * apart.max(axis=0)))


@dataclass
class _Pass:
    """Reference values (float64) of a pass, and bounds on one computation's distance from them."""

    Z: np.ndarray
    grad_values: list
    loss_values: np.ndarray
    logits: np.ndarray
    activations: list
    losses: np.ndarray
    grads: list


def _sum_bound(a, Ba, b, Bb, n: int, dtype):
    """Bound on how far fl(a^ . b^) may land from a.b, where a^, b^ are within Ba, Bb of a, b: sums of n products.

    The sums' own rounding, gamma_n.|a|.|b|, and what the inputs' errors carry into them: errors of
    different terms, made in different sums, add as independent errors do (the root of the sum of
    their squares), not all with one sign (see the module docstring).
    """
    return gamma(n, dtype) * (np.abs(a) @ np.abs(b)) + np.sqrt(Ba**2 @ b**2 + a**2 @ Bb**2)


def _one_pass(params, param_bounds, A0, labels, dtype, chunked) -> _Pass:
    """One computation in ``dtype`` from params within ``param_bounds`` (None: exact) of ``params``."""
    param_bounds = [np.broadcast_to(b, p.shape) for b, p in zip(param_bounds or [0.0] * len(params), params)]
    activations, act_bounds, Zs, Z_bounds = _forward(params, param_bounds, A0, dtype)
    P, dZ, B_dZ, losses, B_losses = _softmax_cross_entropy(Zs[-1], Z_bounds[-1], labels, dtype)
    grads, grad_bounds = _backward(params, param_bounds, activations, act_bounds, Zs, Z_bounds, dZ, B_dZ, dtype,
                                   chunked)
    return _Pass(Zs[-1], grads, losses, Z_bounds[-1], act_bounds, B_losses, grad_bounds)


def _forward(params, param_bounds, A0, dtype):
    """Z_k = W_k.A_{k-1} + b_k, sums of in + 1 terms (b as one more), A_k = relu(Z_k); A0 = x . fl(1/255).

    Returns [A0 .. A_{L-1}], their bounds, [Z_1 .. Z_L] and theirs.
    """
    A, B = A0, gamma(2, dtype) * A0
    activations, act_bounds, Zs, Z_bounds = [A], [B], [], []
    ones = np.ones((1, A0.shape[1]))
    for W, b, BW, Bb in zip(params[0::2], params[1::2], param_bounds[0::2], param_bounds[1::2]):
        Z = W @ A + b
        B = _sum_bound(np.hstack([W, b]), np.hstack([BW, Bb]), np.vstack([A, ones]), np.vstack([B, 0 * ones]),
                       W.shape[1] + 1, dtype)
        Zs.append(Z)
        Z_bounds.append(B)
        A = np.maximum(Z, 0)  # relu moves nothing by more than it moves its input: A keeps Z's bound
        activations.append(A)
        act_bounds.append(B)
    return activations[:-1], act_bounds[:-1], Zs, Z_bounds


def _softmax_cross_entropy(Z, BZ, labels, dtype):
    """dZ_L = (softmax(Z) - Y) / m and the losses -log softmax(Z)[y], with their bounds.

    Logit errors up to delta move each log-probability by up to 2.delta. Its own rounding:
    logp = (Z - top) - log(sum of 10 exps): the shift, each exp, the sum, the log and the
    subtraction, each exp and log within a few ulps (an ulp: up to 2u of the value);
    dZ: P's relative error (that of logp, and exp's own), then P - Y and the scaling by fl(1/m), and
    underflow: a probability or its scaled value below the dtype's smallest normal number.
    """
    u, (classes, m) = unit_roundoff(dtype), Z.shape
    samples = np.arange(m)
    shifted = Z - Z.max(axis=0)
    log_total = np.log(np.exp(shifted).sum(axis=0))
    logp = shifted - log_total
    ulp = 2 * TRANSCENDENTAL_ULPS * u
    delta = np.broadcast_to(BZ, Z.shape).max(axis=0)
    B_logp = 2 * delta + u * (np.abs(shifted) + np.abs(logp)) + gamma(classes, dtype) + ulp * (1 + log_total)
    P = np.exp(logp)
    PY = P.copy()
    PY[labels, samples] -= 1
    tiny = float(np.finfo(dtype).tiny)  # below it a probability keeps no relative precision (a GPU may flush it to 0)
    B_dZ = (P * (B_logp + ulp) + 3 * u * np.abs(PY) + tiny) / m + tiny
    return P, PY / m, B_dZ, -logp[labels, samples], B_logp[labels, samples]


def _backward(params, param_bounds, activations, act_bounds, Zs, Z_bounds, dZ, B_dZ, dtype, chunked):
    """dW_k = dZ_k.A_{k-1}^T, db_k = sum of dZ_k: sums of m terms; dZ_{k-1} = W_k^T.dZ_k * relu'(Z_{k-1}).

    A full-batch step in chunks scales each chunk's sums by fl(r/m) after its fl(1/r): 2 roundings more.
    Where Z_{k-1} is within its bound of 0, relu' may be 1 in one computation and 0 in the other.
    """
    m = dZ.shape[1]
    n = m + 2 if chunked else m
    ones = np.ones((m, 1))
    grads, bounds = [None] * len(params), [None] * len(params)
    for k in reversed(range(len(params) // 2)):
        A_prev = activations[k]
        grads[2 * k], bounds[2 * k] = dZ @ A_prev.T, _sum_bound(dZ, B_dZ, A_prev.T, act_bounds[k].T, n, dtype)
        grads[2 * k + 1], bounds[2 * k + 1] = dZ @ ones, _sum_bound(dZ, B_dZ, ones, 0 * ones, n, dtype)
        if k > 0:
            W, BW = params[2 * k], param_bounds[2 * k]
            dA = W.T @ dZ
            B_dA = _sum_bound(W.T, BW.T, dZ, B_dZ, W.shape[0], dtype)
            near_kink = np.abs(Zs[k - 1]) <= 2 * Z_bounds[k - 1]
            mask = Zs[k - 1] > 0
            dZ, B_dZ = dA * mask, np.where(near_kink, np.abs(dA) + B_dA, B_dA * mask)
    return grads, bounds


# -- training steps --------------------------------------------------------------------------------
@dataclass
class TrainingBounds:
    """Bounds on how far apart two runs of the same training steps may land (both in one dtype).

    ``params``: on each parameter at the end; ``losses``: on the sum of each step's per-sample
    losses; ``ambiguous``: each step's samples near a tie of their top two logits.
    """

    params: list
    losses: list
    ambiguous: list


def training_bounds(params, images, labels, steps, optimizer: str, weight_decay: float, dtype) -> TrainingBounds:
    """Bounds for training from ``params``: ``steps`` = [(sample index array, learning rate), ...].

    Each step: the pass's bounds from parameters known to within the bounds so far
    (``_one_pass``), then the optimizer's update on float64 reference values
    (``_update_bounds``): what the gradients' and the state's errors can move, plus the
    update's own roundings. Two runs are apart by at most twice one run's bounds.
    """
    params = [np.asarray(p, dtype=np.float64).copy() for p in params]
    bounds = [np.zeros_like(p) for p in params]
    state = [{} for _ in params]
    loss_bounds, ambiguous = [], []
    for t, (index, lr) in enumerate(steps, start=1):
        A0, batch_labels = _inputs(np.asarray(images)[index], np.asarray(labels)[index])
        one = _one_pass(params, bounds, A0, batch_labels, dtype, chunked=False)
        loss_bounds.append(2 * float(one.losses.sum()))
        ambiguous.append(_near_ties(one.Z, 2 * one.logits))
        for k, (g, Bg) in enumerate(zip(one.grad_values, one.grads)):
            decay = weight_decay if k % 2 == 0 else 0.0  # the weights only
            params[k], bounds[k] = _update_bounds(optimizer, params[k], bounds[k], g, Bg, state[k], lr, decay, t,
                                                  dtype)
    return TrainingBounds([2 * b for b in bounds], loss_bounds, ambiguous)


BETA, BETA1, BETA2, EPS = 0.9, 0.9, 0.999, 1e-8  # gpunet.nn.optimizers' defaults


def _update_bounds(name, p, Bp, g, Bg, state, lr, decay, t, dtype):
    """One update of p (reference) known to within Bp, by a gradient g known to within Bg: (p', Bp')."""
    u = unit_roundoff(dtype)
    p, Bp = p * (1 - lr * decay), Bp * abs(1 - lr * decay)
    if name in ("gd", "sgd"):
        step, Bstep = lr * g, lr * Bg
    elif name == "momentum":
        v, Bv = state.get("v", 0.0), state.get("Bv", 0.0)
        v, Bv = BETA * v + g, BETA * Bv + Bg + UPDATE_ROUNDINGS * u * (BETA * np.abs(v) + np.abs(g))
        state.update(v=v, Bv=Bv)
        step, Bstep = lr * v, lr * Bv
    else:
        step, Bstep = _adam_step(g, Bg, state, lr, t, u)
    rounding = UPDATE_ROUNDINGS * u * (np.abs(p) + np.abs(step) + Bp + Bstep)
    return p - step, Bp + Bstep + rounding


def _adam_step(g, Bg, state, lr, t, u):
    """Adam's step alpha_t.m / (sqrt(s) + eps) and its bound: its extremes over m and s within their bounds."""
    m, Bm = state.get("m", 0.0), state.get("Bm", 0.0)
    s, Bs = state.get("s", 0.0), state.get("Bs", 0.0)
    m, Bm = BETA1 * m + (1 - BETA1) * g, BETA1 * Bm + (1 - BETA1) * Bg
    s, Bs = BETA2 * s + (1 - BETA2) * g * g, BETA2 * Bs + (1 - BETA2) * (2 * np.abs(g) + Bg) * Bg
    Bm, Bs = Bm + UPDATE_ROUNDINGS * u * np.abs(m), Bs + UPDATE_ROUNDINGS * u * s
    state.update(m=m, Bm=Bm, s=s, Bs=Bs)
    alpha = lr * (1 - BETA2**t) ** 0.5 / (1 - BETA1**t)
    step = alpha * m / (np.sqrt(s) + EPS)
    # m / (sqrt(s) + eps) grows with m and, for either sign of m, is largest in size at the smallest s
    corners = [alpha * mm / (np.sqrt(ss) + EPS) for mm in (m - Bm, m + Bm) for ss in (np.maximum(s - Bs, 0), s + Bs)]
    return step, np.max([np.abs(c - step) for c in corners], axis=0)
