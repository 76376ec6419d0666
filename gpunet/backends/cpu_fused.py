"""A compiled CPU path (numba): a whole mini-batch epoch, or one chunk of a full-batch step, in one call.

On NumPy a mini-batch step is some 45 array calls on arrays of 32-128 columns,
each costing 0.5-3 us whatever its size; at batch 32 that overhead is most of
the step. Here the same step runs as compiled loops, and the matrix products
go to BLAS (numba's ``np.dot`` calls SciPy's BLAS).

The arithmetic is that of :mod:`gpunet.nn.model`, :mod:`gpunet.nn.loss` and
:mod:`gpunet.nn.optimizers`, which stay the readable reference and the path
everywhere else; tests/test_fused_cpu.py compares the two. What differs is
layout and order of summation, not the formulas:

- every layer array is sample-major, (m, units), the transpose of the notes'
  (units, m): A_k[i] is sample i's activations. A layer is then
  Z_k = A_{k-1} . W_k^T + b_k, the notes' W_k . A_{k-1} + b_k transposed;
- products are done in blocks of ``BLOCK`` samples: OpenBLAS multiplies a
  64-sample block by a 16-row W near its peak, and a 128-sample one at about
  half that rate (it leaves its small-matrix kernels). dW sums the blocks
  in block order;
- sums over samples (db) and over classes (softmax) run in plain order.

A block's work (gather, forward, softmax, backward, its share of dW) does not
depend on the other blocks of its batch, so at batch 128 and more the blocks of
a step run on numba's threads, one per core (``_epoch_steps_parallel``), and
the sums over blocks run afterwards on one thread in block order: the same
bits as one thread, whichever thread ran which block, as long as BLAS runs on one
thread both ways (as training holds it: BLAS's own thread split changes the order
of its sums). Where another program
holds a core the threads wait for it; each epoch then runs in timed calls, and
the way (parallel or one thread) timed faster lately runs (``_pick``).

The optimizer update is elementwise and written step for step as in
:mod:`gpunet.nn.optimizers` (the same float32 scalars, no fused multiply-add), so
given the same gradients it gives the same bits.

Importing this module needs numba; :func:`available` says whether it does.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

import numpy as np

from gpunet.backends.numba_jit import IMPORT_ERROR as _IMPORT_ERROR, jit, numba  # numba None: the NumPy path runs

BLOCK = 64  # samples per BLAS product (see the module docstring)
KINDS = {"GradientDescent": 0, "Momentum": 1, "Adam": 2}
DTYPES = (np.float32, np.float64)


try:  # numba's np.dot calls SciPy's BLAS
    import scipy.linalg.cython_blas  # noqa: F401
except ImportError as error:
    numba, _IMPORT_ERROR = None, error


def available() -> bool:
    """Whether the compiled loops can run here: numba and SciPy (whose BLAS its np.dot calls) imported."""
    return numba is not None


def unavailable_reason() -> str | None:
    """Why the compiled loops cannot run here, or None."""
    return None if numba is not None else f"numba or scipy is not installed ({_IMPORT_ERROR})"


if numba is not None:
    _jit = jit()
    _parallel_jit = jit(parallel=True)

    @_jit
    def _block_pass(images, index, first, lo, hi, r, labels, losses, Ws, bs, As, dZs, dWs, partials, block):
        """Forward and backward pass of the batch's samples lo .. hi - 1 (one block of at most BLOCK); returns their correct count.

        The batch is images[index[first:first + r]] (``index`` of length 0: rows first ..
        first + r - 1 in order); its sample i is row i of the sample-major buffers
        As = (A0, A1, ..., A_{L-1}, Z_L) and dZs = (dZ1, ..., dZ_L). Writes this block's
        share of each dW_k into dWs[k] (block 0) or partials[k][block]; the db's and the
        sum over blocks are left to ``_reduce_blocks``. Blocks touch disjoint rows and their own partials, so
        they may run in any order, or at once on several threads, with the same bits.
        """
        L = len(Ws)
        A0 = As[0]
        scale = A0.dtype.type(1.0 / 255.0)
        in_order = index.shape[0] == 0
        for i in range(lo, hi):  # A0 = X[batch]^T / 255, converted one sample at a time
            row = images[first + i] if in_order else images[index[first + i]]
            for k in range(row.shape[0]):
                A0[i, k] = A0.dtype.type(row[k]) * scale

        # Forward: Z_k = W_k . A_{k-1} + b_k, A_k = relu(Z_k); Z_L = W_L . A_{L-1} + b_L
        for layer in range(L):
            Z, b = As[layer + 1][lo:hi], bs[layer]
            np.dot(As[layer][lo:hi], Ws[layer].T, Z)
            hidden = layer < L - 1
            for i in range(hi - lo):
                for j in range(Z.shape[1]):
                    z = Z[i, j] + b[j]
                    if hidden and z < 0:  # relu, as np.maximum(z, 0): NaN stays NaN
                        z = 0
                    Z[i, j] = z

        # Softmax + cross-entropy: loss = -log softmax(Z_L)[y]; dZ_L = (softmax(Z_L) - Y) / m
        Z, dZ = As[L], dZs[L - 1]
        inv_m = Z.dtype.type(1.0 / r)
        correct = 0
        for i in range(lo, hi):
            y = labels[i]
            top, best = Z[i, 0], 0
            for c in range(1, Z.shape[1]):
                if Z[i, c] > top:  # the first largest logit, as argmax
                    top, best = Z[i, c], c
            correct += best == y
            total = Z.dtype.type(0)
            for c in range(Z.shape[1]):
                total += np.exp(Z[i, c] - top)
            log_total = np.log(total)
            for c in range(Z.shape[1]):
                logp = (Z[i, c] - top) - log_total  # log_softmax
                dZ[i, c] = np.exp(logp)  # softmax(Z)
                if c == y:
                    losses[i] = -logp
                    dZ[i, c] -= 1  # - Y
                dZ[i, c] *= inv_m

        # Backward: dW_k = dZ_k . A_{k-1}^T (this block's share); dZ_{k-1} = W_k^T . dZ_k * relu'(Z_{k-1})
        for layer in range(L - 1, -1, -1):
            dZ, A_prev = dZs[layer][lo:hi], As[layer][lo:hi]
            if block == 0:
                np.dot(dZ.T, A_prev, dWs[layer])
            else:
                np.dot(dZ.T, A_prev, partials[layer][block])
            if layer > 0:
                dA = dZs[layer - 1][lo:hi]
                np.dot(dZ, Ws[layer], dA)
                for i in range(hi - lo):
                    for j in range(dA.shape[1]):
                        if not A_prev[i, j] > 0:  # relu'(Z) read from A = relu(Z)
                            dA[i, j] = 0
        return correct

    @_jit
    def _reduce_blocks(r, dZs, dWs, dbs, partials):
        """dW_k = block 0's share (already in dW_k) + the other blocks' partials, in block order; db_k = sum of dZ_k."""
        blocks = (r + BLOCK - 1) // BLOCK
        for layer in range(len(dWs)):
            dW, part = dWs[layer], partials[layer]
            for i in range(dW.shape[0] if blocks > 1 else 0):  # loops: numba's whole-array += here is 4x slower
                for j in range(dW.shape[1]):
                    total = dW[i, j]
                    for block in range(1, blocks):
                        total += part[block, i, j]
                    dW[i, j] = total
            dZ, db = dZs[layer], dbs[layer]
            db[:] = 0
            for i in range(r):
                for j in range(dZ.shape[1]):
                    db[j] += dZ[i, j]

    @_jit
    def _forward_backward(images, index, first, labels, losses, Ws, bs, dWs, dbs, As, dZs, partials):
        """One batch's forward and backward pass; writes the gradients into dWs, dbs; returns the correct count.

        The batch is images[index[first:first + r]] with r = len(labels) (``index`` of length 0:
        the rows first .. first + r - 1 in order); its blocks of BLOCK samples one after another.
        As, dZs: sample-major buffers of at least r rows; partials: per layer, (blocks, *dW.shape).
        """
        r = labels.shape[0]
        correct = 0
        for block in range((r + BLOCK - 1) // BLOCK):
            lo = block * BLOCK
            correct += _block_pass(images, index, first, lo, min(lo + BLOCK, r), r, labels, losses, Ws, bs, As, dZs,
                                   dWs, partials, block)
        _reduce_blocks(r, dZs, dWs, dbs, partials)
        return correct

    @_jit
    def _update(kind, params, grads, state1, state2, lr, weight_decay, beta1, beta2, eps, t):
        """One optimizer step on [all weights, all biases], as gpunet.nn.optimizers does it.

        kind 0: W <- W - alpha.dW; 1: momentum, v <- beta.v + dW, W <- W - alpha.v (state1 = v,
        beta1 = beta); 2: Adam, m <- b1.m + (1-b1).g, s <- b2.s + (1-b2).g.g,
        W <- W - step.m / (sqrt(s) + eps) with step = alpha.sqrt(1-b2^t)/(1-b1^t) (state1 = m, state2 = s).
        Decoupled weight decay first, on the weights only: W <- W - alpha.lambda.W.
        """
        dt = params[0].dtype.type
        tiny = np.finfo(params[0].dtype).tiny
        if weight_decay != 0:
            decay = dt(1 - lr * weight_decay)
            W = params[0]
            for i in range(W.shape[0]):
                W[i] *= decay
        if kind == 0:
            rate = dt(lr)
            for group in range(2):
                p, g = params[group], grads[group]
                for i in range(p.shape[0]):
                    p[i] -= g[i] * rate
        elif kind == 1:
            rate, beta = dt(lr), dt(beta1)
            for group in range(2):
                p, g, v = params[group], grads[group], state1[group]
                for i in range(p.shape[0]):
                    vi = v[i] * beta + g[i]
                    v[i] = vi if not np.abs(vi) < tiny else vi * 0  # optimizers.flush_subnormals
                    p[i] -= v[i] * rate
        else:
            step = dt(lr * (1 - beta2**t) ** 0.5 / (1 - beta1**t))
            b1, c1, b2, c2, e = dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps)
            for group in range(2):
                p, g, m, s = params[group], grads[group], state1[group], state2[group]
                for i in range(p.shape[0]):
                    gi = g[i]
                    mi = m[i] * b1 + gi * c1
                    si = s[i] * b2 + (gi * c2) * gi
                    m[i] = mi if not np.abs(mi) < tiny else mi * 0  # optimizers.flush_subnormals
                    s[i] = si if not np.abs(si) < tiny else si * 0
                    p[i] -= (m[i] * step) / (np.sqrt(s[i]) + e)

    @_jit
    def _epoch_steps(images, order, labels, losses, batch, step_from, step_to, Ws, bs, dWs, dbs, As, dZs, partials,
                     kind, params, grads, state1, state2, rates, weight_decay, beta1, beta2, eps, t0):
        """Steps step_from .. step_to - 1 of a mini-batch epoch over images[order]; returns the correct count.

        Step k takes the samples order[k.batch : (k+1).batch] (the last batch may be shorter),
        writes their losses into losses[k.batch : ...] and updates the parameters at rate rates[k];
        Adam's step counter is t0 + 1 + k - step_from.
        """
        m = order.shape[0]
        correct = 0
        for k in range(step_from, step_to):
            start = k * batch
            stop = min(start + batch, m)
            correct += _forward_backward(images, order, start, labels[start:stop], losses[start:stop],
                                         Ws, bs, dWs, dbs, As, dZs, partials)
            t = float(t0 + 1 + k - step_from)
            _update(kind, params, grads, state1, state2, rates[k], weight_decay, beta1, beta2, eps, t)
        return correct

    @_parallel_jit
    def _epoch_steps_parallel(images, order, labels, losses, batch, step_from, step_to, Ws, bs, dWs, dbs, As, dZs,
                              partials, kind, params, grads, state1, state2, rates, weight_decay, beta1, beta2, eps, t0,
                              counts):
        """As ``_epoch_steps``, with each step's blocks of BLOCK samples shared among numba's threads.

        A block's work (gather, forward, softmax, backward, its share of dW) is independent of
        the other blocks'; the sums over blocks run afterwards in block order, on one thread
        (``_reduce_blocks``). So the result has the bits of ``_epoch_steps``, whichever thread
        ran which block. ``counts``: one integer per block.
        """
        m = order.shape[0]
        correct = 0
        for k in range(step_from, step_to):
            start = k * batch
            stop = min(start + batch, m)
            r = stop - start
            batch_labels, batch_losses = labels[start:stop], losses[start:stop]
            for block in numba.prange((r + BLOCK - 1) // BLOCK):
                lo = block * BLOCK
                counts[block] = _block_pass(images, order, start, lo, min(lo + BLOCK, r), r, batch_labels,
                                            batch_losses, Ws, bs, As, dZs, dWs, partials, block)
            for block in range((r + BLOCK - 1) // BLOCK):
                correct += counts[block]
            _reduce_blocks(r, dZs, dWs, dbs, partials)
            t = float(t0 + 1 + k - step_from)
            _update(kind, params, grads, state1, state2, rates[k], weight_decay, beta1, beta2, eps, t)
        return correct

    @_jit
    def _full_batch_part(images, labels, losses, start, stop, chunk, m, Ws, bs, dWs, dbs, As, dZs, partials,
                         grad_flat, total):
        """Samples start .. stop - 1 of a full-batch step, in chunks: total = sum of each chunk's gradients x its share.

        As ``Network.full_batch_gradients``: the mean over all m samples is the weighted mean
        of the chunks' means. Returns the correct count.
        """
        in_order = np.empty(0, np.int64)
        correct = 0
        total[:] = 0
        for first in range(start, stop, chunk):
            last = min(first + chunk, stop)
            correct += _forward_backward(images, in_order, first, labels[first:last], losses[first:last], Ws, bs,
                                         dWs, dbs, As, dZs, partials)
            share = grad_flat.dtype.type((last - first) / m)
            for i in range(total.shape[0]):
                total[i] += grad_flat[i] * share
        return correct

# -- the Python side: buffers, what is supported, and the calls -----------------------------
PROGRESS_SAMPLES = 8192  # with a progress bar, the epoch runs in calls of about this many samples


class Buffers:
    """Sample-major work arrays for batches of up to ``batch`` samples, and the gradients as one flat array.

    As = (A0, A1, ..., A_{L-1}, Z_L) and dZs = (dZ1, ..., dZ_L), each (batch, units);
    the gradients are views of ``grad_flat``, laid out as the network's ``flat``.
    """

    def __init__(self, network, batch: int):
        sizes, dtype = network.sizes, network.dtype
        self.As = tuple(np.empty((batch, n), dtype) for n in sizes)
        self.dZs = tuple(np.empty((batch, n), dtype) for n in sizes[1:])
        self.grad_flat = np.zeros_like(network.flat)
        grads = network.views_of(self.grad_flat)
        self.dWs = tuple(grads[0::2])
        self.dbs = tuple(g.reshape(-1) for g in grads[1::2])
        self.grad_groups = tuple(network.groups_of(self.grad_flat))
        blocks = -(-batch // BLOCK)
        self.partials = tuple(np.empty((blocks, *dW.shape), dtype) for dW in self.dWs)  # [0]: unused, dW itself
        self.counts = np.zeros(blocks, np.int64)
        self.Ws = tuple(network.weights)
        self.bs = tuple(b.reshape(-1) for b in network.biases)


_parallel_lock = threading.Lock()
_buffers: dict = {}  # (id(network), batch, key) -> (weakref to network, Buffers)


def buffers(network, batch: int, key=0) -> Buffers:
    """The compiled path's work buffers for this network and batch size (made once, reused)."""
    entry = _buffers.get((id(network), batch, key))
    if entry is None or entry[0]() is not network:
        for stale in [k for k, (ref, _) in _buffers.items() if ref() is None]:
            del _buffers[stale]
        entry = _buffers[id(network), batch, key] = (weakref.ref(network), Buffers(network, batch))
    return entry[1]


def supports(network, optimizer=None) -> bool:
    """Whether the compiled path runs this network (and optimizer) exactly as the NumPy path would."""
    from gpunet.nn.optimizers import Adam, GradientDescent, Momentum

    from gpunet.nn.model import Network

    # The notes' Network only: its loops know dense layers (a LayerStack shares the flat parameters, not the math).
    if (numba is None or type(network) is not Network or not isinstance(network.flat, np.ndarray)
            or network.dtype.type not in DTYPES):
        return False
    if optimizer is None:
        return True
    groups = getattr(optimizer, "params", None)
    return (type(optimizer) in (GradientDescent, Momentum, Adam) and len(groups) == 2
            and groups[0] is network.groups[0] and groups[1] is network.groups[1])


def _data_ok(images, labels) -> bool:
    return (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.flags.c_contiguous and isinstance(labels, np.ndarray))


def _optimizer_state(optimizer):
    """(kind, state1, state2, beta1, beta2, eps) for ``_update``; unused states are the parameters themselves."""
    params = tuple(optimizer.params)
    kind = KINDS[type(optimizer).__name__]
    if kind == 1:
        return kind, tuple(optimizer.velocity), params, optimizer.beta, 0.0, 0.0
    if kind == 2:
        return kind, tuple(optimizer.mean), tuple(optimizer.square), optimizer.beta1, optimizer.beta2, optimizer.eps
    return kind, params, params, 0.0, 0.0, 0.0


def threads() -> int:
    """How many threads may share a step's blocks: numba's pool (NUMBA_NUM_THREADS), at most one per usable core."""
    if numba is None:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(numba.config.NUMBA_NUM_THREADS, cores))


SLICE_SAMPLES = 4096  # a parallel epoch runs in calls of about this many samples, each one timed
PROBE_EVERY = 16  # calls: how often the way that lost (parallel or one thread) is timed again, at first;
PROBE_AT_MOST_EVERY = 64  # each probe that the loser loses again doubles that, up to this
_probe_every: dict = {}  # batch -> calls between probes now
_seconds_per_step: dict = {}  # (batch, parallel) -> [(seconds per step, call number) of its latest calls, up to 3]
_calls = [0]
_warm = {True: False, False: False}  # whether each way has run in this process


def _pick(batch: int) -> tuple[bool, bool]:
    """(parallel, probe) for the next call: the way faster lately, and now and then the other, to time it again.

    Both ways give the same bits (BLAS on one thread), so the pick changes only the speed. On an idle machine
    the parallel steps win; where another program holds a core, numba's threads wait
    for it, and one thread is faster. probe: the call times the way that lost (a short call).
    """
    best = _faster(batch)
    if best is None:
        return (batch, True) not in _seconds_per_step, False  # time each way once
    if _calls[0] - _seconds_per_step[batch, not best][-1][1] < _probe_every.get(batch, PROBE_EVERY):
        return best, False
    return not best, True


def _faster(batch: int) -> bool | None:
    """The way faster in the median of its latest calls (one slow call does not flip it), or None if one is untimed."""
    timed = [_seconds_per_step.get((batch, parallel)) for parallel in (True, False)]
    if not all(timed):
        return None
    parallel, alone = (sorted(t for t, _ in calls)[(len(calls) - 1) // 2] for calls in timed)
    return parallel <= alone


def _record(batch: int, parallel: bool, probe: bool, seconds_per_step: float) -> None:
    before = _faster(batch)
    _calls[0] += 1
    latest = _seconds_per_step.setdefault((batch, parallel), [])
    latest[:] = latest[-2:] + [(seconds_per_step, _calls[0])]
    if probe:  # the loser lost again: time it more rarely; it won: from the start
        lost = _faster(batch) == before
        _probe_every[batch] = min(2 * _probe_every.get(batch, PROBE_EVERY), PROBE_AT_MOST_EVERY) if lost else PROBE_EVERY


def minibatch_epoch(network, optimizer, images, order, labels, losses, batch: int, rates, progress=None,
                    parallel=None):
    """One epoch of mini-batch steps over images[order]; returns the correct count, or None if unsupported.

    ``labels`` are the epoch's labels in visiting order, ``losses`` receives the
    per-sample losses in that order, ``rates[k]`` is the learning rate of step k.
    As ``gpunet.training.loop._minibatch_epoch``, with the same optimizer state
    (Adam's step counter included) before and after.

    ``parallel``: True shares each step's blocks of BLOCK samples among numba's threads
    (``_epoch_steps_parallel``), False runs them on this thread (``_epoch_steps``); both give
    the same bits with BLAS on one thread. None: where a batch has more than one block and there is more than one
    core, calls of about SLICE_SAMPLES samples, each the way timed faster lately (``_pick``).
    Only one epoch at a time runs parallel (numba's thread pool takes one parallel call at a
    time); another thread's epoch meanwhile runs on its own thread.
    """
    if not (supports(network, optimizer) and _data_ok(images, labels)):
        return None
    if parallel is not False and not (batch > BLOCK and threads() > 1):
        parallel = False
    if parallel is not False and not _parallel_lock.acquire(blocking=False):
        parallel = False
    try:
        return _minibatch_epoch(network, optimizer, images, order, labels, losses, batch, rates, progress, parallel)
    finally:
        if parallel is not False:
            _parallel_lock.release()


def _minibatch_epoch(network, optimizer, images, order, labels, losses, batch, rates, progress, parallel):
    bufs = buffers(network, batch)
    kind, state1, state2, beta1, beta2, eps = _optimizer_state(optimizer)
    order = np.ascontiguousarray(order, dtype=np.int64)
    labels = np.ascontiguousarray(labels)
    rates = np.ascontiguousarray(rates, dtype=np.float64)
    m, steps = order.shape[0], rates.shape[0]
    per_call = steps if progress is None else max(1, PROGRESS_SAMPLES // batch)
    if parallel is not False:
        per_call = min(per_call, max(1, SLICE_SAMPLES // batch))
        numba.set_num_threads(min(threads(), -(-batch // BLOCK)))  # no threads without a block to run
    correct, first = 0, 0
    while first < steps:
        now, probe = _pick(batch) if parallel is None else (parallel, False)
        last = min(first + (max(1, per_call // 8) if probe else per_call), steps)
        args = (images, order, labels, losses, batch, first, last, bufs.Ws, bufs.bs, bufs.dWs, bufs.dbs, bufs.As,
                bufs.dZs, bufs.partials, kind, tuple(optimizer.params), bufs.grad_groups, state1, state2, rates,
                float(optimizer.weight_decay), beta1, beta2, eps, getattr(optimizer, "t", 0))
        started, warm = time.perf_counter(), _warm[now]
        correct += _epoch_steps_parallel(*args, bufs.counts) if now else _epoch_steps(*args)
        _warm[now] = True
        # Not timed: a first call (it loads the compiled code and starts the threads) and an epoch's short last call.
        if parallel is None and warm and last - first >= max(1, per_call // 8):
            _record(batch, now, probe, (time.perf_counter() - started) / (last - first))
        if kind == 2:
            optimizer.t += last - first
        if progress is not None:
            progress(min(last * batch, m) - first * batch)
        first = last
    optimizer.lr = float(rates[-1])
    return correct


def full_batch_gradients(network, images, labels, losses, chunk: int, parts: int, parallel_map):
    """As ``Network.full_batch_gradients``, each part of the samples one compiled call (run by ``parallel_map``).

    Returns (grad_groups, correct count), or None if unsupported.
    """
    if not (supports(network) and _data_ok(images, labels)):
        return None
    m = int(labels.shape[0])
    chunk = min(chunk, m)
    parts = parts if chunk < m else 1
    bounds = [m * i // parts // chunk * chunk for i in range(parts)] + [m]  # parts start on a chunk boundary
    labels = np.ascontiguousarray(labels)

    def run(i):
        bufs = buffers(network, chunk, key=("full batch", i))
        if not hasattr(bufs, "total"):
            bufs.total = np.empty_like(network.flat)
        correct = _full_batch_part(images, labels, losses, bounds[i], bounds[i + 1], chunk, m, bufs.Ws, bufs.bs,
                                   bufs.dWs, bufs.dbs, bufs.As, bufs.dZs, bufs.partials, bufs.grad_flat, bufs.total)
        return bufs.total, correct

    results = parallel_map(run, [i for i in range(parts) if bounds[i] < bounds[i + 1]])
    total = results[0][0]
    for part, _ in results[1:]:
        total += part  # in order of the parts: the result does not depend on timing
    return network.groups_of(total), sum(correct for _, correct in results)
