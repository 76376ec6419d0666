"""Augmentation (gpunet/nn/augment.py): the transform against an independent plain-loop reference, its exact
cases, the compiled CPU pass and the CUDA kernel (walked on the CPU, and launched through the CuPy stand-in)
against it within the derived bound, and what training with it guarantees (reproducible, validation untouched,
the data set kept as uint8)."""

from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pytest

from gpunet.backends import kernels
from gpunet.backends.base import Backend
from gpunet.backends.cpu import CpuBackend, _cpu_augment
from gpunet.files.checkpoint import load_model
from gpunet.files.data import Digits, load_sample, split_validation
from gpunet.nn import augment
from gpunet.training.loop import DeviceData, SettingError, TrainConfig, compute_threads, evaluate, train
from tests.conftest import run
from tests.tolerances import assert_within, augment_bound, gamma

SIDE = augment.SIDE
DTYPES = (np.float32, np.float64)
GENERIC = Backend()  # the NumPy reference, never compiled


def digits(m: int, seed: int = 0) -> np.ndarray:
    """m random uint8 images (m, 784) with a blank border row and column here and there (as real digits)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(m, SIDE * SIDE), dtype=np.uint8)
    images[::3, :SIDE] = 0
    return images


def random_parameters(m: int, seed: int = 1, wide: bool = False):
    """(theta, phi, sx, sy, tx, ty) arrays: the default ranges with shear, or wider ones (far off the image)."""
    rng = np.random.default_rng(seed)
    turn, shift = (np.pi, 20.0) if wide else (np.radians(10), 2.8)
    return (rng.uniform(-turn, turn, m), rng.uniform(-0.3, 0.3, m), rng.uniform(0.6, 1.4, m),
            rng.uniform(0.6, 1.4, m), rng.uniform(-shift, shift, m), rng.uniform(-shift, shift, m))


# -- the reference: plain loops in float64, the inverse map solved from the forward one ---------------
def reference_sample(image: np.ndarray, theta, phi, sx, sy, tx, ty) -> tuple[np.ndarray, np.ndarray]:
    """(A0 column (784,), source coordinates (784, 2)) by plain loops: the forward map R.H.S built from the
    parameters, each output pixel's source found by solving it (not by augment's closed-form inverse), and the
    four pixels weighted (1 - fx)(1 - fy), fx(1 - fy), (1 - fx)fy, fx.fy, 0 outside the image."""
    rotation = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    forward = rotation @ np.array([[1.0, math.tan(phi)], [0.0, 1.0]]) @ np.diag([sx, sy])
    c = (SIDE - 1) / 2
    pixels = image.reshape(SIDE, SIDE).astype(np.float64)

    def pixel(y, x):
        return pixels[y, x] if 0 <= y < SIDE and 0 <= x < SIDE else 0.0

    column, sources = np.zeros(SIDE * SIDE), np.zeros((SIDE * SIDE, 2))
    for yo in range(SIDE):
        for xo in range(SIDE):
            xs, ys = np.linalg.solve(forward, [xo - c - tx, yo - c - ty]) + c
            x0, y0 = math.floor(xs), math.floor(ys)
            fx, fy = xs - x0, ys - y0
            value = ((1 - fx) * (1 - fy) * pixel(y0, x0) + fx * (1 - fy) * pixel(y0, x0 + 1)
                     + (1 - fx) * fy * pixel(y0 + 1, x0) + fx * fy * pixel(y0 + 1, x0 + 1))
            column[yo * SIDE + xo], sources[yo * SIDE + xo] = value / 255, (xs, ys)
    return column, sources


def coordinates(transforms) -> np.ndarray:
    """Each sample's source coordinates (k, 784, 2) from its coefficients, in float64."""
    t = np.asarray(transforms, np.float64)
    xo, yo = np.tile(np.arange(SIDE), SIDE), np.repeat(np.arange(SIDE), SIDE)
    return np.stack([t[:, 0:1] * xo + t[:, 1:2] * yo + t[:, 2:3], t[:, 3:4] * xo + t[:, 4:5] * yo + t[:, 5:6]], -1)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_version_matches_the_plain_loop_reference(dtype, wide):
    """The generic code against the reference, within the derived bound: the float64 route's coordinates from
    the closed-form inverse differ from the solved ones by a measured few 1e-14 pixel, and each pixel moves by at
    most that (slope <= 1 per pixel) plus augment_bound; in float32 the coefficients' cast moves each coordinate
    by at most u.(|a.xo| + |b.yo| + |c0|), below the bound's own coordinate term, so twice the bound holds it."""
    m = 6
    images = digits(m)
    params = random_parameters(m, wide=wide)
    transforms = augment.inverse_coefficients(*params)
    columns, sources = zip(*(reference_sample(images[j], *(p[j] for p in params)) for j in range(m)))
    want, sources = np.stack(columns, axis=1), np.stack(sources)
    moved = np.abs(coordinates(transforms) - sources).sum(axis=-1).T  # the two routes' coordinates
    assert moved.max() < 1e-12
    got = GENERIC.gather_augmented(images, None, transforms.astype(dtype), dtype)
    assert got.shape == (SIDE * SIDE, m) and got.dtype == np.dtype(dtype)
    bound = augment_bound(transforms.astype(dtype), dtype)
    assert_within(got, want, (2 if dtype == np.float32 else 1) * bound + moved + gamma(16, np.float64), "A0")
    if wide:  # the transforms take much of each digit off the image: the zero border is read
        assert (want == 0).mean() > 0.2


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_returns_the_image(dtype):
    """a = e = 1 and the rest 0 exactly: every weight is 1 or 0, so gather_scaled's batch, bit for bit."""
    images = digits(9)
    index = np.array([4, 0, 8, 4])
    transforms = augment.identity(9).astype(dtype)
    assert (transforms[:, [1, 2, 3, 5]] == 0).all() and (transforms[:, [0, 4]] == 1).all()
    want = GENERIC.gather_scaled(images, index, dtype)
    np.testing.assert_array_equal(GENERIC.gather_augmented(images, index, transforms, dtype), want)
    np.testing.assert_array_equal(CpuBackend().gather_augmented(images, index, transforms, dtype), want)


@pytest.mark.parametrize("tx, ty", [(2, -3), (-1, 0), (0, 5), (28, 0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_whole_pixel_shift_moves_pixels_exactly(dtype, tx, ty):
    """Content moved by (tx, ty) whole pixels: out[y, x] = image[y - ty, x - tx], zeros coming in from the edge."""
    images = digits(3)
    zero = np.zeros(3)
    transforms = augment.inverse_coefficients(zero, zero, zero + 1, zero + 1, zero + tx, zero + ty).astype(dtype)
    got = CpuBackend().gather_augmented(images, None, transforms, dtype).T.reshape(3, SIDE, SIDE)
    want = np.zeros((3, SIDE, SIDE))
    source = images.reshape(3, SIDE, SIDE).astype(dtype) * np.dtype(dtype).type(1 / 255)
    ys, xs = slice(max(ty, 0), SIDE + min(ty, 0)), slice(max(tx, 0), SIDE + min(tx, 0))
    want[:, ys, xs] = source[:, max(-ty, 0):SIDE + min(-ty, 0), max(-tx, 0):SIDE + min(-tx, 0)]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(GENERIC.gather_augmented(images, None, transforms, dtype).T.reshape(3, SIDE, SIDE),
                                  want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_quarter_turn_is_numpy_rot90(dtype):
    """theta = 90 degrees about the centre maps the pixel grid onto itself: np.rot90 (counter-clockwise as shown,
    rows down), within the bound (cos 90 degrees is 6e-17 in float64, not 0); compared away from the border."""
    images = digits(4)
    zero = np.zeros(4)
    transforms = augment.inverse_coefficients(zero + np.pi / 2, zero, zero + 1, zero + 1, zero, zero).astype(dtype)
    got = CpuBackend().gather_augmented(images, None, transforms, dtype).T.reshape(4, SIDE, SIDE)
    want = np.rot90(images.reshape(4, SIDE, SIDE), axes=(1, 2)) / 255
    bound = 2 * augment_bound(transforms, dtype).T.reshape(4, SIDE, SIDE)
    assert_within(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], bound[:, 1:-1, 1:-1], "a quarter turn")
    assert not np.allclose(got, images.reshape(4, SIDE, SIDE) / 255, atol=0.1)  # it did turn


@pytest.mark.paths
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_compiled_pass_matches_the_numpy_version(dtype):
    """cpu_augment.py's loop against the generic code: the derived bound, into a fresh array and into a
    workspace's (either layout); a row number outside the data set is refused."""
    if _cpu_augment() is None:
        pytest.skip("numba is not installed: the CPU runs the generic code")
    images = digits(50)
    transforms = augment.inverse_coefficients(*random_parameters(50, wide=True)).astype(dtype)
    index = np.random.default_rng(2).integers(0, 50, size=37)
    want = GENERIC.gather_augmented(images, index, transforms, dtype)
    bound = augment_bound(transforms[index], dtype)
    cpu = CpuBackend()
    assert_within(cpu.gather_augmented(images, index, transforms, dtype), want, bound, "compiled A0")
    for out in (np.empty((SIDE * SIDE, 37), dtype), np.empty((37, SIDE * SIDE), dtype).T):
        assert cpu.gather_augmented(images, index, transforms, dtype, out=out) is out
        assert_within(out, want, bound, "compiled A0 into out")
    with pytest.raises(IndexError):
        cpu.gather_augmented(images, np.array([0, 50]), transforms, dtype)


# -- drawing the transforms ---------------------------------------------------------------------------
def test_the_draws_are_a_function_of_seed_and_epoch_within_their_ranges():
    a = augment.draw_transforms(3, 2, 500)
    np.testing.assert_array_equal(a, augment.draw_transforms(3, 2, 500))
    assert not np.allclose(a, augment.draw_transforms(3, 1, 500))
    assert not np.allclose(a, augment.draw_transforms(4, 2, 500))
    # The linear part M = S^-1.R(-theta) (no shear by default): its columns' lengths are 1/sx and 1/sy... as rows:
    # row 0 of M has length 1/sx, row 1 1/sy, and the angle of row 1 is theta.
    sx, sy = 1 / np.hypot(a[:, 0], a[:, 1]), 1 / np.hypot(a[:, 3], a[:, 4])
    theta = np.degrees(np.arctan2(a[:, 3], a[:, 4]))
    assert np.all(np.abs(theta) <= 10) and np.abs(theta).max() > 9
    assert np.all(np.abs(np.concatenate([sx, sy]) - 1) <= 0.1 + 1e-12) and np.abs(sx - 1).max() > 0.09
    # Where the centre goes: the shift, up to 2.8 pixels each way.
    c = (SIDE - 1) / 2
    shift = np.array([np.linalg.solve([[r[0], r[1]], [r[3], r[4]]], [c - r[2], c - r[5]]) for r in a]) - c
    assert np.all(np.abs(shift) <= 2.8 + 1e-9) and np.abs(shift).max() > 2.7


def test_ranges_are_checked():
    for bad in ({"rotation": -1}, {"zoom": 1.0}, {"shift": float("nan")}, {"shear": 90}):
        with pytest.raises(ValueError):
            augment.AugmentRanges(**bad)
    assert augment.DEFAULT_RANGES.describe() == "rotation +/-10 deg, zoom +/-10% per axis, shift +/-10% (2.8 px)"


# -- training with it ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def split():
    sample = load_sample()
    return split_validation(Digits(sample.images[:700], sample.labels[:700], "700"), 200, 0)


class Spy(CpuBackend):
    """The CPU backend, recording what each gather_augmented call was given and gave."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def gather_augmented(self, images, index, transforms, dtype, out=None):
        A0 = super().gather_augmented(images, index, transforms, dtype, out=out)
        self.calls.append((images, None if index is None else index.copy(), transforms, A0.dtype))
        return A0


@pytest.mark.parametrize("arch, batch_size", [(None, 64), ("conv4k5,pool2,dense16", 64), (None, 0)])
def test_training_draws_each_batch_and_leaves_validation_and_the_data_alone(split, arch, batch_size):
    """Each step's batch is the uint8 training set drawn through the epoch's transforms (a float batch); the
    data set is the same uint8 array throughout, unchanged; the validation figures are those of the plain digits."""
    train_digits, val_digits = split
    before = train_digits.images.copy()
    backend = Spy()
    config = TrainConfig(hidden=(16,) if arch is None else (), arch=arch, epochs=2, batch_size=batch_size, seed=5,
                         augment=True)
    result = train(backend, train_digits, val_digits, config)
    steps = 1 if batch_size == 0 else math.ceil(len(train_digits) / batch_size)
    assert len(backend.calls) == 2 * steps
    data_images = backend.calls[0][0]
    assert data_images.dtype == np.uint8 and data_images.shape == train_digits.images.shape
    for images, index, transforms, dtype in backend.calls:
        assert images is data_images and dtype == np.float32  # the one uint8 data set; only the batch is float
        assert transforms.shape == (len(train_digits), 6) and transforms.dtype == np.float32
    for epoch, call in ((1, backend.calls[0]), (2, backend.calls[-1])):
        np.testing.assert_array_equal(call[2], augment.draw_transforms(5, epoch, len(train_digits)).astype(np.float32))
    if batch_size:
        visited = np.sort(np.concatenate([index for _, index, _, _ in backend.calls[:steps]]))
        np.testing.assert_array_equal(visited, np.arange(len(train_digits)))  # each digit once an epoch
    np.testing.assert_array_equal(train_digits.images, before)
    # Validation is scored on the digits as they are: the last epoch's figures are evaluate()'s on them
    # (the same computation: the same bits), and no call drew the validation digits.
    with compute_threads(result.network):  # as the loop scores them: BLAS's threads choose the order of its sums
        val_loss, val_accuracy = evaluate(result.network, DeviceData(backend, val_digits))
    assert (result.history[-1].val_loss, result.history[-1].val_accuracy) == (val_loss, val_accuracy)


def test_the_same_seed_gives_the_same_run_and_augmentation_changes_it(split):
    train_digits, val_digits = split
    runs = [train(CpuBackend(), train_digits, val_digits,
                  TrainConfig(hidden=(16,), epochs=2, seed=seed, augment=augmented)).network.host_params()
            for seed, augmented in ((1, True), (1, True), (1, False), (2, True))]
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a, b)  # the same computation twice
    assert not np.allclose(runs[0][0], runs[2][0])  # the augmented digits were learned from
    assert not np.allclose(runs[0][0], runs[3][0])


def test_augmentation_needs_pixel_digits():
    from gpunet.frontends.estimator import Samples

    features = Samples(np.random.default_rng(0).random((20, 784)), np.zeros(20, np.uint8))
    with pytest.raises(SettingError, match="augment=True: draws 28x28 pixel digits.*784 float features"):
        train(CpuBackend(), features, features, TrainConfig(hidden=(4,), epochs=1, augment=True))
    with pytest.raises(SettingError, match="augment="):
        TrainConfig(augment="yes")


def test_the_estimator_takes_augment():
    import gpunet

    from sklearn.exceptions import ConvergenceWarning

    sample = load_sample()
    with warnings.catch_warnings():  # one short epoch on 250 digits: whether it learned is not this test's matter
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = gpunet.Classifier(hidden=(16,), epochs=1, augment=True, val_size=50).fit(sample.images[:300],
                                                                                        sample.labels[:300])
    assert clf.config_.augment is True and clf.get_params()["augment"] is True
    with pytest.raises(ValueError, match="augment"):
        gpunet.Classifier(hidden=(4,), epochs=1, augment=True).fit(np.random.default_rng(0).random((40, 784)),
                                                                    np.arange(40) % 2)


def test_the_cli_trains_with_augment_and_records_it(capsys, tmp_path):
    out = tmp_path / "model.npz"
    code, stdout, stderr = run(capsys, "train", "--augment", "--epochs", "1", "--hidden", "16", "--device", "cpu",
                               "--out", str(out))
    assert code == 0, stderr
    assert "Augmentation: rotation +/-10 deg, zoom +/-10% per axis, shift +/-10% (2.8 px)" in stdout
    assert load_model(out)[1]["training"]["augment"] is True
    code, stdout, _ = run(capsys, "train", "--help")
    assert "--augment" in stdout and "rotation +/-10 deg" in " ".join(stdout.split())


# -- the CUDA kernel, walked on the CPU ---------------------------------------------------------------
SHAPES = {"package": {}, "strided": {"grid": 3, "block": 32, "order": "reverse"}}


def assert_kernel_matches(walk, dtype, batch: int, wide: bool):
    rows = max(batch, 20)
    images = digits(rows, seed=batch)
    transforms = np.ascontiguousarray(augment.inverse_coefficients(*random_parameters(rows, wide=wide)).astype(dtype))
    index = np.random.default_rng(batch).integers(0, rows, size=batch)  # repeats allowed
    before = images.copy(), transforms.copy()
    got = kernels.affine_augment(images, index, transforms, dtype, SIDE, launcher=walk)
    want = GENERIC.gather_augmented(images, index, transforms, dtype)
    assert got.shape == (SIDE * SIDE, batch) and got.dtype == np.dtype(dtype)
    assert_within(got, want, augment_bound(transforms[index], dtype), "kernel A0")
    np.testing.assert_array_equal(images, before[0])
    np.testing.assert_array_equal(transforms, before[1])


@pytest.mark.kernels
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch, wide", [(1, False), (7, True), (257, False), (300, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernel_walked_on_the_cpu_matches_the_numpy_version(walk, dtype, batch, wide, shape):
    assert_kernel_matches(walk.shaped(**SHAPES[shape]), dtype, batch, wide)


@pytest.mark.kernels
def test_the_kernel_gives_nan_for_a_row_outside_the_data_set(walk):
    images = digits(5)
    transforms = augment.identity(5).astype(np.float32)
    A0 = kernels.affine_augment(images, np.array([1, 5, -1, 4]), transforms, np.float32, SIDE, launcher=walk)
    assert np.isnan(A0[:, 1:3]).all()
    np.testing.assert_array_equal(A0[:, [0, 3]], GENERIC.gather_scaled(images, np.array([1, 4]), np.float32))


def test_the_kernel_wrapper_refuses_what_the_kernel_cannot_take():
    images, transforms = digits(4), augment.identity(4).astype(np.float32)
    bad = [
        lambda launcher: kernels.affine_augment(images.astype(np.int32), None, transforms, np.float32, SIDE, launcher=launcher),
        lambda launcher: kernels.affine_augment(images[:, :700], None, transforms, np.float32, SIDE, launcher=launcher),
        lambda launcher: kernels.affine_augment(images, None, transforms[:3], np.float32, SIDE, launcher=launcher),
        lambda launcher: kernels.affine_augment(images, None, transforms, np.float64, SIDE, launcher=launcher),  # transforms of another dtype
        lambda launcher: kernels.affine_augment(images, None, np.asfortranarray(transforms), np.float32, SIDE, launcher=launcher),
        lambda launcher: kernels.affine_augment(images, np.zeros(2), transforms, np.float32, SIDE, launcher=launcher),
        lambda launcher: kernels.affine_augment(images, None, transforms.astype(np.float16), np.float16, SIDE, launcher=launcher),
    ]
    launches = []
    for call in bad:
        with pytest.raises(ValueError):
            call(launcher=launches.append)
    assert launches == []


@pytest.mark.kernels
@pytest.mark.parametrize("typo", [
    ("fx * digit_pixel<T>(digit, side, iy0, ix1)", "fx * digit_pixel<T>(digit, side, iy0, ix0)"),  # wrong neighbour
    ("const T ys = (t[3] * x + t[4] * y) + t[5];", "const T ys = (t[3] * x + t[4] * y) + t[2];"),  # wrong offset
])
def test_a_broken_kernel_fails(walk, tmp_path, monkeypatch, typo):
    """The comparison above catches a kernel that reads a wrong neighbour or a wrong coefficient."""
    from tests.kernel_support import HostWalk, WalkProcess, build_walk

    broken = tmp_path / "kernels"
    shutil.copytree(kernels.source_dir(), broken)
    source = (broken / "augment.cu").read_text()
    assert typo[0] in source
    (broken / "augment.cu").write_text(source.replace(typo[0], typo[1]))
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(broken))
    process = WalkProcess(build_walk(tmp_path), tmp_path)
    try:
        with pytest.raises(AssertionError, match="kernel A0"):
            assert_kernel_matches(HostWalk(process), np.float32, 7, False)
    finally:
        process.close()


# -- the CUDA backend: on a device, and on the CuPy stand-in --------------------------------------------
@pytest.fixture(params=[pytest.param("device", marks=pytest.mark.gpu),
                        pytest.param("stand-in", marks=pytest.mark.kernels)])
def cuda(request):
    """CupyBackend on a real device (skipped where none is usable), or on the CuPy stand-in (kernels walked)."""
    if request.param == "device":
        from tests.conftest import cuda_skip_reason

        reason = cuda_skip_reason()
        if reason is not None:
            pytest.skip(f"no usable CUDA device: {reason}")
        from gpunet.backends.devices import get_backend

        return get_backend("cuda")[0]
    return request.getfixturevalue("stand_in_cuda")


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cuda_backend_gives_the_cpu_result_for_the_same_seed(cuda, dtype):
    """The same seed's transforms, drawn on the host, sent to the device: the kernel's batch is the CPU
    backend's within the derived bound (both computations' roundings, a GPU's fused multiply-adds among them)."""
    images = digits(90)
    transforms = augment.draw_transforms(7, 3, 90).astype(dtype)
    index = np.random.default_rng(3).permutation(90)[:64]
    xp = cuda.xp
    got = cuda.gather_augmented(xp.asarray(images), xp.asarray(index), xp.asarray(transforms), dtype)
    assert isinstance(got, xp.ndarray) and got.flags.c_contiguous  # the kernel's result (the generic one is too)
    want = CpuBackend().gather_augmented(images, index, transforms, dtype)
    assert_within(got.get(), want, augment_bound(transforms[index], dtype), "the device's A0")


@pytest.mark.kernels
def test_the_cuda_backend_launches_the_kernel(stand_in_cuda, walk):
    xp = stand_in_cuda.xp
    transforms = xp.asarray(augment.draw_transforms(0, 1, 10).astype(np.float32))
    stand_in_cuda.gather_augmented(xp.asarray(digits(10)), xp.asarray(np.arange(4)), transforms, np.float32)
    assert [launch.name for launch in walk.launches] == ["affine_augment<float>"]


@pytest.mark.kernels
def test_augmented_training_on_the_cuda_backend_runs_the_kernel(stand_in_cuda, walk, split):
    train_digits, val_digits = split
    config = TrainConfig(hidden=(16,), epochs=1, seed=0, augment=True, dtype="float64")
    result = train(stand_in_cuda, train_digits, val_digits, config)
    names = [launch.name for launch in walk.launches]
    assert names.count("affine_augment<double>") == math.ceil(len(train_digits) / 64)
    assert "gather_scaled<double>" in names  # the validation digits, as they are
    assert result.final.val_accuracy > 0.2
