"""A CPU training workspace's layer arrays (layers.Scratch), reused from step to step instead of made afresh.

Reusing an array changes where a result is written, not how it is computed (the same BLAS calls and compiled
passes on the same operands, in the same order), so steps with reused arrays give the same bits as steps
with fresh ones, over several steps. Each layer of each workspace (one per part of a split step) has
arrays of its own: were two layers or two parts to share one, a value saved for backward would be
overwritten before backward reads it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpunet.backends.cpu import CpuBackend
from gpunet.files.data import load_sample
from gpunet.nn import layers as L
from gpunet.nn.model import LayerStack, build_layers, init_stack_params, parse_arch_text
from gpunet.nn.optimizers import make_optimizer
from gpunet.training.loop import compute_threads, split_step_gradients, step_gradients

REUSING = CpuBackend()
FRESH_ARRAYS = CpuBackend()
FRESH_ARRAYS.reuses_layer_arrays = False  # the same compiled passes, every result a new array
# Every layer kind: convolutions 'same' and 'valid', pooling (of an odd-sized map too), flattening, dense
# layers, dropout on maps and on vectors; the last one two convolutions and poolings, as MNIST's CNN.
ARCHS = ["conv4k3same,pool2,conv6k3,pool2,dense16,dropout0.25", "conv3k5,dropout0.3,pool2,dense8,dropout0.5",
         "conv4k5,pool2,conv8k5,pool2,dense16,dropout0.5"]
BATCHES = [(0, 64), (64, 128), (128, 165)]  # the last one smaller: a workspace of another size


def stack(backend, spec, dtype):
    arch = parse_arch_text(spec)
    params = init_stack_params(build_layers(arch, (1, 28, 28), 10), "he", 5, dtype)
    return LayerStack(backend, arch, params, (1, 28, 28), seed=7)


def train(network, parts, steps=BATCHES):
    """Adam steps over the sample's first digits, whole (parts 1) or split; each step's (losses, parameters)."""
    sample = load_sample()
    order = np.random.default_rng(3).permutation(len(sample.labels))
    optimizer = make_optimizer("adam", network.groups, 0.001)
    history = []
    with compute_threads(network, steps[0][1] - steps[0][0]):
        for step, (start, stop) in enumerate(steps):
            network.step = step
            index, losses = order[start:stop], np.empty(stop - start, network.dtype)
            labels = sample.labels[index].astype(np.int32)
            if parts == 1:
                grads, _ = step_gradients(network, sample.images, index, labels, losses)
            else:
                grads, _ = split_step_gradients(network, sample.images, index, labels, losses, parts)
            optimizer.step(grads)
            history.append((losses, network.flat.copy()))
    return history


def scratch_arrays(network):
    """{(workspace key, layer index, role): array} of every layer array the network's workspaces hold."""
    return {(key, index, role): array for key, ws in network._workspaces.items()
            for index, scratch in enumerate(ws.scratch) for role, array in scratch.arrays.items()}


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", ARCHS)
def test_steps_with_reused_arrays_give_the_bits_of_steps_with_fresh_ones(spec, dtype, parts):
    """The same computation written into kept arrays: each step's losses and parameters, bit for bit."""
    reused, fresh = stack(REUSING, spec, dtype), stack(FRESH_ARRAYS, spec, dtype)
    for step, ((losses, params), (fresh_losses, fresh_params)) in enumerate(zip(train(reused, parts),
                                                                                train(fresh, parts))):
        np.testing.assert_array_equal(losses, fresh_losses, err_msg=f"step {step}")
        np.testing.assert_array_equal(params, fresh_params, err_msg=f"step {step}")
    assert scratch_arrays(reused), "the CPU workspaces kept no layer arrays"
    assert not scratch_arrays(fresh)


@pytest.mark.parametrize("parts", [1, 2])
def test_each_layer_of_each_part_keeps_arrays_of_its_own_and_reuses_them(parts):
    """After two steps of one size: every convolution, pooling, dense and dropout layer of every part's workspace
    holds its arrays, no two of which (across layers and parts) overlap, and the second step wrote into the
    first's."""
    network = stack(REUSING, ARCHS[2], np.float32)
    train(network, parts, BATCHES[:1])
    first = scratch_arrays(network)
    train(network, parts, BATCHES[:1])
    second = scratch_arrays(network)
    assert first.keys() == second.keys() and all(first[role] is second[role] for role in first)
    assert {key for key, _, _ in first} == {(64 // parts, part) for part in range(parts)}  # (samples, part)
    kinds = (L.Conv2D, L.MaxPool2D, L.Dense, L.Dropout)
    for key in {key for key, _, _ in first}:
        held = {index for k, index, _ in first if k == key}
        assert held == {i for i, layer in enumerate(network.layers) if isinstance(layer, kinds)}
    for (a, x), (b, y) in itertools.combinations(first.items(), 2):
        assert not np.shares_memory(x, y), f"{a} and {b} share memory"


def test_a_convolutions_saved_columns_and_maps_are_its_workspace_arrays():
    """What forward saves for backward lies in the layer's own arrays (so nothing is allocated for it)."""
    network = stack(REUSING, ARCHS[2], np.float64)
    ws = network.workspace(8)
    A0 = REUSING.gather_scaled(load_sample().images[:8], None, np.float64, out=ws.A0)  # C-ordered, as in training
    _, saved = network.forward(A0, ws)
    columns, Y = saved[0]
    assert np.shares_memory(columns, ws.scratch[0].arrays["columns"])  # a view of it
    assert Y is ws.scratch[0].arrays["y"]
    assert saved[1] is ws.scratch[1].arrays["argmax"]
