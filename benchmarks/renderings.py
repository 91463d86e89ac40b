"""Realistic renderings of MNIST digits, the way people really produce images of digits.

Each rendering takes a 28x28 MNIST digit (uint8 0..255 or float in [0, 1], white ink on black)
and a seeded ``numpy.random.Generator`` and returns a ``Rendering``: the encoded image bytes,
the kind, and a file name with the matching extension. Same digit and same seed, same bytes.

Kinds (``RENDERINGS``):

- ``photo_jpeg``: a phone photo of paper: dark blue-black ink on off-white paper with texture,
  a lighting gradient and a soft shadow, the digit off-centre in a 200-400 px frame, slightly
  blurred, JPEG quality 60-85.
- ``canvas_png``: an HTML canvas export: black strokes on a fully transparent 280x280 RGBA PNG.
- ``small_in_large``: a digit about 30 px tall somewhere on a 600x600 white page (PNG).
- ``felt_pen``: marker strokes about 1.5 times MNIST's width, dark on white (PNG).
- ``rotated``: tilted by 3 to 10 degrees either way, dark on white (PNG).
- ``thin_pen``: 2-3 px pen lines along the strokes' centre lines, digit about 400 px tall on a
  560 px page (PNG): thin strokes must survive downscaling.

Digits are upsampled with Lanczos and thresholded softly, so they look like pen strokes with
anti-aliased edges rather than enlarged pixels. No TensorFlow here.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

__all__ = [
    "RENDERINGS",
    "Rendering",
    "render",
    "stroke_coverage",
]


@dataclass(frozen=True)
class Rendering:
    """One rendered image: ``data`` is the encoded file, ``filename`` e.g. 'photo_jpeg.jpg'."""

    kind: str
    filename: str
    data: bytes


def stroke_coverage(digit: np.ndarray, size: int, *, thicken: float = 0.0) -> np.ndarray:
    """The digit as pen strokes: float32 (size, size) ink coverage in [0, 1], 1 inside strokes.

    The 28x28 frame is scaled to ``size`` (so the digit itself spans about 20/28 of it).
    ``thicken`` widens every stroke by that many MNIST pixels on each side, like a felt pen.
    """
    values = _digit_values(digit)
    upsampled = np.asarray(
        Image.fromarray(values).resize((size, size), Image.Resampling.LANCZOS), np.float32
    )
    # Lanczos follows MNIST's pixel staircase; a blur over a third of an MNIST pixel smooths it
    # into the even edge of a pen stroke.
    upsampled = ndimage.gaussian_filter(np.clip(upsampled, 0.0, 1.0), sigma=0.35 * size / 28.0)
    if thicken > 0:
        radius = thicken * size / 28.0
        upsampled = ndimage.grey_dilation(upsampled, footprint=_disk(radius))
    # MNIST's anti-aliased edges rise over about one MNIST pixel; a band of 0.35..0.65 around the
    # middle turns that into a crisp edge a few output pixels wide, like a scanned pen stroke.
    return np.clip((upsampled - 0.35) / 0.3, 0.0, 1.0).astype(np.float32)


def photo_jpeg(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Phone photo of ink on paper: texture, lighting gradient, soft shadow, blur, JPEG 60-85."""
    width, height = int(rng.integers(200, 401)), int(rng.integers(200, 401))
    size = int(rng.uniform(0.55, 0.9) * min(width, height))
    coverage = _place(stroke_coverage(digit, size), width, height, rng)
    alpha = coverage * rng.uniform(0.85, 1.0)

    paper = np.array([rng.uniform(222, 248), rng.uniform(218, 242), rng.uniform(200, 232)]) / 255.0
    fibres = ndimage.gaussian_filter(
        rng.normal(0.0, 1.0, (height, width)), sigma=2.5
    ) * rng.uniform(0.02, 0.05)
    grain = rng.normal(0.0, rng.uniform(0.006, 0.015), (height, width))
    page = paper[None, None, :] + (fibres + grain)[..., None]
    ink_colour = np.array([rng.uniform(15, 60), rng.uniform(15, 60), rng.uniform(40, 100)]) / 255.0
    image = page * (1.0 - alpha[..., None]) + ink_colour[None, None, :] * alpha[..., None]
    image = image * _lighting(width, height, rng)[..., None]

    pil = Image.fromarray(_to_uint8(image), "RGB").filter(
        ImageFilter.GaussianBlur(rng.uniform(0.5, 1.2))
    )
    return Rendering(
        "photo_jpeg", "photo_jpeg.jpg", _encode(pil, "JPEG", quality=int(rng.integers(60, 86)))
    )


def canvas_png(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """HTML canvas export: black strokes, alpha = coverage, everything else fully transparent."""
    side = 280
    size = int(rng.uniform(0.85, 1.0) * side)
    coverage = _place(stroke_coverage(digit, size), side, side, rng)
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., 3] = _to_uint8(coverage)
    return Rendering("canvas_png", "canvas_png.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"))


def small_in_large(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """A digit about 30 px tall somewhere on a 600x600 white page."""
    side = 600
    digit_height = rng.uniform(26, 34)
    size = int(round(digit_height * 28 / 20))
    coverage = _place(stroke_coverage(digit, size), side, side, rng)
    page = 1.0 - rng.uniform(0.0, 0.03) + rng.normal(0.0, 0.004, (side, side))
    ink = rng.uniform(0.05, 0.2)
    image = page * (1.0 - coverage) + ink * coverage
    return Rendering(
        "small_in_large",
        "small_in_large.png",
        _encode(Image.fromarray(_to_uint8(image), "L"), "PNG"),
    )


def felt_pen(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Bold felt-pen strokes, dark on white.

    Each stroke is widened by 0.4-0.8 MNIST pixels on either side: about 1.5 times MNIST's
    median width, strokes a fifth of the digit's height, like a marker. Twice as wide closes
    the loops of most 8s and 9s in the drawing itself, which no preprocessing can reopen.
    """
    side = int(rng.integers(220, 341))
    size = int(rng.uniform(0.8, 0.95) * side)
    coverage = _place(stroke_coverage(digit, size, thicken=rng.uniform(0.4, 0.8)), side, side, rng)
    return Rendering("felt_pen", "felt_pen.png", _encode(_dark_on_white(coverage, rng), "PNG"))


def rotated(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Tilted by 3 to 10 degrees either way, dark on white."""
    side = int(rng.integers(200, 321))
    size = int(rng.uniform(0.8, 0.95) * side)
    angle = rng.uniform(3.0, 10.0) * rng.choice([-1.0, 1.0])
    # MNIST's 4-px margin leaves room to turn the digit by 10 degrees without clipping it.
    turned = Image.fromarray(stroke_coverage(digit, size)).rotate(
        angle, Image.Resampling.BICUBIC, fillcolor=0.0
    )
    coverage = _place(np.clip(np.asarray(turned, np.float32), 0.0, 1.0), side, side, rng)
    return Rendering("rotated", "rotated.png", _encode(_dark_on_white(coverage, rng), "PNG"))


def thin_pen(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """2-3 px pen lines along the centre lines of the strokes; the digit about 400 px tall."""
    side = 560
    size = int(rng.uniform(0.95, 1.05) * side)
    skeleton = _skeleton(_open_filled_loops(stroke_coverage(digit, 224) > 0.5))
    # Drawn at twice the size and reduced with Lanczos, so the lines are anti-aliased.
    supersample = 2
    scale = size / 224 * supersample
    canvas = Image.new("L", (size * supersample, size * supersample), 0)
    draw = ImageDraw.Draw(canvas)
    line_width = int(round(rng.uniform(2.0, 3.0) * supersample))
    smooth_rows, smooth_cols = _smoothed_positions(skeleton)
    rows, cols = np.nonzero(skeleton)
    for row, col in zip(rows.tolist(), cols.tolist()):
        # Each skeleton pixel joins its forward neighbours; together these cover every link once.
        for d_row, d_col in ((0, 1), (1, -1), (1, 0), (1, 1)):
            r, c = row + d_row, col + d_col
            if 0 <= r < skeleton.shape[0] and 0 <= c < skeleton.shape[1] and skeleton[r, c]:
                start = (
                    (smooth_cols[row, col] + 0.5) * scale,
                    (smooth_rows[row, col] + 0.5) * scale,
                )
                end = ((smooth_cols[r, c] + 0.5) * scale, (smooth_rows[r, c] + 0.5) * scale)
                draw.line([start, end], fill=255, width=line_width)
                radius = line_width / 2
                draw.ellipse(
                    [end[0] - radius, end[1] - radius, end[0] + radius, end[1] + radius], fill=255
                )
    lines = canvas.resize((size, size), Image.Resampling.LANCZOS)
    coverage = _place(np.asarray(lines, np.float32) / 255.0, side, side, rng)
    return Rendering("thin_pen", "thin_pen.png", _encode(_dark_on_white(coverage, rng), "PNG"))


RENDERINGS: dict[str, Callable[[np.ndarray, np.random.Generator], Rendering]] = {
    "photo_jpeg": photo_jpeg,
    "canvas_png": canvas_png,
    "small_in_large": small_in_large,
    "felt_pen": felt_pen,
    "rotated": rotated,
    "thin_pen": thin_pen,
}


def render(name: str, digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Encoded image bytes of ``digit`` rendered as ``name`` (a key of ``RENDERINGS``)."""
    try:
        function = RENDERINGS[name]
    except KeyError:
        raise ValueError(
            f"unknown rendering {name!r}; choose one of {', '.join(RENDERINGS)}"
        ) from None
    return function(digit, rng).data


# ---------------------------------------------------------------------------------------------


def _digit_values(digit: np.ndarray) -> np.ndarray:
    values = np.asarray(digit)
    if values.shape == (784,):
        values = values.reshape(28, 28)
    if values.shape != (28, 28):
        raise ValueError(f"an MNIST digit is (28, 28) or (784,), got shape {values.shape}")
    if np.issubdtype(values.dtype, np.integer):
        return (values / 255.0).astype(np.float32)
    values = values.astype(np.float32)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise ValueError("a float MNIST digit must have finite values in [0, 1]")
    return values


def _disk(radius: float) -> np.ndarray:
    reach = int(np.ceil(radius))
    y, x = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    return x * x + y * y <= radius * radius + 1e-9


def _place(coverage: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Put a (size, size) coverage image at a random position in a (height, width) frame."""
    frame = np.zeros((height, width), np.float32)
    size_rows, size_cols = coverage.shape
    # A frame smaller than the image crops its empty margin symmetrically: MNIST's 4-px border.
    crop_rows, crop_cols = max(0, size_rows - height), max(0, size_cols - width)
    coverage = coverage[
        crop_rows // 2 : size_rows - (crop_rows - crop_rows // 2),
        crop_cols // 2 : size_cols - (crop_cols - crop_cols // 2),
    ]
    top = int(rng.integers(0, height - coverage.shape[0] + 1))
    left = int(rng.integers(0, width - coverage.shape[1] + 1))
    frame[top : top + coverage.shape[0], left : left + coverage.shape[1]] = coverage
    return frame


def _lighting(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative light level (height, width): a gradient across the page and a soft shadow."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height - 0.5, x / width - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    light = 1.0 - rng.uniform(0.1, 0.3) * (along + 0.5)
    # A hand or phone held over the page casts a shadow with an edge blurred over a fifth of it.
    shadow_angle = rng.uniform(0, 2 * np.pi)
    across = x * np.cos(shadow_angle) + y * np.sin(shadow_angle) - rng.uniform(0.1, 0.4)
    shadow = 1.0 / (1.0 + np.exp(-across / rng.uniform(0.08, 0.15)))
    return light * (1.0 - rng.uniform(0.1, 0.3) * shadow)


def _dark_on_white(coverage: np.ndarray, rng: np.random.Generator) -> Image.Image:
    paper = rng.uniform(0.93, 1.0)
    ink = rng.uniform(0.0, 0.2)
    return Image.fromarray(_to_uint8(paper * (1.0 - coverage) + ink * coverage), "L")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    if image_format == "PNG":
        # Fast compression: a noisy 600x600 page encodes in 10 ms instead of 40, 15 % larger.
        options.setdefault("compress_level", 1)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide centre lines of a binary image (Zhang-Suen thinning): bool, same shape."""
    # Neighbours P2..P9 clockwise from north, as bits 1..128 of a code looked up in two tables.
    weights = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]])
    first, second = _thinning_tables()
    skeleton = mask.astype(np.uint8)
    while True:
        changed = False
        for table in (first, second):
            codes = ndimage.correlate(skeleton, weights, mode="constant", cval=0)
            remove = (skeleton == 1) & table[codes]
            if remove.any():
                skeleton[remove] = 0
                changed = True
        if not changed:
            return skeleton.astype(bool)


def _open_filled_loops(mask: np.ndarray) -> np.ndarray:
    """Punch a hole into blobs far wider than the digit's strokes: bool, same shape as ``mask``.

    A thick pen fills in the small loops of many MNIST 8s, 9s and 6s; the writer meant a loop,
    and a thin pen draws one. Thinning the blob instead would leave a stub, turning 8s into 9s.
    """
    depth = ndimage.distance_transform_edt(mask)
    ridge = depth[(depth > 0) & (depth >= ndimage.maximum_filter(depth, size=3))]
    if ridge.size == 0:
        return mask
    half_width = float(np.median(ridge))
    # A junction of two strokes is about 1.4 half-widths deep; a filled loop is deeper still.
    cores = depth > 2.0 * half_width
    if not cores.any():
        return mask
    return mask & ~ndimage.binary_dilation(cores, iterations=max(1, int(0.5 * half_width)))


def _smoothed_positions(skeleton: np.ndarray, reach: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each skeleton pixel moved to the mean of the skeleton pixels near it.

    A thinned line is a staircase; averaging positions along it straightens the stairs into the
    smooth line a pen would draw. Arrays (H, W) of float, meaningful where ``skeleton`` is set.
    """
    size = 2 * reach + 1
    weight = skeleton.astype(np.float64)
    rows, cols = np.mgrid[0 : skeleton.shape[0], 0 : skeleton.shape[1]].astype(np.float64)
    count = ndimage.uniform_filter(weight, size, mode="constant")
    count = np.where(count > 0, count, 1.0)
    return (
        ndimage.uniform_filter(weight * rows, size, mode="constant") / count,
        ndimage.uniform_filter(weight * cols, size, mode="constant") / count,
    )


def _thinning_tables() -> tuple[np.ndarray, np.ndarray]:
    first = np.zeros(256, bool)
    second = np.zeros(256, bool)
    for code in range(256):
        p = [(code >> bit) & 1 for bit in range(8)]  # P2, P3, ..., P9
        neighbours = sum(p)
        transitions = sum(1 for k in range(8) if p[k] == 0 and p[(k + 1) % 8] == 1)
        if not (2 <= neighbours <= 6 and transitions == 1):
            continue
        p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
        first[code] = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
        second[code] = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
    return first, second
