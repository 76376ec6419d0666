"""kernels/matmul.cu: the small products of a step without cuBLAS (so that --cuda-graph can capture the step).

Walked on the CPU thread by thread (tests/kernel_host/walk.cpp) through the wrapper kernels.matmul, against
the generic product (Backend.matmul: NumPy's, a BLAS that adds in its own order) within the bound of a sum
of K products (tests/tolerances.py), for the three products of the backward pass (NN, NT, TN) and TT; the
kernel's own bits the same for any launch shape (each element adds its K terms in one fixed order). A
broken matmul.cu fails the comparison. NVRTC compiles the module with the others (test_kernels.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpunet.backends import kernels
from gpunet.backends.cpu import CpuBackend
from tests.test_kernels import DTYPES, SHAPES, Recorder
from tests.tolerances import assert_within, gamma

pytestmark = pytest.mark.kernels

CPU = CpuBackend()
# (M, K, N): the notes' network's products at batch 64 (W1.A0, dW1 = dZ1.A0^T, W3^T.dZ3), and edge sizes.
SIZES = [(16, 784, 64), (16, 64, 784), (16, 10, 64), (1, 1, 1), (3, 1, 5), (7, 257, 3), (4, 0, 3)]
LAYOUTS = ("NN", "NT", "TN", "TT")  # whether A and B are transposed views of C-contiguous arrays


def operands(rng, dtype, M: int, K: int, N: int, layout: str):
    """A (M, K) and B (K, N), each C-contiguous ("N") or the transpose of a C-contiguous array ("T")."""
    A = rng.standard_normal((M, K) if layout[0] == "N" else (K, M)).astype(dtype)
    B = rng.standard_normal((K, N) if layout[1] == "N" else (N, K)).astype(dtype)
    return (A if layout[0] == "N" else A.T), (B if layout[1] == "N" else B.T)


def product_bound(A, B, dtype):
    """Two sums of the same K products, each within gamma_K.sum|a_p b_p| of the exact one: 2 gamma_K |A|.|B|."""
    K = A.shape[1]
    return 2 * gamma(max(K, 1), dtype) * (np.abs(A.astype(np.float64)) @ np.abs(B.astype(np.float64)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(walk, dtype, size, layout, shape):
    M, K, N = size
    A, B = operands(np.random.default_rng(M * 1000 + K + N), dtype, M, K, N, layout)
    A_before, B_before = A.copy(), B.copy()
    walked = walk.shaped(**SHAPES[shape])
    C = kernels.matmul(A, B, launcher=walked)
    assert C.dtype == dtype and C.shape == (M, N) and C.flags.c_contiguous
    assert [launch.kernel for launch in walked.launches] == ["matmul"]
    assert_within(C, CPU.matmul(A, B), product_bound(A, B, dtype), f"{layout} product {size}")
    np.testing.assert_array_equal(A, A_before)
    np.testing.assert_array_equal(B, B_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_bits_do_not_depend_on_the_launch_shape(walk, dtype):
    """Each element's K terms are added in one order (fma, p = 0, 1, ...), whichever thread takes it: the bits of
    the package's launch and of a small grid walked backwards are the same, into a given ``out`` too."""
    A, B = operands(np.random.default_rng(5), dtype, 16, 784, 64, "NT")
    package = kernels.matmul(A, B, launcher=walk)
    out = np.full((16, 64), np.nan, dtype)
    strided = kernels.matmul(A, B, out=out, launcher=walk.shaped(**SHAPES["strided"]))
    assert strided is out
    np.testing.assert_array_equal(strided, package)


def test_matmul_of_exact_integers_is_exact(walk):
    """Small integers multiply and add without rounding: the kernel's product is the plain-loop product exactly
    (a dropped, doubled or misplaced term shows), in float32."""
    rng = np.random.default_rng(3)
    A = rng.integers(-8, 8, size=(5, 33)).astype(np.float32)
    B = rng.integers(-8, 8, size=(33, 6)).astype(np.float32)
    want = [[sum(int(A[i, p]) * int(B[p, j]) for p in range(33)) for j in range(6)] for i in range(5)]
    assert kernels.matmul(A, B, launcher=walk).tolist() == want


def test_matmul_rejects_what_it_cannot_take():
    record = Recorder()
    A, B = np.zeros((3, 4), np.float32), np.zeros((4, 5), np.float32)
    bad = [
        lambda: kernels.matmul(A, B.astype(np.float64), launcher=record),  # two dtypes
        lambda: kernels.matmul(A.astype(np.float16), B.astype(np.float16), launcher=record),
        lambda: kernels.matmul(A, B[:3], launcher=record),  # do not multiply
        lambda: kernels.matmul(A[None], B, launcher=record),
        lambda: kernels.matmul(np.zeros((3, 8), np.float32)[:, ::2], B, launcher=record),  # strided, not a transpose
        lambda: kernels.matmul(A, B, out=np.zeros((3, 4), np.float32), launcher=record),  # out misshaped
        lambda: kernels.matmul(A, B, out=np.zeros((5, 3), np.float32).T, launcher=record),  # out not C-contiguous
    ]
    for call in bad:
        with pytest.raises(ValueError):
            call()
    assert record.launches == []


BROKEN = {  # one slip each in the per-element body
    "the first term dropped": ("for (long long p = 0; p < K; ++p)", "for (long long p = 1; p < K; ++p)"),
    "B's column found with its row stride": ("const T* b = B + j * b_col;", "const T* b = B + j * b_row;"),
}


@pytest.mark.parametrize("slip", BROKEN)
def test_a_broken_matmul_kernel_fails_the_comparison(tmp_path, monkeypatch, slip):
    """The comparison above can fail: matmul.cu with one slip, built into a walk of its own."""
    from tests.kernel_support import HostWalk, WalkProcess, build_walk

    old, new = BROKEN[slip]
    source = kernels.read_source("matmul")
    assert source.count(old) == 1, old
    folder = tmp_path / "kernels"
    folder.mkdir()
    for path in kernels.source_dir().iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "matmul.cu").write_text(source.replace(old, new))
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(folder))
    process = WalkProcess(build_walk(tmp_path), tmp_path)
    try:
        with pytest.raises(AssertionError, match="apart by more than their bound"):
            test_matmul(HostWalk(process), np.float32, (16, 64, 784), "NT", "package")
    finally:
        process.close()


# -- the backend: which products go to the kernel --------------------------------------------------------------
def test_the_backend_takes_small_products_to_the_kernel_only_in_a_graph_run(stand_in_cuda):
    """CupyBackend.matmul: cuBLAS unless --cuda-graph (``cuda_graph``) or ``own_products`` is on; then the kernel
    for a product of at most kernels.SMALL_PRODUCT multiply-adds (into the ``out`` offered, nothing allocated),
    cuBLAS for a larger one; the same values as the generic product within its bound."""
    xp, backend = stand_in_cuda.xp, stand_in_cuda
    rng = np.random.default_rng(7)
    W, A0 = rng.standard_normal((16, 784)).astype(np.float32), rng.standard_normal((784, 64)).astype(np.float32)
    big = rng.standard_normal((784, 6000)).astype(np.float32)  # 16 x 784 x 6000 = 75 M multiply-adds
    W_d, A_d, big_d = xp.asarray(W), xp.asarray(A0), xp.asarray(big)
    out = xp.empty((16, 64), np.float32)

    def kinds(call):
        before = len(xp.events)
        result = call()
        return result, [(e.kind, e.name.split("<")[0]) for e in xp.events[before:] if e.kind in ("kernel", "cublas",
                                                                                                  "allocation")]

    Z, seen = kinds(lambda: backend.matmul(W_d, A_d, out=out))
    assert seen == [("cublas", "matmul")]
    for flag in ("cuda_graph", "own_products"):
        setattr(backend, flag, True)
        Z, seen = kinds(lambda: backend.matmul(W_d, A_d, out=out))
        assert seen == [("kernel", "matmul")] and Z is out
        assert_within(Z.get(), W @ A0, product_bound(W, A0, np.float32))
        dW, seen = kinds(lambda: backend.matmul(out, A_d.T))  # dW = dZ.A^T: the transposed view read in place
        assert [kind for kind in seen if kind[0] != "allocation"] == [("kernel", "matmul")]
        assert_within(dW.get(), out.get() @ A0.T, product_bound(out.get(), A0.T, np.float32))
        _, seen = kinds(lambda: backend.matmul(W_d, big_d))
        assert ("cublas", "matmul") in seen and ("kernel", "matmul") not in seen
        setattr(backend, flag, False)


def test_which_networks_have_only_small_products(stand_in_cuda):
    """takes_products: the notes' network at batch 64 (and 128), and a dense layer stack, fit the kernel; 784-512-10
    and the CNNs do not, so --cuda-graph on CuPy captures the former and says no graph is used for the latter."""
    from gpunet.backends.cost_model import network_layers

    takes = stand_in_cuda.takes_products
    assert takes(network_layers((16, 16)), 64) and takes(network_layers((16, 16)), 128)
    assert takes(network_layers((), "dense32,dropout0.5"), 64)
    assert not takes(network_layers((512,)), 64)
    assert not takes(network_layers((), "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5"), 128)
    assert not takes(network_layers((), "conv8k5,pool2,dense16"), 64)
