"""The CUDA kernels, proven without a GPU (``pytest -m kernels``).

1. Every kernels/*.cu file, with every template instantiation the package
   launches, compiles with NVRTC (CuPy's run-time compiler, called directly so
   no driver is needed) for each architecture the package claims that the
   installed NVRTC supports (NVRTC 13 dropped sm_70: that one is skipped, with
   the reason); nvcc, where installed, agrees on the symbols.
   scripts/check_kernels_nvrtc.py runs these with NVRTC 12 and NVRTC 13.
2. Every kernel's arithmetic runs on the CPU: the same .cu source is compiled
   with g++ (kernels/host_compat.h) into tests/kernel_host/walk.cpp, which walks
   a launch's grid thread by thread under AddressSanitizer and UBSan. The
   launches come from gpunet.backends.kernels' own wrappers (shapes, argument order and
   C types included) and the results are compared with the generic CpuBackend
   operations, the reference, in float32 and float64.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpunet.backends import kernels
from gpunet.nn import layers
from gpunet.backends.base import Backend
from gpunet.backends.cpu import CpuBackend
from gpunet.nn.optimizers import make_optimizer
from tests.kernel_support import HOST_DIR, logits
from tests.tolerances import assert_within, gamma, softmax_cross_entropy_bounds

pytestmark = pytest.mark.kernels

DTYPES = (np.float32, np.float64)
CPU = CpuBackend()


# Each kernel is walked with the wrapper's own launch shape, and with a tiny
# grid walked in reverse, where every thread loops over several items.
SHAPES = {"package": {}, "strided": {"grid": 3, "block": 32, "order": "reverse"}}
SAMPLES = (1, 7, 256, 257, 1000)  # 256 = kernels.BLOCK; the others are not multiples of it


# -- 1. NVRTC and nvcc ------------------------------------------------------------------
def test_sources_are_found():
    folder = kernels.source_dir()
    for module in kernels.MODULES:
        assert (folder / f"{module}.cu").is_file()
    assert (folder / "host_compat.h").is_file()


@pytest.mark.parametrize("target", ["cubin", "ptx"])
@pytest.mark.parametrize("arch", kernels.ARCHS)
def test_nvrtc_compiles_every_instantiation(arch, target):
    """Each module, with all its name expressions, compiles for sm_XX (cubin) and compute_XX (PTX)."""
    if arch not in kernels.compile_archs():
        version = "{}.{}".format(*kernels.nvrtc_version())
        pytest.skip(f"NVRTC {version} does not support sm_{arch} (its architectures: {kernels.supported_archs()})")
    compiled = kernels.compile_for_arch(arch, target=target)
    assert [c.module for c in compiled] == list(kernels.MODULES)
    for c in compiled:
        assert set(c.lowered) == set(kernels.name_expressions(c.module))
        for name, symbol in c.lowered.items():
            assert symbol.startswith("_Z") and name.split("<")[0] in symbol
        assert c.size > 0
        assert c.warnings() == [], f"{c.module}.cu compiles with warnings:\n{c.log}"


def test_device_report_says_whether_the_kernels_compile():
    """`gpunet info`'s lines: versions, devices (none here), and an NVRTC compile of every kernel."""
    from gpunet.backends import cuda as backend_cuda

    lines = backend_cuda.device_report()
    assert lines[0].startswith("CuPy ") and lines[1].startswith("CUDA runtime ")
    if backend_cuda.unavailable_reason() is not None:
        assert any(line.startswith("CUDA devices: none usable") for line in lines)
    targets = ", ".join(f"sm_{arch}" for arch in kernels.compile_archs())
    assert lines[-1].startswith(f"kernels: compile with NVRTC for {targets}")


def test_the_architectures_nvrtc_lists_are_the_ones_it_compiles_for():
    """nvrtcGetSupportedArchs is what NVRTC enforces: an architecture it leaves out is an invalid option."""
    supported = kernels.supported_archs()
    assert supported == tuple(sorted(supported)) and len(supported) >= 3
    unlisted = min(supported) - 1  # e.g. sm_49 for NVRTC 12, sm_74 for NVRTC 13
    with pytest.raises(kernels.KernelCompileError, match="NVRTC_ERROR_INVALID_OPTION"):
        kernels.compile_for_arch(unlisted, modules=["layers"])
    kernels.compile_for_arch(min(supported), modules=["layers"])
    kernels.compile_for_arch(max(supported), modules=["layers"])


NVRTC_13_ARCHS = (75, 80, 86, 87, 88, 89, 90, 100, 103, 107, 110, 120, 121)  # nvidia-cuda-nvrtc 13.5's list


def test_the_claimed_architectures_an_nvrtc_lacks_are_left_out(monkeypatch):
    """With NVRTC 13's list (no sm_70): the kernels compile, and `gpunet info` says so, for sm_80 and sm_90."""
    from gpunet.backends import cuda as backend_cuda

    monkeypatch.setattr(kernels, "supported_archs", lambda: NVRTC_13_ARCHS)
    assert kernels.compile_archs() == (80, 90)
    assert kernels.compile_archs((70,)) == ()
    compiled = []
    monkeypatch.setattr(kernels, "compile_for_arch",
                        lambda arch, *rest, target="cubin": compiled.append((target, arch)) or [])
    assert kernels.compile_check() is None and compiled == [("cubin", 80), ("cubin", 90), ("ptx", 121)]
    line = backend_cuda._kernels_line([])
    assert line == ("kernels: compile with NVRTC for sm_80, sm_90, PTX compute_121 "
                    "(this NVRTC does not support sm_70)")
    monkeypatch.setattr(kernels, "supported_archs", lambda: (100, 120))
    failure = kernels.compile_check()
    assert failure.startswith("NVRTC ") and failure.endswith(" supports none of sm_70, sm_80, sm_90")


@pytest.mark.parametrize("capability", [75, 86, 87, 88, 89, 90, 100, 120, 121])
def test_a_cubin_is_built_for_the_architecture_cupy_compiles_for(capability):
    """Where a device's major architecture is one NVRTC knows, its kernels are the cubin CuPy builds: the device's
    own architecture capped at NVRTC's newest (cupy/cuda/compiler.py)."""
    from cupy.cuda import compiler  # needs no device: the cap comes from NVRTC's version

    assert kernels.device_target(capability) == ("cubin", min(capability, int(compiler._get_max_compute_capability())))


@pytest.mark.parametrize(("capability", "supported", "target"), [
    (86, (75, 80, 86, 89, 90), ("cubin", 86)),   # NVRTC knows the device: its own cubin
    (89, (75, 80, 86), ("cubin", 86)),           # a newer minor of a major NVRTC knows: sm_86 runs on 8.9
    (121, (90, 100, 120), ("cubin", 120)),       # likewise sm_120 on 12.1
    (100, (75, 80, 86, 89, 90), ("ptx", 90)),    # a Blackwell card with CUDA 12.6's NVRTC: PTX of sm_90
    (90, (75, 80, 86, 89), ("ptx", 89)),         # sm_89 machine code does not run on 9.0
    (130, (75, 90, 100, 120, 121), ("ptx", 121)),  # a device newer than any NVRTC here
    (103, (90, 100, 103), ("cubin", 103)),
])
def test_a_device_newer_than_nvrtc_runs_ptx_of_its_newest_architecture(capability, supported, target):
    assert kernels.kernel_target(capability, supported) == target


class FakeRawModule:
    """cupy.RawModule as _LazyModule uses it: what it was given, and the names looked up (checked in a PTX file)."""

    def __init__(self, code=None, *, path=None, options=(), name_expressions=None):
        self.code, self.options, self.name_expressions = code, options, name_expressions
        self.ptx = Path(path).read_text() if path is not None else None
        self.looked_up = []

    def get_function(self, name):
        if self.ptx is not None:
            assert f".entry {name}(" in self.ptx, f"{name} is not an entry of the PTX"
        self.looked_up.append(name)
        return name


@pytest.mark.parametrize("capability", ["86", "next major"])
def test_a_kernel_module_loads_as_cubin_or_as_ptx_for_a_newer_device(monkeypatch, capability):
    """On a device NVRTC knows, CuPy compiles the source (a cubin); on a newer one, the module is PTX of NVRTC's
    newest architecture, compiled by NVRTC here and loaded by path, each kernel found by its mangled symbol."""
    import sys
    from types import SimpleNamespace

    newest = kernels.newest_arch()
    device = str(10 * (newest // 10 + 1)) if capability == "next major" else capability
    made = []
    fake = SimpleNamespace(RawModule=lambda *args, **kw: made.append(FakeRawModule(*args, **kw)) or made[-1],
                           cuda=SimpleNamespace(Device=lambda: SimpleNamespace(compute_capability=device)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    module = kernels._LazyModule("layers")
    assert module.function("bias_relu<float>") is not None and module.function("relu_backward<double>") is not None
    (raw,) = made  # loaded once
    if capability == "86":
        assert raw.code == kernels.read_source("layers") and raw.ptx is None
        assert raw.name_expressions == kernels.name_expressions("layers")
        assert raw.looked_up == ["bias_relu<float>", "relu_backward<double>"]
    else:
        assert raw.code is None and f".target sm_{newest}" in raw.ptx
        symbols = kernels.compile_for_arch(newest, ["layers"], target="ptx")[0].lowered
        assert sorted(raw.looked_up) == sorted(symbols.values())  # every kernel, by its symbol, at load
        assert module.function("bias_relu<float>") == symbols["bias_relu<float>"]


def test_kernel_writes_are_the_non_const_pointers_of_each_signature():
    """kernels.WRITES (which arguments a launch may not alias) is read off the C signatures."""
    found = {}
    for module, names in kernels.MODULES.items():
        source = kernels.read_source(module)
        for name in names:
            parameters = re.search(rf"__global__ void {name}\(([^)]*)\)", source).group(1).split(",")
            found[name] = tuple(
                k for k, parameter in enumerate(parameters) if "*" in parameter and "const" not in parameter
            )
    assert found == kernels.WRITES


def test_each_kernel_has_float_and_double():
    for module, names in kernels.MODULES.items():
        assert len(kernels.name_expressions(module)) == 2 * len(names)
        source = kernels.read_source(module)
        for name in names:
            assert re.search(rf"__global__ void {name}\(", source), f"{name} is not in {module}.cu"


def test_nvrtc_reports_a_compile_error(tmp_path, monkeypatch):
    """A source NVRTC rejects raises KernelCompileError carrying NVRTC's log."""
    for module in kernels.MODULES:
        text = kernels.read_source(module)
        if module == "layers":
            text = text.replace("z += b;", "z += b")  # a typo
        (tmp_path / f"{module}.cu").write_text(text)
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(tmp_path))
    with pytest.raises(kernels.KernelCompileError, match=r"layers\.cu does not compile(.|\n)*error"):
        kernels.compile_for_arch(80, modules=["layers"])
    assert kernels.compile_check(archs=(80,)).startswith("layers.cu does not compile")


def test_nvcc_agrees_on_every_symbol(tmp_path):
    """nvcc (another CUDA release) compiles the same instantiations to the same symbols as NVRTC."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc is None:
        pytest.skip("nvcc is not installed (the NVRTC tests above are the ones that count)")
    listed = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True).stdout.split()
    archs = [arch for arch in kernels.ARCHS if f"sm_{arch}" in listed]  # CUDA 13 dropped sm_70
    assert archs, f"nvcc supports none of {kernels.ARCHS}"
    expected = {
        symbol for c in kernels.compile_for_arch(archs[-1]) for symbol in c.lowered.values()
    }
    source = tmp_path / "all.cu"
    lines = [f'#include "{module}.cu"' for module in kernels.MODULES]
    lines.append("void instantiate() {")
    lines += [f"    (void)&{name};" for module in kernels.MODULES for name in kernels.name_expressions(module)]
    lines.append("}")
    source.write_text("\n".join(lines) + "\n")
    for arch in archs[-2:]:
        cubin = tmp_path / f"all_{arch}.cubin"
        done = subprocess.run(
            [nvcc, "-cubin", f"-arch=sm_{arch}", "-Werror", "all-warnings",
             f"-I{kernels.source_dir()}", str(source), "-o", str(cubin)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        symbols = set(re.findall(rb"_Z\w+", cubin.read_bytes()))
        assert expected <= {s.decode() for s in symbols}


# -- 2. the wrappers ------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.launches = []

    def __call__(self, launch):
        self.launches.append(launch)


def test_walk_refuses_a_launch_whose_output_overlaps_an_input(walk):
    """The walk copies each argument, so an aliased launch would pass there and race on a GPU: it is refused."""
    A = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    with pytest.raises(AssertionError, match="relu_backward<float>: argument 0, which the kernel writes"):
        kernels.relu_backward(A, A, launcher=walk)
    Z = np.zeros((10, 4), np.float32)
    buffer = np.zeros(44, np.float32)
    with pytest.raises(AssertionError, match="argument 3, which the kernel writes, overlaps argument 2"):
        kernels.softmax_cross_entropy(Z, np.arange(4), out=(buffer[:40].reshape(10, 4), buffer[36:40]), launcher=walk)
    assert walk.launches == []
    kernels.softmax_cross_entropy(Z, np.arange(4), out=(buffer[:40].reshape(10, 4), buffer[40:]), launcher=walk)
    assert [launch.name for launch in walk.launches] == ["softmax_cross_entropy<float>"]  # adjacent, not overlapping


@pytest.mark.parametrize("dtype", DTYPES)
def test_wrappers_launch_only_compiled_instantiations(dtype):
    rng = np.random.default_rng(0)
    record = Recorder()
    Z = rng.standard_normal((10, 5)).astype(dtype)
    labels = np.arange(5)
    images = rng.integers(0, 256, size=(6, 784), dtype=np.uint8)
    kernels.softmax_cross_entropy(Z, labels, launcher=record)
    kernels.count_correct(Z, labels, launcher=record)
    kernels.softmax_cross_entropy_counted(Z.copy(), np.zeros((10, 1), dtype), labels, np.zeros(1, np.int32),
                                          launcher=record)
    kernels.bias_relu(Z.copy(), np.zeros((10, 1), dtype), launcher=record)
    kernels.relu_backward(Z.copy(), Z, launcher=record)
    kernels.gather_scaled(images, np.array([3, 1]), dtype, launcher=record)
    kernels.gather_scaled(images, None, dtype, launcher=record)
    maps = rng.standard_normal((2, 5, 4, 3)).astype(dtype)
    columns = kernels.im2col(maps, 3, (1, 1), launcher=record)
    kernels.col2im(columns, maps.shape, 3, (1, 1), launcher=record)
    pooled, argmax = kernels.max_pool(maps, 2, launcher=record)
    kernels.max_pool_backward(pooled, argmax, maps.shape, 2, launcher=record)
    kernels.dropout_mask(np.empty((4, 5), dtype), 0.5, 1, 2, launcher=record)
    kernels.dropout_mask_at(np.empty((4, 5), dtype), 0.5, 1, np.zeros(1, np.int64), np.zeros(1, np.int64),
                            launcher=record)
    kernels.affine_augment(images, np.array([3, 1]), np.zeros((6, 6), dtype), dtype, 28, launcher=record)
    pair = (np.zeros((3, 4), dtype), np.zeros((3, 1), dtype))
    kernels.sgd_update(pair, pair, 1.0, 0.1, launcher=record)
    kernels.momentum_update(pair, pair, pair, 1.0, 0.1, 0.9, launcher=record)
    kernels.adam_update(pair, pair, pair, pair, 1.0, 0.9, 0.999, 0.1, 1e-8, launcher=record)
    step = np.zeros(1, np.int64)
    for rule, width in (("sgd", 2), ("momentum", 3), ("adam", 7)):
        kernels.optimizer_update_at(rule, pair, pair, [pair] * kernels.UPDATE_STATE[rule], np.zeros((1, width), dtype),
                                    step, launcher=record)
    kernels.batch_begin(np.arange(4), np.zeros(4, np.int32), step, np.empty(2, np.int64), np.empty(2, np.int32),
                        dtype, launcher=record)
    kernels.batch_end(np.zeros(2, dtype), np.zeros(4, dtype), step, launcher=record)
    kernels.matmul(Z, Z.T, launcher=record)
    launched = {(launch.module, launch.kernel) for launch in record.launches}
    assert launched == {(module, name) for module, names in kernels.MODULES.items() for name in names}
    for launch in record.launches:
        assert launch.name in kernels.name_expressions(launch.module)
        assert launch.ctype == kernels.CTYPES[np.dtype(dtype)]
        one_thread = launch.kernel == "batch_end"  # its one thread advances the step number after every read
        assert 1 <= launch.grid <= kernels.MAX_BLOCKS and launch.block == (1 if one_thread else kernels.BLOCK)


def test_wrappers_reject_what_the_kernels_cannot_take():
    Z = np.zeros((10, 4), np.float32)
    labels = np.zeros(4, np.int64)
    record = Recorder()
    bad = [
        lambda: kernels.softmax_cross_entropy(Z.astype(np.float16), labels, launcher=record),
        lambda: kernels.softmax_cross_entropy(np.asfortranarray(np.zeros((10, 4), np.float32)), labels, launcher=record),
        lambda: kernels.softmax_cross_entropy(Z, labels[:3], launcher=record),
        lambda: kernels.softmax_cross_entropy(Z, labels.astype(np.float32), launcher=record),
        lambda: kernels.count_correct(Z[None], labels, launcher=record),
        lambda: kernels.count_correct(Z, labels, out=np.zeros(1, np.int64), launcher=record),  # an int* counter
        lambda: kernels.softmax_cross_entropy_counted(Z, np.zeros((9, 1), np.float32), labels, np.zeros(1, np.int32),
                                                      launcher=record),
        lambda: kernels.softmax_cross_entropy_counted(Z, np.zeros((10, 1), np.float64), labels,
                                                      np.zeros(1, np.int32), launcher=record),
        lambda: kernels.softmax_cross_entropy_counted(Z, np.zeros((10, 1), np.float32), labels,
                                                      np.zeros(2, np.int32), launcher=record),
        lambda: kernels.bias_relu(Z, np.zeros((9, 1), np.float32), launcher=record),
        lambda: kernels.bias_relu(Z, np.zeros((10, 1), np.float64), launcher=record),
        lambda: kernels.bias_relu(Z[:, ::2], np.zeros((10, 1), np.float32), launcher=record),
        lambda: kernels.relu_backward(Z, Z.T.copy(), launcher=record),
        lambda: kernels.relu_backward(Z, Z.astype(np.float64), launcher=record),
        lambda: kernels.gather_scaled(np.zeros((4, 784), np.float32), None, np.float32, launcher=record),
        lambda: kernels.gather_scaled(np.zeros((4, 784), np.uint8), np.zeros(2), np.float32, launcher=record),
        lambda: kernels.gather_scaled(np.zeros((4, 784), np.uint8), None, np.int32, launcher=record),
        lambda: kernels.im2col(np.zeros((1, 4, 4), np.float32), 3, (0, 0), launcher=record),
        lambda: kernels.im2col(np.zeros((1, 4, 4, 2), np.float32), 5, (0, 0), launcher=record),  # does not fit
        lambda: kernels.im2col(np.zeros((1, 4, 4, 2), np.float32), 3, (-1, 0), launcher=record),
        lambda: kernels.im2col(np.zeros((1, 4, 4, 2), np.float32)[..., ::2], 3, (0, 0), launcher=record),
        lambda: kernels.im2col(np.zeros((1, 4, 4, 2), np.int32), 3, (0, 0), launcher=record),
        lambda: kernels.col2im(np.zeros((9, 9), np.float32), (1, 4, 4, 2), 3, (0, 0), launcher=record),  # not 4x4x2's
        lambda: kernels.col2im(np.zeros((8, 9), np.float32).T, (1, 4, 4, 2), 3, (0, 0), launcher=record),
        lambda: kernels.max_pool(np.zeros((1, 4, 4, 2), np.float32), 1, launcher=record),
        lambda: kernels.max_pool(np.zeros((1, 40, 40, 2), np.float32), 17, launcher=record),  # argmax is uint8
        lambda: kernels.max_pool(np.zeros((4, 4, 2), np.float32), 2, launcher=record),
        lambda: kernels.max_pool_backward(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.int64),
                                          (1, 4, 4, 2), 2, launcher=record),
        lambda: kernels.max_pool_backward(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.uint8),
                                          (1, 6, 4, 2), 2, launcher=record),  # dy is not that map's pooling
        lambda: kernels.dropout_mask(np.empty((3, 4), np.float32).T, 0.5, 0, 0, launcher=record),
        lambda: kernels.dropout_mask(np.empty(4, np.float32), 1.0, 0, 0, launcher=record),
        lambda: kernels.dropout_mask(np.empty(4, np.int32), 0.5, 0, 0, launcher=record),
        lambda: kernels.dropout_mask(np.empty(4, np.float32), 0.5, 0, 0, first_sample=-1, launcher=record),
        lambda: kernels.sgd_update((Z,), (Z,), 1.0, 0.1, launcher=record),  # not a (weights, biases) pair
        lambda: kernels.sgd_update((Z, labels), (Z, labels), 1.0, 0.1, launcher=record),  # biases not float
        lambda: kernels.sgd_update((Z, Z[:1]), (Z, Z[:2]), 1.0, 0.1, launcher=record),  # a gradient misshaped
        lambda: kernels.sgd_update((Z.T, Z[:1]), (Z.T, Z[:1]), 1.0, 0.1, launcher=record),  # not C-contiguous
        lambda: kernels.momentum_update((Z, Z[:1]), (Z, Z[:1]), (Z.astype(np.float64), Z[:1]), 1.0, 0.1, 0.9,
                                        launcher=record),  # state of another dtype
        lambda: kernels.adam_update((Z, Z[:1]), (Z, Z[:1]), (Z, Z[:1]), (Z, Z[:2]), 1.0, 0.9, 0.999, 0.1, 1e-8,
                                    launcher=record),
        lambda: kernels.optimizer_update("rmsprop", (Z, Z[:1]), (Z, Z[:1]), (), decay=1.0, lr=0.1, launcher=record),
        lambda: kernels.optimizer_update("adam", (Z, Z[:1]), (Z, Z[:1]), ((Z, Z[:1]),), decay=1.0, lr=0.1,
                                         launcher=record),  # Adam keeps two state lists
    ]
    for call in bad:
        with pytest.raises(ValueError):
            call()
    assert record.launches == []


def test_walk_rejects_a_wrong_argument_type(walk):
    """The walk checks each argument's C type: int64 labels for an int* parameter fail."""
    Z = np.zeros((10, 3), np.float32)
    args = (Z, np.zeros(3, np.int64), np.empty_like(Z), np.empty(3, np.float32), np.int64(10), np.int64(3))
    with pytest.raises(AssertionError, match="the kernel takes A:i4"):
        walk(kernels.Launch("loss", "softmax_cross_entropy", "float", 1, 32, args))
    args = (Z, np.zeros(3, np.int32), np.empty_like(Z), np.empty(3, np.float32), np.int32(10), np.int64(3))
    with pytest.raises(AssertionError, match="the kernel takes S:i8"):
        walk(kernels.Launch("loss", "softmax_cross_entropy", "float", 1, 32, args))


def test_every_kernel_is_walked():
    harness = (HOST_DIR / "walk.cpp").read_text()
    for names in kernels.MODULES.values():
        for name in names:
            assert f'kernel == "{name}"' in harness


# -- 3. each kernel walked on the CPU against the reference ------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy(walk, dtype, m, shape):
    rng = np.random.default_rng(m)
    Z = logits(rng, 10, m, dtype)
    labels = rng.integers(0, 10, size=m)
    Z_before = Z.copy()
    dZ, losses = kernels.softmax_cross_entropy(Z, labels, launcher=walk.shaped(**SHAPES[shape]))
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z.copy(), labels)
    assert dZ.dtype == losses.dtype == np.dtype(dtype)
    assert np.isfinite(dZ).all() and np.isfinite(losses).all()
    B_dZ, B_losses = softmax_cross_entropy_bounds(Z, labels, dtype)
    assert_same_loss(dZ, losses, ref_dZ, ref_losses, B_dZ, B_losses)
    np.testing.assert_array_equal(Z, Z_before)  # Z is only read
    # Each column of the exact dZ sums to 0: the kernel's, within its entries' bounds and this sum's rounding
    assert_within(dZ.sum(axis=0), np.zeros(m), B_dZ.sum(axis=0) + gamma(10, dtype) * np.abs(dZ).sum(axis=0),
                  "column sums of dZ")


def assert_same_loss(dZ, losses, ref_dZ, ref_losses, B_dZ, B_losses):
    """The kernel's (dZ, losses) against the reference's: each within its bounds of the exact values.

    Both compute the same formulas, but with their own exp and log (the host's libm in the walk, NumPy's
    SIMD loops in the reference) and, in NumPy's, its own order of the sum over the classes.
    """
    assert_within(dZ, ref_dZ, 2 * B_dZ, "dZ")
    assert_within(losses, ref_losses, 2 * B_losses, "losses")


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_large_m(walk, dtype):
    m = 100_003
    rng = np.random.default_rng(1)
    Z = logits(rng, 10, m, dtype)
    labels = rng.integers(0, 10, size=m).astype(np.int32)
    dZ, losses = kernels.softmax_cross_entropy(Z, labels, launcher=walk)
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z, labels)
    assert_same_loss(dZ, losses, ref_dZ, ref_losses, *softmax_cross_entropy_bounds(Z, labels, dtype))


def test_softmax_cross_entropy_bad_label_is_nan_not_a_stray_read(walk):
    Z = logits(np.random.default_rng(2), 10, 4, np.float64)
    labels = np.array([3, 10, -1, 0])
    dZ, losses = kernels.softmax_cross_entropy(Z, labels, launcher=walk)
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z, labels[[0, 0, 0, 3]])
    assert np.isnan(losses[1:3]).all()
    _, B_losses = softmax_cross_entropy_bounds(Z, labels[[0, 0, 0, 3]], np.float64)
    assert_within(losses[[0, 3]], ref_losses[[0, 3]], 2 * B_losses[[0, 3]], "losses")
    # No label: dZ = P / m, a P - Y with Y = 0. The bound of P - Y for the least likely class as the label
    # covers it (there P <= 1/10, so the 3u.|P - 1| allowed for P - 1 exceeds the 2u.P of P's scaling).
    B_dZ, _ = softmax_cross_entropy_bounds(Z, Z.argmin(axis=0), np.float64)
    assert_within(dZ[:, 1:3], CPU.softmax(Z)[:, 1:3] / 4, 2 * B_dZ[:, 1:3], "dZ without a label")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES + (100_003,))
@pytest.mark.parametrize("dtype", DTYPES)
def test_count_correct(walk, dtype, m, shape):
    rng = np.random.default_rng(m)
    Z = rng.integers(-2, 3, size=(10, m)).astype(dtype)  # many ties: the first largest wins
    Z[rng.integers(0, 10, size=m // 7), rng.integers(0, m, size=m // 7)] = np.nan
    labels = rng.integers(0, 10, size=m)
    got = kernels.count_correct(Z, labels, launcher=walk.shaped(**SHAPES[shape]))
    assert got == CPU.count_correct(Z, labels)  # comparisons only: exact
    if m > 1:
        labels = Z.argmax(axis=0)
        assert kernels.count_correct(Z, labels, launcher=walk.shaped(**SHAPES[shape])) == m


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES + (20_011,))
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu(walk, dtype, m, shape):
    rng = np.random.default_rng(m)
    units = 16
    Z = (rng.standard_normal((units, m)) * 3).astype(dtype)
    Z.flat[:: 11] = np.nan
    Z.flat[1 :: 13] = 0
    b = rng.standard_normal((units, 1)).astype(dtype)
    expected = CPU.bias_relu(Z.copy(), b)
    got = kernels.bias_relu(Z, b, launcher=walk.shaped(**SHAPES[shape]))
    assert got is Z
    np.testing.assert_array_equal(Z, expected)  # one add and one max: exactly the same


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES + (20_011,))
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward(walk, dtype, m, shape):
    rng = np.random.default_rng(m)
    A = np.maximum(rng.standard_normal((16, m)), 0).astype(dtype)
    dA = rng.standard_normal((16, m)).astype(dtype)
    dA.flat[:: 17] = np.inf
    dA.flat[3 :: 19] = np.nan
    A_before = A.copy()
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, on purpose
        expected = CPU.relu_backward(dA.copy(), A)
    got = kernels.relu_backward(dA, A, launcher=walk.shaped(**SHAPES[shape]))
    assert got is dA
    np.testing.assert_array_equal(dA, expected)  # one multiply by 1 or 0: exactly the same
    np.testing.assert_array_equal(A, A_before)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", SAMPLES + (3000,))
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_scaled(walk, dtype, batch, shape):
    rng = np.random.default_rng(batch)
    images = rng.integers(0, 256, size=(max(batch, 50), 784), dtype=np.uint8)
    images[0] = 255
    index = rng.integers(0, len(images), size=batch)  # repeats allowed
    index[0] = len(images) - 1
    before = images.copy()
    A0 = kernels.gather_scaled(images, index, dtype, launcher=walk.shaped(**SHAPES[shape]))
    expected = CPU.gather_scaled(images, index, dtype)
    assert A0.shape == (784, batch) and A0.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(A0, expected)  # one conversion and one multiply: exactly the same
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rows", (1, 257, 3000))
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_scaled_all_rows(walk, dtype, rows, shape):
    images = np.random.default_rng(rows).integers(0, 256, size=(rows, 784), dtype=np.uint8)
    A0 = kernels.gather_scaled(images, None, dtype, launcher=walk.shaped(**SHAPES[shape]))
    np.testing.assert_array_equal(A0, CPU.gather_scaled(images, None, dtype))  # elementwise: the same bits


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_written_into_given_arrays(walk, dtype):
    rng = np.random.default_rng(5)
    Z = logits(rng, 10, 300, dtype)
    labels = rng.integers(0, 10, size=300)
    out = (np.full_like(Z, np.nan), np.full(300, np.nan, dtype))
    dZ, losses = kernels.softmax_cross_entropy(Z, labels, out, launcher=walk)
    assert dZ is out[0] and losses is out[1]
    ref_dZ, ref_losses = CPU.softmax_cross_entropy(Z, labels)
    assert_same_loss(dZ, losses, ref_dZ, ref_losses, *softmax_cross_entropy_bounds(Z, labels, dtype))
    images = rng.integers(0, 256, size=(40, 784), dtype=np.uint8)
    index = rng.integers(0, 40, size=33)
    A0 = np.full((784, 33), np.nan, dtype)
    assert kernels.gather_scaled(images, index, dtype, A0, launcher=walk) is A0
    np.testing.assert_array_equal(A0, CPU.gather_scaled(images, index, dtype))  # elementwise: the same bits
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.gather_scaled(images, index, dtype, np.empty((33, 784), dtype).T, launcher=walk)
    with pytest.raises(ValueError, match="shape"):
        kernels.softmax_cross_entropy(Z, labels, (out[0], out[1][:-1]), launcher=walk)


def test_gather_scaled_bad_index_is_nan_not_a_stray_read(walk):
    images = np.random.default_rng(3).integers(0, 256, size=(5, 784), dtype=np.uint8)
    index = np.array([0, 5, -1, 4, 10**12])
    A0 = kernels.gather_scaled(images, index, np.float32, launcher=walk)
    assert np.isnan(A0[:, [1, 2, 4]]).all()
    np.testing.assert_array_equal(A0[:, [0, 3]], CPU.gather_scaled(images, index[[0, 3]], np.float32))


# -- the layers' kernels: convolution, pooling, dropout ---------------------------------------------------
# (C, H, W): one channel, three, non-square maps; each with k = 1, 3, 5 and 'valid' or 'same' padding.
MAPS = ((1, 7, 5), (3, 6, 9))
CONVS = [(k, padding) for k in (1, 3, 5) for padding in ("valid", "same")]
BIG_M = 700  # conv3k5 over 3x6x9 'same' maps: 75 x 54 x 700 = 2.8 million column entries, past 8192 blocks of 256


def conv_pads(k, padding):
    return layers.same_padding(k) if padding == "same" else (0, 0)


def random_maps(rng, shape, m, dtype):
    """Random maps (C, H, W, m) with exact zeros, negative zeros, huge, tiny and NaN entries among them."""
    x = (rng.standard_normal((*shape, m)) * rng.choice([1e-3, 1.0, 1e3], size=m)).astype(dtype)
    flat = x.reshape(-1)
    flat[::13] = 0.0
    flat[5::17] = -0.0
    flat[7::101] = np.nan
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES)
@pytest.mark.parametrize("k, padding", CONVS)
@pytest.mark.parametrize("maps", MAPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col(walk, dtype, maps, k, padding, m, shape):
    """Each column entry is a copy of a map element or a 0 of the padding: the generic code's bits."""
    x = random_maps(np.random.default_rng(m + k), maps, m, dtype)
    before = x.copy()
    got = kernels.im2col(x, k, conv_pads(k, padding), launcher=walk.shaped(**SHAPES[shape]))
    want = CPU.im2col(x, k, conv_pads(k, padding))
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))  # a copied -0.0 stays -0.0; the padding is +0.0
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES)
@pytest.mark.parametrize("k, padding", CONVS)
@pytest.mark.parametrize("maps", MAPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_col2im(walk, dtype, maps, k, padding, m, shape):
    """Each input element sums the entries that copied it, from 0 in ascending (i, j) order as the generic
    k.k shifted-slice additions do: the same additions in the same order, so the same bits."""
    rng = np.random.default_rng(m + 10 * k)
    input_shape = (*maps, m)
    pads = conv_pads(k, padding)
    rows, cols = CPU.im2col(np.zeros(input_shape, dtype), k, pads).shape
    columns = (rng.standard_normal((rows, cols)) * rng.choice([1e-3, 1.0, 1e3], size=cols)).astype(dtype)
    before = columns.copy()
    got = kernels.col2im(columns, input_shape, k, pads, launcher=walk.shaped(**SHAPES[shape]))
    want = CPU.col2im(columns, input_shape, k, pads)
    assert got.shape == input_shape and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(columns, before)
    # And what the sum is: col2im is im2col's transpose, <im2col(x), columns> = <x, col2im(columns)>
    x = rng.standard_normal(input_shape)
    lhs, rhs = np.vdot(CPU.im2col(x, k, pads), columns), np.vdot(x, got)
    terms = np.vdot(np.abs(CPU.im2col(x, k, pads)), np.abs(columns))
    assert abs(lhs - rhs) <= 2 * gamma(columns.size + k * k, np.float64) * terms + gamma(k * k, dtype) * terms


@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_and_col2im_large_count(walk, dtype):
    """More entries than the package's 8192 blocks of 256 threads: each thread goes round its loop."""
    x = random_maps(np.random.default_rng(9), (3, 6, 9), BIG_M, dtype)
    columns = kernels.im2col(x, 5, (2, 2), launcher=walk)
    assert columns.size > kernels.MAX_BLOCKS * kernels.BLOCK and walk.launches[-1].grid == kernels.MAX_BLOCKS
    np.testing.assert_array_equal(columns, CPU.im2col(x, 5, (2, 2)))
    columns = np.nan_to_num(columns)
    np.testing.assert_array_equal(kernels.col2im(columns, x.shape, 5, (2, 2), launcher=walk),
                                  CPU.col2im(columns, x.shape, 5, (2, 2)))


POOLS = [((1, 7, 5), 2), ((3, 6, 9), 2), ((2, 9, 7), 3), ((1, 4, 4), 4)]  # odd sizes: floored rows and columns


def pool_input(rng, maps, m, dtype):
    """Small integers (many ties, among them -0.0 against 0.0) with a few NaN and inf."""
    x = rng.integers(-2, 3, size=(*maps, m)).astype(dtype)
    flat = x.reshape(-1)
    flat[3::7] = -0.0
    flat[rng.integers(0, x.size, size=max(1, x.size // 40))] = np.nan
    flat[rng.integers(0, x.size, size=max(1, x.size // 60))] = -np.inf
    flat[rng.integers(0, x.size, size=max(1, x.size // 60))] = np.inf
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES)
@pytest.mark.parametrize("maps, size", POOLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool(walk, dtype, maps, size, m, shape):
    """Comparisons only: the generic maxima (NaN where a window holds one) and argmax (the first on a tie)."""
    x = pool_input(np.random.default_rng(m + size), maps, m, dtype)
    before = x.copy()
    y, argmax = kernels.max_pool(x, size, launcher=walk.shaped(**SHAPES[shape]))
    want_y, want_argmax = CPU.max_pool(x, size)
    assert y.dtype == np.dtype(dtype) and argmax.dtype == np.uint8
    np.testing.assert_array_equal(y, want_y)  # NaN matches NaN (a -0.0 max may be 0.0 either way: equal)
    np.testing.assert_array_equal(argmax, want_argmax)
    np.testing.assert_array_equal(x, before)
    if m >= 256:  # the inputs hold what the test is about: NaN windows, first and last entries as argmax
        assert np.isnan(y).any() and (argmax == 0).any() and (argmax == size * size - 1).any()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES)
@pytest.mark.parametrize("maps, size", POOLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_backward(walk, dtype, maps, size, m, shape):
    """A multiply by 1 or 0 per input element: the generic code's bits, a NaN or inf in dy showing."""
    rng = np.random.default_rng(m + 3 * size)
    x = pool_input(rng, maps, m, dtype)
    _, argmax = CPU.max_pool(x, size)
    dy = rng.standard_normal(argmax.shape).astype(dtype)
    dy.flat[::11] = np.inf
    dy.flat[1::13] = np.nan
    before = dy.copy(), argmax.copy()
    dx = kernels.max_pool_backward(dy, argmax, x.shape, size, launcher=walk.shaped(**SHAPES[shape]))
    with np.errstate(invalid="ignore"):  # inf * 0 is NaN, on purpose
        want = CPU.max_pool_backward(dy, argmax, x.shape, size)
    assert dx.shape == x.shape and dx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(dx, want)
    np.testing.assert_array_equal(dy, before[0])
    np.testing.assert_array_equal(argmax, before[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_large_count(walk, dtype):
    x = pool_input(np.random.default_rng(4), (3, 6, 9), 40_000, dtype)  # 1.2 million outputs, 6.5 million inputs
    y, argmax = kernels.max_pool(x, 2, launcher=walk)
    want_y, want_argmax = CPU.max_pool(x, 2)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(argmax, want_argmax)
    dy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    dx = kernels.max_pool_backward(dy, argmax, x.shape, 2, launcher=walk)
    assert walk.launches[-1].grid == kernels.MAX_BLOCKS
    np.testing.assert_array_equal(dx, CPU.max_pool_backward(dy, argmax, x.shape, 2))


# Seeds and steps whose key is above 2^63 and below it (a signed 64-bit key would differ there).
DROPOUT_STREAMS = [(0, 0), (7, 123_456), (2**40 + 3, 2**33 + 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SAMPLES)
@pytest.mark.parametrize("p", (0.0, 0.25, 0.5, 0.9))
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask(walk, dtype, p, size, shape):
    """Integer arithmetic modulo 2^64 and a choice between 0 and T(1/(1 - p)): the generic mask, bit for bit."""
    assert_dropout_masks_match(walk.shaped(**SHAPES[shape]), dtype, p, size)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_large_count(walk, dtype):
    assert_dropout_masks_match(walk, dtype, 0.5, 3_000_017)
    assert walk.launches[-1].grid == kernels.MAX_BLOCKS


def assert_dropout_masks_match(walk, dtype, p, size):
    for seed, step in DROPOUT_STREAMS:
        mask = np.full(size, np.nan, dtype)
        assert kernels.dropout_mask(mask, p, seed, step, launcher=walk) is mask
        np.testing.assert_array_equal(mask, layers.dropout_mask(np, (size,), p, seed, step, dtype))
    keys = [layers.dropout_key(seed, step) for seed, step in DROPOUT_STREAMS]
    assert min(keys) < 2**63 <= max(keys)


def test_dropout_mask_of_maps_is_numbered_sample_by_sample(walk):
    """A mask (C, H, W, m) is unit u = (c.H + y).W + x, sample s's draw n = s.units + u, as the generic mask's."""
    mask = np.empty((3, 5, 4, 7), np.float32)
    kernels.dropout_mask(mask, 0.3, 11, 5, launcher=walk)
    np.testing.assert_array_equal(mask, layers.dropout_mask(np, mask.shape, 0.3, 11, 5, np.float32))
    assert 0 < np.count_nonzero(mask) < mask.size


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("units, k, first", [(3, 1, 0), (1, 1, 41), (5, 1, 6), (37, 7, 9), (13, 29, 1000),
                                             (2, 300, 257)])  # 37.7, 13.29, 2.300: not multiples of a block
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_of_a_chunk_from_a_later_sample(walk, dtype, units, k, first, shape):
    """A chunk of k samples from sample ``first`` on: the generic mask of that chunk, which is the whole
    batch's columns first..first + k - 1 (a single sample too)."""
    walk = walk.shaped(**SHAPES[shape])
    for seed, step in DROPOUT_STREAMS:
        mask = np.full((units, k), np.nan, dtype)
        assert kernels.dropout_mask(mask, 0.4, seed, step, first_sample=first, launcher=walk) is mask
        np.testing.assert_array_equal(mask, layers.dropout_mask(np, (units, k), 0.4, seed, step, dtype, first))
        whole = layers.dropout_mask(np, (units, first + k), 0.4, seed, step, dtype)
        np.testing.assert_array_equal(mask, whole[:, first:])


def test_dropout_mask_of_maps_from_a_later_sample(walk):
    """Maps (C, H, W, k) from sample 5 on: the units flattened as in C order, each sample's draws after the
    earlier samples' (the generic mask's bits, and the whole batch's columns)."""
    mask = np.empty((3, 5, 4, 2), np.float64)
    kernels.dropout_mask(mask, 0.3, 11, 5, first_sample=5, launcher=walk)
    whole = layers.dropout_mask(np, (3, 5, 4, 7), 0.3, 11, 5, np.float64)
    np.testing.assert_array_equal(mask, whole[..., 5:])


# -- the optimizers' updates: one kernel for every parameter ------------------------------------------
class WalkedUpdates(Backend):
    """The generic backend, but an optimizer's whole step goes to the optimizers.cu kernel, walked on the CPU."""

    def __init__(self, walk):
        self.walk = walk

    def optimizer_update(self, rule, params, grads, state, **scalars) -> bool:
        kernels.optimizer_update(rule, params, grads, state, launcher=self.walk, **scalars)
        return True


def update_case(rng, dtype, n_w: int, n_b: int, steps: int):
    """A (weights, biases) pair and ``steps`` gradients for it: ordinary values, exact zeros, infinities, NaNs.

    No gradient is so small that a moment would be subnormal within ``steps`` steps (the generic optimizers
    flush those on the CPU, where they are slow; a GPU computes on them, or flushes float32's (-ftz=true)).
    """
    params = [(rng.standard_normal(n) * 0.5).astype(dtype) for n in (n_w, n_b)]
    grads = []
    for _ in range(steps):
        pair = [(rng.standard_normal(n) * rng.choice([1e-3, 1.0, 30.0], size=n)).astype(dtype) for n in (n_w, n_b)]
        for g in pair:
            g[::7] = 0
        grads.append(pair)
    if n_w > 20:
        grads[-1][0][5], grads[-1][0][11], params[0][17] = np.inf, np.nan, np.nan  # they stay where they are
    return params, grads


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sizes", [(1, 1), (7, 3), (12_960, 42), (256, 0)])
@pytest.mark.parametrize("rule", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_update(walk, dtype, rule, sizes, shape):
    """Three steps of each optimizer, with weight decay, as one kernel a step: the generic optimizer's parameters
    and state, bit for bit (the same +, -, *, / and sqrt on each element, in the same order and dtype)."""
    params, grads = update_case(np.random.default_rng(sum(sizes)), dtype, *sizes, steps=3)
    walked = walk.shaped(**SHAPES[shape])
    reference = make_optimizer(rule, [p.copy() for p in params], 0.01, 0.1)
    kernel = make_optimizer(rule, [p.copy() for p in params], 0.01, 0.1, backend=WalkedUpdates(walked))
    with np.errstate(invalid="ignore", over="ignore"):
        for pair in grads:
            reference.step([g.copy() for g in pair])
            kernel.step([g.copy() for g in pair])
    assert [launch.kernel for launch in walked.launches] == [f"{rule}_update"] * 3
    for got, want in zip(kernel.params, reference.params):
        np.testing.assert_array_equal(got, want)
    for attribute in {"momentum": ["velocity"], "adam": ["mean", "square"]}.get(rule, []):
        for got, want in zip(getattr(kernel, attribute), getattr(reference, attribute)):
            np.testing.assert_array_equal(got, want, err_msg=attribute)


BROKEN_UPDATES = {  # one slip in each rule's per-element body
    "sgd": ("    const T step = g * lr;\n    p -= step;", "    const T step = g * lr;\n    p += step;"),
    "momentum": ("    v *= beta;\n    v += g;", "    v += g;\n    v *= beta;"),
    "adam": ("    T root = sqrt(s);\n    root += eps;", "    T root = sqrt(s + eps);"),
}


def test_a_broken_optimizer_kernel_fails_the_comparison(tmp_path, monkeypatch):
    """The test above can fail: optimizers.cu with one slip per rule, built into a walk of its own."""
    from tests.kernel_support import HostWalk, WalkProcess, build_walk

    source = kernels.read_source("optimizers")
    for old, new in BROKEN_UPDATES.values():
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    folder = tmp_path / "kernels"
    folder.mkdir()
    for path in kernels.source_dir().iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "optimizers.cu").write_text(source)
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(folder))
    process = WalkProcess(build_walk(tmp_path), tmp_path)
    try:
        for rule in BROKEN_UPDATES:
            with pytest.raises(AssertionError, match="(Mismatched elements|not equal)"):
                test_optimizer_update(HostWalk(process), np.float32, rule, (7, 3), "package")
    finally:
        process.close()


# -- the output layer's end of a step: bias add, count and loss in one kernel ---------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", SAMPLES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_counted(walk, dtype, m, shape):
    """The bias add, the count (added to a counter that already holds 5) and the loss, in one kernel: the bits
    of the three steps it replaces, each walked as its own kernel (the same operations on each column)."""
    rng = np.random.default_rng(m)
    W_A = logits(rng, 10, m, dtype)  # Z_L without its bias
    b = rng.standard_normal((10, 1)).astype(dtype)
    labels = rng.integers(0, 10, size=m)
    Z = W_A + b
    want_dZ, want_losses = kernels.softmax_cross_entropy(Z, labels, launcher=walk)
    want_count = int(kernels.count_correct(Z, labels, launcher=walk))
    walked = walk.shaped(**SHAPES[shape])
    got_Z, counter = W_A.copy(), np.full(1, 5, np.int32)
    dZ, losses = kernels.softmax_cross_entropy_counted(got_Z, b, labels, counter, launcher=walked)
    assert [launch.kernel for launch in walked.launches] == ["softmax_cross_entropy_counted"]
    np.testing.assert_array_equal(got_Z, Z)  # one add each, written back
    np.testing.assert_array_equal(dZ, want_dZ)
    np.testing.assert_array_equal(losses, want_losses)
    assert int(counter[0]) == 5 + want_count


def test_a_broken_counted_loss_kernel_fails_the_comparison(tmp_path, monkeypatch):
    """The test above can fail: a loss.cu whose fused kernel adds the bias by sample instead of by class."""
    from tests.kernel_support import HostWalk, WalkProcess, build_walk

    source = kernels.read_source("loss")
    old = "            Z[c * m + i] += b[c];"
    assert source.count(old) == 1
    folder = tmp_path / "kernels"
    folder.mkdir()
    for path in kernels.source_dir().iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "loss.cu").write_text(source.replace(old, "            Z[c * m + i] += b[i % classes];"))
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(folder))
    process = WalkProcess(build_walk(tmp_path), tmp_path)
    try:
        with pytest.raises(AssertionError, match="(Mismatched elements|not equal)"):
            test_softmax_cross_entropy_counted(HostWalk(process), np.float32, 7, "package")
    finally:
        process.close()
