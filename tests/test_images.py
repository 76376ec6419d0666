"""A user's own images: read with Pillow, prepared the MNIST way, labeled by `predict --image`."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from gpunet.backends.cpu import CpuBackend
from gpunet.files.checkpoint import save_model
from tests.conftest import run
from gpunet.files.data import load_sample, split_validation
from gpunet.frontends.images import ImageError, ImageTooLarge, NoDigit, load_digit, prepare_digit, read_image
from gpunet.training.loop import TrainConfig, train

AGREEMENT = 0.95
COUNT = 400  # validation digits re-rendered per variant


@pytest.fixture(scope="module")
def trained():
    """(network, validation digits): 784-100-10 trained 3 epochs on the bundled sample (under a second)."""
    train_digits, val_digits = split_validation(load_sample(), 1000, 0)
    result = train(CpuBackend(), train_digits, val_digits, TrainConfig(hidden=(100,), epochs=3, batch_size=256))
    return result.network, val_digits


@pytest.fixture(scope="module")
def model_file(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    save_model(path, trained[0].host_params(), {})
    return path


def labels_of(network, pixels):
    return network.probabilities(np.asarray(pixels, dtype=np.uint8)).argmax(axis=1)


def square(pixels):
    return Image.fromarray(pixels.reshape(28, 28))


# Each variant turns a 28x28 MNIST digit (light on black) into a picture a user might have.
def larger(image):
    return image.resize((56, 56), Image.Resampling.BICUBIC)


def wide_off_centre(image):
    """100x80, the digit at 2.5x in the lower right."""
    field = Image.new("L", (100, 80))
    field.paste(image.resize((70, 70), Image.Resampling.BICUBIC), (28, 8))
    return field


def inverted(image):
    """Dark ink on white paper, at 56x56."""
    return Image.fromarray(255 - np.asarray(larger(image)))


def shifted(image):
    """The 28x28 digit in the top right corner of a 64x48 field."""
    field = Image.new("L", (64, 48))
    field.paste(image, (34, 0))
    return field


def photo_like(image):
    """Dark ink on greyish paper in RGB, 300x200, off centre, saved as JPEG."""
    ink = 255 - np.asarray(image.resize((120, 120), Image.Resampling.BICUBIC), dtype=np.float32)
    paper = np.full((200, 300), 228.0, dtype=np.float32)
    paper[60:180, 160:280] = 228 * ink / 255
    gray = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    return Image.merge("RGB", (gray, gray, gray.point(lambda v: v * 0.95)))


VARIANTS = {"56x56": (larger, "png"), "100x80": (wide_off_centre, "png"), "inverted": (inverted, "png"),
            "shifted": (shifted, "png"), "photo": (photo_like, "jpg")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_rerendered_digits_are_labeled_like_the_originals(trained, tmp_path, variant):
    network, digits = trained
    originals = digits.images[:COUNT]
    make, suffix = VARIANTS[variant]
    prepared = []
    for k, pixels in enumerate(originals):
        path = tmp_path / f"{k}.{suffix}"
        make(square(pixels)).save(path)
        prepared.append(load_digit(path))
    agreement = np.mean(labels_of(network, prepared) == labels_of(network, originals))
    assert agreement >= AGREEMENT, f"{variant}: {100 * agreement:.1f}% agree with the original digits"


def test_an_mnist_digit_is_left_almost_unchanged(trained):
    originals = trained[1].images[:200]
    prepared = np.stack([prepare_digit(square(p)) for p in originals])
    assert np.abs(prepared.astype(int) - originals).mean() < 1.0  # of 255 gray levels
    assert np.mean(labels_of(trained[0], prepared) == labels_of(trained[0], originals)) >= 0.99


def test_the_mnist_geometry():
    """A tall stroke anywhere in a big picture: longer side 20 pixels, centre of mass at (14, 14)."""
    picture = np.zeros((300, 500), dtype=np.uint8)
    picture[20:220, 400:440] = 255  # 200 tall, 40 wide, far from the centre
    picture[20:60, 360:440] = 255  # a flag at the top left, to move the centre of mass
    digit = prepare_digit(Image.fromarray(picture)).reshape(28, 28).astype(float)
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    assert rows[-1] - rows[0] + 1 == 20
    assert cols[-1] - cols[0] + 1 <= 20
    ys, xs = np.mgrid[0:28, 0:28]
    assert abs((digit * ys).sum() / digit.sum() - 14) <= 0.5
    assert abs((digit * xs).sum() / digit.sum() - 14) <= 0.5


def test_dark_on_light_and_light_on_dark_are_the_same_digit(trained):
    pixels = trained[1].images[0]
    light_on_dark = larger(square(pixels))
    dark_on_light = Image.fromarray(255 - np.asarray(light_on_dark))
    np.testing.assert_array_equal(prepare_digit(light_on_dark), prepare_digit(dark_on_light))


def drawing(mode_of_ink="dark"):
    """A '7' drawn on 120x120: ink mask (bool)."""
    mask = np.zeros((120, 120), dtype=bool)
    mask[20:32, 25:95] = True
    for y in range(32, 105):
        x = 92 - (y - 32) * 0.45
        mask[y, int(x) - 6 : int(x) + 6] = True
    return mask


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "I;16", "LA-transparent", "RGBA-transparent-light-ink", "1"])
def test_image_modes_agree(mode):
    mask = drawing()
    gray = np.where(mask, 0, 255).astype(np.uint8)  # dark ink on white
    expected = prepare_digit(Image.fromarray(gray))
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode == "LA-transparent":  # dark strokes on a transparent canvas
        image = Image.fromarray(np.dstack([np.zeros_like(gray), np.where(mask, 255, 0).astype(np.uint8)]), mode="LA")
    elif mode == "RGBA-transparent-light-ink":  # white strokes on a transparent canvas
        alpha = np.where(mask, 255, 0).astype(np.uint8)
        white = np.full_like(gray, 255)
        image = Image.fromarray(np.dstack([white, white, white, alpha]), mode="RGBA")
    else:
        image = Image.fromarray(gray).convert(mode)
    prepared = prepare_digit(image)
    assert np.abs(prepared.astype(int) - expected).max() <= 2, mode


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.fromarray(np.where(drawing(), 0, 255).astype(np.uint8))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera stores...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with "rotate 90 clockwise to display"
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif)
    np.testing.assert_array_equal(load_digit(path), prepare_digit(upright))


def test_a_large_photo_is_shrunk_first(trained, tmp_path):
    network, digits = trained
    big = Image.fromarray(255 - np.asarray(square(digits.images[3]).resize((1800, 1800), Image.Resampling.BICUBIC)))
    canvas = Image.new("L", (4000, 3000), 255)
    canvas.paste(big, (1500, 900))
    path = tmp_path / "photo.jpg"
    canvas.save(path, quality=90)
    assert labels_of(network, [load_digit(path)]) == labels_of(network, digits.images[3:4])


@pytest.mark.parametrize("content, expected", [
    (b"", "not an image"),
    (b"plain text, not a picture", "not an image"),
    ("truncated", "cannot read the image"),
])
def test_unreadable_files_name_themselves(tmp_path, content, expected):
    path = tmp_path / "bad.png"
    if content == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, size=(200, 200), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        content = path.read_bytes()[:20_000]
    path.write_bytes(content)
    with pytest.raises(ImageError, match=expected) as error:
        load_digit(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_digit(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_digit(tmp_path)


@pytest.mark.parametrize("level", [0, 255, 128])
def test_blank_or_flat_images_hold_no_digit(level):
    with pytest.raises(NoDigit, match="no digit found"):
        prepare_digit(Image.new("L", (50, 40), level))
    noise = np.random.default_rng(0).integers(100, 120, size=(40, 50)).astype(np.uint8)
    with pytest.raises(NoDigit):
        prepare_digit(Image.fromarray(noise))


def test_too_many_pixels_refused_before_decoding(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("L", (3000, 2000)).save(path)
    with pytest.raises(ImageTooLarge, match="3000x2000"):
        read_image(path, max_pixels=1000 * 1000)


def test_past_pillows_limit_refused_without_its_warning(tmp_path, monkeypatch):
    """Above Pillow's decompression-bomb limit: one ImageError, not Pillow's two-line warning on stderr."""
    path = tmp_path / "huge.png"
    Image.new("L", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 200 - 1)  # Pillow warns above this, errors above twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge, match="300x200 pixels is too large"):
            read_image(path)


# --- gpunet predict --image -----------------------------------------------------------------


@pytest.fixture
def image_files(trained, tmp_path):
    network, digits = trained
    paths = []
    for k in range(3):
        path = tmp_path / f"digit{k}.png"
        inverted(square(digits.images[k])).save(path)
        paths.append(path)
    expected = labels_of(network, [load_digit(p) for p in paths])
    return paths, expected


def test_predict_image_prints_digit_and_top_three(capsys, model_file, image_files):
    paths, expected = image_files
    code, out, err = run(capsys, "predict", "--model", str(model_file), "--device", "cpu",
                         "--image", *map(str, paths))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    for line, path, label in zip(lines, paths, expected):
        name, _, rest = line.partition(": ")
        assert name == str(path)
        assert rest.startswith(f"{label}  ({label} ")
        top = rest.split("(")[1].rstrip(")").split(", ")
        assert len(top) == 3 and all(len(item.split()) == 2 for item in top)


def test_predict_image_repeated_option(capsys, model_file, image_files):
    paths, _ = image_files
    code, out, err = run(capsys, "predict", "--model", str(model_file), "--device", "cpu",
                         "--image", str(paths[0]), "--image", str(paths[1]), str(paths[2]))
    assert code == 0, err
    assert sorted(line.split(": ")[0] for line in out.splitlines()) == sorted(map(str, paths))


def test_predict_image_json(capsys, model_file, image_files):
    paths, expected = image_files
    code, out, err = run(capsys, "predict", "--model", str(model_file), "--device", "cpu", "--json",
                         "--image", *map(str, paths))
    assert code == 0, err
    answers = json.loads(out)
    assert [a["file"] for a in answers] == [str(p) for p in paths]
    assert [a["label"] for a in answers] == expected.tolist()
    for answer in answers:
        assert len(answer["probabilities"]) == 10
        # each rounded to 6 decimals (<= 5e-7 off), computed in float32 (their sum is 1 to ~10 eps)
        assert sum(answer["probabilities"]) == pytest.approx(1, abs=10 * (0.5e-6 + float(np.finfo(np.float32).eps)))
        assert answer["label"] == int(np.argmax(answer["probabilities"]))


def test_predict_image_goes_on_past_a_bad_file(capsys, model_file, image_files, tmp_path):
    paths, expected = image_files
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    code, out, err = run(capsys, "predict", "--model", str(model_file), "--device", "cpu",
                         "--image", str(paths[0]), str(bad), str(tmp_path / "missing.png"), str(paths[1]))
    assert code == 1
    assert [line.split(":")[0] for line in out.splitlines()] == [str(paths[0]), str(paths[1])]
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and str(bad) in errors[0] and "missing.png" in errors[1]
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    ((), "give --data FILE (digits to label) or --image"),
    (("--image", "a.png", "--data", "test.csv"), "not both"),
    (("a.png",), "use --image a.png"),
    (("--data", "test.csv", "--json"), "--json goes with --image"),
])
def test_predict_needs_data_or_image(capsys, model_file, args, message):
    code, out, err = run(capsys, "predict", "--model", str(model_file), *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
