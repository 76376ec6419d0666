"""The layers a network is built from, each forward rule beside its backward rule.

Samples are the LAST axis everywhere, as the notes' columns: a dense layer's values are (units, m) and a
convolution's activations are maps (channels, height, width, m) (cuda-convnet's layout). So a
convolution is the notes' dense formula Z = W . A + b applied at every position (see ``Conv2D``), and
both go through the same two functions, ``affine`` and ``affine_backward``.

Every layer has one small interface (shapes leave out the sample axis m):

    build(input_shape, backend) -> output_shape   checks the input and fixes the parameters' shapes
    param_shapes()                                [W's shape, b's shape], or [] without parameters
    initial_params(rng, init)                     fresh [W, b] as NumPy arrays
    params                                        [W, b] as the caller sets them: views of one flat
                                                  array (all weights, then all biases) as in model.py
    forward(x, training, scratch) -> (y, saved)   saved: what backward needs
    backward(dy, saved, grads=None, input_grad=True, scratch) -> (dx, [dW, db])

``scratch`` (a ``Scratch``, default ``FRESH``) holds the layer's large arrays from one step to the next:
a training workspace gives each layer its own, so that the CPU does not map and fault in fresh pages for
im2col's columns, the maps and their gradients at every step. With ``FRESH`` every result is a new array.

``dy`` is the loss's gradient with respect to the layer's output, with the loss's 1/m already in it
(as model.py's dZ), so no layer divides by m. ``backward`` may overwrite ``dy``; it writes the
parameter gradients into ``grads`` when given (views of one flat gradient array), and skips the input
gradient where ``input_grad`` is False (the first layer's is never used).

The layers are written once against ``backend.xp`` and call the backend's hot operations: ``bias_relu``
and ``relu_backward``, and ``im2col``, ``col2im``, ``max_pool``, ``max_pool_backward``, ``dropout_mask``
(each a CUDA kernel on the GPU). Those last five are module functions here taking ``xp``, as in
activations.py: the generic code that ``backend.Backend`` runs, and the reference a kernel is tested against.
"""

from __future__ import annotations

import math

import numpy as np

INITS = ("he", "seed")  # as model.INITS
PADDINGS = ("valid", "same")


class Layer:
    """What every layer has; a layer without parameters keeps these defaults."""

    input_shape: tuple = ()
    output_shape: tuple = ()
    backend = None

    def __init__(self):
        self.params = []

    def build(self, input_shape, backend) -> tuple:
        """Check ``input_shape`` (without m), keep the backend; return the output shape (without m)."""
        self.input_shape = tuple(int(n) for n in input_shape)
        self.backend = backend
        self.output_shape = self._build(self.input_shape)
        return self.output_shape

    def _build(self, input_shape) -> tuple:
        """Check the input shape, fix the parameters' shapes; return the output shape. Here: the same."""
        return input_shape

    def param_shapes(self) -> list:
        """The parameters' shapes in the order of ``params``."""
        return []

    def initial_params(self, rng, init: str) -> list:
        """Fresh parameters as NumPy float64 arrays (none here)."""
        return []


# -- arrays kept from step to step ----------------------------------------------------------------
class Scratch:
    """One layer's arrays in one workspace, by role ("columns", "dx", ...), made on first use and reused.

    An array holds its role's result until the same role's next call (the next step), so a value saved for
    backward must have a role of its own; two layers, or two parts of a split step, never share a Scratch.
    """

    def __init__(self, xp):
        self.xp, self.arrays = xp, {}

    def array(self, role: str, shape, dtype):
        """The (uninitialised) array of ``role``, shaped ``shape``, of ``dtype``."""
        kept = self.arrays.get(role)
        if kept is None or kept.shape != tuple(shape) or kept.dtype != dtype:
            kept = self.arrays[role] = self.xp.empty(shape, dtype)
        return kept


class _Fresh(Scratch):
    """No arrays kept: every role is None, i.e. the operation makes a new array (prediction, CUDA, tests)."""

    def __init__(self):
        super().__init__(None)

    def array(self, role: str, shape, dtype):
        return None


FRESH = _Fresh()


# -- the notes' dense formula, shared by Dense and Conv2D ------------------------------------------
def affine(backend, W, b, A, relu: bool, out=None):
    """Z = W . A + b for A (inputs, columns); then A_out = relu(Z) in place where ``relu``. ``out``: for Z, or None."""
    Z = backend.matmul(W, A, out=out)
    if relu:
        return backend.bias_relu(Z, b)
    Z += b
    return Z


def affine_backward(backend, W, A, Y, dY, relu: bool, grads=None, input_grad=True, dA_out=None):
    """The backward rules of ``affine``: (dA, [dW, db]) from dY = dL/dY, with A its input and Y its output.

        dZ = dY * relu'(Z)    (the mask read from Y = relu(Z); dZ = dY without relu; dY is overwritten)
        dW = dZ . A^T         db = sum of dZ over columns         dA = W^T . dZ   (into ``dA_out`` if given)
    """
    dZ = backend.relu_backward(dY, Y) if relu else dY
    dW, db = grads if grads is not None else (None, None)
    dW = backend.matmul(dZ, A.T, out=dW)
    db = dZ.sum(axis=1, keepdims=True, out=db)
    dA = backend.matmul(W.T, dZ, out=dA_out) if input_grad else None
    return dA, [dW, db]


class _Affine(Layer):
    """A layer with W (outputs, fan_in) and b (outputs, 1), initialised as model.init_params does."""

    outputs: int
    fan_in: int

    def param_shapes(self) -> list:
        return [(self.outputs, self.fan_in), (self.outputs, 1)]

    def initial_params(self, rng, init: str) -> list:
        """``he``: W ~ Normal(0, 2/fan_in), b = 0; ``seed``: W and b uniform in [-0.5, 0.5) (the notes).

        The draws, in this order from ``rng``, are those of model.init_params for a dense layer.
        """
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}")
        W_shape, b_shape = self.param_shapes()
        if init == "he":
            return [rng.standard_normal(W_shape) * np.sqrt(2.0 / self.fan_in), np.zeros(b_shape)]
        return [rng.random(W_shape) - 0.5, rng.random(b_shape) - 0.5]


class Dense(_Affine):
    """The notes' layer, W (units, inputs) and b (units, 1), on A (inputs, m):

        Z = W . A + b            A_out = relu(Z) if ``relu``
    Backward (``affine_backward``), from dA_out:
        dZ = dA_out * relu'(Z)   dW = dZ . A^T   db = sum of dZ over samples   dA = W^T . dZ
    Hidden layers have ``relu``; the output layer does not (softmax is inside the loss).
    """

    def __init__(self, units: int, relu: bool = True):
        super().__init__()
        if int(units) < 1:
            raise ValueError(f"dense layer: {units} units; needs at least 1")
        self.outputs, self.relu = int(units), relu

    def _build(self, input_shape) -> tuple:
        if len(input_shape) != 1:
            raise ValueError(f"dense{self.outputs}: takes a vector per sample, got maps {input_shape}; "
                             "put a flatten before it")
        self.fan_in = input_shape[0]
        return (self.outputs,)

    def forward(self, x, training: bool = False, scratch: Scratch = FRESH):
        """y = relu(W . x + b) (or W . x + b); saved: (x, y)."""
        W, b = self.params
        y = affine(self.backend, W, b, x, self.relu, out=scratch.array("y", (self.outputs, x.shape[-1]), x.dtype))
        return y, (x, y)

    def backward(self, dy, saved, grads=None, input_grad=True, scratch: Scratch = FRESH):
        """(dx, [dW, db]): ``affine_backward``."""
        x, y = saved
        return affine_backward(self.backend, self.params[0], x, y, dy, self.relu, grads, input_grad,
                               dA_out=scratch.array("dx", x.shape, dy.dtype) if input_grad else None)


# -- convolution -----------------------------------------------------------------------------------
def same_padding(k: int) -> tuple[int, int]:
    """Rows (and columns) of zeros before and after a map so that a k x k kernel keeps its size.

    k - 1 in all; for an even k the extra one goes after (below, right), as Keras's and TensorFlow's 'same'.
    """
    return (k - 1) // 2, k // 2


def im2col(xp, x, k: int, pads: tuple[int, int]):
    """The patches of maps x (C, H, W, m) as columns (C.k.k, H_out.W_out.m): one column per position and sample.

    Row (c, i, j) = c.k.k + i.k + j, as W (filters, C.k.k) reads them; column (y, x, s) = (y.W_out + x).m + s,
    so W . columns is (filters, H_out.W_out.m), which is the maps (filters, H_out, W_out, m) with no copy.
    ``pads``: zeros before and after each map's rows and columns. No Python loop over positions: for each
    of the k.k kernel offsets (i, j), one copy of the shifted maps, columns[c, i, j, y, x, s] =
    x[c, y + i, x + j, s] (as fast as copying a strided view of the patches, and only CuPy's documented
    slicing; the CUDA backend's im2col kernel does it with one thread per column entry).
    """
    before, after = pads
    if before or after:
        x = xp.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
    C, H, W, m = x.shape
    H_out, W_out = H - k + 1, W - k + 1
    patches = xp.empty((C, k, k, H_out, W_out, m), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            patches[:, i, j] = x[:, i:i + H_out, j:j + W_out]
    return patches.reshape(C * k * k, H_out * W_out * m)


def col2im(xp, columns, input_shape, k: int, pads: tuple[int, int]):
    """The gradient of im2col: the maps (C, H, W, m) whose every element sums the column entries that copied it.

    Written as a gather: input element (c, y, x, s) (in padded coordinates) sums, for each kernel offset
    (i, j) in order, the entry [c, i, j, y - i, x - j, s] where that position exists. In NumPy that is
    k.k shifted-slice additions (no loop over positions); a CUDA thread per input element sums the same
    entries in the same order, with no atomics. The padding's gradient is dropped.
    """
    C, H, W, m = input_shape
    before, after = pads
    H_out, W_out = H + before + after - k + 1, W + before + after - k + 1
    patches = columns.reshape(C, k, k, H_out, W_out, m)
    padded = xp.zeros((C, H + before + after, W + before + after, m), dtype=columns.dtype)
    for i in range(k):
        for j in range(k):
            padded[:, i:i + H_out, j:j + W_out, :] += patches[:, i, j]
    if before or after:
        return xp.ascontiguousarray(padded[:, before:before + H, before:before + W, :])
    return padded


class Conv2D(_Affine):
    """A convolution: the notes' dense formula applied at every position of the maps.

    Each k x k x C patch of the input (C, H, W, m) is a column (``im2col``), and the layer is a dense
    layer on those columns, W (filters, C.k.k) and b (filters, 1):

        columns = im2col(x)                    (C.k.k, H_out.W_out.m)
        Z = W . columns + b                    (filters, H_out.W_out.m) = maps (filters, H_out, W_out, m)
        y = relu(Z)                            (if ``relu``, as after every convolution in MNIST's CNNs)
    Backward, the dense rules on the columns, then back to the maps:
        dZ = dy * relu'(Z)    dW = dZ . columns^T    db = sum of dZ over positions and samples
        dcolumns = W^T . dZ   dx = col2im(dcolumns)  (each input element sums the entries that copied it)

    Stride 1. 'valid': no padding, H_out = H - k + 1; 'same': zeros around the maps (``same_padding``),
    H_out = H.
    """

    def __init__(self, filters: int, k: int, padding: str = "valid", relu: bool = True):
        super().__init__()
        if int(filters) < 1 or int(k) < 1:
            raise ValueError(f"conv{filters}k{k}: needs at least 1 filter and a kernel of at least 1")
        if padding not in PADDINGS:
            raise ValueError(f"conv{filters}k{k}: padding {padding!r} is not one of {', '.join(PADDINGS)}")
        self.outputs, self.k, self.padding, self.relu = int(filters), int(k), padding, relu

    def _build(self, input_shape) -> tuple:
        name = f"conv{self.outputs}k{self.k}"
        if len(input_shape) != 3:
            raise ValueError(f"{name}: takes maps (channels, height, width) per sample, got {input_shape}")
        C, H, W = input_shape
        self.pads = same_padding(self.k) if self.padding == "same" else (0, 0)
        H_out, W_out = (n + sum(self.pads) - self.k + 1 for n in (H, W))
        if H_out < 1 or W_out < 1:
            raise ValueError(f"{name}: a {self.k}x{self.k} kernel does not fit in {H}x{W} maps without padding")
        self.fan_in = C * self.k * self.k
        return (self.outputs, H_out, W_out)

    def forward(self, x, training: bool = False, scratch: Scratch = FRESH):
        """y = relu(W . im2col(x) + b) as maps (filters, H_out, W_out, m); saved: (columns, y as (filters, -1))."""
        W, b = self.params
        positions = math.prod(self.output_shape[1:]) * x.shape[-1]
        columns = self.backend.im2col(x, self.k, self.pads,
                                      out=scratch.array("columns", (self.fan_in, positions), x.dtype))
        Y = affine(self.backend, W, b, columns, self.relu, out=scratch.array("y", (self.outputs, positions), x.dtype))
        return Y.reshape(*self.output_shape, x.shape[-1]), (columns, Y)

    def backward(self, dy, saved, grads=None, input_grad=True, scratch: Scratch = FRESH):
        """(dx, [dW, db]): ``affine_backward`` on the columns, then ``col2im``."""
        columns, Y = saved
        m = dy.shape[-1]
        dcolumns, grads = affine_backward(self.backend, self.params[0], columns, Y, dy.reshape(self.outputs, -1),
                                          self.relu, grads, input_grad,
                                          dA_out=scratch.array("dcolumns", columns.shape, dy.dtype) if input_grad else None)
        if not input_grad:
            return None, grads
        dx_shape = (*self.input_shape, m)
        return self.backend.col2im(dcolumns, dx_shape, self.k, self.pads,
                                   out=scratch.array("dx", dx_shape, dy.dtype)), grads


# -- max-pooling -----------------------------------------------------------------------------------
def max_pool(xp, x, size: int):
    """(y, argmax) of size x size windows, stride ``size``, of maps x (C, H, W, m).

    y[c, y, x, s] is the largest of the window's entries (NaN where one is NaN); argmax (uint8) says which:
    entry q = i.size + j for the one at row i, column j of the window, the first in that order on a tie
    (the last entry where y is NaN). A map whose height or width is not a multiple of ``size`` is floored,
    as Keras's and PyTorch's defaults: its last rows or columns, in no whole window, are not read.
    """
    H_out, W_out = x.shape[1] // size, x.shape[2] // size
    windows = [x[:, i:size * H_out:size, j:size * W_out:size] for i in range(size) for j in range(size)]
    y = windows[0]
    for entry in windows[1:]:
        y = xp.maximum(y, entry)
    # The first entry equal to y is at q = how many entries come before it: the sum over q of
    # "entries 0..q all differ from y". (Elementwise work: xp.argmax across the entries is 10x slower.)
    unmatched = windows[0] != y
    argmax = unmatched.astype(xp.uint8)
    for entry in windows[1:-1]:
        unmatched &= entry != y
        argmax += unmatched
    return y, argmax


def max_pool_backward(xp, dy, argmax, input_shape, size: int):
    """dx (C, H, W, m): each window's dy goes to its argmax entry, 0 elsewhere (and on the floored rows/columns).

    A multiply by the 0/1 mask, as relu_backward: a NaN or inf in dy shows instead of being zeroed.
    """
    H_out, W_out = dy.shape[1], dy.shape[2]
    dx = xp.zeros(input_shape, dtype=dy.dtype)
    for i in range(size):
        for j in range(size):
            xp.multiply(dy, argmax == i * size + j, out=dx[:, i:size * H_out:size, j:size * W_out:size])
    return dx


class MaxPool2D(Layer):
    """Max-pooling over size x size windows, stride ``size`` (2 in MNIST's CNNs): ``max_pool``, ``max_pool_backward``.

        y = the largest entry of each window         dx = dy at that entry (the first on a tie), 0 elsewhere
    Odd-sized maps are floored: 7x5 maps pool to 3x2, and the last row and column get no gradient.
    """

    def __init__(self, size: int = 2):
        super().__init__()
        if not 2 <= int(size) <= 16:  # argmax is kept as uint8: at most 256 entries a window
            raise ValueError(f"pool{size}: the window size must be from 2 to 16")
        self.size = int(size)

    def _build(self, input_shape) -> tuple:
        if len(input_shape) != 3:
            raise ValueError(f"pool{self.size}: takes maps (channels, height, width) per sample, got {input_shape}")
        C, H, W = input_shape
        if H < self.size or W < self.size:
            raise ValueError(f"pool{self.size}: {H}x{W} maps hold no {self.size}x{self.size} window")
        return (C, H // self.size, W // self.size)

    def forward(self, x, training: bool = False, scratch: Scratch = FRESH):
        """(y, saved = argmax)."""
        shape = (*self.output_shape, x.shape[-1])
        return self.backend.max_pool(x, self.size, out=scratch.array("y", shape, x.dtype),
                                     argmax_out=scratch.array("argmax", shape, np.uint8))

    def backward(self, dy, saved, grads=None, input_grad=True, scratch: Scratch = FRESH):
        """(dx, [])."""
        if not input_grad:
            return None, []
        dx_shape = (*self.input_shape, dy.shape[-1])
        return self.backend.max_pool_backward(dy, saved, dx_shape, self.size,
                                              out=scratch.array("dx", dx_shape, dy.dtype)), []


# -- dropout ---------------------------------------------------------------------------------------
# SplitMix64 (Steele, Lea and Flood, 2014; Vigna's splitmix64.c): a 64-bit counter stepped by GOLDEN and
# mixed by mix64. Its n-th output from a state is a pure function of (state, n), so any thread, on the
# CPU or the GPU, draws element n's number alone, and no random state is kept anywhere.
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def mix64(xp, z):
    """SplitMix64's finaliser on a uint64 array (arithmetic modulo 2^64), in place."""
    z ^= z >> xp.uint64(30)
    z *= xp.uint64(MIX1)
    z ^= z >> xp.uint64(27)
    z *= xp.uint64(MIX2)
    z ^= z >> xp.uint64(31)
    return z


def _mix64_int(z: int) -> int:
    """mix64 on one Python integer (for the stream's key, on the host)."""
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def splitmix64(xp, state: int, n: int):
    """The first n outputs of SplitMix64 from ``state`` (uint64 array): output i = mix64(state + (i + 1).GOLDEN)."""
    return splitmix64_at(xp, state, xp.arange(n, dtype=xp.uint64))


def splitmix64_at(xp, state: int, counters):
    """SplitMix64's outputs number i in ``counters`` (a uint64 array, consumed) from ``state``:
    mix64(state + (i + 1).GOLDEN)."""
    counters += xp.uint64(1)
    counters *= xp.uint64(GOLDEN)
    counters += xp.uint64(state & MASK64)
    return mix64(xp, counters)


def dropout_seed_state(seed: int) -> int:
    """mix64(seed + GOLDEN): a seed's part of dropout_key (what a replayed step's kernel adds its step to)."""
    return _mix64_int((seed + GOLDEN) & MASK64)


def dropout_key(seed: int, step: int) -> int:
    """The SplitMix64 state of (seed, step): each seed and step its own stream of numbers."""
    return _mix64_int((dropout_seed_state(seed) + step) & MASK64)


def dropout_counters(xp, shape, first_sample: int = 0):
    """Each element's number in its step's stream: n = (first_sample + s).units + u for unit u, sample s.

    ``shape`` is (units..., k): the units flattened in C order, k samples, the first of which is sample
    ``first_sample`` of the step's batch. Numbered sample by sample, a chunk of samples [first, first + k)
    draws exactly columns first..first + k - 1 of the whole batch's mask, however the batch is split.
    """
    k = int(shape[-1]) if len(shape) else 1
    units = int(np.prod(shape[:-1])) if len(shape) else 1
    samples = xp.arange(first_sample, first_sample + k, dtype=xp.uint64)
    return samples[None, :] * xp.uint64(units) + xp.arange(units, dtype=xp.uint64)[:, None]


def dropout_mask(xp, shape, p: float, seed: int, step: int, dtype, first_sample: int = 0):
    """Inverted dropout's mask for an array of ``shape`` (units..., k): 0 with probability p, else 1/(1 - p).

    The element of unit u (the units flattened in C order, ``units`` of them) and sample s, whatever the
    array's memory layout, is dropped where the top 32 bits of SplitMix64's output number
    n = (first_sample + s).units + u from dropout_key(seed, step) are below round(p.2^32): a pure function
    of (seed, step, the sample's index within the step's batch, unit), so a chunk of the batch starting at
    sample ``first_sample`` draws the whole batch's columns. A 1-d shape is k samples of one unit: n = first + s.
    """
    counters = dropout_counters(xp, shape, int(first_sample))
    keep = splitmix64_at(xp, dropout_key(seed, step), counters) >> xp.uint64(32) >= xp.uint64(round(p * 2**32))
    mask = keep.reshape(shape).astype(dtype)
    mask *= np.dtype(dtype).type(1.0 / (1.0 - p))
    return mask


class Dropout(Layer):
    """Inverted dropout: at training time y = x * mask, mask 0 with probability p, else 1/(1 - p); y = x otherwise.

        y = x * mask          dx = dy * mask            (at prediction time: y = x, dx = dy)
    Scaling the kept units at training time keeps each unit's expected value, so prediction needs nothing.
    The mask is ``dropout_mask(seed, step, first_sample)``: the training loop sets ``step`` (the optimizer's
    step count) before each training forward pass, and a chunk of a step's batch passes its first sample's
    index as ``forward``'s argument (not as the layer's state: threads share the layer), so that the chunks
    of a batch draw the whole batch's mask. Give each dropout layer of a network its own ``seed``.
    """

    def __init__(self, p: float, seed: int = 0):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout{p}: the drop probability must be at least 0 and below 1")
        if int(seed) < 0:
            raise ValueError(f"dropout{p}: seed {seed} must be 0 or more")
        self.p, self.seed, self.step = float(p), int(seed), 0

    def forward(self, x, training: bool = False, first_sample: int = 0, scratch: Scratch = FRESH):
        """(y, saved = the mask, or None at prediction time); x's samples are the batch's from ``first_sample`` on."""
        if not training or self.p == 0.0:
            return x, None
        mask = self.backend.dropout_mask(x.shape, self.p, self.seed, self.step, x.dtype, first_sample,
                                         out=scratch.array("mask", x.shape, x.dtype))
        return self.backend.xp.multiply(x, mask, out=scratch.array("y", x.shape, x.dtype)), mask

    def backward(self, dy, saved, grads=None, input_grad=True, scratch: Scratch = FRESH):
        """(dx, [])."""
        if not input_grad:
            return None, []
        if saved is None:
            return dy, []
        return self.backend.xp.multiply(dy, saved, out=scratch.array("dx", dy.shape, dy.dtype)), []


# -- between maps and vectors ----------------------------------------------------------------------
class Flatten(Layer):
    """Maps (C, H, W, m) -> vectors (C.H.W, m) and back: y[(c.H + y).W + x, s] = x[c, y, x, s] (C order).

    A dense layer after it reads column (c.H + y).W + x of its W for channel c at row y, column x. Digits
    go the other way: a batch A0 (784, m) (gather_scaled's columns, pixel (y, x) in row 28.y + x) is the
    maps (1, 28, 28, m) by ``as_maps``.
    """

    def _build(self, input_shape) -> tuple:
        return (int(np.prod(input_shape)),)

    def forward(self, x, training: bool = False, scratch: Scratch = FRESH):
        """(y, saved = None): a view where x is C-ordered."""
        return x.reshape(-1, x.shape[-1]), None

    def backward(self, dy, saved, grads=None, input_grad=True, scratch: Scratch = FRESH):
        """(dx, [])."""
        return dy.reshape(*self.input_shape, dy.shape[-1]), []


def as_maps(A0, shape):
    """Columns A0 (C.H.W, m) as maps (C, H, W, m), ``shape`` = (C, H, W): the inverse of Flatten."""
    return A0.reshape(*shape, A0.shape[-1])
