"""The CUDA backend against the CPU: every kernel, one training step, three epochs.

Each test runs twice:

* ``[device]`` (marked ``gpu``): CupyBackend on a real CUDA device; skipped,
  with the reason, where none is usable. ``pytest -m gpu`` runs these, and the
  backend-generic tests (the ``backend`` fixture of conftest.py) on CuPy.
* ``[stand-in]`` (marked ``kernels``): the same CupyBackend code on the CuPy
  stand-in of tests/cupy_stand_in.py, every kernel walked on the CPU. It shows,
  on machines without a GPU, that these tests and the code they drive hold
  up, so a first run on a device tests the device, not the tests.

The operations are compared with the CPU backend (the reference) within
tolerances from the dtype's eps.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpunet import backend_cuda, kernels
from gpunet.backend import CpuBackend, get_backend
from tests.kernel_support import logits, tolerance

REASON = backend_cuda.unavailable_reason()
needs_device = pytest.mark.skipif(REASON is not None, reason=f"no usable CUDA device: {REASON}")
DTYPES = (np.float32, np.float64)
CPU = CpuBackend()


@pytest.fixture
def device():
    """CupyBackend on the current CUDA device."""
    backend, notice = get_backend("cuda")
    assert notice is None
    return backend


@pytest.fixture(
    params=[
        pytest.param("device", marks=[pytest.mark.gpu, needs_device]),
        pytest.param("stand-in", marks=pytest.mark.kernels),
    ]
)
def cuda(request):
    """CupyBackend on the device, or on the stand-in with its kernels walked on the CPU."""
    return request.getfixturevalue("device" if request.param == "device" else "stand_in_cuda")


@pytest.fixture
def launched(cuda, monkeypatch):
    """The names of the kernels launched during a test (after ``cuda`` has chosen the launcher)."""
    names = []
    real = kernels.cuda_launch

    def spy(launch):
        names.append(launch.name)
        real(launch)

    monkeypatch.setattr(kernels, "cuda_launch", spy)
    return names


# -- the backend ------------------------------------------------------------------
@pytest.mark.gpu
@needs_device
def test_cuda_backend_is_chosen_and_describes_the_device(device):
    assert device.name == "cuda" and device.xp is backend_cuda.cupy
    assert "compute capability" in device.describe()
    auto, notice = get_backend("auto")
    assert auto.name == "cuda" and notice is None


@pytest.mark.gpu
@needs_device
def test_device_report_lists_the_device_and_compiles_for_it():
    lines = backend_cuda.device_report()
    assert any(line.startswith("device 0: ") and "compute capability" in line for line in lines)
    targets = ", ".join(f"sm_{arch}" for arch in kernels.compile_archs())
    assert lines[-1].startswith(f"kernels: compile with NVRTC for {targets}")


def test_moving_data(cuda):
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    device = cuda.asarray(host)
    assert isinstance(device, backend_cuda.cupy.ndarray)
    cuda.synchronize()
    back = cuda.to_numpy(device)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)


# -- every kernel on the device against the reference ---------------------------------------
@pytest.mark.parametrize("m", (1, 7, 257, 100_003))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy(cuda, launched, dtype, m):
    rng = np.random.default_rng(m)
    Z = logits(rng, 10, m, dtype)
    labels = rng.integers(0, 10, size=m)
    dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels.astype(np.int32)))
    assert launched == [f"softmax_cross_entropy<{kernels.CTYPES[np.dtype(dtype)]}>"]
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z, labels)
    np.testing.assert_allclose(cuda.to_numpy(dZ), ref_dZ, **tolerance(dtype, scale=1.0 / m))
    np.testing.assert_allclose(cuda.to_numpy(losses), ref_losses, **tolerance(dtype))


@pytest.mark.parametrize("m", (1, 257, 100_003))
@pytest.mark.parametrize("dtype", DTYPES)
def test_count_correct(cuda, launched, dtype, m):
    rng = np.random.default_rng(m)
    Z = rng.integers(-2, 3, size=(10, m)).astype(dtype)  # ties: the first largest wins
    labels = rng.integers(0, 10, size=m)
    assert cuda.count_correct(cuda.asarray(Z), cuda.asarray(labels)) == CPU.count_correct(Z, labels)
    assert launched == [f"count_correct<{kernels.CTYPES[np.dtype(dtype)]}>"]


@pytest.mark.parametrize("m", (1, 257, 41_000))
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_and_relu_backward(cuda, launched, dtype, m):
    rng = np.random.default_rng(m)
    Z = (rng.standard_normal((16, m)) * 3).astype(dtype)
    b = rng.standard_normal((16, 1)).astype(dtype)
    dA = rng.standard_normal((16, m)).astype(dtype)
    dA.flat[::7] = np.inf
    expected_A = CPU.bias_relu(Z.copy(), b)
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, on purpose
        expected_dZ = CPU.relu_backward(dA.copy(), expected_A)
    A = cuda.bias_relu(cuda.asarray(Z), cuda.asarray(b))
    np.testing.assert_array_equal(cuda.to_numpy(A), expected_A)
    dZ = cuda.relu_backward(cuda.asarray(dA), A)
    np.testing.assert_array_equal(cuda.to_numpy(dZ), expected_dZ)
    ctype = kernels.CTYPES[np.dtype(dtype)]
    assert launched == [f"bias_relu<{ctype}>", f"relu_backward<{ctype}>"]


@pytest.mark.parametrize("batch", (1, 128, 4099))
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_scaled(cuda, launched, dtype, batch):
    rng = np.random.default_rng(batch)
    images = rng.integers(0, 256, size=(5000, 784), dtype=np.uint8)
    index = rng.permutation(len(images))[:batch]
    on_device = cuda.asarray(images)
    A0 = cuda.gather_scaled(on_device, cuda.asarray(index), dtype)
    np.testing.assert_array_equal(cuda.to_numpy(A0), CPU.gather_scaled(images, index, dtype))
    everything = cuda.gather_scaled(on_device, None, dtype)
    np.testing.assert_array_equal(cuda.to_numpy(everything), CPU.gather_scaled(images, None, dtype))
    ctype = kernels.CTYPES[np.dtype(dtype)]
    assert launched == [f"gather_scaled<{ctype}>", f"transpose_scaled<{ctype}>"]


def test_results_written_into_given_arrays(cuda, launched):
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(100, 784), dtype=np.uint8)
    index = rng.permutation(100)[:64]
    A0 = cuda.empty_batch(784, 64, np.float32)
    got = cuda.gather_scaled(cuda.asarray(images), cuda.asarray(index), np.float32, out=A0)
    assert got is A0
    np.testing.assert_array_equal(cuda.to_numpy(A0), CPU.gather_scaled(images, index, np.float32))
    Z = logits(rng, 10, 64, np.float32)
    labels = rng.integers(0, 10, size=64)
    out = (cuda.xp.empty((10, 64), np.float32), cuda.xp.empty(64, np.float32))
    dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels), out=out)
    assert dZ is out[0] and losses is out[1]
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z, labels)
    np.testing.assert_allclose(cuda.to_numpy(dZ), ref_dZ, **tolerance(np.float32, scale=1.0 / 64))
    np.testing.assert_allclose(cuda.to_numpy(losses), ref_losses, **tolerance(np.float32))
    assert launched == ["gather_scaled<float>", "softmax_cross_entropy<float>"]


def test_bad_index_and_label_give_nan_on_the_device(cuda):
    images = cuda.asarray(np.full((3, 784), 255, np.uint8))
    A0 = cuda.to_numpy(cuda.gather_scaled(images, cuda.asarray(np.array([0, 3, -1])), np.float32))
    assert (A0[:, 0] == 1).all() and np.isnan(A0[:, 1:]).all()
    Z = cuda.asarray(np.zeros((10, 2), np.float32))
    _, losses = cuda.softmax_cross_entropy(Z, cuda.asarray(np.array([1, 10], np.int32)))
    losses = cuda.to_numpy(losses)
    assert np.isclose(losses[0], np.log(10)) and np.isnan(losses[1])


def test_other_dtypes_and_layouts_take_the_generic_path(cuda, launched):
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((10, 6)).astype(np.float16)
    labels = np.arange(6) % 10
    dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels))
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z, labels)
    tol = 16 * float(np.finfo(np.float16).eps)  # CuPy's float16 exp and sums may round otherwise than NumPy's
    np.testing.assert_allclose(cuda.to_numpy(dZ), ref_dZ, rtol=tol, atol=tol / 6)
    F = cuda.xp.asfortranarray(cuda.asarray(rng.standard_normal((16, 6)).astype(np.float32)))
    dA = cuda.xp.ones_like(F)
    cuda.relu_backward(dA, F)
    np.testing.assert_array_equal(cuda.to_numpy(dA), (cuda.to_numpy(F) > 0).astype(np.float32))
    assert launched == []


# -- training on both backends ---------------------------------------------------------------
def _close(got, expected, dtype, ulps=1024):
    """Equal up to float rounding: `ulps` eps relative to the array's largest value (sums of ~1000 terms)."""
    eps = float(np.finfo(dtype).eps)
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(got, expected, rtol=ulps * eps, atol=ulps * eps * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_training_step_agrees_with_the_cpu(cuda, dtype):
    from gpunet.data import load_sample
    from gpunet.model import Network, init_params, layer_sizes
    from gpunet.optimizers import make_optimizer

    sample = load_sample()
    params = init_params(layer_sizes((16, 16)), "he", seed=3, dtype=dtype)
    index = np.random.default_rng(4).permutation(len(sample.labels))[:512]
    labels = sample.labels[index].astype(np.int32)
    results = {}
    for backend in (CPU, cuda):
        network = Network(backend, [p.copy() for p in params])  # the CPU one updates its arrays in place
        optimizer = make_optimizer("gd", network.params, 0.1)
        images = backend.asarray(sample.images)
        A0 = backend.gather_scaled(images, backend.asarray(index), network.dtype)
        Z, activations = network.forward(A0)
        grads, losses = network.backward(Z, activations, backend.asarray(labels))
        host = [backend.to_numpy(x).copy() for x in (Z, losses, *grads)]
        optimizer.step(grads)
        results[backend.name] = host + network.host_params()
    for got, expected in zip(results["cuda"], results["cpu"]):
        _close(got, expected, dtype)


def test_three_epochs_on_the_sample_reach_the_cpu_accuracy(cuda):
    from gpunet.data import load_sample, split_validation
    from gpunet.training import TrainConfig, train

    train_digits, val_digits = split_validation(load_sample(), 1000, seed=0)
    config = TrainConfig(epochs=3, seed=0)
    accuracy = {}
    for backend in (CPU, cuda):
        result = train(backend, train_digits, val_digits, config)
        accuracy[backend.name] = result.history[-1].val_accuracy
    assert accuracy["cpu"] > 0.8
    assert abs(accuracy["cuda"] - accuracy["cpu"]) <= 0.005, accuracy
