"""--arch: the layer spec, a network made of layers.py's layers (model.LayerStack), and its model files.

The layers themselves are checked in tests/test_layers.py; here, what wiring them adds: the grammar and
its errors, the whole stack's gradient against central differences, training, saving and loading.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gpunet.backends.cpu import CpuBackend
from gpunet.files.checkpoint import load_model
from gpunet.errors import ModelFileError
from gpunet.nn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, as_maps
from gpunet.nn.loss import softmax_cross_entropy
from gpunet.nn.model import (LayerStack, Network, build_layers, check_arch, dense_sizes, init_params,
                          init_stack_params, layer_sizes, parse_arch_text)
from tests.conftest import run
from tests.test_layers import (TRANSCENDENTAL_ULPS, abs_forward, central_differences, check_gradients,
                               forward_stack, sum_length)
from tests.tolerances import assert_within, gamma

DATA = Path(__file__).parent / "data"
CNN = "conv8k5,pool2,dense32,dropout0.25"


# -- the grammar ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, parts", [
    ("conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5",
     ("conv32k5", "pool2", "conv64k5", "pool2", "dense256", "dropout0.5")),
    (" Conv8K3same , POOL2, dense016 ,dropout.25", ("conv8k3same", "pool2", "dense16", "dropout0.25")),
    ("conv4k3valid,dropout0", ("conv4k3", "dropout0")),
    ("none", ()),
    ("dense16,dense16", ("dense16", "dense16")),
])
def test_spec_reads_to_canonical_parts(text, parts):
    assert parse_arch_text(text) == parts


def test_layers_are_the_spec_with_flatten_implied_and_the_softmax_layer_added():
    layers = build_layers(parse_arch_text("conv4k3same,pool2,dropout0.5,dense7"), (1, 28, 28), 10)
    assert [type(layer) for layer in layers] == [Conv2D, MaxPool2D, Dropout, Flatten, Dense, Dense]
    assert [layer.output_shape for layer in layers] == [(4, 28, 28), (4, 14, 14), (4, 14, 14), (784,), (7,), (10,)]
    assert layers[0].padding == "same" and layers[-1].relu is False and layers[-2].relu is True
    # Maps straight into the output layer: flattened before it.
    assert [type(layer) for layer in build_layers(("conv2k3",), (1, 28, 28), 10)] == [Conv2D, Flatten, Dense]


def test_a_spec_of_dense_layers_is_the_notes_network():
    assert dense_sizes(parse_arch_text("dense16,dense16")) == (16, 16)
    assert dense_sizes(()) == ()
    assert dense_sizes(parse_arch_text("dense16,dropout0.5")) is None


def test_each_dropout_layer_draws_its_own_masks():
    layers = build_layers(parse_arch_text("dense8,dropout0.5,dense8,dropout0.5"), (784,), 10, seed=3)
    seeds = [layer.seed for layer in layers if isinstance(layer, Dropout)]
    again = [layer.seed for layer in build_layers(parse_arch_text("dense8,dropout0.5,dense8,dropout0.5"), (784,), 10,
                                                  seed=3) if isinstance(layer, Dropout)]
    other_run = [layer.seed for layer in build_layers(parse_arch_text("dense8,dropout0.5,dense8,dropout0.5"), (784,),
                                                      10, seed=4) if isinstance(layer, Dropout)]
    assert seeds == again and len(set(seeds)) == 2 and not set(seeds) & set(other_run)


@pytest.mark.parametrize("spec, says", [
    ("conv32k5,pool2,,dense4", "layer 3 is empty"),
    ("conv32x5", "layer 1 'conv32x5' is not a layer"),
    ("dense16,conv3k3", "layer 2 'conv3k3' comes after a dense layer"),
    ("dense16,pool2", "layer 2 'pool2' comes after a dense layer"),
    ("conv4k29", "layer 1 'conv4k29'"),
    ("conv4k9,pool2,conv4k9,pool2,pool2", "pool2: 1x1 maps hold no"),  # 28 -> 20 -> 10 -> 2 -> 1: no window
    ("conv4k5,pool2,conv4k13", "conv4k13: a 13x13 kernel does not fit in 12x12 maps"),
    ("dropout1", "layer 1 'dropout1'"),
    ("pool1", "layer 1 'pool1'"),
    ("dense0", "layer 1 'dense0'"),
    ("conv0k3", "layer 1 'conv0k3'"),
    ("", "is empty"),
    ("dense16;dense16", "is not a layer"),
])
def test_a_malformed_spec_is_a_usage_error_naming_the_bad_part(capsys, tmp_path, spec, says):
    out = tmp_path / "model.npz"
    code, _, err = run(capsys, "train", "--device", "cpu", "--arch", spec, "--out", str(out))
    assert code == 2, err
    assert err.count("\n") == 1 and "--arch" in err and says in err, err
    assert not out.exists()


def test_same_padding_keeps_the_maps_size_for_the_next_kernel():
    with pytest.raises(ValueError, match="does not fit in 12x12 maps"):
        check_arch(parse_arch_text("conv2k5,pool2,conv2k13"))  # 28 -> 24 -> 12: no 13 x 13 kernel
    check_arch(parse_arch_text("conv2k5same,pool2,conv2k13"))  # 28 -> 28 -> 14 -> 2


def test_hidden_and_arch_together_is_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--hidden", "16,16", "--arch", "dense16", "--out", str(tmp_path / "m.npz"))
    assert code == 2 and "--hidden or --arch, not both" in err and err.count("\n") == 1


def test_arch_of_dense_layers_trains_exactly_as_hidden(capsys, tmp_path):
    """--arch dense16,dense16 is --hidden 16,16: the same network, path and model file, bit for bit."""
    arrays = []
    for option in (["--hidden", "16,16"], ["--arch", "dense16,dense16"]):
        out = tmp_path / f"{option[0][2:]}.npz"
        code, stdout, err = run(capsys, "train", "--device", "cpu", "--epochs", "1", *option, "--out", str(out))
        assert code == 0, err
        assert "Network 784-16-16-10," in stdout
        params, meta = load_model(out)
        assert meta["format_version"] == 1 and meta["layer_sizes"] == [784, 16, 16, 10]
        arrays.append(params)
    for one, other in zip(*arrays):
        np.testing.assert_array_equal(one, other)  # the same computation run twice


# -- the stack's gradient, end to end ---------------------------------------------------------------------
@pytest.mark.parametrize("spec, input_shape, m", [
    ("conv2k3same,pool2,dense5,dropout0.3", (1, 7, 6), 5),
    ("conv3k2,conv2k3,pool2,dropout0.5", (1, 9, 8), 1),
    ("dense6,dropout0.4,dense4", (11,), 7),
])
@pytest.mark.parametrize("with_workspace", [False, True])
def test_training_step_gradient_matches_central_differences_through_the_whole_network(spec, input_shape, m,
                                                                                      with_workspace):
    """LayerStack.forward and backward (as the training loop calls them), float64, every parameter."""
    rng = np.random.default_rng(7)
    arch, classes = parse_arch_text(spec), 3
    params = init_stack_params(build_layers(arch, input_shape, classes), "seed", 5, np.float64)
    network = LayerStack(CpuBackend(), arch, params, input_shape, classes, seed=11)
    network.step = 4  # dropout's masks: those of step 4, at every evaluation below
    A0 = rng.random((int(np.prod(input_shape)), m))
    labels = rng.integers(0, classes, m).astype(np.int32)

    def evaluate():
        Z, _, kinks = forward_stack(network.layers, maps(A0))
        return float(softmax_cross_entropy(np, Z, labels)[1].mean()), kinks, Z

    def maps(A):
        return A if len(input_shape) == 1 else as_maps(A, input_shape)

    ws = network.workspace(m) if with_workspace else None
    if ws is not None:
        ws.A0[...] = A0
    Z, saved = network.forward(ws.A0 if ws is not None else A0, ws)
    grads, losses = network.backward(Z, saved, labels, ws)
    assert len(grads) == len(network.params)
    if ws is not None:  # written into the workspace's flat gradient, laid out as the parameters
        assert all(np.shares_memory(g, ws.grad_flat) for g in grads)
        grads = ws.grads
    np.testing.assert_array_equal(Z, evaluate()[2])  # the same forward pass twice: the same masks, the same bits
    # As in tests/test_layers.py: each logit within gamma_n.(its sum of |terms|), a logit error d moves a
    # sample's loss by at most 2d, and the loss's own roundings.
    logit_bounds = gamma(sum_length(network.layers) + 2, np.float64) * abs_forward(network.layers, maps(A0))
    own = gamma(Z.shape[0] + m + 2 * TRANSCENDENTAL_ULPS, np.float64) * (1 + losses.mean() + np.abs(Z).max())
    rounding = float(np.mean(2 * logit_bounds.max(axis=0))) + own
    for k, (param, analytic) in enumerate(zip(network.params, grads)):
        numeric, truncation = central_differences(evaluate, param)
        check_gradients(analytic, numeric, rounding, truncation, f"parameter {k} ({'Wb'[k % 2]}{k // 2 + 1})")


def test_full_batch_gradient_descent_trains_a_stack_in_chunks():
    """--optimizer gd with a CNN: each step's gradient summed over chunks (the CPU's 512 digits), and it learns."""
    from gpunet.files.data import load_sample
    from gpunet.training.loop import TrainConfig, train

    sample = load_sample()
    train_digits = type(sample)(sample.images[:1200], sample.labels[:1200], "train")
    val_digits = type(sample)(sample.images[1200:1500], sample.labels[1200:1500], "val")
    config = TrainConfig.for_optimizer("gd", arch="conv4k5,pool2,dense16", hidden=(), epochs=12)  # lr 0.1
    history = train(CpuBackend(), train_digits, val_digits, config).history
    losses = [epoch.train_loss for epoch in history]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses


# -- training, model files, predict and evaluate -----------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_model(tmp_path_factory):
    """The issue's check: a small CNN trained for 2 epochs on the bundled sample through the CLI."""
    from gpunet.frontends.cli import main

    model = tmp_path_factory.mktemp("cnn") / "cnn.npz"
    try:
        main(["train", "--device", "cpu", "--arch", CNN, "--epochs", "2", "--out", str(model)])
    except SystemExit as exit:
        assert not exit.code
    return model


def test_cnn_trains_on_the_sample_and_its_model_file_records_the_architecture(cnn_model):
    params, meta = load_model(cnn_model)
    assert meta["format_version"] == 2 and meta["architecture"] == CNN
    assert meta["input_shape"] == [1, 28, 28] and meta["outputs"] == 10 and "layer_sizes" not in meta
    assert meta["training"]["arch"] == CNN
    assert [p.shape for p in params] == [(8, 25), (8, 1), (32, 8 * 12 * 12), (32, 1), (10, 32), (10, 1)]
    assert meta["final_metrics"]["val_accuracy"] > 0.8


def test_cnn_model_evaluates_and_predicts(capsys, tmp_path, cnn_model):
    from gpunet.files.data import load_sample

    code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(cnn_model),
                         "--data", str(Path(__file__).parent.parent / "gpunet" / "sample" / "digits.npz"))
    assert code == 0, err
    validation = next(line for line in out.splitlines() if line.startswith("Validation digits"))
    assert float(validation.rsplit(" ", 1)[1].rstrip("%")) > 80
    sample = load_sample()
    data = tmp_path / "few.npz"
    np.savez(data, images=sample.images[:200], labels=sample.labels[:200])
    code, out, err = run(capsys, "predict", "--device", "cpu", "--model", str(cnn_model), "--data", str(data),
                         "--out", str(tmp_path / "submission.csv"))
    assert code == 0, err
    rows = (tmp_path / "submission.csv").read_text().splitlines()
    assert rows[0] == "ImageId,Label" and len(rows) == 201
    predicted = np.array([int(row.split(",")[1]) for row in rows[1:]])
    assert np.mean(predicted == sample.labels[:200]) > 0.8  # mostly training digits: well above chance


def test_a_saved_cnn_reloads_to_the_same_probabilities(tmp_path):
    """Trained in Python, saved as the CLI saves, loaded as the CLI loads: the same network, bit for bit."""
    from gpunet.frontends.cli import load_network, save_result
    from gpunet.files.data import load_sample
    from gpunet.training.loop import TrainConfig, train

    sample = load_sample()
    digits = type(sample)(sample.images[:600], sample.labels[:600], "part of the sample")
    train_digits = type(sample)(digits.images[:500], digits.labels[:500], "train")
    val_digits = type(sample)(digits.images[500:], digits.labels[500:], "val")
    config = TrainConfig.for_optimizer("adam", arch="conv4k3same,pool2,conv4k3,pool2,dense16,dropout0.5", hidden=(),
                                       epochs=1)
    result = train(CpuBackend(), train_digits, val_digits, config)
    out = save_result(tmp_path / "m.npz", result, config, digits, CpuBackend())
    loaded, meta = load_network(out, CpuBackend())
    assert isinstance(loaded, LayerStack) and loaded.arch == result.network.arch
    for mine, theirs in zip(result.network.params, loaded.params):
        np.testing.assert_array_equal(mine, theirs)
    # The same computation on the same parameters: the same bits (prediction has no dropout).
    np.testing.assert_array_equal(loaded.probabilities(sample.images[:300]),
                                  result.network.probabilities(sample.images[:300]))


def test_todays_dense_model_files_still_load():
    """A model file written by gpunet before layers (tests/data/, by `gpunet train --epochs 2` of commit 60eb650)."""
    from gpunet.frontends.cli import load_network
    from gpunet.files.data import load_sample

    path = DATA / "model_v1_dense_16_16.npz"
    params, meta = load_model(path)
    assert meta["format_version"] == 1 and meta["layer_sizes"] == [784, 16, 16, 10]
    with np.load(path) as raw:  # the arrays exactly as NumPy reads them
        for k, p in enumerate(params):
            np.testing.assert_array_equal(p, raw[f"{'Wb'[k % 2]}{k // 2 + 1}"])
    network, _ = load_network(path, CpuBackend())
    assert type(network) is Network and network.sizes == [784, 16, 16, 10]
    # Its probabilities against the notes' formulas in float64. Float32 errs by u on each pixel, by
    # gamma_(fan_in + 1) of each sum of |terms| and carries the inputs' errors through |W| (ReLU adds none);
    # a logit error d moves a probability by at most 2d; softmax's own exp, sum and division a few ulps more.
    sample = load_sample()
    probabilities = network.probabilities(sample.images[:100])
    A = sample.images[:100].T / 255.0
    error = A * gamma(1, np.float32)
    for k, (W, b) in enumerate(zip(params[0::2], params[1::2])):
        W, b = W.astype(np.float64), b.astype(np.float64)
        error = gamma(W.shape[1] + 1, np.float32) * (np.abs(W) @ np.abs(A) + np.abs(b)) + np.abs(W) @ error
        A = W @ A + b
        if k < len(params) // 2 - 1:
            A = np.maximum(A, 0)
    reference = np.exp(A - A.max(axis=0)) / np.exp(A - A.max(axis=0)).sum(axis=0)
    bound = 2 * error.max(axis=0) + gamma(10 + 2 * TRANSCENDENTAL_ULPS, np.float32)
    assert_within(probabilities, reference.T, bound[:, None], "probabilities")
    assert np.mean(probabilities.argmax(axis=1) == sample.labels[:100]) > 0.8


def stack_file(tmp_path, **changes):
    """A version 2 model file of a tiny CNN, with ``changes`` to its metadata."""
    from gpunet.files.checkpoint import save_model

    arch = parse_arch_text("conv2k3,pool2")
    params = init_stack_params(build_layers(arch, (1, 28, 28), 10), "he", 0, np.float32)
    network = LayerStack(CpuBackend(), arch, params, (1, 28, 28))
    path = tmp_path / "stack.npz"
    save_model(path, network.host_params(), {**network.architecture(), **changes})
    return path


@pytest.mark.parametrize("changes, says", [
    ({"architecture": "conv2k3,pool2,conv2k40"}, "metadata's architecture 'conv2k3,pool2,conv2k40'"),
    ({"architecture": "conv2k3,pool2,dense4"}, "W2 has shape (10, 338) and dtype float32, expected (4, 338)"),
    ({"architecture": "conv3k3,pool2"}, "W1 has shape (2, 9)"),
    ({"architecture": 7}, "metadata field architecture is 7; it must be text"),
    ({"input_shape": [1, 28]}, "metadata field input_shape is a list of 2 items; it must be a list of 1 or 3 items"),
    ({"input_shape": [1, 2, 2]}, "does not fit"),
    ({"outputs": 0}, "metadata field outputs is 0; it must be a whole number from 1 to 100,000"),
    ({"outputs": True}, "metadata field outputs is true; it must be a whole number"),
])
def test_bad_stack_metadata_is_refused_with_one_line(tmp_path, changes, says):
    path = stack_file(tmp_path, **changes)
    with pytest.raises(ModelFileError) as refused:
        load_model(path)
    assert says in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


def test_a_stack_file_that_takes_other_inputs_is_refused_by_the_commands(capsys, tmp_path):
    from gpunet.files.checkpoint import save_model

    arch = parse_arch_text("dense4,dropout0.5")
    params = init_stack_params(build_layers(arch, (30,), 10), "he", 0, np.float32)
    network = LayerStack(CpuBackend(), arch, params, (30,))
    save_model(tmp_path / "m.npz", network.host_params(), network.architecture())
    code, _, err = run(capsys, "predict", "--device", "cpu", "--model", str(tmp_path / "m.npz"),
                       "--image", str(tmp_path / "a.png"))
    assert code == 1 and "expects 30 inputs per digit" in err and err.count("\n") == 1


def test_stack_of_dense_layers_holds_the_networks_parameters_and_logits():
    """Dense layers as a LayerStack: init_params's draws in Network's layout, the same logits (bit for bit)."""
    arch = parse_arch_text("dense16,dense8")
    params = init_stack_params(build_layers(arch, (784,), 10), "he", 3, np.float32)
    for mine, notes in zip(params, init_params(layer_sizes((16, 8)), "he", 3, np.float32)):
        np.testing.assert_array_equal(mine, notes)
    stack, network = LayerStack(CpuBackend(), arch, params, (784,)), Network(CpuBackend(), params)
    np.testing.assert_array_equal(stack.flat, network.flat)
    A0 = np.random.default_rng(0).random((784, 20), dtype=np.float32)
    # The same products and sums in the same order on the same arrays.
    np.testing.assert_array_equal(stack.logits(A0), network.logits(A0))


def test_model_file_bytes_hold_no_pickle(cnn_model):
    with zipfile.ZipFile(cnn_model) as archive:
        meta = json.loads(str(np.load(archive.open("metadata.npy"), allow_pickle=False)))
    assert meta["architecture"] == CNN


def test_filters_are_drawn_enlarged_and_centred():
    from gpunet.frontends.plots import filter_images

    W1 = np.arange(2 * 25, dtype=np.float32).reshape(2, 25)
    images = filter_images(W1, 5).reshape(2, 28, 28)
    # 5 x 5 enlarged 5 times is 25 x 25, from row and column 1: the rest is blank (NaN)
    np.testing.assert_array_equal(images[1, 1:26, 1:26], np.kron(W1[1].reshape(5, 5), np.ones((5, 5))))
    assert np.isnan(images[:, 0]).all() and np.isnan(images[:, 26:]).all() and np.isnan(images[:, :, 27]).all()


def test_plot_of_a_cnn_shows_its_first_layer_filters(tmp_path, cnn_model):
    pytest.importorskip("matplotlib")
    from gpunet.frontends.plots import FILES, first_kernel, write_plots

    paths = write_plots(cnn_model, tmp_path / "plots")
    assert [p.name for p in paths] == list(FILES.values()) and all(p.stat().st_size > 0 for p in paths)
    from gpunet.frontends.cli import load_network

    assert first_kernel(load_network(cnn_model, CpuBackend())[0]) == 5


def test_the_drawing_page_answers_with_a_cnn(cnn_model):
    """serve's answer to a drawing: the CNN's probabilities of the prepared digit."""
    import base64
    import io

    from PIL import Image

    from gpunet.frontends.cli import load_network
    from gpunet.files.data import load_sample
    from gpunet.frontends.server import predict_drawing

    network, _ = load_network(cnn_model, CpuBackend())
    digit = load_sample().images[0].reshape(28, 28)
    canvas = Image.fromarray(255 - np.kron(digit, np.ones((10, 10), np.uint8)))  # dark ink on white, as drawn
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    answer = predict_drawing(network, {"image": url})
    probabilities = network.probabilities(np.asarray(answer["pixels"], np.uint8)[None, :])[0]
    assert answer["label"] == int(probabilities.argmax())
    assert_within(answer["probabilities"], probabilities, 5e-7, "probabilities")  # rounded to 6 places


@pytest.mark.kernels
def test_a_cnn_trains_on_the_cuda_backend_through_its_kernels(stand_in_cuda, walk):
    """The CUDA backend (on the CuPy stand-in, its kernels walked on the CPU): the layers' xp code with the
    backend's kernels for the batch, im2col, pooling, dropout, ReLU and the loss; the trained network
    predicts as the CPU's."""
    from gpunet.files.data import Digits, load_sample, split_validation
    from gpunet.training.loop import TrainConfig, train
    from tests.cupy_stand_in import DeviceArray

    sample = load_sample()
    train_digits, val_digits = split_validation(Digits(sample.images[:600], sample.labels[:600], "600"), 200, 0)
    config = TrainConfig(hidden=(), arch="conv4k3,pool2,dense16,dropout0.25", epochs=2, seed=0, dtype="float64")
    result = train(stand_in_cuda, train_digits, val_digits, config)
    launched = {launch.name for launch in walk.launches}
    assert {"gather_scaled<double>", "bias_relu<double>", "relu_backward<double>", "softmax_cross_entropy<double>",
            "im2col<double>", "max_pool<double>", "max_pool_backward<double>",
            "dropout_mask<double>"} <= launched, launched  # (col2im: a first layer's input gradient is never made)
    assert all(isinstance(p, DeviceArray) for p in result.network.params)
    assert result.final.val_accuracy > 0.3  # ten classes, 400 digits, two short epochs: it learned something

    on_cpu = LayerStack(CpuBackend(), result.network.arch, result.network.host_params(), (1, 28, 28))
    images = val_digits.images[:50]
    got, want = result.network.probabilities(images), on_cpu.probabilities(images)
    # The same float64 formulas, summed in any order: each logit within gamma_n of its sum of |terms|
    # on each side, a logit error d moves a probability by at most 2d, and softmax's own roundings.
    x = as_maps(images.T / 255.0, (1, 28, 28))
    logit_bounds = gamma(sum_length(on_cpu.layers) + 2, np.float64) * abs_forward(on_cpu.layers, x)
    bound = 2 * (2 * logit_bounds.max(axis=0) + gamma(10 + 2 * TRANSCENDENTAL_ULPS, np.float64))
    assert_within(got, want, bound[:, None], "probabilities")
