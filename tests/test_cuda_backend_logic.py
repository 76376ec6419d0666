"""CupyBackend's own Python logic, run on the CPU (``pytest -m kernels``).

tests/test_gpu.py runs CupyBackend on a real device; without one, the code of
gpunet/backends/cuda.py (which hot operation goes to a kernel and which falls
back to the generic ``super()`` path, the dtype/layout/out= checks, the label
and index conversions) and the training loop through it would never run.
Here it runs unchanged on the stand-in of tests/cupy_stand_in.py: NumPy
arrays posing as CuPy's, held to CuPy's API, with every kernel launch walked
thread by thread on the CPU. tests/test_gpu.py's own tests also run on it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from gpunet.backends import cuda as backend_cuda, kernels
from gpunet.backends.base import Backend
from gpunet.backends.cpu import CpuBackend
from gpunet.backends.devices import get_backend
from gpunet.files.data import Digits, load_sample, split_validation
from gpunet.errors import DeviceError
from gpunet.nn.model import Network, init_params, layer_sizes
from gpunet.nn.optimizers import make_optimizer
from gpunet.training.loop import DeviceData, TrainConfig, evaluate, train, train_epoch
from tests.cupy_stand_in import IMPLICIT_CONVERSION, DeviceArray, cupy_method_signature
from tests.kernel_support import logits
from tests.test_gpu import assert_trainings_within
from tests.tolerances import TRANSCENDENTAL_ULPS, assert_within, gamma, pass_bounds, softmax_cross_entropy_bounds

pytestmark = pytest.mark.kernels

DTYPES = (np.float32, np.float64)
GENERIC = Backend()  # the reference: every operation as the generic NumPy formula


@pytest.fixture
def cuda(stand_in_cuda):
    return stand_in_cuda


@pytest.fixture
def launched(walk):
    """The names of the kernels launched so far, e.g. ``bias_relu<float>``, emptied on each call."""

    def names():
        result = [launch.name for launch in walk.launches]
        walk.launches.clear()
        return result

    return names


def ctype(dtype) -> str:
    return kernels.CTYPES[np.dtype(dtype)]


def on_host(array) -> np.ndarray:
    assert isinstance(array, DeviceArray), f"a {type(array).__name__}, not a device array"
    return array.get()


def assert_same_loss(got, want, bounds):
    """(dZ, losses) on the device against the generic formula's: each within its bounds of the exact values."""
    (dZ, losses), (ref_dZ, ref_losses), (B_dZ, B_losses) = got, want, bounds
    assert_within(on_host(dZ), ref_dZ, 2 * B_dZ, "dZ")
    assert_within(on_host(losses), ref_losses, 2 * B_losses, "losses")


# -- the shim is what it claims --------------------------------------------------------------
def test_the_stand_in_keeps_host_and_device_apart(cuda):
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    device = cuda.asarray(host)
    assert isinstance(device, DeviceArray) and device is not host
    device += 1
    assert host[0, 0] == 0  # a copy, not a view
    back = cuda.to_numpy(device)
    assert type(back) is np.ndarray
    np.testing.assert_array_equal(back, host + 1)
    assert type(cuda.to_numpy(host)) is np.ndarray
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        device + host
    assert isinstance(cuda.xp.empty((2, 2)), DeviceArray) and isinstance(device.T @ device, DeviceArray)
    cuda.synchronize()
    assert cuda.xp.synchronized == 1


def test_the_stand_in_refuses_what_cupy_refuses(cuda):
    device = cuda.xp.ones((2, 2), np.float32)
    with pytest.raises(AttributeError, match="cupy has no attribute 'errstate'"):
        cuda.xp.errstate
    with pytest.raises(AttributeError, match="cupy.ndarray has no attribute 'resize'"):
        device.resize((4,))
    with pytest.raises(TypeError, match="does not take"):
        cuda.xp.sum(device, initial=1.0)  # numpy.sum takes initial=, cupy.sum does not
    with pytest.raises(TypeError, match=r"cupy.add.__call__ does not take \['where'\]"):
        cuda.xp.add(device, device, where=device > 0)
    np.testing.assert_array_equal(on_host(cuda.xp.sum(device, axis=0, keepdims=True)), [[2, 2]])  # allowed
    before = device
    device @= device  # cupy.ndarray has no __imatmul__: Python rebinds to a new product, in place of nothing
    assert device is not before
    np.testing.assert_array_equal(on_host(before), np.ones((2, 2)))
    np.testing.assert_array_equal(on_host(device), np.full((2, 2), 2))


def test_device_arrays_are_not_numpy_arrays(cuda):
    """As CuPy's: not an np.ndarray, and NumPy cannot read one without an explicit .get()."""
    device = cuda.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert not isinstance(device, np.ndarray)
    for convert in (np.asarray, np.array, np.ascontiguousarray):
        with pytest.raises(TypeError, match=re.escape(IMPLICIT_CONVERSION)):
            convert(device)
    with pytest.raises(TypeError, match=re.escape(IMPLICIT_CONVERSION)):
        np.testing.assert_array_equal(device, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        np.ones((2, 3), np.float32) * device  # NumPy's operator, refused by the device array's __array_ufunc__
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        cuda.xp.maximum(device, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        device[...] = np.zeros((2, 3), np.float32)  # CuPy fills a view only from a scalar or a device array
    device[np.array([1])] = np.full((1, 3), 7, np.float32)  # an advanced index: CuPy copies the value over
    np.testing.assert_array_equal(on_host(device), [[0, 1, 2], [7, 7, 7]])


def test_numpy_ufuncs_write_into_device_arrays_as_on_cupy(cuda):
    """gpunet/nn/optimizers.py's np.multiply(g, lr, out=tmp) on device arrays: CuPy runs it through __array_ufunc__."""
    g = cuda.asarray(np.array([1.0, -2.0, 3.0], np.float32))
    tmp = cuda.xp.empty(3, np.float32)
    assert np.multiply(g, np.float32(0.5), out=tmp) is tmp
    np.testing.assert_array_equal(on_host(tmp), [0.5, -1.0, 1.5])  # one multiply each: exact
    assert np.sqrt(g * g, out=tmp) is tmp
    np.testing.assert_array_equal(on_host(tmp), [1.0, 2.0, 3.0])
    assert isinstance(np.add(g, 1), DeviceArray)
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        np.multiply(g, np.float32(2), out=np.empty(3, np.float32))


def test_reductions_and_elements_are_0d_device_arrays(cuda):
    """CuPy gives 0-d device arrays where NumPy gives host scalars: reading one is a transfer."""
    device = cuda.asarray(np.array([[1, 5, 2], [4, 0, 3]], np.int32))
    for value, expected in (
        (device.sum(), 15), (cuda.xp.sum(device), 15), (device.max(), 5), (device.argmax(), 1),
        (device[1, 0], 4), ((device > 2).sum(), 3), (device.sum(axis=0)[2], 5),
    ):  # fmt: skip
        assert isinstance(value, DeviceArray) and value.shape == (), type(value)
        assert int(value) == expected
    element = device[0, 1]
    element += 10  # a 0-d view, as CuPy's: the array changes
    assert on_host(device)[0, 1] == 15
    count = kernels.count_correct(cuda.asarray(np.eye(3, dtype=np.float32)), cuda.asarray(np.arange(3)))
    assert isinstance(count, DeviceArray) and count.shape == ()


def test_every_read_back_to_the_host_is_recorded(cuda):
    """Each way CuPy copies device data to the host is counted, with the line that asked."""
    xp = cuda.xp
    device = cuda.asarray(np.array([1.5, -2.0], np.float32))
    total = device.sum()
    xp.transfers.clear()
    reads = [
        lambda: device.get(), lambda: cuda.to_numpy(device), lambda: xp.asnumpy(device),
        lambda: float(total), lambda: int(total), lambda: bool(total), lambda: total.item(),
        lambda: device.tolist(), lambda: str(device), lambda: f"{total:.2f}", lambda: device[device > 0],
    ]  # fmt: skip
    for read in reads:
        read()
    assert len(xp.transfers) == len(reads), "\n".join(map(str, xp.transfers))
    files = [t.where.split(":")[0] for t in xp.transfers]
    assert files == ["test_cuda_backend_logic.py", "cuda.py"] + ["test_cuda_backend_logic.py"] * 9  # to_numpy
    xp.transfers.clear()
    device * 2 + total  # device work only
    device[0] = total
    xp.sum(device, keepdims=True)
    assert xp.transfers == []


def test_ndarray_methods_are_held_to_cupys_signatures(cuda):
    """NumPy's methods take what CuPy's do not: CuPy's own stated signatures decide."""
    signature = cupy_method_signature("sum")
    assert list(signature.parameters) == ["self", "axis", "dtype", "out", "keepdims"]
    assert list(cupy_method_signature("swapaxes").parameters) == ["self", "axis1", "axis2"]  # C types dropped
    for name in ("sum", "max", "argmax", "astype", "reshape", "copy", "take", "transpose", "ravel", "mean"):
        assert cupy_method_signature(name) is not None, name
    device = cuda.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    refused = [
        lambda: device.sum(initial=1.0),  # numpy: initial=; cupy: no
        lambda: device.max(where=device > 0),
        lambda: device.std(mean=device.mean()),
        lambda: device.argmax(0, None, None, False, 1),
    ]
    for call in refused:
        with pytest.raises(TypeError, match="cupy.ndarray.[a-z]+.* does not take this call"):
            call()
    assert device.astype(np.float32, copy=False) is device  # as CuPy: no copy where none is needed
    assert on_host(device.argmax(axis=1, keepdims=True)).tolist() == [[2], [2]]
    assert on_host(device.reshape(3, 2, order="F")).shape == (3, 2)


# -- kernel launches: what the kernels cannot take --------------------------------------------------
def test_a_launch_whose_output_overlaps_an_input_is_refused(cuda, launched):
    """Each kernel's threads read their inputs while others write: an aliased launch would race on a GPU."""
    xp = cuda.xp
    A = cuda.asarray(np.array([[1.0, -1.0], [0.5, 2.0]], np.float32))
    with pytest.raises(AssertionError, match="argument 0, which the kernel writes, overlaps argument 1"):
        kernels.relu_backward(A, A)
    Z = cuda.asarray(logits(np.random.default_rng(0), 10, 4, np.float32))
    labels = cuda.asarray(np.arange(4))
    with pytest.raises(AssertionError, match="argument 2, which the kernel writes, overlaps argument 0"):
        kernels.softmax_cross_entropy(Z, labels, out=(Z, xp.empty(4, np.float32)))
    flat = xp.empty(44, np.float32)
    with pytest.raises(AssertionError, match="argument 3, which the kernel writes, overlaps argument 2"):
        kernels.softmax_cross_entropy(Z, labels, out=(flat[:40].reshape(10, 4), flat[38:42]))
    assert launched() == []
    kernels.relu_backward(xp.ones((2, 2), np.float32), A)  # separate arrays: launched
    assert launched() == ["relu_backward<float>"]


def test_a_launch_with_a_host_array_is_refused(cuda, launched):
    Z = cuda.asarray(np.zeros((2, 3), np.float32))
    launch = kernels.Launch("layers", "relu_backward", "float", 1, 32, (Z, np.zeros((2, 3), np.float32), np.int64(6)))
    with pytest.raises(TypeError, match="argument 1 of relu_backward<float> is a host numpy.ndarray"):
        kernels.cuda_launch(launch)
    assert launched() == []


# -- each hot operation: a kernel, equal to the generic operation ------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_hot_operations_launch_their_kernel_and_match_the_generic_ones(cuda, launched, dtype):
    rng = np.random.default_rng(7)
    m, t = 300, ctype(dtype)

    Z = logits(rng, 10, m, dtype)
    for label_dtype in (np.int32, np.int64, np.uint8):  # the wrapper converts labels to int32
        labels = rng.integers(0, 10, size=m).astype(label_dtype)
        dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels))
        assert launched() == [f"softmax_cross_entropy<{t}>"]
        ref_dZ, ref_losses = GENERIC.softmax_cross_entropy(Z.copy(), labels)
        assert dZ.dtype == losses.dtype == np.dtype(dtype)
        bounds = softmax_cross_entropy_bounds(Z, labels, dtype)
        assert_same_loss((dZ, losses), (ref_dZ, ref_losses), bounds)

        out = (cuda.xp.full((10, m), np.nan, dtype), cuda.xp.full(m, np.nan, dtype))
        dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels), out=out)
        assert launched() == [f"softmax_cross_entropy<{t}>"]
        assert dZ is out[0] and losses is out[1]
        assert_same_loss((dZ, losses), (ref_dZ, ref_losses), bounds)

        ties = rng.integers(-2, 3, size=(10, m)).astype(dtype)  # the first largest wins; comparisons: exact
        assert int(cuda.count_correct(cuda.asarray(ties), cuda.asarray(labels))) == int(
            GENERIC.count_correct(ties, labels)
        )
        assert launched() == [f"count_correct<{t}>"]

    Z = (rng.standard_normal((16, m)) * 3).astype(dtype)
    b = rng.standard_normal((16, 1)).astype(dtype)
    expected_A = GENERIC.bias_relu(Z.copy(), b)
    device_Z = cuda.asarray(Z)
    A = cuda.bias_relu(device_Z, cuda.asarray(b))
    assert A is device_Z and launched() == [f"bias_relu<{t}>"]
    np.testing.assert_array_equal(on_host(A), expected_A)  # exact: one add and one max

    dA = rng.standard_normal((16, m)).astype(dtype)
    expected_dZ = GENERIC.relu_backward(dA.copy(), expected_A)
    device_dA = cuda.asarray(dA)
    dZ = cuda.relu_backward(device_dA, A)
    assert dZ is device_dA and launched() == [f"relu_backward<{t}>"]
    np.testing.assert_array_equal(on_host(dZ), expected_dZ)  # exact: a multiply by 1 or 0

    images = rng.integers(0, 256, size=(90, 784), dtype=np.uint8)
    device_images = cuda.asarray(images)
    for index in (rng.permutation(90)[:33], rng.integers(0, 90, size=40).astype(np.int32)):
        expected = GENERIC.gather_scaled(images, index, dtype)
        A0 = cuda.gather_scaled(device_images, cuda.asarray(index), dtype)
        assert launched() == [f"gather_scaled<{t}>"]
        np.testing.assert_array_equal(on_host(A0), expected)  # exact: a cast and a multiply
        out = cuda.empty_batch(784, len(index), dtype)
        assert cuda.gather_scaled(device_images, cuda.asarray(index), dtype, out=out) is out
        assert launched() == [f"gather_scaled<{t}>"]
        np.testing.assert_array_equal(on_host(out), expected)
    A0 = cuda.gather_scaled(device_images[10:50], None, dtype)  # a full-batch chunk: rows in order
    assert launched() == [f"transpose_scaled<{t}>"]
    np.testing.assert_array_equal(on_host(A0), GENERIC.gather_scaled(images[10:50], None, dtype))  # elementwise


# -- what the kernels cannot take goes the generic way ----------------------------------------------
def test_float16_takes_the_generic_path(cuda, launched):
    rng = np.random.default_rng(1)
    dtype = np.float16
    Z = rng.standard_normal((10, 20)).astype(dtype)
    labels = rng.integers(0, 10, size=20)
    dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels))
    ref_dZ, ref_losses = GENERIC.softmax_cross_entropy(Z.copy(), labels)
    np.testing.assert_array_equal(on_host(dZ), ref_dZ)  # the same NumPy formula: the same bits
    np.testing.assert_array_equal(on_host(losses), ref_losses)
    assert int(cuda.count_correct(cuda.asarray(Z), cuda.asarray(labels))) == int(GENERIC.count_correct(Z, labels))
    H = (rng.standard_normal((16, 20)) * 3).astype(dtype)
    b = rng.standard_normal((16, 1)).astype(dtype)
    A = cuda.bias_relu(cuda.asarray(H), cuda.asarray(b))
    np.testing.assert_array_equal(on_host(A), GENERIC.bias_relu(H.copy(), b))
    dA = rng.standard_normal((16, 20)).astype(dtype)
    np.testing.assert_array_equal(on_host(cuda.relu_backward(cuda.asarray(dA), A)),
                                  GENERIC.relu_backward(dA.copy(), on_host(A)))
    images = rng.integers(0, 256, size=(30, 784), dtype=np.uint8)
    index = rng.permutation(30)[:12]
    A0 = cuda.gather_scaled(cuda.asarray(images), cuda.asarray(index), dtype)
    np.testing.assert_array_equal(on_host(A0), GENERIC.gather_scaled(images, index, dtype))
    out = cuda.empty_batch(784, 12, dtype)
    assert cuda.gather_scaled(cuda.asarray(images), cuda.asarray(index), dtype, out=out) is out
    np.testing.assert_array_equal(on_host(out), GENERIC.gather_scaled(images, index, dtype))
    assert launched() == []


def test_other_layouts_and_mixed_dtypes_take_the_generic_path(cuda, launched):
    rng = np.random.default_rng(2)
    xp, dtype = cuda.xp, np.float32
    Z = logits(rng, 10, 24, dtype)
    labels = rng.integers(0, 10, size=24)
    ref_dZ, ref_losses = GENERIC.softmax_cross_entropy(Z.copy(), labels)
    bounds = softmax_cross_entropy_bounds(Z, labels, dtype)

    # logits in Fortran order; then C-ordered logits with an F-ordered or float64 out=
    # (the generic formula's sums run in another order over another layout: equal within their bounds)
    dZ, losses = cuda.softmax_cross_entropy(xp.asfortranarray(cuda.asarray(Z)), cuda.asarray(labels))
    assert_same_loss((dZ, losses), (ref_dZ, ref_losses), bounds)
    for out in ((xp.empty((24, 10), dtype).T, xp.empty(24, dtype)), (xp.empty((10, 24), dtype), xp.empty(24))):
        dZ, losses = cuda.softmax_cross_entropy(cuda.asarray(Z), cuda.asarray(labels), out=out)
        assert dZ is out[0] and losses is out[1]
        assert_same_loss((dZ, losses), (ref_dZ, ref_losses), bounds)
    assert int(cuda.count_correct(cuda.asarray(Z)[:, ::2], cuda.asarray(labels[::2]))) == int(
        GENERIC.count_correct(Z[:, ::2], labels[::2])
    )

    H = (rng.standard_normal((16, 24)) * 3).astype(dtype)
    b = rng.standard_normal((16, 1)).astype(dtype)
    expected_A = GENERIC.bias_relu(H.copy(), b)  # here on: elementwise work, the same bits in any layout
    A = cuda.bias_relu(xp.asfortranarray(cuda.asarray(H)), cuda.asarray(b))  # F order: written in place
    np.testing.assert_array_equal(on_host(A), expected_A)
    A64 = cuda.bias_relu(cuda.asarray(H), cuda.asarray(b.astype(np.float64)))  # b's dtype differs from Z's
    np.testing.assert_array_equal(on_host(A64), GENERIC.bias_relu(H.copy(), b.astype(np.float64)))
    square = (rng.standard_normal((16, 16)) * 3).astype(dtype)  # units == m: a 1-D b broadcasts along rows
    for flat_b in (b[:, 0], b.T):  # (units,) and (1, units): the generic Z + b, not the kernel's b per unit
        got = cuda.bias_relu(cuda.asarray(square), cuda.asarray(np.ascontiguousarray(flat_b)))
        np.testing.assert_array_equal(on_host(got), GENERIC.bias_relu(square.copy(), flat_b))
    dA = rng.standard_normal((16, 48)).astype(dtype)
    strided = cuda.asarray(dA)[:, ::2]  # a view: the generic path writes through it
    cuda.relu_backward(strided, cuda.asarray(expected_A))
    np.testing.assert_array_equal(on_host(strided), GENERIC.relu_backward(dA[:, ::2].copy(), expected_A))

    images = rng.integers(0, 256, size=(30, 784), dtype=np.uint8)
    index = rng.permutation(30)[:12]
    device_images = cuda.asarray(images)
    for images_arg, out in (
        (xp.asfortranarray(device_images), None),  # images not C-contiguous
        (device_images.astype(np.int16), None),  # images not uint8
        (device_images, xp.empty((12, 784), dtype).T),  # out not C-contiguous
        (device_images, xp.empty((784, 12), np.float64)),  # out not of the dtype asked for: out's dtype wins
    ):
        host_out = None if out is None else np.empty(out.shape, out.dtype)
        expected = GENERIC.gather_scaled(on_host(images_arg), index, dtype, out=host_out)
        got = cuda.gather_scaled(images_arg, cuda.asarray(index), dtype, out=out)
        assert out is None or got is out
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(on_host(got), expected)
    assert launched() == []


def test_layer_operations_the_kernels_cannot_take_go_the_generic_way(cuda, launched):
    """float16, maps not C-contiguous, an argmax not uint8: the generic code, with the same results (copies,
    comparisons and col2im's additions in the generic order: the same bits)."""
    rng = np.random.default_rng(3)
    xp = cuda.xp
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    for maps in (cuda.asarray(x.astype(np.float16)), xp.asfortranarray(cuda.asarray(x))):
        host = on_host(maps)
        np.testing.assert_array_equal(on_host(cuda.im2col(maps, 3, (1, 1))), GENERIC.im2col(host, 3, (1, 1)))
        y, argmax = cuda.max_pool(maps, 2)
        want_y, want_argmax = GENERIC.max_pool(host, 2)
        np.testing.assert_array_equal(on_host(y), want_y)
        np.testing.assert_array_equal(on_host(argmax), want_argmax)
        dy = xp.asfortranarray(cuda.asarray(rng.standard_normal(want_y.shape).astype(host.dtype)))
        np.testing.assert_array_equal(on_host(cuda.max_pool_backward(dy, argmax, host.shape, 2)),
                                      GENERIC.max_pool_backward(on_host(dy), want_argmax, host.shape, 2))
    columns = rng.standard_normal((18, 6 * 5 * 3)).astype(np.float32)
    for device_columns in (cuda.asarray(columns.astype(np.float16)), xp.asfortranarray(cuda.asarray(columns))):
        host = on_host(device_columns)
        np.testing.assert_array_equal(on_host(cuda.col2im(device_columns, x.shape, 3, (1, 1))),
                                      GENERIC.col2im(host, x.shape, 3, (1, 1)))
    _, argmax = GENERIC.max_pool(x, 2)
    dy = rng.standard_normal(argmax.shape).astype(np.float32)
    as_int = cuda.asarray(argmax.astype(np.int64))  # an argmax of another type: compared as the generic code does
    np.testing.assert_array_equal(on_host(cuda.max_pool_backward(cuda.asarray(dy), as_int, x.shape, 2)),
                                  GENERIC.max_pool_backward(dy, argmax, x.shape, 2))
    mask = cuda.dropout_mask((4, 9), 0.5, 3, 4, np.float16)
    np.testing.assert_array_equal(on_host(mask), GENERIC.dropout_mask((4, 9), 0.5, 3, 4, np.float16))
    mask = cuda.dropout_mask((4, 5), 0.5, 3, 4, np.float16, first_sample=4)  # the generic way: the batch's columns
    np.testing.assert_array_equal(on_host(mask), GENERIC.dropout_mask((4, 9), 0.5, 3, 4, np.float16)[:, 4:])
    assert launched() == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_masks_of_a_split_batch_launch_the_kernel_and_match_the_cpus(cuda, launched, dtype):
    """The backend's dropout_mask passes a chunk's first sample to the kernel: each chunk of a batch, on the
    device, is the CPU's whole-batch mask's columns, bit for bit (a single sample too)."""
    whole = CpuBackend().dropout_mask((3, 4, 2, 9), 0.3, 5, 6, dtype)
    for first, stop in ((0, 9), (0, 4), (4, 9), (8, 9)):
        chunk = cuda.dropout_mask((3, 4, 2, stop - first), 0.3, 5, 6, dtype, first_sample=first)
        assert launched() == [f"dropout_mask<{ctype(dtype)}>"]
        np.testing.assert_array_equal(on_host(chunk), whole[..., first:stop])


@pytest.mark.parametrize("name", ["gd", "momentum", "adam"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_an_optimizer_step_is_one_kernel_and_the_generic_steps_bits(cuda, launched, name, dtype):
    """Given the backend, an optimizer's whole step over a network's groups is one optimizers.cu launch, with
    the bits of the generic optimizer's array operations on the same device arrays (the same elementwise
    operations in the same order); over per-layer parameters, one launch per (W, b) pair."""
    rng = np.random.default_rng(4)
    network = Network(cuda, init_params(layer_sizes((16, 16)), "he", 0, dtype))
    rule = "sgd" if name == "gd" else name
    for params in (network.groups, network.params):
        grads = [[cuda.asarray(rng.standard_normal(p.shape).astype(dtype)) for p in params] for _ in range(3)]
        reference = make_optimizer(name, [p.copy() for p in params], 0.01, 0.1)
        fused = make_optimizer(name, [p.copy() for p in params], 0.01, 0.1, backend=cuda)
        for step in grads:
            reference.step([g.copy() for g in step])
            assert launched() == []  # no backend: the array operations
            fused.step([g.copy() for g in step])
            assert launched() == [f"{rule}_update<{ctype(dtype)}>"] * (len(params) // 2)
        for got, want in zip(fused.params, reference.params):
            np.testing.assert_array_equal(on_host(got), on_host(want))


def test_an_optimizer_step_the_kernels_cannot_take_goes_the_generic_way(cuda, launched):
    """float16 parameters, or a parameter list of odd length: the backend declines, and the array operations run."""
    rng = np.random.default_rng(5)
    for params in ([cuda.asarray(rng.standard_normal((4, 3)).astype(np.float16)) for _ in range(2)],
                   [cuda.asarray(rng.standard_normal((4, 3)).astype(np.float32))]):
        grads = [cuda.asarray(rng.standard_normal(p.shape).astype(p.dtype)) for p in params]
        assert not cuda.optimizer_update("adam", params, grads, ([p * 0 for p in params],) * 2, decay=1.0, lr=0.1,
                                         beta1=0.9, beta2=0.999, step_size=0.1, eps=1e-8)
        reference = make_optimizer("adam", [p.copy() for p in params], 0.01, 0.1)
        given = make_optimizer("adam", [p.copy() for p in params], 0.01, 0.1, backend=cuda)
        reference.step(grads)
        given.step(grads)
        for got, want in zip(given.params, reference.params):
            np.testing.assert_array_equal(on_host(got), on_host(want))
    assert launched() == []


def test_layer_operations_write_into_the_arrays_offered(cuda, launched):
    """im2col, col2im, max_pool, max_pool_backward and dropout_mask write into the out= arrays a layer keeps
    (layers.Scratch) and return them, with the bits of their fresh results (the same kernels twice)."""
    rng = np.random.default_rng(6)
    xp = cuda.xp
    x = cuda.asarray(rng.standard_normal((2, 6, 5, 3)).astype(np.float32))
    columns = cuda.im2col(x, 3, (1, 1))
    offered = xp.empty(columns.shape, np.float32)
    assert cuda.im2col(x, 3, (1, 1), out=offered) is offered
    np.testing.assert_array_equal(on_host(offered), on_host(columns))
    dx = cuda.col2im(columns, x.shape, 3, (1, 1))
    offered = xp.empty(x.shape, np.float32)
    assert cuda.col2im(columns, x.shape, 3, (1, 1), out=offered) is offered
    np.testing.assert_array_equal(on_host(offered), on_host(dx))
    y, argmax = cuda.max_pool(x, 2)
    out, argmax_out = xp.empty(y.shape, np.float32), xp.empty(y.shape, np.uint8)
    got = cuda.max_pool(x, 2, out=out, argmax_out=argmax_out)
    assert got[0] is out and got[1] is argmax_out
    np.testing.assert_array_equal(on_host(out), on_host(y))
    np.testing.assert_array_equal(on_host(argmax_out), on_host(argmax))
    dx = cuda.max_pool_backward(y, argmax, x.shape, 2)
    offered = xp.full(x.shape, np.nan, np.float32)  # every element written, the 0s too
    assert cuda.max_pool_backward(y, argmax, x.shape, 2, out=offered) is offered
    np.testing.assert_array_equal(on_host(offered), on_host(dx))
    mask = cuda.dropout_mask((4, 9), 0.5, 3, 4, np.float32)
    offered = xp.empty((4, 9), np.float32)
    assert cuda.dropout_mask((4, 9), 0.5, 3, 4, np.float32, out=offered) is offered
    np.testing.assert_array_equal(on_host(offered), on_host(mask))
    assert len(launched()) == 10
    wrong = xp.empty((4, 9), np.float64)  # an offer of another dtype is declined: a new array
    assert cuda.dropout_mask((4, 9), 0.5, 3, 4, np.float32, out=wrong) is not wrong


# -- training end to end ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    sample = load_sample()
    few = Digits(sample.images[:600], sample.labels[:600], "the sample's first 600 digits")
    return split_validation(few, 200, seed=0)


@pytest.mark.paths
def test_training_through_the_backend_matches_the_cpu(cuda, launched, digits):
    """Two epochs of mini-batch Adam, in float64: within the bounds of their sums of the generic path and of the CPU
    backend as users run it (in float32 an Adam step of an entry within rounding of 0 may go either way)."""
    train_digits, val_digits = digits
    config = TrainConfig(hidden=(16,), epochs=2, batch_size=64, seed=0, dtype="float64")
    got = train(cuda, train_digits, val_digits, config)

    names = launched()
    steps = math.ceil(len(train_digits) / 64)  # 7 steps of 64, 64, ..., 16 samples
    per_step = ["gather_scaled<double>", "bias_relu<double>", "softmax_cross_entropy_counted<double>",
                "relu_backward<double>", "adam_update<double>"]  # fmt: skip
    per_eval = ["gather_scaled<double>", "bias_relu<double>", "softmax_cross_entropy<double>",
                "count_correct<double>"]  # fmt: skip
    assert names == (per_step * steps + per_eval) * 2, "a hot operation fell back to the generic path"
    for p in got.network.params:
        assert isinstance(p, DeviceArray)
    assert all(type(p) is np.ndarray for p in got.network.host_params())

    reference = train(GENERIC, train_digits, val_digits, config)  # the same loop, generic operations
    cpu = train(CpuBackend(), train_digits, val_digits, config)  # the CPU backend as users run it
    for want in (reference, cpu):
        assert_trainings_within(got, want, train_digits, val_digits, config)
    assert got.final.val_accuracy > 0.3  # it learned something: ten classes, two short epochs

    images = val_digits.images[:50]
    probabilities = got.network.probabilities(images)  # to_numpy of generic softmax, a chunk at a time
    assert type(probabilities) is np.ndarray and probabilities.shape == (50, 10)
    Z = on_host(got.network.logits(cuda.gather_scaled(cuda.asarray(images), None, got.network.dtype)))
    np.testing.assert_array_equal(probabilities, GENERIC.softmax(Z).T)  # the same computation, run again


@pytest.mark.paths
def test_full_batch_training_through_the_backend(cuda, launched, digits):
    """batch_size 0: one step over every digit, its rows gathered in order by transpose_scaled."""
    train_digits, val_digits = digits
    config = TrainConfig(hidden=(16,), epochs=2, batch_size=0, optimizer="gd", lr=0.5, seed=1)
    got = train(cuda, train_digits, val_digits, config)
    step = ["transpose_scaled<float>", "bias_relu<float>", "softmax_cross_entropy_counted<float>",
            "relu_backward<float>", "sgd_update<float>"]  # fmt: skip
    per_eval = ["gather_scaled<float>", "bias_relu<float>", "softmax_cross_entropy<float>", "count_correct<float>"]
    assert launched() == (step + per_eval) * 2
    reference = train(GENERIC, train_digits, val_digits, config)  # both take every digit as one chunk
    assert_trainings_within(got, reference, train_digits, val_digits, config)


def _train_one_epoch(cuda, train_digits, batch_size):
    network = Network(cuda, init_params(layer_sizes((16,)), "he", 0, np.float32))
    optimizer = make_optimizer("adam", network.groups, 0.01, 0.1)
    data = DeviceData(cuda, train_digits)
    cuda.xp.transfers.clear()
    train_epoch(network, optimizer, data, batch_size, np.random.default_rng(0))
    return network


@pytest.mark.parametrize("batch_size", [64, 0])  # 7 mini-batch steps; one full-batch step
def test_a_training_epoch_reads_the_device_only_at_its_end(cuda, digits, batch_size):
    """training/loop.py: inside an epoch only the loss sum and the correct count cross to the host, once each."""
    train_digits, val_digits = digits
    network = _train_one_epoch(cuda, train_digits, batch_size)
    transfers = cuda.xp.transfers
    assert [t.what for t in transfers] == ["float()", "int()"], "\n".join(map(str, transfers))
    assert all("(train_epoch)" in t.where for t in transfers), "\n".join(map(str, transfers))
    transfers.clear()
    evaluate(network, DeviceData(cuda, val_digits))
    assert [t.what for t in transfers] == ["float()", "int()"], "\n".join(map(str, transfers))
    assert all("(evaluate)" in t.where for t in transfers)


def test_the_transfer_count_catches_a_read_in_every_step(cuda, digits, monkeypatch):
    """The check above can fail: a loss that reads the correct count back makes one transfer per step."""
    train_digits, _ = digits
    on_device = cuda.softmax_cross_entropy_counted

    def read_each_step(Z, b, labels, counter, out=None):
        result = on_device(Z, b, labels, counter, out)
        int(counter[0])
        return result

    monkeypatch.setattr(cuda, "softmax_cross_entropy_counted", read_each_step)
    _train_one_epoch(cuda, train_digits, 64)
    steps = math.ceil(len(train_digits) / 64)
    assert [t.what for t in cuda.xp.transfers] == ["int()"] * steps + ["float()", "int()"]


@pytest.mark.paths
def test_the_cli_trains_predicts_and_evaluates_with_device_cuda(cuda, launched, monkeypatch, capsys, tmp_path):
    """`gpunet train/predict/evaluate --device cuda` end to end: the model saved from device arrays loads back."""
    from gpunet.frontends import cli
    from gpunet.backends.devices import get_backend
    from tests.conftest import run

    monkeypatch.setattr(cli, "get_backend", lambda device: (cuda, None) if device == "cuda" else get_backend(device))
    sample = load_sample()
    data = tmp_path / "digits.npz"
    np.savez(data, x_train=sample.images[:700], y_train=sample.labels[:700], x_test=sample.images[700:900])
    model = tmp_path / "model.npz"
    code, out, err = run(capsys, "train", "--device", "cuda", "--data", str(data), "--val-size", "200",
                         "--epochs", "2", "--out", str(model))
    assert code == 0, err
    assert "CuPy stand-in" in out and launched()  # it ran on the "device", through the kernels
    from gpunet.files.checkpoint import load_model

    params, meta = load_model(model)
    assert meta["training"]["device"] == "cuda" and all(type(p) is np.ndarray for p in params)
    # The backends may rank a digit's top two classes otherwise only where they are near a tie: there either
    # prediction is right, so the CPU run takes the device's, and then the two print the same.
    predict_labels, predictions = cli.predict_labels, []  # what the device predicted for each call, in order
    spy_on_predictions(monkeypatch, predict_labels,
                       lambda network, digits, labels: predictions.append(labels) or labels)
    code, out, err = run(capsys, "evaluate", "--device", "cuda", "--model", str(model), "--data", str(data))
    assert code == 0, err
    on_cuda = out
    assert launched() and len(predictions) == 2  # the digits it learned from, then the held-out ones

    def as_on_cuda(network, digits, labels):
        """The CPU's predictions, checked against the device's; where a digit is near a tie, the device's."""
        on_device = predictions.pop(0)
        ties = near_tie_digits(network.host_params(), digits.images)
        assert (labels == on_device)[~ties].all(), f"{int(np.sum((labels != on_device) & ~ties))} digits differ"
        return np.where(ties, on_device, labels)

    spy_on_predictions(monkeypatch, predict_labels, as_on_cuda)
    code, out, err = run(capsys, "evaluate", "--device", "cpu", "--model", str(model), "--data", str(data))
    assert code == 0, err
    assert on_cuda == out and predictions == []  # the same model scores the same digits the same on both backends
    monkeypatch.setattr(cli, "predict_labels", predict_labels)
    submissions = {}
    for device in ("cuda", "cpu"):
        submissions[device] = tmp_path / f"submission-{device}.csv"
        code, _, err = run(capsys, "predict", "--device", device, "--model", str(model), "--data", str(data),
                           "--out", str(submissions[device]))
        assert code == 0, err
    rows = submissions["cuda"].read_text().splitlines()
    assert rows[0] == "ImageId,Label" and len(rows) == 201
    cpu_rows = submissions["cpu"].read_text().splitlines()
    assert rows[0] == cpu_rows[0] and len(cpu_rows) == 201
    wrong = (np.array(rows[1:]) != np.array(cpu_rows[1:])) & ~near_tie_digits(params, sample.images[700:900])
    assert not wrong.any(), f"rows unlike --device cpu's away from a near tie: {np.array(rows[1:])[wrong][:5]}"


def spy_on_predictions(monkeypatch, predict, check):
    """cli.predict_labels becomes ``check(network, digits, labels)`` of the labels ``predict`` gives."""
    from gpunet.frontends import cli

    monkeypatch.setattr(cli, "predict_labels", lambda network, digits: check(network, digits, predict(network, digits)))


def near_tie_digits(params, images) -> np.ndarray:
    """Which digits' two largest logits are so close that two backends may rank them otherwise.

    Each logit may move by its pass_bounds bound, and each probability (a prediction is the argmax of
    softmax) by the roundings of its exp, its shift and its division: a gap up to twice that may close.
    """
    dtype = params[0].dtype
    bounds = pass_bounds(params, images, np.zeros(len(images), np.int64), dtype)
    exact = Network(GENERIC, [p.astype(np.float64) for p in params])  # the logits to within float64's rounding
    Z = exact.logits(GENERIC.gather_scaled(images, None, np.float64))
    ranked = np.sort(Z, axis=0)
    softmax_rounding = gamma(2 * TRANSCENDENTAL_ULPS + 2, dtype)
    return ranked[-1] - ranked[-2] <= 2 * (bounds.logits.max(axis=0) + softmax_rounding)


def test_gpunet_info_lists_the_device(cuda, monkeypatch, capsys):
    """`gpunet info` where a device is usable: its name, compute capability and memory; the kernels compile for it."""
    from gpunet.backends import cuda as backend_cuda
    from tests.conftest import run

    monkeypatch.setattr(backend_cuda, "unavailable_reason", lambda: None)
    code, out, err = run(capsys, "info")
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert "cuda: available" in lines
    assert "CUDA runtime" in out and "driver 12.9" in out
    assert ("device 0: CuPy stand-in (NumPy, kernels walked on the CPU), compute capability 8.6, 0.0 GiB"
            in lines)
    assert "device 0 runs the kernels as cubin sm_86 (machine code from NVRTC)" in lines
    claimed = ", ".join(f"sm_{arch}" for arch in kernels.compile_archs())
    newest = kernels.newest_arch()  # and the device's own, and the PTX a newer device would run
    assert lines[-1].startswith(f"kernels: compile with NVRTC for {claimed}, sm_86, PTX compute_{newest}")


def test_gpunet_info_says_a_device_newer_than_nvrtc_runs_ptx(cuda, monkeypatch, capsys):
    """A device of a major architecture this NVRTC does not know runs PTX of NVRTC's newest, and `gpunet info` says so."""
    from gpunet.backends import cuda as backend_cuda
    from tests.conftest import run

    monkeypatch.setattr(backend_cuda, "unavailable_reason", lambda: None)
    newest = kernels.newest_arch()
    future = 10 * (newest // 10 + 1)  # the next major architecture, e.g. 13.0 for NVRTC 12.9's sm_121
    monkeypatch.setitem(backend_cuda.cupy.DEVICE_PROPERTIES, "major", future // 10)
    monkeypatch.setitem(backend_cuda.cupy.DEVICE_PROPERTIES, "minor", 0)
    code, out, err = run(capsys, "info")
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert (f"device 0 runs the kernels as PTX compute_{newest}, JIT-compiled by the driver: the device is newer "
            f"than this NVRTC's newest architecture, sm_{newest}") in lines
    claimed = ", ".join(f"sm_{arch}" for arch in kernels.compile_archs())
    assert lines[-1].startswith(f"kernels: compile with NVRTC for {claimed}, PTX compute_{newest}")


# -- choosing the device: a probe of every piece training needs -------------------------------------
@pytest.fixture
def probe(cuda):
    """The stand-in's namespace, with get_backend's once-per-process probe forgotten before and after."""
    backend_cuda.unavailable_reason.cache_clear()
    yield cuda.xp
    backend_cuda.unavailable_reason.cache_clear()


def _raises(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _break_driver(probe, monkeypatch):
    monkeypatch.setattr(probe.cuda.runtime, "getDeviceCount", _raises(RuntimeError("cudaErrorInsufficientDriver")))


def _no_device(probe, monkeypatch):
    monkeypatch.setattr(probe.cuda.runtime, "getDeviceCount", lambda: 0)


def _break_nvrtc(probe, monkeypatch):
    monkeypatch.setattr(probe.cuda.nvrtc, "getVersion", _raises(OSError('Failure finding "libnvrtc.so.12"')))


def _break_cublas(probe, monkeypatch):
    monkeypatch.setattr(probe.cuda.device, "get_cublas_handle",
                        _raises(ImportError('Failure finding "libcublasLt.so.12"')))


def _break_kernels(probe, monkeypatch):  # what CuPy raises where the driver cannot load the cubin
    monkeypatch.setattr(kernels, "cuda_launch", _raises(RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU")))


def _wrong_kernels(probe, monkeypatch):  # launches that do nothing: the outputs keep their initial values
    monkeypatch.setattr(kernels, "cuda_launch", lambda launch: None)


BROKEN = {
    "driver": (_break_driver, "no usable CUDA driver (RuntimeError: cudaErrorInsufficientDriver)", "NVIDIA driver"),
    "device": (_no_device, "no CUDA device found", "NVIDIA driver"),
    "nvrtc": (_break_nvrtc, "CUDA's run-time compiler NVRTC cannot be loaded", "libnvrtc.so.12"),
    "cublas": (_break_cublas, "cuBLAS cannot be loaded", "libcublasLt.so.12"),
    "kernels": (_break_kernels, "the gpunet kernels do not run on this device", "CUDA_ERROR_NO_BINARY_FOR_GPU"),
    "wrong": (_wrong_kernels, "the gpunet kernels run on this device but give wrong results", "--device cpu"),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_device_auto_falls_back_when_any_piece_is_missing(probe, monkeypatch, broken):
    """CuPy and a device are not enough: NVRTC, cuBLAS and the kernels on the device are probed first."""
    breaks, gist, detail = BROKEN[broken]
    breaks(probe, monkeypatch)
    backend, notice = get_backend("auto")
    assert isinstance(backend, CpuBackend)
    assert notice == f"CUDA is not usable ({gist.split(' (')[0]}); running on the CPU"
    with pytest.raises(DeviceError) as refused:
        get_backend("cuda")
    message = str(refused.value)
    assert message.startswith(f"--device cuda: {gist}") and detail in message and "\n" not in message


def test_device_auto_chooses_cuda_once_every_piece_works(probe, launched):
    backend, notice = get_backend("auto")
    assert backend.name == "cuda" and backend.xp is probe and notice is None
    assert launched() == ["count_correct<float>", "matmul<float>", "relu_backward<float>", "transpose_scaled<float>",
                          "im2col<float>", "max_pool<float>", "dropout_mask<float>", "affine_augment<float>"]  # each .cu
    assert get_backend("cuda")[0].name == "cuda" and get_backend("auto")[0].name == "cuda"
    assert launched() == []  # probed once per process


def test_device_cuda_with_a_missing_library_exits_2_with_one_line(probe, monkeypatch, capsys, tmp_path):
    from tests.conftest import run

    _break_cublas(probe, monkeypatch)
    code, out, err = run(capsys, "train", "--device", "cuda", "--epochs", "1", "--out", str(tmp_path / "m.npz"))
    assert code == 2 and out == ""
    assert err.startswith("Error: --device cuda: cuBLAS cannot be loaded (ImportError: ") and err.count("\n") == 1
    assert not (tmp_path / "m.npz").exists()


def test_without_cupy_device_auto_is_the_cpu_without_a_notice(monkeypatch, capsys, tmp_path):
    """Only where CuPy is installed does anyone expect the GPU; without it --device auto says nothing."""
    from tests.conftest import run

    monkeypatch.setattr(backend_cuda, "cupy", None)
    backend_cuda.unavailable_reason.cache_clear()
    try:
        backend, notice = get_backend("auto")
        assert isinstance(backend, CpuBackend) and notice is None
        with pytest.raises(DeviceError, match="--device cuda: CuPy is not installed; install CuPy with"):
            get_backend("cuda")
        code, out, err = run(capsys, "train", "--epochs", "1", "--hidden", "8", "--val-size", "500",
                             "--out", str(tmp_path / "m.npz"))
        assert code == 0 and err == "" and "CPU (NumPy" in out
    finally:
        backend_cuda.unavailable_reason.cache_clear()
