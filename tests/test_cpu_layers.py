"""The compiled CPU layer passes (gpunet/backends/cpu_layers.py) against the generic NumPy code they replace.

Each pass computes every output element with the operations of the generic code in the same order:
im2col, max-pool forward and backward, bias + ReLU and relu_backward are elementwise (copies, compares,
one add or multiply), and col2im adds an element's patch entries from 0 in ascending kernel offset as the
NumPy additions do. So each is compared bit for bit (NaN, inf and the sign of zero included). The NumPy path alone is tested in tests/test_layers.py (it runs where numba is not).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf - inf, inf * 0: NaN both ways

from gpunet.backends import cpu_layers  # noqa: E402
from gpunet.backends.base import Backend  # noqa: E402
from gpunet.backends.cpu import CpuBackend  # noqa: E402
from gpunet.nn.model import LayerStack, arch_input_shape, build_layers, init_stack_params, parse_arch_text  # noqa: E402
from gpunet.nn.optimizers import make_optimizer  # noqa: E402

COMPILED, GENERIC = CpuBackend(), Backend()
DTYPES = [np.float32, np.float64]
# (C, H, W, m, k, pads): non-square maps, k 1, 3, 4 and 5, 'valid' and 'same' (an even k pads one more after),
# 1 and 3 channels, a batch of 1 and of 7; the last is conv64k5's input at batch 128.
CONV_CASES = [(1, 7, 5, 1, 3, (0, 0)), (3, 6, 9, 7, 1, (0, 0)), (3, 9, 7, 7, 5, (2, 2)), (1, 5, 8, 7, 3, (1, 1)),
              (3, 6, 6, 1, 4, (1, 2)), (1, 28, 28, 7, 5, (0, 0)), (32, 12, 12, 128, 5, (0, 0))]
# (C, H, W, m, size): odd-sized maps (their last rows and columns in no window), 3x3 windows, the CNN's two.
POOL_CASES = [(1, 5, 7, 1, 2), (3, 7, 6, 7, 2), (3, 9, 8, 7, 3), (1, 2, 2, 1, 2), (32, 24, 24, 128, 2),
              (64, 9, 9, 128, 2)]


def assert_same_bits(got, want, what):
    """The same values, NaNs in the same places, and the same sign on every zero."""
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} != {want.shape} {want.dtype}"
    assert np.array_equal(got, want, equal_nan=True), f"{what}: values differ"
    assert np.array_equal(np.signbit(got), np.signbit(want)), f"{what}: a zero's sign differs"


@pytest.fixture
def ran(monkeypatch):
    """The names of the compiled passes called, in order (the backend asked them, not the generic code)."""
    names = []
    for name in ("im2col", "col2im", "max_pool", "max_pool_backward", "bias_relu", "relu_backward"):
        def counted(*args, _pass=getattr(cpu_layers, name), _name=name):
            names.append(_name)
            return _pass(*args)
        monkeypatch.setattr(cpu_layers, name, counted)
    return names


def special_values(x, rng):
    """x with NaNs, infinities, zeros of both signs and repeated values (ties) scattered through it."""
    x = x.copy()
    flat = x.reshape(-1)
    for value, share in ((np.nan, 0.02), (np.inf, 0.01), (-np.inf, 0.01), (0.0, 0.05), (-0.0, 0.05), (0.5, 0.1)):
        flat[rng.random(flat.size) < share] = value
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, H, W, m, k, pads", CONV_CASES)
def test_im2col_gives_the_generic_bits(C, H, W, m, k, pads, dtype, ran):
    rng = np.random.default_rng(1)
    x = special_values(rng.standard_normal((C, H, W, m)).astype(dtype), rng)
    assert COMPILED._layer_passes(x) is cpu_layers
    assert_same_bits(COMPILED.im2col(x, k, pads), GENERIC.im2col(x, k, pads), "im2col")
    assert ran == ["im2col"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, H, W, m, k, pads", CONV_CASES)
def test_col2im_gives_the_generic_bits(C, H, W, m, k, pads, dtype, ran):
    """Each input element sums its entries from 0 in ascending (i, j) both ways: the same rounding at every add."""
    rng = np.random.default_rng(2)
    H_out, W_out = H + sum(pads) - k + 1, W + sum(pads) - k + 1
    columns = rng.standard_normal((C * k * k, H_out * W_out * m)).astype(dtype)
    columns *= np.exp2(rng.integers(-20, 20, columns.shape)).astype(dtype)  # magnitudes apart: orders would show
    assert COMPILED._layer_passes(columns) is cpu_layers
    got = COMPILED.col2im(columns, (C, H, W, m), k, pads)
    assert_same_bits(got, GENERIC.col2im(columns, (C, H, W, m), k, pads), "col2im")
    special = special_values(columns, rng)
    assert_same_bits(COMPILED.col2im(special, (C, H, W, m), k, pads),
                     GENERIC.col2im(special, (C, H, W, m), k, pads), "col2im of NaN, inf and zeros")
    assert ran == ["col2im", "col2im"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, H, W, m, size", POOL_CASES)
def test_max_pool_gives_the_generic_maxima_and_argmaxes(C, H, W, m, size, dtype, ran):
    """Ties (the first entry wins), NaNs (kept; the last entry), infinities and zeros of both signs."""
    rng = np.random.default_rng(3)
    x = special_values(rng.standard_normal((C, H, W, m)).astype(dtype), rng)
    assert COMPILED._layer_passes(x) is cpu_layers
    y, argmax = COMPILED.max_pool(x, size)
    want_y, want_argmax = GENERIC.max_pool(x, size)
    assert_same_bits(y, want_y, "max_pool's maxima")
    assert argmax.dtype == np.uint8 and np.array_equal(argmax, want_argmax), "max_pool's argmaxes differ"
    assert ran == ["max_pool"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, H, W, m, size", POOL_CASES)
def test_max_pool_backward_gives_the_generic_bits(C, H, W, m, size, dtype, ran):
    """dy routed to each window's argmax, 0 elsewhere and on the floored rows and columns; a NaN or inf shows."""
    rng = np.random.default_rng(4)
    x = special_values(rng.standard_normal((C, H, W, m)).astype(dtype), rng)
    _, argmax = GENERIC.max_pool(x, size)
    dy = special_values(rng.standard_normal(argmax.shape).astype(dtype), rng)
    assert COMPILED._layer_passes(dy) is cpu_layers
    got = COMPILED.max_pool_backward(dy, argmax, x.shape, size)
    assert_same_bits(got, GENERIC.max_pool_backward(dy, argmax, x.shape, size), "max_pool_backward")
    assert ran == ["max_pool_backward"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (32, 73728 // 8), (256, 128)])
def test_bias_relu_and_its_backward_give_the_generic_bits(shape, dtype, ran):
    rng = np.random.default_rng(5)
    Z = special_values(rng.standard_normal(shape).astype(dtype), rng)
    b = special_values(rng.standard_normal((shape[0], 1)).astype(dtype), rng)
    assert COMPILED._layer_passes(Z, b) is cpu_layers
    A = COMPILED.bias_relu(Z.copy(), b)
    want_A = GENERIC.bias_relu(Z.copy(), b)
    assert_same_bits(A, want_A, "bias_relu")
    dA = special_values(rng.standard_normal(shape).astype(dtype), rng)
    assert_same_bits(COMPILED.relu_backward(dA.copy(), A), GENERIC.relu_backward(dA.copy(), A), "relu_backward")
    assert ran == ["bias_relu", "relu_backward"]


def test_what_the_kernels_do_not_take_goes_the_generic_way():
    """float16, F-ordered maps, mixed dtypes and the NumPy path (compiled=False) take the generic code."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 5, 3))
    assert COMPILED._layer_passes(x.astype(np.float16)) is None
    assert COMPILED._layer_passes(np.asfortranarray(x)) is None
    assert COMPILED._layer_passes(x, x.astype(np.float32)) is None
    assert CpuBackend(compiled=False)._layer_passes(x) is None
    for odd in (x.astype(np.float16), np.asfortranarray(x)):
        assert_same_bits(COMPILED.im2col(odd, 3, (1, 1)), GENERIC.im2col(odd, 3, (1, 1)), "im2col fallback")
        assert_same_bits(COMPILED.max_pool(odd, 2)[0], GENERIC.max_pool(odd, 2)[0], "max_pool fallback")


def cnn_run(backend, dtype, steps=3, m=48, batch=16):
    """A few Adam steps of a small CNN through every layer kind (as ``gpunet train --arch`` builds it)."""
    arch = parse_arch_text("conv4k3,pool2,conv6k3same,pool2,dense12,dropout0.25")
    shape = arch_input_shape(arch, 784)
    params = init_stack_params(build_layers(arch, shape, 10), "he", 0, dtype)
    network = LayerStack(backend, arch, params, shape, 10, seed=3)
    optimizer = make_optimizer("adam", network.groups, 0.01)
    rng = np.random.default_rng(8)
    images, labels = rng.integers(0, 256, (m, 784), dtype=np.uint8), rng.integers(0, 10, m)
    for step in range(steps):
        index = np.arange(step * batch, (step + 1) * batch) % m
        network.step = step
        ws = network.workspace(batch)
        A0 = backend.gather_scaled(images, index, network.dtype, out=ws.A0)
        Z, saved = network.forward(A0, ws)
        network.backward(Z, saved, labels[index], ws)
        optimizer.step(ws.grad_groups)
    return network.flat


@pytest.mark.parametrize("dtype", DTYPES)
def test_cnn_training_gives_the_numpy_paths_parameters(ran, dtype):
    """Every pass gives the generic code's bits and the products are the same BLAS calls: with BLAS on one
    thread (its thread split would change the order of its sums between runs' thread counts), the two paths
    are the same computation, so the parameters after a few Adam steps are the same bits."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        got = cnn_run(CpuBackend(), dtype)
        assert set(ran) == {"im2col", "col2im", "max_pool", "max_pool_backward", "bias_relu", "relu_backward"}
        ran.clear()
        want = cnn_run(CpuBackend(compiled=False), dtype)
    assert not ran, "the NumPy path ran compiled passes"
    assert_same_bits(got, want, "parameters after 3 Adam steps")


def test_the_backend_says_which_way_the_layers_run():
    assert "compiled with numba" in CpuBackend().layers_path()
    assert "NumPy array calls (turned off)" in CpuBackend(compiled=False).layers_path()


NO_CACHE_FOLDER = """
import sys
import numba.core.caching as caching
caching.CacheImpl._locator_classes = []  # as where no folder is writable: njit(cache=True) raises RuntimeError
from gpunet.frontends.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("arch", ["dense16", "conv2k3,pool2,dense8"], ids=["compiled dense path", "layer passes"])
def test_training_runs_compiled_where_numba_finds_no_folder_for_its_cache(tmp_path, arch):
    import subprocess
    import sys

    import numba.core.caching as caching

    if not hasattr(getattr(caching, "CacheImpl", None), "_locator_classes"):
        pytest.skip("this numba keeps its cache locators elsewhere")
    run = subprocess.run([sys.executable, "-c", NO_CACHE_FOLDER, "train", "--device", "cpu", "--arch", arch,
                          "--epochs", "1", "--val-size", "100", "--out", str(tmp_path / "m.npz")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 3), run.stderr  # 3: one epoch may learn too little; the run is what is tested
    assert "Traceback" not in run.stderr and (tmp_path / "m.npz").exists()
    assert "compiled with numba" in run.stdout.splitlines()[1], run.stdout
