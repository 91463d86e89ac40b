"""Tests for digitnet.inference.preprocess: real-world images into MNIST form.

Synthetic digits are drawn with PIL.ImageDraw so that most tests need no data; the tests on real
MNIST digits read the test set from DIGITNET_DATA_DIR (the ``mnist_dir`` fixture) and skip
without it.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from digitnet.errors import ImageError, NoDigitFound
from digitnet.inference.preprocess import (
    BOX_SIDE,
    CENTRE,
    MAX_PIXELS,
    find_ink,
    preprocess_image,
    read_grey,
)
from renderings import RENDERINGS, stroke_coverage

# ---------------------------------------------------------------------------------------------
# Helpers


def draw_digit(
    shape: str = "seven", size: int = 200, width: int | None = None, ink: int = 0, paper: int = 255
) -> Image.Image:
    """A synthetic digit-like drawing, 'L' mode, ``size`` px square; asymmetric shapes on
    purpose."""
    width = width if width is not None else max(2, size // 14)
    image = Image.new("L", (size, size), paper)
    draw = ImageDraw.Draw(image)
    s = size
    if shape == "seven":
        draw.line(
            [(0.28 * s, 0.22 * s), (0.72 * s, 0.22 * s), (0.42 * s, 0.8 * s)],
            fill=ink,
            width=width,
            joint="curve",
        )
    elif shape == "zero":
        draw.ellipse([0.33 * s, 0.2 * s, 0.67 * s, 0.8 * s], outline=ink, width=width)
    elif shape == "one":
        draw.line([(0.52 * s, 0.18 * s), (0.46 * s, 0.82 * s)], fill=ink, width=width)
    elif shape == "four":
        draw.line(
            [(0.55 * s, 0.2 * s), (0.3 * s, 0.6 * s), (0.72 * s, 0.6 * s)],
            fill=ink,
            width=width,
            joint="curve",
        )
        draw.line([(0.6 * s, 0.4 * s), (0.6 * s, 0.82 * s)], fill=ink, width=width)
    elif shape == "corner":
        # Mass piled in one corner: centring it on its mass at full size would leave the frame.
        draw.rectangle([0.2 * s, 0.2 * s, 0.45 * s, 0.45 * s], fill=ink)
        draw.line([(0.2 * s, 0.2 * s), (0.8 * s, 0.8 * s)], fill=ink, width=max(1, width // 3))
    elif shape == "dash":
        draw.line([(0.2 * s, 0.5 * s), (0.8 * s, 0.5 * s)], fill=ink, width=width)
    else:
        raise ValueError(shape)
    return image


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def aligned_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over shifts of up to one pixel: MNIST's centring rounds to whole pixels,
    so a centre of mass on a half pixel can land either way."""
    return max(
        correlation(np.roll(a, (rows, cols), axis=(0, 1)), b)
        for rows in (-1, 0, 1)
        for cols in (-1, 0, 1)
    )


def assert_mnist_geometry(out: np.ndarray) -> None:
    assert out.dtype == np.float32
    assert out.shape == (28, 28)
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.max() == pytest.approx(1.0, abs=1e-6)
    row, col = ndimage.center_of_mass(out)
    assert abs(row - CENTRE) <= 1.0 and abs(col - CENTRE) <= 1.0, (row, col)
    rows = np.flatnonzero(out.any(axis=1))
    cols = np.flatnonzero(out.any(axis=0))
    assert rows[-1] - rows[0] + 1 <= BOX_SIDE
    assert cols[-1] - cols[0] + 1 <= BOX_SIDE


def mnist_like(shape: str) -> np.ndarray:
    """A synthetic 28x28 uint8 MNIST-form digit (white on black), for renderings without data."""
    return (255 - np.asarray(draw_digit(shape, size=28, width=3))).astype(np.uint8)


def read_mnist_test_images(directory: Path, count: int) -> np.ndarray:
    """The first ``count`` test images, uint8 (count, 28, 28); independent of digitnet.data."""
    path = directory / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as handle:
        data = handle.read(16 + count * 784)
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, 28, 28)


SHAPES = ["seven", "zero", "one", "four", "corner", "dash"]


# ---------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [40, 200, 900])
def test_geometry_of_synthetic_shapes(shape, size):
    out = preprocess_image(draw_digit(shape, size=size))
    assert_mnist_geometry(out)


def test_long_side_is_twenty_pixels_like_mnist():
    out = preprocess_image(draw_digit("seven", size=300))
    rows = np.flatnonzero(out.any(axis=1))
    assert rows[-1] - rows[0] + 1 == BOX_SIDE


def test_thin_tall_digit_keeps_its_aspect_ratio():
    out = preprocess_image(draw_digit("one", size=300, width=20))
    rows = np.flatnonzero(out.any(axis=1))
    cols = np.flatnonzero(out.any(axis=0))
    assert rows[-1] - rows[0] + 1 == BOX_SIDE
    assert cols[-1] - cols[0] + 1 <= 10


@pytest.mark.parametrize("kind", sorted(RENDERINGS))
@pytest.mark.parametrize("shape", ["seven", "zero", "four"])
def test_geometry_of_renderings_of_synthetic_digits(kind, shape):
    rendering = RENDERINGS[kind](mnist_like(shape), np.random.default_rng(7))
    assert_mnist_geometry(preprocess_image(rendering.data, name=rendering.filename))


def test_preprocessing_is_nearly_idempotent():
    once = preprocess_image(draw_digit("four", size=250))
    twice = preprocess_image(once)
    assert correlation(once, twice) > 0.95


def test_mnist_digits_pass_through_nearly_unchanged(mnist_dir):
    digits = read_mnist_test_images(mnist_dir, 200)
    scores = [correlation(preprocess_image(digit), digit / 255.0) for digit in digits]
    # A tie in rounding the centre of mass can shift a digit by one pixel, hence the mean.
    assert np.mean(scores) > 0.97


def test_renderings_of_mnist_digits_keep_their_identity(mnist_dir):
    digits = read_mnist_test_images(mnist_dir, 20)
    references = [preprocess_image(digit) for digit in digits]
    means = {}
    for kind, function in RENDERINGS.items():
        scores = []
        for index, digit in enumerate(digits):
            rendering = function(digit, np.random.default_rng(100 + index))
            out = preprocess_image(rendering.data, name=rendering.filename)
            assert_mnist_geometry(out)
            scores.append(correlation(out, references[index]))
        means[kind] = float(np.mean(scores))
    # A 10-degree turn or a stroke of different width lowers the pixel correlation of a thin
    # digit without changing what it is; these floors are well below what the renderings get
    # (0.82..0.94 on 100 digits) and far above unrelated digits (about 0.3).
    assert all(mean > 0.75 for mean in means.values()), means
    assert np.mean(list(means.values())) > 0.8, means


# ---------------------------------------------------------------------------------------------
# Polarity, lighting, transparency


@pytest.mark.parametrize("shape", ["seven", "zero", "four"])
def test_dark_on_light_and_light_on_dark_give_the_same(shape):
    dark_on_light = preprocess_image(draw_digit(shape, ink=20, paper=235))
    light_on_dark = preprocess_image(draw_digit(shape, ink=235, paper=20))
    assert correlation(dark_on_light, light_on_dark) > 0.9


def test_polarity_of_mnist_digits_both_ways(mnist_dir):
    for digit in read_mnist_test_images(mnist_dir, 20):
        assert correlation(preprocess_image(digit), preprocess_image(255 - digit)) > 0.9


@pytest.mark.parametrize(("ink", "paper"), [(40, 120), (200, 110), (90, 160)])
def test_polarity_on_mid_grey_backgrounds(ink, paper):
    # Chalk on a grey board is light ink; pencil on grey paper is dark ink; both must be ink.
    reference = preprocess_image(draw_digit("seven"))
    assert correlation(preprocess_image(draw_digit("seven", ink=ink, paper=paper)), reference) > 0.9


def test_uneven_lighting_and_shadow_are_removed():
    clean = preprocess_image(draw_digit("four", size=300))
    drawing = np.asarray(draw_digit("four", size=300), np.float32) / 255.0
    y, x = np.mgrid[0:300, 0:300] / 300.0
    light = 0.45 + 0.55 * x  # much darker on the left
    shadow = 1.0 - 0.3 / (1.0 + np.exp(-(y - 0.6) / 0.08))  # a soft shadow over the bottom
    photo = np.clip(drawing * light * shadow, 0, 1)
    out = preprocess_image(photo)
    assert_mnist_geometry(out)
    assert correlation(out, clean) > 0.9


def test_ink_in_shadow_is_as_strong_as_ink_in_light():
    # A bar across a page lit from the right: its left end reflects a third of the light.
    drawing = np.asarray(draw_digit("dash", size=300, width=30), np.float32) / 255.0
    light = np.linspace(0.35, 1.0, 300)[None, :]
    out = preprocess_image(drawing * light)
    row = out[int(round(ndimage.center_of_mass(out)[0]))]
    inside = row[np.flatnonzero(row)[1:-1]]  # the bar's ends are anti-aliased
    assert inside.min() > 0.8, row


def test_specks_far_from_the_digit_are_dropped():
    clean = preprocess_image(draw_digit("seven", size=300))
    specked = draw_digit("seven", size=300)
    draw = ImageDraw.Draw(specked)
    for x, y in [(10, 10), (280, 20), (20, 280), (285, 285), (150, 290)]:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=0)
    assert correlation(preprocess_image(specked), clean) > 0.97


def test_table_edge_along_the_border_is_dropped():
    clean = preprocess_image(draw_digit("seven", size=300))
    photo = draw_digit("seven", size=300)
    ImageDraw.Draw(photo).rectangle([0, 270, 299, 299], fill=60)  # dark desk below the page
    assert correlation(preprocess_image(photo), clean) > 0.95


def _rgba_strokes(
    shape: str, colour: tuple[int, int, int], hidden: tuple[int, int, int]
) -> Image.Image:
    """Strokes of ``colour`` whose alpha is the drawing; transparent pixels hold ``hidden``."""
    coverage = 255 - np.asarray(draw_digit(shape, size=280), np.uint8)
    rgba = np.zeros((280, 280, 4), np.uint8)
    rgba[..., :3] = np.where(coverage[..., None] > 0, colour, hidden)
    rgba[..., 3] = coverage
    return Image.fromarray(rgba, "RGBA")


@pytest.mark.parametrize(
    ("colour", "hidden"),
    [
        ((0, 0, 0), (0, 0, 0)),
        ((0, 0, 0), (255, 255, 255)),
        ((255, 255, 255), (0, 0, 0)),
        ((255, 255, 255), (255, 255, 255)),
        ((30, 60, 200), (0, 0, 0)),
    ],
    ids=[
        "black-on-clear-black",
        "black-on-clear-white",
        "white-on-clear-black",
        "white-on-clear-white",
        "blue",
    ],
)
def test_canvas_exports_with_transparent_background(colour, hidden):
    reference = preprocess_image(draw_digit("seven", size=280))
    exported = encode(_rgba_strokes("seven", colour, hidden), "PNG")
    out = preprocess_image(exported)
    assert_mnist_geometry(out)
    assert correlation(out, reference) > 0.95


def test_canvas_rendering_matches_dark_on_white(mnist_dir):
    for digit in read_mnist_test_images(mnist_dir, 5):
        coverage = stroke_coverage(digit, 280)
        rgba = np.zeros((280, 280, 4), np.uint8)
        rgba[..., 3] = np.rint(coverage * 255).astype(np.uint8)
        on_white = np.rint((1.0 - coverage) * 255).astype(np.uint8)
        assert (
            correlation(
                preprocess_image(encode(Image.fromarray(rgba), "PNG")), preprocess_image(on_white)
            )
            > 0.97
        )


def test_photo_with_transparent_padding_keeps_dark_ink():
    # Mostly opaque white paper, transparent corners: the padding must not become ink.
    page = draw_digit("four", size=300).convert("RGBA")
    alpha = Image.new("L", page.size, 255)
    ImageDraw.Draw(alpha).rectangle([0, 0, 60, 60], fill=0)
    ImageDraw.Draw(alpha).rectangle([240, 240, 299, 299], fill=0)
    page.putalpha(alpha)
    reference = preprocess_image(draw_digit("four", size=300))
    assert correlation(preprocess_image(encode(page, "PNG")), reference) > 0.95


# ---------------------------------------------------------------------------------------------
# Formats


def _reference() -> np.ndarray:
    return preprocess_image(draw_digit("seven", size=160))


def _palette_png() -> bytes:
    return encode(
        draw_digit("seven", size=160)
        .convert("RGB")
        .convert("P", palette=Image.Palette.ADAPTIVE, colors=8),
        "PNG",
    )


def _palette_with_transparency() -> bytes:
    image = draw_digit("seven", size=160).convert("P")  # greyscale palette: index = grey level
    return encode(image, "PNG", transparency=255)


def _sixteen_bit_png() -> bytes:
    values = np.asarray(draw_digit("seven", size=160), np.uint16) * 257
    image = Image.fromarray(values)  # 'I;16'
    assert image.mode == "I;16"
    return encode(image, "PNG")


def _thirty_two_bit_tiff() -> bytes:
    values = np.asarray(draw_digit("seven", size=160), np.int32) * 257
    return encode(Image.fromarray(values, "I"), "TIFF")


def _cmyk_jpeg() -> bytes:
    return encode(draw_digit("seven", size=160).convert("RGB").convert("CMYK"), "JPEG", quality=90)


def _la_png() -> bytes:
    image = draw_digit("seven", size=160)
    return encode(Image.merge("LA", [image, Image.new("L", image.size, 255)]), "PNG")


def _la_transparent_png() -> bytes:
    image = draw_digit("seven", size=160)
    return encode(
        Image.merge("LA", [Image.new("L", image.size, 0), Image.eval(image, lambda v: 255 - v)]),
        "PNG",
    )


def _animated_gif() -> bytes:
    first = draw_digit("seven", size=160).convert("P")
    second = draw_digit("zero", size=160).convert("P")
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


FORMATS = {
    "palette-png": _palette_png,
    "palette-transparency-png": _palette_with_transparency,
    "16-bit-png": _sixteen_bit_png,
    "32-bit-tiff": _thirty_two_bit_tiff,
    "cmyk-jpeg": _cmyk_jpeg,
    "la-png": _la_png,
    "la-transparent-png": _la_transparent_png,
    "animated-gif": _animated_gif,
    "webp": lambda: encode(draw_digit("seven", size=160).convert("RGB"), "WEBP", quality=80),
    "tiff": lambda: encode(draw_digit("seven", size=160), "TIFF"),
    "bmp": lambda: encode(draw_digit("seven", size=160).convert("RGB"), "BMP"),
    "jpeg": lambda: encode(draw_digit("seven", size=160).convert("RGB"), "JPEG", quality=70),
    "1-bit-png": lambda: encode(draw_digit("seven", size=160).convert("1"), "PNG"),
}


@pytest.mark.parametrize("image_format", sorted(FORMATS))
def test_unusual_but_valid_formats_read(image_format):
    out = preprocess_image(FORMATS[image_format]())
    assert_mnist_geometry(out)
    assert correlation(out, _reference()) > 0.9


def test_animated_gif_uses_its_first_frame():
    out = preprocess_image(_animated_gif())
    zero = preprocess_image(draw_digit("zero", size=160))
    assert correlation(out, _reference()) > correlation(out, zero) + 0.2


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    upright = draw_digit("seven", size=200).convert("RGB")
    # The camera stores pixels turned; the tag says how to turn them back for display.
    stored = upright.transpose(
        {
            3: Image.Transpose.ROTATE_180,
            6: Image.Transpose.ROTATE_90,
            8: Image.Transpose.ROTATE_270,
        }[orientation]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = encode(stored, "JPEG", quality=90, exif=exif.tobytes())
    untagged = encode(stored, "JPEG", quality=90)
    reference = preprocess_image(upright)
    # The '7' is asymmetric, so ignoring the tag would not match: the test can fail.
    assert correlation(preprocess_image(untagged), reference) < 0.6
    assert correlation(preprocess_image(tagged), reference) > 0.9


# ---------------------------------------------------------------------------------------------
# Inputs: paths, bytes, files, PIL images, arrays


def test_path_bytes_file_and_pil_inputs_agree(tmp_path):
    image = draw_digit("four", size=120)
    data = encode(image, "PNG")
    path = tmp_path / "four.png"
    path.write_bytes(data)
    expected = preprocess_image(image)
    for variant in (str(path), path, data, bytearray(data), io.BytesIO(data), np.asarray(image)):
        np.testing.assert_allclose(preprocess_image(variant), expected, atol=1e-6)


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a,
        lambda a: a.astype(np.float32) / 255.0,
        lambda a: a.astype(np.float64) / 255.0,
        lambda a: a[..., None],
        lambda a: np.repeat(a[..., None], 3, axis=2),
        lambda a: np.concatenate(
            [np.repeat(a[..., None], 3, axis=2), np.full(a.shape + (1,), 255, np.uint8)], axis=2
        ),
        lambda a: a.astype(np.uint16) * 257,
        lambda a: a > 127,
        lambda a: a.astype(np.int64),
    ],
    ids=["uint8", "float32", "float64", "HxWx1", "rgb", "rgba", "uint16", "bool", "int64"],
)
def test_array_forms(convert):
    grey = np.asarray(draw_digit("seven", size=100))
    out = preprocess_image(convert(grey))
    assert_mnist_geometry(out)
    assert correlation(out, preprocess_image(grey)) > 0.9


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((30, 30), 2.0), r"outside \[0, 1\]"),
        (np.full((30, 30), np.nan), "NaN"),
        (np.full((30, 30), 300, np.int32), "outside 0..255"),
        (np.zeros((30, 30, 5), np.uint8), "shape"),
        (np.zeros((2, 30, 30, 3), np.uint8), "shape"),
        (np.zeros(900, np.uint8), "shape"),
        (np.zeros((30, 30), np.complex64), "dtype"),
        (np.zeros((4, 100), np.uint8), "too small"),
    ],
)
def test_bad_arrays_raise_image_error(array, message):
    with pytest.raises(ImageError, match=message) as caught:
        preprocess_image(array)
    assert not isinstance(caught.value, NoDigitFound)


def test_read_grey_composites_and_scales():
    grey = read_grey(encode(_rgba_strokes("seven", (0, 0, 0), (0, 0, 0)), "PNG"))
    assert grey.dtype == np.float32 and grey.shape == (280, 280)
    assert grey.max() == pytest.approx(1.0) and grey.min() == pytest.approx(0.0)
    assert np.median(grey) == pytest.approx(1.0)  # the transparent background became white paper


# ---------------------------------------------------------------------------------------------
# Already in MNIST form


# ---------------------------------------------------------------------------------------------
# Bad input: each its own ImageError


def _png_declaring(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is patched to declare ``width`` x ``height``."""
    data = bytearray(encode(Image.new("L", (16, 16), 255), "PNG"))
    # Signature (8 bytes), then the IHDR chunk: length (4), type (4), width, height, ..., CRC.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _truncated(image_format: str) -> bytes:
    data = encode(draw_digit("seven", size=200).convert("RGB"), image_format)
    return data[: len(data) // 2]


BAD_INPUTS = {
    "text": (lambda: b"just some text, certainly not an image\n" * 3, "is not a supported image"),
    "empty": (lambda: b"", "is empty"),
    "truncated-png": (lambda: _truncated("PNG"), "truncated"),
    "truncated-jpeg": (lambda: _truncated("JPEG"), "truncated"),
    "png-cut-in-header": (
        lambda: encode(Image.new("L", (20, 20)), "PNG")[:30],
        "starts like a PNG file",
    ),
    "bomb-50000": (lambda: _png_declaring(50000, 50000), "too large"),
    "bomb-over-pillow-warning": (lambda: _png_declaring(10000, 10000), "too large"),
    "bomb-over-our-limit": (lambda: _png_declaring(8000, 8000), "8000x8000 is 64 megapixels"),
    "one-pixel": (lambda: encode(Image.new("L", (1, 1), 0), "PNG"), "too small: 1x1"),
    "thin-strip": (lambda: encode(Image.new("L", (500, 5), 0), "PNG"), "too small: 500x5"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_its_own_image_error(case, tmp_path):
    make, message = BAD_INPUTS[case]
    path = tmp_path / f"{case}.img"
    path.write_bytes(make())
    with pytest.raises(ImageError) as caught:
        preprocess_image(path)
    text = str(caught.value)
    assert not isinstance(caught.value, NoDigitFound)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


def test_bad_input_messages_are_distinct(tmp_path):
    messages = set()
    for make, _ in BAD_INPUTS.values():
        with pytest.raises(ImageError) as caught:
            preprocess_image(make(), name="x")
        messages.add(
            str(caught.value).split(":")[0]
            if "too small" in str(caught.value)
            else str(caught.value)[:40]
        )
    assert len(messages) >= 7


def test_declared_size_is_refused_before_decoding():
    assert 8000 * 8000 > MAX_PIXELS
    # The patched PNG holds 16x16 pixels of data; had it been decoded, it would be "truncated".
    with pytest.raises(ImageError, match="refused before decoding"):
        preprocess_image(_png_declaring(8000, 8000))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        preprocess_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        preprocess_image(tmp_path)


def test_unsupported_object():
    with pytest.raises(ImageError, match="expected a path"):
        preprocess_image(12345)


# ---------------------------------------------------------------------------------------------
# Blank images


def _paper_photo(seed: int) -> bytes:
    return RENDERINGS["photo_jpeg"](np.zeros((28, 28), np.uint8), np.random.default_rng(seed)).data


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("L", (100, 100), 255), "PNG"),
        lambda: encode(Image.new("L", (100, 100), 0), "PNG"),
        lambda: encode(Image.new("RGB", (300, 200), (128, 120, 110)), "JPEG"),
        lambda: encode(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), "PNG"),
        lambda: _paper_photo(0),
        lambda: _paper_photo(1),
        lambda: _paper_photo(2),
        lambda: np.linspace(0, 1, 200 * 200, dtype=np.float32).reshape(200, 200),  # lighting only
    ],
    ids=["white", "black", "grey-jpeg", "transparent", "paper-0", "paper-1", "paper-2", "gradient"],
)
def test_blank_images_raise_no_digit_found(make):
    with pytest.raises(NoDigitFound, match="no digit found in"):
        preprocess_image(make())


@pytest.mark.parametrize("width", [5, 6])
def test_a_bold_digit_filling_its_frame_is_not_blank(width):
    # Over a third of the pixels are ink: the noise must not be measured on the ink.
    frame = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(frame)
    draw.ellipse([6, 3, 21, 14], outline=255, width=width)
    draw.ellipse([5, 12, 22, 25], outline=255, width=width)
    eight = np.asarray(frame)
    assert (eight > 0).mean() > 0.35
    out = preprocess_image(eight)
    assert_mnist_geometry(out)
    # The same drawing with a wide margin, where ink is a small part of the image.
    assert aligned_correlation(out, preprocess_image(np.pad(eight, 40))) > 0.95


def test_a_speck_of_dust_is_not_a_digit():
    page = Image.new("L", (400, 400), 250)
    ImageDraw.Draw(page).ellipse([200, 200, 202, 202], fill=30)
    with pytest.raises(NoDigitFound, match="speck"):
        preprocess_image(page)


def test_paper_photos_with_a_digit_are_not_blank():
    # The same photos as in the blank test, with a digit: the blank test is not vacuous.
    for seed in range(3):
        data = RENDERINGS["photo_jpeg"](mnist_like("seven"), np.random.default_rng(seed)).data
        assert correlation(preprocess_image(data), preprocess_image(mnist_like("seven"))) > 0.8


# ---------------------------------------------------------------------------------------------
# Thin strokes


@pytest.mark.parametrize("shape", ["seven", "zero", "four"])
def test_thin_pen_lines_survive_downscaling(shape):
    thick = preprocess_image(draw_digit(shape, size=600, width=45))
    thin = preprocess_image(draw_digit(shape, size=600, width=2))
    assert_mnist_geometry(thin)
    # MNIST digits hold about 100 units of ink; a hairline shrunk 30 times would hold about 10.
    assert thin.sum() > 0.6 * thick.sum()
    assert thin.sum() > 50
    assert correlation(thin, thick) > 0.8


def test_thin_lines_on_a_large_jpeg_photo():
    drawing = draw_digit("four", size=2400, width=5).convert("RGB").resize((3200, 2400))
    data = encode(drawing.filter(ImageFilter.GaussianBlur(1)), "JPEG", quality=80)
    out = preprocess_image(data)
    assert_mnist_geometry(out)
    assert out.sum() > 50


@pytest.mark.parametrize("shape", ["seven", "zero", "four"])
def test_bold_strokes_are_kept_recognisable(shape):
    # 40 px on a 300-px drawing comes out about 4.4 px wide: bold, within MNIST's range.
    bold = preprocess_image(draw_digit(shape, size=300, width=40))
    normal = preprocess_image(draw_digit(shape, size=300, width=22))
    assert_mnist_geometry(bold)
    assert correlation(bold, normal) > 0.75


# ---------------------------------------------------------------------------------------------
# Property: any array either preprocesses into MNIST geometry or raises ImageError


@st.composite
def scribbles(draw):
    """Arrays of random size holding random rectangles and lines over a random background."""
    height = draw(st.integers(1, 120))
    width = draw(st.integers(1, 120))
    background = draw(st.integers(0, 255))
    image = Image.new("L", (width, height), background)
    pen = ImageDraw.Draw(image)
    for _ in range(draw(st.integers(0, 6))):
        x0, x1 = sorted(draw(st.lists(st.integers(-5, width + 5), min_size=2, max_size=2)))
        y0, y1 = sorted(draw(st.lists(st.integers(-5, height + 5), min_size=2, max_size=2)))
        value = draw(st.integers(0, 255))
        if draw(st.booleans()):
            pen.rectangle([x0, y0, x1, y1], fill=value)
        else:
            pen.line([x0, y0, x1, y1], fill=value, width=draw(st.integers(1, 8)))
    values = np.asarray(image)
    if draw(st.booleans()):
        noise = draw(st.integers(0, 60))
        seed = draw(st.integers(0, 2**32 - 1))
        values = np.clip(
            values + np.random.default_rng(seed).normal(0, noise, values.shape), 0, 255
        ).astype(np.uint8)
    if draw(st.booleans()):
        return values.astype(np.float32) / 255.0
    return values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scribbles())
def test_random_scribbles_never_crash_and_keep_the_geometry(array):
    try:
        out = preprocess_image(array)
    except ImageError:
        return
    assert_mnist_geometry(out)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(1, 60),
    st.sampled_from([np.uint8, np.float32, np.uint16, np.bool_]),
    st.integers(0, 2**32 - 1),
)
def test_random_noise_arrays_never_crash(height, width, dtype, seed):
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        array = rng.random((height, width), dtype=np.float32)
    elif dtype == np.bool_:
        array = rng.random((height, width)) > 0.9
    else:
        array = rng.integers(0, np.iinfo(dtype).max, (height, width), dtype=dtype, endpoint=True)
    try:
        out = preprocess_image(array)
    except ImageError:
        return
    assert_mnist_geometry(out)


# ---------------------------------------------------------------------------------------------
# Tight crops, small scans, ruled paper: read, not refused


def _crop(image: Image.Image, sides: str) -> np.ndarray:
    """The drawing cropped so that its ink touches the named sides ("tblr"), dark on white."""
    pixels = np.asarray(image)
    rows = np.flatnonzero((pixels < 128).any(axis=1))
    cols = np.flatnonzero((pixels < 128).any(axis=0))
    margin = 12
    top = rows[0] if "t" in sides else rows[0] - margin
    bottom = rows[-1] + 1 if "b" in sides else rows[-1] + 1 + margin
    left = cols[0] if "l" in sides else cols[0] - margin
    right = cols[-1] + 1 if "r" in sides else cols[-1] + 1 + margin
    return pixels[top:bottom, left:right]


@pytest.mark.parametrize("shape", ["zero", "seven", "four", "one"])
@pytest.mark.parametrize("sides", ["t", "b", "l", "r", "tb", "lr", "tl", "br", "tblr"])
def test_digits_cropped_to_touch_the_edges_are_read(shape, sides):
    drawing = draw_digit(shape, size=200, width=18)
    reference = preprocess_image(drawing)
    cropped = _crop(drawing, sides)
    out = preprocess_image(cropped)
    assert_mnist_geometry(out)
    assert aligned_correlation(out, reference) > 0.9


@pytest.mark.parametrize("height", [19, 40, 120])
@pytest.mark.parametrize("order", [("seven", "zero", "one"), ("one", "zero", "seven")])
def test_a_one_at_either_end_of_a_tight_number_is_not_a_page_edge(height, order):
    # A 1 at the end of a number cropped to its strokes (a form field, a small scan) is a thin
    # band along the side, as tall as the image, like a page edge.
    digits = [np.asarray(draw_digit(shape, size=200, width=18)) for shape in order]
    line = _crop(Image.fromarray(np.concatenate(digits, axis=1)), "tblr")
    width = round(line.shape[1] * height / line.shape[0])
    small = np.asarray(Image.fromarray(line).resize((width, height), Image.Resampling.BOX))
    found = find_ink(small, line=True)
    assert found.ink.shape[1] >= 0.95 * width


@pytest.mark.parametrize("side", [12, 16, 20, 24])
def test_small_images_filled_by_the_digit_are_read(side):
    drawing = draw_digit("four", size=200, width=22)
    reference = preprocess_image(drawing)
    small = Image.fromarray(_crop(drawing, "tb")).resize((side, side), Image.Resampling.BOX)
    out = preprocess_image(np.asarray(small))
    assert_mnist_geometry(out)
    assert aligned_correlation(out, reference) > 0.8


def _ruled(kind: str, digit: np.ndarray, seed: int) -> bytes:
    return RENDERINGS[kind](digit, np.random.default_rng(seed)).data


@pytest.mark.parametrize("kind", ["lined_paper", "squared_paper"])
def test_ruling_is_not_ink(kind):
    seven = mnist_like("seven")
    clean = preprocess_image(seven)
    for seed in range(3):
        assert correlation(preprocess_image(_ruled(kind, seven, seed)), clean) > 0.85
        # The same paper without a digit holds nothing to read.
        with pytest.raises(NoDigitFound):
            preprocess_image(_ruled(kind, np.zeros((28, 28), np.uint8), seed))


def test_the_bar_of_a_seven_cropped_tight_is_not_ruling():
    # The bar runs across the whole crop, straight, like a ruled line, but as thick as the
    # digit's strokes.
    image = Image.new("L", (120, 160), 255)
    ImageDraw.Draw(image).line([(0, 8), (119, 8), (50, 159)], fill=0, width=16)
    out = preprocess_image(image)
    assert out[5:8].sum() > 10  # the bar is still there, at the top


def test_grainy_pencil_reads_as_solid_strokes():
    drawing = np.asarray(draw_digit("seven", size=240, width=20), np.float32) / 255.0
    rng = np.random.default_rng(0)
    grain = ndimage.gaussian_filter(rng.normal(0.0, 1.0, drawing.shape), 1.0)
    grain = np.clip(0.55 + 0.45 * grain / grain.std(), 0.0, 1.0)
    pencil = 0.95 * (1.0 - 0.5 * (1.0 - drawing) * grain)
    out = preprocess_image(pencil.astype(np.float32))
    assert correlation(out, preprocess_image(drawing)) > 0.9


@pytest.mark.parametrize("seed", range(4))
def test_noise_is_not_a_digit(seed):
    rng = np.random.default_rng(seed)
    noise = np.clip(rng.normal(0.6, 0.08, (200, 240)), 0.0, 1.0).astype(np.float32)
    with pytest.raises(NoDigitFound):
        preprocess_image(noise)
