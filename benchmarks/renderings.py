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
- ``edge_one``, ``edge_two``: bold clean strokes, dark on white, cropped so that the ink touches
  one (two) of the image's edges, 64 px on the long side (64x64 where the digit's shape allows).
- ``edge_four``: the same cropped to the ink's bounding box, 64-128 px on the long side: the
  strokes touch all four edges, as form fields and people cropping a photo deliver digits.
- ``small_scan``: a square image 12-24 px tall, the digit filling its height (a low-resolution
  scan or a form field).
- ``fax``: a 1-bit scan (Group 4 TIFF): thresholded, jagged, with specks.
- ``lined_paper``, ``squared_paper``: pen on ruled or squared notebook paper (JPEG photo of a
  flat page); the ruling crosses the digit.
- ``pencil``: grey, grainy graphite strokes broken up by the paper's tooth (PNG).
- ``perspective``: a phone photo of the page taken at an angle: tilted 10-30 degrees out of the
  image plane, with keystone and lighting (JPEG).
- ``washed_out``: an over-exposed photo: the paper clipped to white, the ink a light grey (JPEG).
- ``under_exposed``: a dark, noisy photo: paper at 15-35 % grey, ink little darker (JPEG).

Digits are upsampled with Lanczos and thresholded softly, so they look like pen strokes with
anti-aliased edges rather than enlarged pixels. Every rendering also takes a line of digits
(h, w) drawn at MNIST's scale (``read_numbers.compose_number``): the frame widens by the
line's extra length; a single digit renders exactly as before. No TensorFlow here.
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
    A line of digits (h, w) at MNIST's scale (see ``_digit_values``) comes out as (size,
    round(size * w / h)).
    """
    values = _digit_values(digit)
    # One MNIST pixel in output pixels: size / 28 for a digit.
    pixel = size / values.shape[0]
    upsampled = np.asarray(
        Image.fromarray(values).resize(
            (_line_length(values, size), size), Image.Resampling.LANCZOS
        ),
        np.float32,
    )
    # Lanczos follows MNIST's pixel staircase; a blur over a third of an MNIST pixel smooths it
    # into the even edge of a pen stroke.
    upsampled = ndimage.gaussian_filter(np.clip(upsampled, 0.0, 1.0), sigma=0.35 * pixel)
    if thicken > 0:
        radius = thicken * pixel
        upsampled = ndimage.grey_dilation(upsampled, footprint=_disk(radius))
    # MNIST's anti-aliased edges rise over about one MNIST pixel; a band of 0.35..0.65 around the
    # middle turns that into a crisp edge a few output pixels wide, like a scanned pen stroke.
    return np.clip((upsampled - 0.35) / 0.3, 0.0, 1.0).astype(np.float32)


def photo_jpeg(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Phone photo of ink on paper: texture, lighting gradient, soft shadow, blur, JPEG 60-85."""
    width, height = int(rng.integers(200, 401)), int(rng.integers(200, 401))
    size = int(rng.uniform(0.55, 0.9) * min(width, height))
    coverage = _place(stroke_coverage(digit, size), width, height, rng)
    height, width = coverage.shape
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
    rgba = np.zeros(coverage.shape + (4,), np.uint8)
    rgba[..., 3] = _to_uint8(coverage)
    return Rendering("canvas_png", "canvas_png.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"))


def small_in_large(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """A digit about 30 px tall somewhere on a 600x600 white page."""
    side = 600
    digit_height = rng.uniform(26, 34)
    size = int(round(digit_height * 28 / 20))
    coverage = _place(stroke_coverage(digit, size), side, side, rng)
    page = 1.0 - rng.uniform(0.0, 0.03) + rng.normal(0.0, 0.004, coverage.shape)
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
    strokes = stroke_coverage(digit, size)
    # A line is turned within a frame that holds its ends; a digit within its own margin.
    turned = Image.fromarray(strokes).rotate(
        angle, Image.Resampling.BICUBIC, fillcolor=0.0, expand=strokes.shape[1] > size
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
    length = round(skeleton.shape[1] * size / 224)
    canvas = Image.new("L", (length * supersample, size * supersample), 0)
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
    lines = canvas.resize((length, size), Image.Resampling.LANCZOS)
    coverage = _place(np.asarray(lines, np.float32) / 255.0, side, side, rng)
    return Rendering("thin_pen", "thin_pen.png", _encode(_dark_on_white(coverage, rng), "PNG"))


_SIDES = ("top", "bottom", "left", "right")


def _tight_coverage(digit: np.ndarray, size: int, thicken: float = 0.0) -> np.ndarray:
    """``stroke_coverage`` cropped to the visible ink (coverage above 0.25): float32 (h, w)."""
    coverage = stroke_coverage(digit, size, thicken=thicken)
    rows = np.flatnonzero((coverage > 0.25).any(axis=1))
    cols = np.flatnonzero((coverage > 0.25).any(axis=0))
    return coverage[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _resize(coverage: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = Image.fromarray(coverage).resize((width, height), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def _cropped_to_edges(
    digit: np.ndarray, touching: tuple[str, ...], long_side: int, rng: np.random.Generator
) -> np.ndarray:
    """Bold strokes with the ink touching the ``touching`` sides of the frame and a margin of
    5-15 % on the others, made square where a free side allows: (H, W) coverage, long side
    ``long_side``."""
    ink = _tight_coverage(digit, 224, thicken=rng.uniform(0.2, 0.6))
    height, width = ink.shape
    # A line's long side is measured as its digits' would be.
    aspect = _line_length(_digit_values(digit), 224) / 224
    margins = {
        side: 0 if side in touching else int(rng.uniform(0.05, 0.15) * max(height, width))
        for side in _SIDES
    }
    rows = height + margins["top"] + margins["bottom"]
    cols = width + margins["left"] + margins["right"]
    # Square the frame by widening the margin on a free side of the shorter axis (a digit's;
    # a line keeps its shape).
    axis = ("left", "right") if rows > cols else ("top", "bottom")
    free = [side for side in axis if side not in touching]
    if free and aspect == 1.0:
        margins[free[int(rng.integers(len(free)))]] += abs(rows - cols)
    frame = np.pad(ink, ((margins["top"], margins["bottom"]), (margins["left"], margins["right"])))
    scale = long_side / max(frame.shape[0], frame.shape[1] / aspect)
    return _resize(
        frame,
        max(8, round(frame.shape[1] * scale)),
        max(8, round(frame.shape[0] * scale)),
    )


def edge_one(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Cropped so that the strokes touch one edge of a 64-px image, dark on white."""
    side = _SIDES[int(rng.integers(4))]
    coverage = _cropped_to_edges(digit, (side,), 64, rng)
    return Rendering("edge_one", "edge_one.png", _encode(_dark_on_white(coverage, rng), "PNG"))


def edge_two(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Cropped so that the strokes touch two edges (a corner, or opposite sides), 64 px."""
    pairs = [(a, b) for i, a in enumerate(_SIDES) for b in _SIDES[i + 1 :]]
    touching = pairs[int(rng.integers(len(pairs)))]
    coverage = _cropped_to_edges(digit, touching, 64, rng)
    return Rendering("edge_two", "edge_two.png", _encode(_dark_on_white(coverage, rng), "PNG"))


def edge_four(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Cropped to the ink's bounding box, 64-128 px on the long side: all four edges touched."""
    coverage = _cropped_to_edges(digit, _SIDES, int(rng.integers(64, 129)), rng)
    return Rendering("edge_four", "edge_four.png", _encode(_dark_on_white(coverage, rng), "PNG"))


def small_scan(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """A square image 12-24 px tall, the digit filling its height, slightly blurred."""
    side = int(rng.integers(12, 25))
    ink = _tight_coverage(digit, 112)
    height = side - int(rng.integers(0, 2))
    # A line is as long as its digits need.
    length = max(side, round(side * _line_length(_digit_values(digit), 112) / 112))
    width = min(length, max(1, round(ink.shape[1] * height / ink.shape[0])))
    # Area-averaged, as a scanner's sensor integrates over each pixel.
    small = np.asarray(
        Image.fromarray(ink).resize((width, height), Image.Resampling.BOX), np.float32
    )
    frame = np.zeros((side, length), np.float32)
    top = int(rng.integers(0, side - height + 1))
    left = int(rng.integers(0, length - width + 1))
    frame[top : top + height, left : left + width] = np.clip(small, 0.0, 1.0)
    image = _dark_on_white(frame, rng).filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.4)))
    return Rendering("small_scan", "small_scan.png", _encode(image, "PNG"))


def fax(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """A 1-bit scan at fax resolution: the digit 40-80 px tall in a form cell, thresholded after
    scanner blur and noise, with a few specks; Group 4 TIFF."""
    digit_height = rng.uniform(40, 80)
    size = int(round(digit_height * 28 / 20))
    width, height = int(size * rng.uniform(1.1, 1.6)), int(size * rng.uniform(1.1, 1.4))
    coverage = _place(stroke_coverage(digit, size), width, height, rng)
    grey = 1.0 - coverage * rng.uniform(0.8, 1.0)
    grey = ndimage.gaussian_filter(grey, rng.uniform(0.5, 1.0)) + rng.normal(0.0, 0.08, grey.shape)
    bits = grey > rng.uniform(0.45, 0.6)
    # Dirt on the glass and transmission errors: isolated black pixels.
    specks = rng.random(bits.shape) < rng.uniform(0.0, 0.002)
    bits &= ~specks
    image = Image.fromarray(bits)
    return Rendering("fax", "fax.tif", _encode(image, "TIFF", compression="group4"))


def _ruled_page(
    digit: np.ndarray, rng: np.random.Generator, squared: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pen digit on a notebook page: (page RGB (H, W, 3) without the digit, digit coverage)."""
    width, height = int(rng.integers(200, 321)), int(rng.integers(200, 321))
    size = int(rng.uniform(0.6, 0.85) * min(width, height))
    digit_height = size * 20 / 28
    coverage = _place(stroke_coverage(digit, size), width, height, rng)
    height, width = coverage.shape
    if squared:
        # 5-mm squares: two to three of them per digit height.
        spacing = digit_height / rng.uniform(2.0, 3.0)
    else:
        # The digit about one line high, crossing a line or two.
        spacing = digit_height / rng.uniform(0.9, 1.5)
    thickness = rng.uniform(1.0, 2.5)
    ruling = _ruling(height, width, spacing, thickness, rng.uniform(0, spacing), axis=0)
    if squared:
        ruling = np.maximum(
            ruling, _ruling(width, height, spacing, thickness, rng.uniform(0, spacing), axis=1)
        )
    paper = np.array([rng.uniform(235, 252), rng.uniform(235, 250), rng.uniform(225, 245)]) / 255
    line_colour = np.array([rng.uniform(120, 190), rng.uniform(150, 200), rng.uniform(200, 235)])
    page = paper * (1 - ruling[..., None]) + (line_colour / 255) * ruling[..., None]
    if not squared and rng.random() < 0.5:
        # A red margin line down the page.
        margin = _ruling(width, height, 10 * width, 1.5, rng.uniform(0.05, 0.9) * width, axis=1)
        red = np.array([220, 90, 90]) / 255
        page = page * (1 - margin[..., None]) + red * margin[..., None]
    page = page + rng.normal(0.0, 0.008, (height, width))[..., None]
    return page, coverage


def _ruling(
    length: int, across: int, spacing: float, thickness: float, offset: float, axis: int
) -> np.ndarray:
    """Anti-aliased parallel lines: coverage (length, across) for axis 0 (horizontal lines),
    (across, length) for axis 1 (vertical)."""
    positions = np.arange(length, dtype=np.float32)[:, None]
    distance = np.abs((positions - offset + spacing / 2) % spacing - spacing / 2)
    profile = np.clip(thickness / 2 + 0.5 - distance, 0.0, 1.0)
    lines = np.broadcast_to(profile, (length, across))
    return np.ascontiguousarray(lines if axis == 0 else lines.T, dtype=np.float32)


def _ink_on(page: np.ndarray, coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ink_colour = np.array([rng.uniform(15, 60), rng.uniform(15, 60), rng.uniform(40, 110)]) / 255
    alpha = coverage[..., None] * rng.uniform(0.85, 1.0)
    return page * (1 - alpha) + ink_colour * alpha


def lined_paper(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Pen on ruled notebook paper, lines about a digit's height apart, as a JPEG."""
    page, coverage = _ruled_page(digit, rng, squared=False)
    image = Image.fromarray(_to_uint8(_ink_on(page, coverage, rng)), "RGB")
    data = _encode(image, "JPEG", quality=int(rng.integers(80, 96)))
    return Rendering("lined_paper", "lined_paper.jpg", data)


def squared_paper(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Pen on squared (graph) paper, two to three squares per digit height, as a JPEG."""
    page, coverage = _ruled_page(digit, rng, squared=True)
    image = Image.fromarray(_to_uint8(_ink_on(page, coverage, rng)), "RGB")
    data = _encode(image, "JPEG", quality=int(rng.integers(80, 96)))
    return Rendering("squared_paper", "squared_paper.jpg", data)


def pencil(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Graphite: grey strokes broken up by the paper's tooth, on lightly textured paper."""
    side = int(rng.integers(160, 301))
    size = int(rng.uniform(0.75, 0.95) * side)
    coverage = _place(stroke_coverage(digit, size), side, side, rng)
    # The paper's tooth: graphite catches on the fibres' peaks, a fine random texture.
    tooth = ndimage.gaussian_filter(rng.normal(0.0, 1.0, coverage.shape), rng.uniform(0.6, 1.2))
    tooth = tooth / (tooth.std() + 1e-9)
    grain = np.clip(0.55 + 0.45 * tooth, 0.0, 1.0)
    darkness = rng.uniform(0.35, 0.65)
    paper = rng.uniform(0.9, 0.98) + rng.normal(0.0, 0.01, coverage.shape)
    grey = paper * (1.0 - darkness * coverage * grain)
    return Rendering("pencil", "pencil.png", _encode(Image.fromarray(_to_uint8(grey), "L"), "PNG"))


def _perspective_coefficients(
    source: list[tuple[float, float]], target: list[tuple[float, float]]
) -> list[float]:
    """PIL's PERSPECTIVE coefficients mapping output points ``target`` to input ``source``."""
    matrix, vector = [], []
    for (x, y), (u, v) in zip(target, source):
        matrix.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        matrix.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        vector += [u, v]
    return [float(c) for c in np.linalg.solve(np.array(matrix), np.array(vector))]


def perspective(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """The page photographed at an angle: tilted 10-30 degrees away from the camera about a
    random axis in the page, seen by a pinhole camera 1.5-3 frame widths away (so the far side
    shrinks: keystone)."""
    width, height = int(rng.integers(220, 341)), int(rng.integers(220, 341))
    size = int(rng.uniform(0.5, 0.75) * min(width, height))
    placed = _place(stroke_coverage(digit, size), width, height, rng)
    height, width = placed.shape
    # The page is drawn at three times the frame and warped into it, so that the whole frame
    # is paper.
    page_w, page_h = 3 * width, 3 * height
    coverage = np.zeros((page_h, page_w), np.float32)
    coverage[height : 2 * height, width : 2 * width] = placed
    tilt = np.radians(rng.uniform(10.0, 30.0))
    axis = rng.uniform(0, np.pi)
    distance = rng.uniform(1.5, 3.0) * max(width, height)
    ax, ay = np.cos(axis), np.sin(axis)
    # Rodrigues' rotation of page points (x, y, 0) about the in-page axis (ax, ay, 0).
    cos_t, sin_t = np.cos(tilt), np.sin(tilt)

    def project(x: float, y: float) -> tuple[float, float]:
        along = x * ax + y * ay
        px = x * cos_t + ax * along * (1 - cos_t)
        py = y * cos_t + ay * along * (1 - cos_t)
        pz = (ax * y - ay * x) * sin_t
        factor = distance / (distance - pz)
        return width / 2 + px * factor, height / 2 + py * factor

    page_points = [(-page_w / 2, -page_h / 2), (page_w / 2, -page_h / 2)]
    page_points += [(page_w / 2, page_h / 2), (-page_w / 2, page_h / 2)]
    seen = [project(x, y) for x, y in page_points]
    source = [(x + page_w / 2, y + page_h / 2) for x, y in page_points]
    warped = Image.fromarray(coverage).transform(
        (width, height),
        Image.Transform.PERSPECTIVE,
        _perspective_coefficients(source, seen),
        Image.Resampling.BICUBIC,
    )
    alpha = np.clip(np.asarray(warped, np.float32), 0.0, 1.0) * rng.uniform(0.85, 1.0)
    paper = np.array([rng.uniform(222, 248), rng.uniform(218, 242), rng.uniform(200, 232)]) / 255
    grain = rng.normal(0.0, rng.uniform(0.006, 0.015), (height, width))
    ink_colour = np.array([rng.uniform(15, 60), rng.uniform(15, 60), rng.uniform(40, 100)]) / 255
    image = (paper + grain[..., None]) * (1 - alpha[..., None]) + ink_colour * alpha[..., None]
    image = image * _lighting(width, height, rng)[..., None]
    pil = Image.fromarray(_to_uint8(image), "RGB").filter(
        ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0))
    )
    data = _encode(pil, "JPEG", quality=int(rng.integers(60, 86)))
    return Rendering("perspective", "perspective.jpg", data)


def _exposed_photo(
    digit: np.ndarray, rng: np.random.Generator, paper: float, ink: float, noise: float
) -> Image.Image:
    """A grey-world photo of a digit: paper and ink levels after exposure, sensor noise,
    vignetting, blur. ``paper``, ``ink`` in [0, 1]."""
    width, height = int(rng.integers(200, 341)), int(rng.integers(200, 341))
    size = int(rng.uniform(0.55, 0.85) * min(width, height))
    coverage = _place(stroke_coverage(digit, size), width, height, rng)
    height, width = coverage.shape
    grey = paper + (ink - paper) * coverage
    # Light falling off across the page by 5-20 %: the exposure is set for the bright side.
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along = (x / width - 0.5) * np.cos(angle) + (y / height - 0.5) * np.sin(angle)
    grey = grey * (1.0 - rng.uniform(0.05, 0.2) * (along + 0.5))
    grey = grey + rng.normal(0.0, noise, grey.shape)
    tint = np.array([1.0, rng.uniform(0.96, 1.0), rng.uniform(0.88, 0.98)])
    rgb = Image.fromarray(_to_uint8(grey[..., None] * tint), "RGB")
    return rgb.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0)))


def washed_out(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Over-exposed: the paper burns out to white, the ink is a light grey (contrast 0.2-0.45)."""
    image = _exposed_photo(
        digit, rng, paper=rng.uniform(1.05, 1.3), ink=rng.uniform(0.55, 0.8), noise=0.01
    )
    data = _encode(image, "JPEG", quality=int(rng.integers(70, 91)))
    return Rendering("washed_out", "washed_out.jpg", data)


def under_exposed(digit: np.ndarray, rng: np.random.Generator) -> Rendering:
    """Under-exposed: paper at 15-35 % grey, ink at a fifth to two fifths of it, sensor noise."""
    paper = rng.uniform(0.15, 0.35)
    image = _exposed_photo(
        digit, rng, paper=paper, ink=paper * rng.uniform(0.2, 0.4), noise=rng.uniform(0.006, 0.015)
    )
    data = _encode(image, "JPEG", quality=int(rng.integers(60, 86)))
    return Rendering("under_exposed", "under_exposed.jpg", data)


RENDERINGS: dict[str, Callable[[np.ndarray, np.random.Generator], Rendering]] = {
    "photo_jpeg": photo_jpeg,
    "canvas_png": canvas_png,
    "small_in_large": small_in_large,
    "felt_pen": felt_pen,
    "rotated": rotated,
    "thin_pen": thin_pen,
    "edge_one": edge_one,
    "edge_two": edge_two,
    "edge_four": edge_four,
    "small_scan": small_scan,
    "fax": fax,
    "lined_paper": lined_paper,
    "squared_paper": squared_paper,
    "pencil": pencil,
    "perspective": perspective,
    "washed_out": washed_out,
    "under_exposed": under_exposed,
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
    """A digit (28, 28) or (784,), or a line of digits (h, w) with h >= 28 and w >= h drawn at
    MNIST's scale (digits about 20 px tall), as float32 in [0, 1]."""
    values = np.asarray(digit)
    if values.shape == (784,):
        values = values.reshape(28, 28)
    if values.shape != (28, 28) and not (
        values.ndim == 2 and 28 <= values.shape[0] <= values.shape[1]
    ):
        raise ValueError(
            f"an MNIST digit is (28, 28) or (784,), a line (h, w) with 28 <= h <= w; got shape "
            f"{values.shape}"
        )
    if np.issubdtype(values.dtype, np.integer):
        return (values / 255.0).astype(np.float32)
    values = values.astype(np.float32)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise ValueError("a float MNIST digit must have finite values in [0, 1]")
    return values


def _line_length(values: np.ndarray, size: int) -> int:
    """Output columns of ``values`` (h, w) drawn ``size`` pixels tall: ``size`` for a digit."""
    return max(size, round(size * values.shape[1] / values.shape[0]))


def _disk(radius: float) -> np.ndarray:
    reach = int(np.ceil(radius))
    y, x = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    return x * x + y * y <= radius * radius + 1e-9


def _place(coverage: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Put a (size, size) coverage image at a random position in a (height, width) frame. A
    line (size, length) widens the frame by its extra length, length - size."""
    size_rows, size_cols = coverage.shape
    if size_cols > size_rows:
        width = max(width + size_cols - size_rows, size_cols)
        height = max(height, size_rows)
    frame = np.zeros((height, width), np.float32)
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
