"""The network of the design notes: 784 -> 16 ReLU -> 16 ReLU -> 10 softmax by default.

Parameters are shaped as in the notes: W_k is (out, in) and b_k is (out, 1),
and samples are columns, so a layer is Z_k = W_k . A_{k-1} + b_k.

Forward (hidden layers, then the output layer):
    Z_k = W_k . A_{k-1} + b_k          A_k = relu(Z_k)
    Z_L = W_L . A_{L-1} + b_L          A_L = softmax(Z_L)
Backward (m samples, labels Y one-hot):
    dZ_L = (A_L - Y) / m
    dW_k = dZ_k . A_{k-1}^T            (the notes' dZ.A^T / m: the 1/m is already in dZ)
    db_k = sum of dZ_k over samples    (the notes' sum dZ / m)
    dZ_{k-1} = W_k^T . dZ_k * relu'(Z_{k-1})

Other architectures (``--arch``: convolution, pooling, dropout) are a ``LayerStack`` of the layers in
layers.py, behind the same interface the training loop uses. A network of dense layers alone stays a
``Network``: the notes' formulas as written here, and the compiled CPU path (cpu_fused.py) that reads them.
"""

from __future__ import annotations

import math
import re

import numpy as np

from gpunet.nn import layers as L

INPUTS = 784
CLASSES = 10
INITS = ("he", "seed")
MAX_UNITS = 100_000  # per hidden layer: larger ones only fail later, allocating gigabytes
MAX_LAYERS = 1_000  # hidden layers in a spec: deeper stacks do not train without normalization, and cost per layer
EVAL_CHUNK = 8192  # digits per forward pass when scoring or predicting: bounds memory, keeps BLAS busy
EVAL_MEMORY = 256 << 20  # bytes of activations a LayerStack's forward pass may hold when scoring or predicting
DIGIT_MAPS = (1, 28, 28)  # a digit's 784 pixels as the one-channel map convolutions read


def parse_hidden_text(value: str) -> tuple[int, ...]:
    """'16,16' -> (16, 16); 'none' -> () for a network with no hidden layer; ValueError saying what is wrong."""
    text = value.strip().lower()
    if text == "none":
        return ()
    if not text:  # an unset shell variable, say: not silently a network with no hidden layer
        raise ValueError("is empty; give layer sizes such as 16,16, or 'none' for no hidden layer")
    check_layer_count(text)
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{value!r} is not a comma-separated list of layer sizes such as 16,16") from None
    if any(size <= 0 for size in sizes):
        raise ValueError(f"{value!r}: every layer size must be a positive integer")
    if any(size > MAX_UNITS for size in sizes):
        raise ValueError(f"{value!r}: at most {MAX_UNITS:,} units a layer")
    return sizes


def layer_sizes(hidden: tuple[int, ...], inputs: int = INPUTS, classes: int = CLASSES) -> list[int]:
    """[784, *hidden, 10] for digits; other data sets have other inputs and classes."""
    return [inputs, *hidden, classes]


# -- architectures: --arch's layer spec ------------------------------------------------------------
ARCH_HELP = """layers, comma-separated, from the input on; the 10-way
softmax output layer is always added.
  conv<F>k<K>[same]  F filters K x K, stride 1, ReLU; 'valid' unless 'same'
  pool<S>            max-pooling, S x S windows, stride S
  dense<N>           N units, ReLU (the notes' dense layer)
  dropout<P>         inverted dropout, drop probability 0 <= P < 1
Convolution and pooling go before the dense layers; the flattening between
them is implied. 'none': no hidden layer.
Example: --arch "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5\""""
ARCH_PART = re.compile(r"conv(?P<filters>\d+)k(?P<k>\d+)(?P<padding>same|valid)?|pool(?P<pool>\d+)"
                       r"|dense(?P<units>\d+)|dropout(?P<p>\d*\.?\d+)")
MAPS_LAYERS = ("conv", "pool")  # the parts that take maps (channels, height, width)


def parse_arch_text(value: str) -> tuple[str, ...]:
    """'conv32k5, pool2,Dense256' -> ('conv32k5', 'pool2', 'dense256'); 'none' -> (); ValueError naming the bad part.

    Each part is checked on its own (grammar, sizes) and in order (maps layers before dense ones);
    whether the kernels fit the input's maps is checked when the layers are built (``check_arch``).
    """
    text = value.strip().lower()
    if text == "none":
        return ()
    if not text:
        raise ValueError("is empty; give layers such as conv32k5,pool2,dense128, or 'none' for no hidden layer")
    check_layer_count(text)
    parts, seen_dense = [], False
    for number, raw in enumerate(text.split(","), start=1):
        part = canonical_part(raw.strip(), number)
        if part.startswith("dense"):
            seen_dense = True
        elif part.startswith(MAPS_LAYERS) and seen_dense:
            raise ValueError(f"layer {number} {part!r} comes after a dense layer: convolution and pooling "
                             "take maps, so they go before the dense layers")
        parts.append(part)
    return tuple(parts)


def check_layer_count(text: str) -> None:
    """ValueError where a comma-separated spec names more than MAX_LAYERS layers (counted before any is read)."""
    if (count := text.count(",") + 1) > MAX_LAYERS:
        raise ValueError(f"names {count:,} layers; at most {MAX_LAYERS:,}")


def canonical_part(part: str, number: int) -> str:
    """One layer of a spec in its canonical spelling, or ValueError naming it (``number`` counts from 1)."""
    if not part:
        raise ValueError(f"layer {number} is empty (two commas in a row, or one at an end?)")
    match = ARCH_PART.fullmatch(part)
    if match is None:
        raise ValueError(f"layer {number} {part!r} is not a layer: write conv<filters>k<size>[same], "
                         "pool<size>, dense<units> or dropout<p>")
    try:
        layer = make_layer(match)
    except ValueError as error:
        raise ValueError(f"layer {number} {part!r}: {error}") from None
    return part_text(layer)


def make_layer(match, seed: int = 0):
    """The layer a matched part names (unbuilt); ValueError for sizes no layer can have."""
    if match["filters"] is not None:
        filters, k = int(match["filters"]), int(match["k"])
        if filters > MAX_UNITS or k > 28:
            raise ValueError(f"at most {MAX_UNITS:,} filters and kernels of at most 28 x 28")
        return L.Conv2D(filters, k, match["padding"] or "valid")
    if match["pool"] is not None:
        return L.MaxPool2D(int(match["pool"]))
    if match["units"] is not None:
        if int(match["units"]) > MAX_UNITS:
            raise ValueError(f"at most {MAX_UNITS:,} units a layer")
        return L.Dense(int(match["units"]))
    return L.Dropout(float(match["p"]), seed)


def part_text(layer) -> str:
    """A hidden layer as its canonical spec part."""
    if isinstance(layer, L.Conv2D):
        return f"conv{layer.outputs}k{layer.k}" + ("same" if layer.padding == "same" else "")
    if isinstance(layer, L.MaxPool2D):
        return f"pool{layer.size}"
    if isinstance(layer, L.Dense):
        return f"dense{layer.outputs}"
    return f"dropout{layer.p:g}"


def arch_text(arch: tuple[str, ...]) -> str:
    """The spec as one string, as --arch takes it ('none' for no hidden layer)."""
    return ",".join(arch) or "none"


def dense_sizes(arch: tuple[str, ...]) -> tuple[int, ...] | None:
    """The hidden sizes of a spec of dense layers alone (the notes' ``Network``), else None."""
    if all(part.startswith("dense") for part in arch):
        return tuple(int(part[len("dense"):]) for part in arch)
    return None


def arch_input_shape(arch: tuple[str, ...], inputs: int) -> tuple[int, ...]:
    """A sample's shape as the first layer takes it: a digit's maps (1, 28, 28) where the spec convolves or pools."""
    if not any(part.startswith(MAPS_LAYERS) for part in arch):
        return (inputs,)
    if inputs != math.prod(DIGIT_MAPS):
        raise ValueError(f"convolution and pooling take 28 x 28 digits (784 pixels), not {inputs} features")
    return DIGIT_MAPS


def dropout_seed(seed: int, index: int) -> int:
    """The seed of the dropout layer at ``index`` of a run seeded ``seed``: each layer its own masks."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def build_layers(arch: tuple[str, ...], input_shape, classes: int, backend=None, seed: int = 0) -> list:
    """The spec's layers, the implied Flatten and the output layer, built for ``input_shape`` on ``backend``.

    ValueError, naming the layer, where one does not fit what comes into it (a kernel larger than the maps).
    """
    layers = [make_layer(ARCH_PART.fullmatch(part), dropout_seed(seed, index)) for index, part in enumerate(arch)]
    if len(input_shape) > 1:  # maps: flattened before the first dense layer (the output layer at the latest)
        layers.insert(next((i for i, layer in enumerate(layers) if isinstance(layer, L.Dense)), len(layers)),
                      L.Flatten())
    layers.append(L.Dense(classes, relu=False))  # the logits; softmax is inside the loss
    shape = tuple(input_shape)
    for layer in layers:
        shape = layer.build(shape, backend)
    return layers


def check_arch(arch: tuple[str, ...], inputs: int = INPUTS, classes: int = CLASSES) -> None:
    """ValueError naming the first layer that does not fit the digits coming into it."""
    build_layers(arch, arch_input_shape(arch, inputs), classes)


def init_stack_params(layers, init: str, seed: int, dtype) -> list[np.ndarray]:
    """Fresh [W1, b1, W2, b2, ...] of the layers that have parameters; for dense layers alone, ``init_params``'s."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}")
    rng = np.random.default_rng(seed)
    return [p.astype(dtype) for layer in layers for p in layer.initial_params(rng, init)]


def init_params(sizes: list[int], init: str, seed: int, dtype) -> list[np.ndarray]:
    """Fresh [W1, b1, W2, b2, ...] as NumPy arrays, the same for the same seed on any backend.

    ``he``: W ~ Normal(0, 2/in), b = 0, which keeps ReLU activations at a steady scale.
    ``seed``: uniform in [-0.5, 0.5) for W and b, as the notes do with np.random.rand - 0.5.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}")
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if init == "he":
            W = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
            b = np.zeros((fan_out, 1))
        else:
            W = rng.random((fan_out, fan_in)) - 0.5
            b = rng.random((fan_out, 1)) - 0.5
        params += [W.astype(dtype), b.astype(dtype)]
    return params


def weights_then_biases(flat, shapes) -> list:
    """[W1, b1, W2, b2, ...] shaped as ``shapes``, as views of ``flat``: all weights first, then all biases."""
    sizes = [math.prod(shape) for shape in shapes]
    order = [*range(0, len(sizes), 2), *range(1, len(sizes), 2)]  # W1, W2, ..., b1, b2, ...
    views, start = [None] * len(sizes), 0
    for i in order:
        views[i] = flat[start : start + sizes[i]].reshape(shapes[i])
        start += sizes[i]
    return views


class Workspace:
    """Preallocated arrays for batches of m samples, reused by every step so that a step allocates nothing.

    The batch A0 and the layers' values Z_k (overwritten by A_k = relu(Z_k))
    are laid out as the backend prefers (``empty_batch``, ``empty_layer``): the
    layout changes how fast BLAS multiplies, not the result. The logits Z_L and
    every dZ_k are C-ordered (units, m) arrays, so that their sums (softmax, db)
    add up in the same order as freshly allocated arrays would. The gradients are
    views of one flat array laid out as the network's parameters: ``grad_groups``
    is [all dW, all db], matching the network's ``groups``. The dZ_k are the rows
    of one array ``dZ_stack`` (all units, m), layer after layer as the biases lie in
    ``grad_groups[1]``: every db_k (a row sum of dZ_k) is then one sum over its rows.
    """

    def __init__(self, network, m: int):
        backend, sizes, dtype = network.backend, network.sizes, network.dtype
        xp = backend.xp
        self.m = m
        self.A0 = backend.empty_batch(sizes[0], m, dtype)
        self.Z = [backend.empty_layer(n, m, dtype) for n in sizes[1:-1]] + [xp.empty((sizes[-1], m), dtype)]
        self.dZ_stack = xp.empty((sum(sizes[1:]), m), dtype)
        starts = np.cumsum([0, *sizes[1:]])
        self.dZ = [self.dZ_stack[a:b] for a, b in zip(starts[:-1], starts[1:])]  # views: each C-contiguous
        self.losses = xp.empty(m, dtype)
        self.grad_flat = xp.zeros_like(network.flat)
        self.grads = network.views_of(self.grad_flat)
        self.grad_groups = network.groups_of(self.grad_flat)


class FlatParameters:
    """What every network has: its parameters [W1, b1, W2, b2, ...] as views of one flat array, on one backend.

    All parameters live in one flat array, ``flat``: the weights first, then
    the biases; each W_k and b_k is a view of it. ``groups`` is that array as
    two parts, [all weights, all biases]: an optimizer given these (and a
    workspace's ``grad_groups``) updates every parameter with a few whole-array
    operations instead of a few per layer. A subclass has ``forward``, ``backward``,
    ``full_batch_gradients`` and its ``workspace_class``.
    """

    eval_chunk = EVAL_CHUNK  # digits per forward pass when scoring or predicting
    step = 0  # the optimizer step being taken, set by the training loop (no layer here uses it)
    counts_in_loss = False  # whether backward(counter=) adds the output bias and counts inside the loss

    def __init__(self, backend, params):
        xp = backend.xp
        self.backend = backend
        arrays = [backend.asarray(p) for p in params]
        dtype = arrays[0].dtype
        self.n_weights = sum(int(W.size) for W in arrays[0::2])
        self.flat = xp.empty(self.n_weights + sum(int(b.size) for b in arrays[1::2]), dtype=dtype)
        self.shapes = [p.shape for p in arrays]
        self.params = self.views_of(self.flat)
        for p, new in zip(self.params, arrays):
            p[...] = new
        self.groups = self.groups_of(self.flat)
        self._workspaces = {}
        self._sums = {}  # part -> flat gradient sum of a full-batch step

    def views_of(self, flat) -> list:
        """[W1, b1, W2, b2, ...] as views of a flat array holding all weights, then all biases."""
        return weights_then_biases(flat, self.shapes)

    def groups_of(self, flat) -> list:
        """[all weights, all biases] of a flat array laid out as ``flat``."""
        return [flat[: self.n_weights], flat[self.n_weights :]]

    @property
    def weights(self):
        """[W1, W2, ...]: views of ``flat``."""
        return self.params[0::2]

    @property
    def biases(self):
        """[b1, b2, ...]: views of ``flat``."""
        return self.params[1::2]

    @property
    def dtype(self):
        """The parameters' floating-point type."""
        return self.params[0].dtype

    @property
    def classes(self) -> int:
        """How many classes the output layer scores."""
        return int(self.params[-1].shape[0])

    def workspace(self, m: int, key=0):
        """The buffers for batches of m samples (made on first use, kept for the next steps).

        ``key`` tells apart workspaces of the same size used at the same time (by parallel workers).
        """
        ws = self._workspaces.get((m, key))
        if ws is None:
            ws = self._workspaces[m, key] = self.workspace_class(self, m)
        return ws

    def logits(self, A0):
        """Z_L for a batch, without keeping anything for backward."""
        return self.forward(A0)[0]

    def probabilities(self, images) -> np.ndarray:
        """softmax(Z_L) of uint8 digits (m, 784), as a NumPy float64 array (m, classes), a chunk at a time."""
        ops = self.backend
        device_images = ops.asarray(images)
        chunks = [ops.to_numpy(ops.softmax(self.logits(ops.gather_scaled(device_images[start:start + self.eval_chunk],
                                                                          None, self.dtype)))).T
                  for start in range(0, len(images), self.eval_chunk)]
        return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, self.classes))

    def full_batch_gradients(self, images, labels, losses, chunk: int, parts: int = 1, counter=None):
        """Gradients of the mean loss over every sample of ``images``, reading each digit once.

        Done as the notes write it, a full-batch step reads all of X twice: in
        the forward pass and again for dW1 = dZ1.A0^T. Here the samples are
        walked in chunks small enough to stay in cache; each chunk's forward
        and backward pass run while its pixels are still there, and the
        chunks' gradients add up, each weighted by its share of the samples
        (the mean over all samples is the weighted mean of the chunks' means).
        The samples are split into ``parts`` runs of chunks, which the backend
        may walk in parallel (``parallel_map``); each adds up its own sum, and
        the sums are added in order, so the result does not depend on timing.
        ``chunk`` >= the number of samples gives the notes' single pass.

        Writes the per-sample losses into ``losses``; returns (grad_groups, correct count). ``counter``: a
        one-element int32 array the correct count is added to on the device, where the network counts inside
        its loss and the chunks run one after another (``parts`` 1); the count returned is then the counter's.
        """
        m = int(labels.shape[0])
        if counter is not None and not (self.counts_in_loss and parts == 1):
            counter = None
        counting = {} if counter is None else {"counter": counter}
        if chunk >= m:
            grads, correct = self._chunk_gradients(images, labels, losses, 0, m, m, key=0, **counting)
            return grads, correct if counter is None else counter[0]
        # Each part starts on the chunk boundary nearest its share (rounding down put a whole batch of
        # one chunk a part into the last part whenever m was odd: no part ran in parallel).
        bounds = [min(m, (m * i // parts + chunk // 2) // chunk * chunk) for i in range(parts)] + [m]

        def run(i):
            total, correct = None, 0
            for start in range(bounds[i], bounds[i + 1], chunk):
                stop = min(start + chunk, bounds[i + 1])
                grads, n = self._chunk_gradients(images, labels, losses, start, stop, m, key=i, **counting)
                correct += n
                if total is None:
                    if i not in self._sums:
                        self._sums[i] = self.backend.xp.empty_like(self.flat)
                    total = self._sums[i]
                    total[...] = grads
                else:
                    total += grads
            return total, correct

        results = [r for r in self.backend.parallel_map(run, range(parts)) if r[0] is not None]
        total = results[0][0]
        for part, _ in results[1:]:
            total += part
        correct = sum(correct for _, correct in results) if counter is None else counter[0]
        return self.groups_of(total), correct

    def chunk_forward(self, A0, ws, first_sample: int):
        """``forward`` on a chunk of a step's samples, from ``first_sample`` on (no layer here depends on it)."""
        return self.forward(A0, ws)

    def _chunk_gradients(self, images, labels, losses, start, stop, m, key, counter=None):
        """One chunk's forward and backward pass; its gradients (flat) weighted by its share of m.
        ``counter`` (where ``counts_in_loss``): the correct count goes there (the count returned is 0)."""
        ops = self.backend
        ws = self.workspace(stop - start, key)
        A0 = ops.gather_scaled(images[start:stop], None, self.dtype, out=ws.A0)
        if counter is not None:
            Z, activations = self.forward(A0, ws, output_bias=False)
            self.backward(Z, activations, labels[start:stop], ws, losses=losses[start:stop], counter=counter)
            correct = 0
        else:
            Z, activations = self.chunk_forward(A0, ws, start)
            correct = ops.count_correct(Z, labels[start:stop])
            self.backward(Z, activations, labels[start:stop], ws, losses=losses[start:stop])
        if stop - start == m:
            return ws.grad_groups, correct
        ws.grad_flat *= self.dtype.type((stop - start) / m)  # the chunk's mean, weighted by its share
        return ws.grad_flat, correct

    def architecture(self) -> dict:
        """What a model file records to rebuild this network besides its arrays (checkpoint.py): nothing here,
        the arrays' shapes say it all."""
        return {}

    def host_params(self) -> list[np.ndarray]:
        """Copies of the parameters as NumPy arrays (for saving and snapshots)."""
        return [self.backend.to_numpy(p).copy() for p in self.params]

    def load_params(self, params) -> None:
        """Overwrite the parameters in place (optimizer state keeps pointing at them)."""
        for p, new in zip(self.params, params):
            p[...] = self.backend.asarray(new)


class Network(FlatParameters):
    """The notes' network: a stack of dense layers, ReLU between them and softmax at the end, on one backend.

    Its parameters are laid out as ``FlatParameters`` says; the compiled CPU path
    (cpu_fused.py) reads them, and its workspaces, as they are laid out here.
    """

    workspace_class = Workspace
    counts_in_loss = True

    @property
    def sizes(self) -> list[int]:
        """Units per layer, inputs first: [784, 16, 16, 10] for the notes' network."""
        return [self.params[0].shape[1]] + [W.shape[0] for W in self.weights]

    def forward(self, A0, ws: Workspace | None = None, output_bias: bool = True):
        """Return (logits Z_L, activations [A0, A1, ..., A_{L-1}] kept for backward).

        With a workspace the values are written into its arrays, else into new ones. Without
        ``output_bias`` Z_L is W_L.A alone: ``backward`` given a ``counter`` adds b_L inside the loss.
        """
        ops = self.backend
        out = ws.Z if ws is not None else [None] * len(self.weights)
        activations = [A0]
        A = A0
        for k, (W, b) in enumerate(zip(self.weights[:-1], self.biases[:-1])):
            A = ops.bias_relu(ops.matmul(W, A, out=out[k]), b)  # Z = W.A + b; A = relu(Z)
            activations.append(A)
        Z = ops.matmul(self.weights[-1], A, out=out[-1])
        if output_bias:
            Z += self.biases[-1]  # Z_L = W_L.A + b_L; softmax is applied inside the loss
        return Z, activations

    def backward(self, Z, activations, labels, ws: Workspace | None = None, losses=None, counter=None):
        """Gradients [dW1, db1, ...] of the mean cross-entropy, and the per-sample losses.

        With a workspace every result is written into its arrays (the gradients
        into ``ws.grads``); ``losses``, if given, is where the per-sample losses
        go. Without one, every result is a new array. ``counter`` (with a workspace): Z is
        ``forward``'s without its output bias; the loss adds b_L (in place) and adds the correct
        count to ``counter`` (``softmax_cross_entropy_counted``).
        """
        ops = self.backend
        if counter is not None:
            out = (ws.dZ[-1], ws.losses if losses is None else losses)
            dZ, losses = ops.softmax_cross_entropy_counted(Z, self.biases[-1], labels, counter, out=out)
            dZ_out, grads = ws.dZ, list(ws.grads)
        elif ws is None:
            dZ, losses = ops.softmax_cross_entropy(Z, labels)  # dZ_L = (A_L - Y) / m
            dZ_out, grads = [None] * len(self.weights), [None] * len(self.params)
        else:
            out = (ws.dZ[-1], ws.losses if losses is None else losses)
            dZ, losses = ops.softmax_cross_entropy(Z, labels, out=out)  # dZ_L = (A_L - Y) / m
            dZ_out, grads = ws.dZ, list(ws.grads)
        for k in reversed(range(len(self.weights))):
            A_prev = activations[k]
            grads[2 * k] = ops.matmul(dZ, A_prev.T, out=grads[2 * k])  # dW = dZ.A^T (1/m already in dZ)
            if ws is None:
                grads[2 * k + 1] = dZ.sum(axis=1, keepdims=True)  # db = sum of dZ over samples
            if k > 0:
                # dZ_{k-1} = W_k^T.dZ_k * relu'(Z_{k-1})
                dZ = ops.relu_backward(ops.matmul(self.weights[k].T, dZ, out=dZ_out[k - 1]), A_prev)
        if ws is not None:  # every db at once: the rows of dZ_stack summed into the biases' gradients, in order
            ws.dZ_stack.sum(axis=1, out=ws.grad_groups[1])
        return grads, losses


def values_per_sample(layer) -> int:
    """How many values a layer's forward pass holds for each sample: its output, and a convolution's columns."""
    columns = layer.fan_in * math.prod(layer.output_shape[1:]) if isinstance(layer, L.Conv2D) else 0
    return math.prod(layer.output_shape) + columns


class StackWorkspace:
    """A ``LayerStack``'s buffers for batches of m samples, reused by every step: the batch, the loss's
    results and the gradients (views of one flat array laid out as the network's parameters).

    Each layer also gets a ``layers.Scratch`` of its own here (where the backend reuses layer arrays) for
    its large values (im2col's columns, the maps and their gradients), which each step overwrites.
    """

    def __init__(self, network, m: int):
        backend, dtype = network.backend, network.dtype
        xp = backend.xp
        self.m = m
        # A batch of maps is read C-ordered ((C, H, W, m) as a view): the backend's layout would cost a copy
        self.A0 = (xp.empty((network.inputs, m), dtype) if len(network.input_shape) > 1
                   else backend.empty_batch(network.inputs, m, dtype))
        self.dZ = xp.empty((network.classes, m), dtype)
        self.losses = xp.empty(m, dtype)
        self.grad_flat = xp.zeros_like(network.flat)
        self.grads = network.views_of(self.grad_flat)
        self.grad_groups = network.groups_of(self.grad_flat)
        self.scratch = [L.Scratch(xp) if backend.reuses_layer_arrays else L.FRESH for _ in network.layers]


class LayerStack(FlatParameters):
    """A network of any of layers.py's layers (``--arch``): the layers in order, then the fused softmax-cross-entropy.

    Forward: y_0 = A0 (as maps (1, 28, 28, m) where the first layer takes maps), y_k = layer_k(y_{k-1});
    the last layer is a dense one without ReLU, whose Z_L goes into the loss as in ``Network``.
    Backward: dZ_L = (softmax(Z_L) - Y) / m, then each layer's backward rule in reverse order, the first
    layer's without the input gradient nobody reads. The parameters [W1, b1, W2, b2, ...] of the layers
    that have them are laid out as ``FlatParameters`` says, so the optimizers update them as the
    notes' network's, and a stack of dense layers alone would hold exactly a ``Network``'s arrays.
    """

    workspace_class = StackWorkspace

    def __init__(self, backend, arch: tuple[str, ...], params, input_shape, classes: int = CLASSES, seed: int = 0):
        """``arch``: the spec's parts (``parse_arch_text``); ``params``: [W1, b1, ...] of its layers, as
        ``init_stack_params`` makes them; ``seed``: the run's, from which each dropout layer gets its own."""
        super().__init__(backend, params)
        self.arch, self.input_shape = tuple(arch), tuple(input_shape)
        self.inputs = math.prod(self.input_shape)
        self.layers = build_layers(self.arch, self.input_shape, classes, backend, seed)
        with_params = [layer for layer in self.layers if layer.param_shapes()]
        expected = [tuple(shape) for layer in with_params for shape in layer.param_shapes()]
        if [tuple(shape) for shape in self.shapes] != expected:
            raise ValueError(f"parameters shaped {self.shapes} are not those of {arch_text(self.arch)}: {expected}")
        for k, layer in enumerate(with_params):
            layer.params = self.params[2 * k:2 * k + 2]
        self.eval_chunk = self._eval_chunk()

    def architecture(self) -> dict:
        """The spec, the input's shape and the number of classes: a version 2 model file's architecture."""
        return {"architecture": arch_text(self.arch), "input_shape": list(self.input_shape), "outputs": self.classes}

    def _eval_chunk(self) -> int:
        """Digits per forward pass that keep its values within EVAL_MEMORY (im2col's columns are the most)."""
        per_sample = (self.inputs + sum(map(values_per_sample, self.layers))) * self.dtype.itemsize
        return max(1, min(EVAL_CHUNK, EVAL_MEMORY // per_sample))

    def forward(self, A0, ws: StackWorkspace | None = None, training: bool = True, first_sample: int = 0):
        """Return (logits Z_L, what each layer saved for backward); ``training`` turns dropout on.

        Dropout's masks are those of the optimizer step ``self.step`` (set by the training loop) for A0's
        samples, which are the step's batch's from ``first_sample`` on: a chunk of the batch draws the
        whole batch's mask. It travels as an argument, since threads walking chunks share the layers.
        """
        y = A0 if len(self.input_shape) == 1 else L.as_maps(A0, self.input_shape)
        saved = []
        for index, layer in enumerate(self.layers):
            if isinstance(layer, L.Dropout):
                layer.step = self.step
                y, kept = layer.forward(y, training, first_sample, L.FRESH if ws is None else ws.scratch[index])
            else:
                y, kept = layer.forward(y, training, L.FRESH if ws is None else ws.scratch[index])
            saved.append(kept)
        return y, saved

    def chunk_forward(self, A0, ws, first_sample: int):
        """``forward`` at training time on a chunk of a step's batch, from ``first_sample`` on."""
        return self.forward(A0, ws, first_sample=first_sample)

    def logits(self, A0):
        """Z_L for a batch at prediction time (no dropout), without keeping anything for backward."""
        return self.forward(A0, training=False)[0]

    def backward(self, Z, saved, labels, ws: StackWorkspace | None = None, losses=None):
        """Gradients [dW1, db1, ...] of the mean cross-entropy, and the per-sample losses (as ``Network.backward``)."""
        ops = self.backend
        if ws is None:
            dy, losses = ops.softmax_cross_entropy(Z, labels)  # dZ_L = (A_L - Y) / m
            grads = [None] * len(self.params)
        else:
            dy, losses = ops.softmax_cross_entropy(Z, labels, out=(ws.dZ, ws.losses if losses is None else losses))
            grads = list(ws.grads)
        k = len(self.params)  # the parameters of the layers from here on are grads[k:]
        for index in reversed(range(len(self.layers))):
            layer = self.layers[index]
            has_params = bool(layer.param_shapes())
            if has_params:
                k -= 2
            dy, layer_grads = layer.backward(dy, saved[index], grads[k:k + 2] if has_params else None,
                                             input_grad=index > 0,  # without a workspace: [None, None], new arrays
                                             scratch=L.FRESH if ws is None else ws.scratch[index])
            if has_params:
                grads[k:k + 2] = layer_grads
        return grads, losses

    def full_batch_gradients(self, images, labels, losses, chunk: int, parts: int = 1, counter=None):
        """As ``Network.full_batch_gradients``, in chunks of at most ``eval_chunk`` digits (memory)."""
        return super().full_batch_gradients(images, labels, losses, min(chunk, self.eval_chunk), parts, counter)
