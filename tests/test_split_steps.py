"""A layer stack's mini-batch step split between the cores (training.loop.step_parts): the batch as chunks of
consecutive samples, each chunk's forward and backward pass on its own thread, their gradients (each chunk's
mean weighted by its share) added in order, then one optimizer step.

The split step computes the same formulas as the whole step, with the same dropout masks (each chunk draws
the whole batch's columns), but adds its sums in another order: its gradients and parameters lie within the
bounds of their sums of the whole step's, and it gives the same bits when run twice.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpunet.backends.base import Backend
from gpunet.backends.cpu import CpuBackend
from gpunet.files.data import Digits, load_sample
from gpunet.nn.layers import Conv2D
from gpunet.nn.model import LayerStack, Network, build_layers, init_params, init_stack_params, parse_arch_text
from gpunet.nn.optimizers import make_optimizer
from gpunet.training import loop
from gpunet.training.loop import DeviceData, compute_threads, split_step_gradients, step_gradients, step_parts
from tests.test_gpu import _abs_backward, _with_abs_params
from tests.tolerances import _near_ties, _softmax_cross_entropy, assert_counts_within, assert_within, gamma

CPU = CpuBackend()
LR = 0.05
# Every layer kind: convolutions 'same' and 'valid', pooling (of an odd-sized map too), flattening, dense
# layers, dropout on maps and on vectors.
ARCHS = ["conv4k3same,pool2,conv6k3,pool2,dense16,dropout0.25", "conv3k5,dropout0.3,pool2,dense8,dropout0.5"]
# (batch size, parts): halves, an odd batch, three parts, a part of one sample.
SPLITS = [(64, 2), (37, 2), (65, 3), (3, 2)]


def stack(spec, dtype, seed=5):
    arch = parse_arch_text(spec)
    params = init_stack_params(build_layers(arch, (1, 28, 28), 10), "he", seed, dtype)
    return LayerStack(CPU, arch, params, (1, 28, 28), seed=7)


def batch(m, seed=6):
    sample = load_sample()
    index = np.random.default_rng(seed).permutation(len(sample.labels))[:m]
    return sample.images, index, sample.labels[index].astype(np.int32)


def copies(grads):
    return [np.array(g, copy=True) for g in grads]


def split_bounds(network, images, index, labels, parts):
    """Bounds on how far one float64 computation of a step's logits' losses and gradients, whole or split into
    ``parts`` chunks, adding its sums in any order, may land from the exact values (to first order, with every
    ReLU, argmax and dropout mask as in the whole batch's pass).

    As tests/test_gpu.py's ``cnn_step_bounds``: the loss's bounds carried through |backward|, plus
    gamma_N.|backward|(|dZ_L|) for the sums' own roundings, N the roundings along the longest path. A split adds
    to each term: dZ_L divided by the chunk's count instead of m, the chunk's gradient multiplied by its share
    k/m (rounded, then the product rounded), and the parts' sums added (parts - 1 roundings); the chunks'
    |terms| add up to the whole batch's, so those roundings are gamma_(N + 3 + parts) of the same sums.
    """
    dtype = network.dtype
    A0 = CPU.gather_scaled(images, index, dtype)
    Z, saved = network.forward(A0)
    abs_Z, abs_saved = _with_abs_params(network, lambda: network.forward(np.abs(A0)))
    kinks = [s if not isinstance(s, tuple) else (a[0], s[1]) for s, a in zip(saved, abs_saved)]
    depth = sum(getattr(layer, "fan_in", 0) + getattr(layer, "outputs", 0) + getattr(layer, "k", 1) ** 2 + 2
                for layer in network.layers)  # forward sums, backward sums (W^T.dZ, col2im's k.k) and scalings
    longest = max(len(index) * math.prod(layer.output_shape[1:]) for layer in network.layers
                  if isinstance(layer, Conv2D))  # dW's sum: over positions and samples
    gamma_all = gamma(depth + longest + 3 + parts, dtype)
    B_Z = gamma(depth, dtype) * abs_Z
    _, dZ, B_dZ, _, B_losses = _softmax_cross_entropy(Z, B_Z, labels, dtype)
    carried = _with_abs_params(network, lambda: _abs_backward(network, kinks, B_dZ))
    rounding = _with_abs_params(network, lambda: _abs_backward(network, kinks, np.abs(dZ)))
    return Z, B_Z, B_losses, [c + gamma_all * r for c, r in zip(carried, rounding)]


@pytest.mark.parametrize("m, parts", SPLITS)
@pytest.mark.parametrize("spec", ARCHS)
def test_a_split_step_gives_the_whole_steps_gradients_and_parameters_within_their_bounds(spec, m, parts):
    """float64 (in float32 a pool's two nearly equal entries or a ReLU's input near 0 may go either way and
    route a gradient elsewhere: no entrywise bound holds), dropout on: masks that differed between the split
    and the whole batch (a chunk numbering its own samples from 0) would move the gradients far beyond these."""
    dtype = np.float64
    images, index, labels = batch(m)
    whole, split = stack(spec, dtype), stack(spec, dtype)
    whole.step = split.step = 3
    losses = {name: np.full(m, np.nan) for name in ("whole", "split")}
    want, want_correct = step_gradients(whole, images, index, labels, losses["whole"])
    got, got_correct = split_step_gradients(split, images, index, labels, losses["split"], parts)
    want, got = copies(want), copies(got)
    Z, B_Z, B_losses, B_grads = split_bounds(whole, images, index, labels, parts)
    got_params, want_params = split.views_of(np.concatenate(got)), whole.views_of(np.concatenate(want))
    for k, (g, w, B) in enumerate(zip(got_params, want_params, B_grads, strict=True)):
        assert_within(g, w, 2 * B, f"gradient {k}")
    assert_within(losses["split"], losses["whole"], 2 * B_losses, "losses")
    assert_counts_within(got_correct, want_correct, _near_ties(Z, 2 * B_Z), "correct count")
    # One SGD step of each: p - lr.g, two roundings of each side.
    for network, grads in ((whole, want), (split, got)):
        make_optimizer("sgd", network.groups, LR, weight_decay=0.0).step([np.asarray(g) for g in grads])
    for k, (p, q, B, g, p0) in enumerate(zip(split.params, whole.params, B_grads, want_params,
                                             stack(spec, dtype).params)):
        bound = LR * 2 * B + gamma(2, dtype) * 2 * (np.abs(p0) + LR * np.abs(g))
        assert_within(p, q, bound, f"parameter {k} after the step")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", ARCHS)
def test_a_split_step_gives_the_same_bits_when_run_twice(spec, dtype):
    """The chunks' sums are added in order, whichever thread ends first: the same computation, the same bits."""
    images, index, labels = batch(64)
    results = []
    for _ in range(2):
        network = stack(spec, dtype)
        network.step = 9
        losses = np.empty(64, dtype)
        grads, correct = split_step_gradients(network, images, index, labels, losses, 2)
        results.append((np.concatenate(copies(grads)), losses, int(correct)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]


def test_a_split_steps_dropout_masks_are_the_whole_batchs():
    """Dropout right after the input: each half's maps are its digits times the whole batch's mask columns."""
    network = stack("dropout0.5,conv2k3,dense4", np.float64)
    network.step = 2
    images, index, labels = batch(8)
    A0 = CPU.gather_scaled(images, index, np.float64)
    _, saved = network.forward(A0)
    for first, stop in ((0, 4), (4, 8)):
        _, chunk_saved = network.forward(A0[:, first:stop].copy(), first_sample=first)
        np.testing.assert_array_equal(chunk_saved[0], saved[0][..., first:stop])


def test_train_epoch_takes_split_steps_for_a_convolutional_stack_on_two_cores(monkeypatch):
    """An epoch of a CNN at batch 64 on a 2-core CPU: each step split in two and one optimizer step (the same
    bits as those steps taken by hand); BLAS on one thread throughout."""
    monkeypatch.setattr(CpuBackend, "parallel_parts", lambda self: 2)
    sample = load_sample()
    digits = Digits(sample.images[:150], sample.labels[:150], "the sample's first 150 digits")
    spec, dtype = ARCHS[0], np.float32
    network = stack(spec, dtype)
    optimizer = make_optimizer("adam", network.groups, 0.001)
    assert step_parts(network, 64) == 2
    calls = []
    real_split = loop.split_step_gradients
    monkeypatch.setattr(loop, "split_step_gradients", lambda *args: calls.append(len(args[2])) or real_split(*args))
    loss, accuracy = loop.train_epoch(network, optimizer, DeviceData(CPU, digits), 64, np.random.default_rng(1),
                                      first_step=5)
    assert calls == [64, 64, 22]

    by_hand = stack(spec, dtype)
    hand_optimizer = make_optimizer("adam", by_hand.groups, 0.001)
    order = np.random.default_rng(1).permutation(150)
    labels = digits.labels[order]
    losses = np.empty(150, dtype)
    for step, start in enumerate(range(0, 150, 64)):
        by_hand.step = 5 + step
        grads, _ = real_split(by_hand, digits.images, order[start:start + 64], labels[start:start + 64],
                              losses[start:start + 64], 2)
        hand_optimizer.step(grads)
    np.testing.assert_array_equal(network.flat, by_hand.flat)
    assert loss == float(losses.sum(dtype=np.float64)) / 150


def test_which_steps_are_split(monkeypatch):
    """Only a convolutional layer stack's steps, one part per core of the CPU, each part of PART_FROM samples or
    more; the notes' Network, a stack of dense layers and a backend of one part (CUDA's) keep whole steps."""
    cnn = stack(ARCHS[0], np.float32)
    monkeypatch.setattr(CpuBackend, "parallel_parts", lambda self: 2)
    assert step_parts(cnn, 2 * loop.PART_FROM) == 2 and step_parts(cnn, 128) == 2
    assert step_parts(cnn, 2 * loop.PART_FROM - 1) == 1 and step_parts(cnn, 0) == 1
    monkeypatch.setattr(CpuBackend, "parallel_parts", lambda self: 16)
    assert step_parts(cnn, 128) == 128 // loop.PART_FROM and step_parts(cnn, 16 * loop.PART_FROM) == 16
    dense_arch = parse_arch_text("dense16,dropout0.5")
    dense_stack = LayerStack(CPU, dense_arch, init_stack_params(build_layers(dense_arch, (784,), 10), "he", 0,
                                                                np.float32), (784,))
    assert step_parts(dense_stack, 1024) == 1
    assert step_parts(Network(CPU, init_params([784, 16, 10], "he", 0, np.float32)), 1024) == 1
    generic = LayerStack(Backend(), cnn.arch, cnn.host_params(), (1, 28, 28))
    assert step_parts(generic, 1024) == 1


def test_split_epochs_hold_blas_to_one_thread_and_whole_ones_do_not(monkeypatch):
    """compute_threads: the backend's one-thread context for split epochs (each part's thread one BLAS thread)
    and the notes' Network; nothing for a stack's whole steps and its scoring (BLAS shares its products)."""
    monkeypatch.setattr(CpuBackend, "parallel_parts", lambda self: 2)
    held = object()
    monkeypatch.setattr(CpuBackend, "compute_threads", lambda self: held)
    cnn = stack(ARCHS[0], np.float32)
    assert compute_threads(cnn, 64) is held
    assert compute_threads(cnn, 32) is not held and compute_threads(cnn) is not held
    assert compute_threads(Network(CPU, init_params([784, 16, 10], "he", 0, np.float32))) is held


@pytest.mark.parametrize("m, parts", SPLITS + [(127, 2), (65, 2)])
def test_each_part_of_a_split_step_takes_one_chunk(monkeypatch, m, parts):
    """Chunks of ceil(m / parts) samples, one per part, so that every part has work for its thread."""
    network = stack(ARCHS[0], np.float64)
    taken = []
    whole = network._chunk_gradients

    def spy(images, labels, losses, start, stop, m_, key):
        taken.append((key, start, stop))
        return whole(images, labels, losses, start, stop, m_, key)

    monkeypatch.setattr(network, "_chunk_gradients", spy)
    images, index, labels = batch(m)
    chunk = -(-m // parts)
    network.full_batch_gradients(images[index], labels, np.empty(m), chunk, parts)
    assert sorted(key for key, _, _ in taken) == list(range(parts)), taken
    assert sorted((start, stop) for _, start, stop in taken) == [(i * chunk, min(m, (i + 1) * chunk))
                                                                 for i in range(parts)]


def test_numpys_error_handling_holds_in_the_parts_threads():
    """train() silences overflow for a diverging run (it says so once); the parts' threads must too."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="ignore", invalid="ignore"):
            results = CPU.parallel_map(lambda i: np.float32(3e38) * np.float32(10), range(2))
    assert all(np.isinf(r) for r in results)
