"""Bring real photos, scans and drawings of digits into MNIST's form.

MNIST form is a float32 array of shape (28, 28) with values in [0, 1]: white ink (1.0) on black
(0.0), the digit scaled so that its longer side spans 20 pixels, and placed so that its centre of
mass (``scipy.ndimage.center_of_mass``, in row/column index coordinates) lies within half a pixel
of ``(CENTRE, CENTRE) == (14.0, 14.0)``. That is MNIST's own convention: measured over its test
set the centres of mass lie in [13.5, 14.5] with mean 14.0, and every digit's bounding box of
nonzero pixels is 20 pixels on its longer side.

The pipeline, for what people really photograph, scan and draw:

1. read: any image Pillow reads (first frame of an animation), refusing decompression bombs by
   their declared size before decoding; EXIF orientation applied; transparency composited onto
   a backdrop that makes the transparent part background (see ``_composite``);
2. to grey (ITU-R 601 luma), 16-bit and float modes scaled to [0, 1];
3. images under 28 px enlarged; lighting removed: a quadratic surface fitted robustly to the
   background (starting from the level along the border, so a digit cropped to its strokes
   keeps its paper) and subtracted, so gradients, vignetting and soft shadows do not become
   ink;
4. polarity decided from which side of the background the strong deviations lie (dark ink on
   light paper is inverted; light ink on a dark board is kept);
5. noise thresholded at a multiple of the robust noise level, grey levels kept above it so
   anti-aliased edges stay anti-aliased; stroke cores saturate at 1.0; the ruling of lined and
   squared paper erased (straight thin lines across the whole image); the pinholes of grainy
   pencil strokes closed;
6. specks (components tiny relative to the largest), far-away blobs and page/table edges
   (bands along the image border, not strokes touching it) dropped; crop to the ink's bounding
   box;
7. strokes too thin for the target size (a 2-px pen line on a 1000-px photo) dilated so that
   they come out about as wide as MNIST's, strokes far thicker than MNIST's thinned;
8. resampled (Lanczos, anti-aliased) into a box whose longer side is 20 pixels, placed on whole
   pixels in the 28x28 frame with the centre of mass nearest (14, 14), max ink renormalised to 1.0.

No TensorFlow here: the CLI's predict path imports this module and must start quickly.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from digitnet.errors import ImageError, NoDigitFound

__all__ = [
    "BOX_SIDE",
    "CENTRE",
    "MAX_PIXELS",
    "MIN_SIDE",
    "MNIST_SIDE",
    "ImageInput",
    "preprocess_image",
    "read_grey",
]

MNIST_SIDE = 28
BOX_SIDE = 20
# Index coordinates as scipy.ndimage.center_of_mass reports them (pixel i spans [i - 0.5, i + 0.5]).
CENTRE = 14.0
# Refused by declared size before decoding: 40 MP is more than any phone camera produces and
# decodes to at most 160 MB of RGBA, whereas a crafted 50000x50000 PNG would need 10 GB.
MAX_PIXELS = 40_000_000
MIN_SIDE = 8

ImageInput = Union[
    str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, np.ndarray, IO[bytes]
]

# Images are area-averaged down to at most this long side before the ink search: a 2-px pen
# line on a 2000-px photo keeps half its contrast, on a 4000-px one a quarter, while the noise
# it is judged against drops by more. The geometry step works on at most 128 px anyway.
_WORK_SIDE = 640
# Background noise below this (on a 0..1 scale) is treated as zero; a clean synthetic image would
# otherwise turn its faintest anti-aliasing into ink.
_NOISE_FLOOR = 0.04
# Multiples of the robust noise level: deviations above _FLOOR_SIGMAS may be ink, the ink's core
# contrast must reach _SIGNAL_SIGMAS or the image is noise (paper texture, JPEG blocks).
_FLOOR_SIGMAS = 5.0
_SIGNAL_SIGMAS = 8.0
# Faintest ink core accepted (pencil in dim light is about 0.15).
_MIN_CONTRAST = 0.08
# The digit must span at least this many pixels and this fraction of the image's long side; a
# 30-px digit on a 600-px page is 5 %, a fleck of dust is far less.
_MIN_DIGIT_PIXELS = 3
_MIN_DIGIT_FRACTION = 0.015
# Components below this fraction of the largest one's ink mass are specks.
_SPECK_FRACTION = 0.05
# A border band (page edge, table) reaches at most this fraction into the image and touches
# the side it lies along over at least _EDGE_CONTACT of the image's length or width.
_EDGE_DEPTH = 0.3
_EDGE_CONTACT = 0.5
# Images smaller than MNIST's 28 px on the long side are enlarged (bilinear, by a whole factor)
# to at least this before the ink search, so that smoothing and the one-pixel fringe stay small
# beside the strokes of a 12-px scan. (MNIST's own digits keep their 28 px: enlarged, they
# would come out blurred.)
_SMALL_SIDE = 48
# Ruling of notebook paper (see _erase_ruling): a band of rows or columns at least _RULING_COVER
# ink, at most _RULING_THICKNESS of the image and _RULING_STROKE of the digit's stroke width
# thick. Pixels over _RULING_INK times the line's own contrast are ink lying along it.
_RULING_COVER = 0.8
_RULING_THICKNESS = 0.03
_RULING_MIN_LIMIT = 3.0
_RULING_STROKE = 0.6
_RULING_INK = 1.6
# Ink with more than this share of pinholes (see _graininess) is read as grainy pencil.
_GRAINY = 0.09
# Grain shows only where strokes are many pixels wide: in smaller images the gaps between
# strokes are as narrow as pinholes (MNIST's own digits measure up to 0.2).
_GRAIN_MIN_SIDE = 100
# Pinholes up to this size (pixels) are filled in grainy ink: coarse paper leaves holes of 4-6
# px (a 5-px closing left pencil strokes 13 % less like pen strokes). Gaps between strokes are
# wider than that in the images of 100 px and more where grain is looked for.
_GRAIN_CLOSING = 9
# Ink fainter than half a stroke's core counts only this many pixels (of the image as read)
# from a core: anti-aliasing, blur and JPEG spread a stroke's edge over 1-3 px.
_FRINGE = 3
# Larger crops are reduced to this long side before stroke-width normalisation and the final
# resampling to 20 px: fine enough for smooth anti-aliasing, small enough to be fast.
_CROP_MAX_SIDE = 128
# Stroke widths in output pixels, measured as 2 * area / boundary length of the pixels above 0.5.
# MNIST's median is 2.6, its 10th/90th/99th percentiles 2.1/3.7/5.0. Thin strokes are widened
# to a little above the median: a widened pen line is equally wide everywhere, and on held-out
# thin-pen renderings a model trained on MNIST did best at 3.0 (2.3: -0.8 points, 3.6: -0.1).
# Only strokes thicker than nearly all of MNIST's are thinned, and only to its thick end, since
# a model trained on MNIST knows bold digits (thinning to 3.0 cost felt-pen renderings twice
# MNIST's width 1.3 points).
_THINNEST_STROKE = 2.4
_TARGET_STROKE = 3.0
_THICKEST_STROKE = 5.5
_THICK_TARGET_STROKE = 4.5
# Lanczos-3 reaches three output pixels to each side.
_LANCZOS_REACH = 3


def preprocess_image(image: ImageInput, *, name: str | None = None) -> np.ndarray:
    """Turn a photo, scan or drawing of one digit into MNIST form.

    ``image`` is a path, encoded bytes, a binary file object, a PIL image, or a numpy array
    (2-D grey, or 3-D with 1, 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels; uint8, uint16,
    bool, or float in [0, 1]). ``name`` names the image in error messages (default: the path,
    or a description of the object).

    Returns float32 (28, 28) in [0, 1], white ink on black, max exactly 1.0, ink within a 20x20
    box (20 px on its longer side), centre of mass within one pixel of (14, 14) in index
    coordinates (usually within half a pixel, as in MNIST).

    Raises ``ImageError`` if the image cannot be read or is unusable, ``NoDigitFound`` (a
    subclass) if it holds no ink.
    """
    label = _describe(image, name)
    grey = read_grey(image, name=label)
    ink = _find_ink(grey, label)
    return _fit_into_mnist_frame(ink, label)


# ---------------------------------------------------------------------------------------------
# Reading


def read_grey(image: ImageInput, *, name: str | None = None) -> np.ndarray:
    """Read any supported input as grey float32 (H, W) in [0, 1], 0 black, transparency composited.

    Images larger than 640 px on the long side come back reduced by area-averaging to at most that.
    Raises ``ImageError`` with a one-line message naming the image for unreadable input.
    """
    label = _describe(image, name)
    if isinstance(image, np.ndarray):
        grey, alpha = _array_to_grey(image, label)
    elif isinstance(image, Image.Image):
        _check_size(image.size, label)
        grey, alpha = _pil_to_grey(_upright(image), label)
    else:
        grey, alpha = _read_encoded(image, label)
    grey = _composite(grey, alpha)
    return _reduce(grey)


def _describe(image: object, name: str | None) -> str:
    if name:
        return name
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "the image bytes"
    if isinstance(image, np.ndarray):
        return "the array"
    if isinstance(image, Image.Image):
        return "the PIL image"
    file_name = getattr(image, "name", None)
    return file_name if isinstance(file_name, str) else "the image file"


def _read_encoded(image: object, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise ImageError(f"{name} does not exist")
        if os.path.isdir(path):
            raise ImageError(f"{name} is a directory, not an image")
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise ImageError(f"cannot read {name}: {error.strerror or error}") from None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise ImageError(f"{name} was opened in text mode; open it with 'rb'")
    else:
        raise ImageError(
            f"{name} is a {type(image).__name__}; expected a path, bytes, a file, a PIL image or "
            "a numpy array"
        )
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    return _decode(data, name)


def _decode(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        # A size above Pillow's own limit warns (or raises beyond twice it) inside Image.open,
        # before any pixel is decoded; both mean a bomb here. Our own, lower limit follows.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{name} is too large: it declares more than {MAX_PIXELS // 1_000_000} megapixels "
            "(refused before decoding)"
        ) from None
    except UnidentifiedImageError:
        image_format = _format_from_signature(data)
        if image_format:
            raise ImageError(
                f"{name} starts like a {image_format} file but cannot be read: it is truncated "
                "or corrupt"
            ) from None
        raise ImageError(
            f"{name} is not an image (or not in a format that can be read: PNG, JPEG, GIF, BMP, "
            "TIFF, WebP, ...)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{name} is corrupt: {_one_line(error)}") from None
    with opened:
        _check_size(opened.size, name)
        _draft_large_jpeg(opened)
        try:
            opened.seek(0)
            opened.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
            message = _one_line(error)
            if "truncated" in message or isinstance(error, EOFError):
                raise ImageError(f"{name} is truncated: {message}") from None
            raise ImageError(f"{name} is corrupt or truncated: {message}") from None
        except MemoryError:
            raise ImageError(f"{name} is too large to decode") from None
        return _pil_to_grey(_upright(opened), name)


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _format_from_signature(data: bytes) -> str | None:
    """The format whose magic bytes ``data`` starts with, to tell a cut-off file from a
    non-image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for signature, image_format in _SIGNATURES:
        if data.startswith(signature):
            return image_format
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _check_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{name} is too large: {width}x{height} is {width * height / 1e6:.0f} megapixels, "
            f"the limit is {MAX_PIXELS // 1_000_000} (refused before decoding)"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{name} is too small: {width}x{height} pixels; at least {MIN_SIDE} on each side are "
            "needed"
        )


def _draft_large_jpeg(image: Image.Image) -> None:
    # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing; a 12-MP phone photo then
    # costs a few ms instead of 100. Requesting 3/4 of the working side keeps a margin above it.
    width, height = image.size
    if image.format == "JPEG" and max(width, height) > 2 * _WORK_SIDE:
        factor = 0.75 * _WORK_SIDE / max(width, height)
        image.draft(image.mode, (math.ceil(width * factor), math.ceil(height * factor)))


def _upright(image: Image.Image) -> Image.Image:
    # EXIF is optional metadata that Pillow parses leniently and fails on in many ways; a photo
    # with broken EXIF is still a photo, shown as stored.
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001
        return image
    if orientation not in range(2, 9):
        return image  # exif_transpose would copy the whole image for nothing
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        return image


_ORIENTATION_TAG = 0x0112
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _pil_to_grey(image: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey float32 (H, W) in [0, 1] and alpha float32 (H, W) in [0, 1] or None.

    Conversion to grey (ITU-R 601 luma, as Pillow's 'L') and the reduction of large images
    happen in Pillow, on one byte per pixel: several times faster than float arrays in NumPy.
    """
    mode = image.mode
    if mode in _WIDE_MODES:
        return _scale_wide(np.asarray(image, dtype=np.float64)), None
    if mode in _ALPHA_MODES or "transparency" in image.info:
        # convert() knows P/L/RGB transparency keys and premultiplied modes.
        grey_alpha = image.convert("RGBA").convert("LA")
        factor = _reduction_factor(grey_alpha.size)
        if factor > 1:
            # Premultiplied, so that the hidden colour of transparent pixels does not bleed
            # into the strokes they are averaged with.
            grey_alpha = grey_alpha.convert("La").reduce(factor).convert("LA")
        values = np.asarray(grey_alpha, dtype=np.float32) / 255.0
        return values[..., 0], values[..., 1]
    if mode in ("L", "1", "RGB"):
        grey = image.convert("L")
    else:
        try:
            grey = image.convert("RGB").convert("L")
        except ValueError:
            # LAB and other exotic modes: the first band is lightness or close enough.
            if mode != "LAB":
                raise ImageError(f"{name} has an unsupported pixel mode {mode!r}") from None
            grey = image.getchannel(0)
    factor = _reduction_factor(grey.size)
    if factor > 1:
        grey = grey.reduce(factor)
    return np.asarray(grey, dtype=np.float32) / 255.0, None


def _scale_wide(values: np.ndarray) -> np.ndarray:
    # 16-bit and 32-bit modes carry no reliable white level: 16-bit scans fill 0..65535, some
    # writers store 8-bit data in 'I', float TIFFs use 0..1. Pick the range the values fit.
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1:
        return values.astype(np.float32)
    if low >= 0 and high <= 255:
        return (values / 255.0).astype(np.float32)
    if low >= 0 and high <= 65535:
        return (values / 65535.0).astype(np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)


def _array_values(array: np.ndarray, name: str) -> np.ndarray:
    """Pixel values of an array as float32 in [0, 1]; ImageError for dtypes and ranges not
    understood."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint16:
        return (array / 65535.0).astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ImageError(
                f"{name} has integer values outside 0..255 ({array.min()}..{array.max()}); "
                "use uint8 0..255, uint16, or float in [0, 1]"
            )
        return (array / 255.0).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise ImageError(f"{name} contains NaN or infinite values")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ImageError(
                f"{name} has float values outside [0, 1] ({values.min():g}..{values.max():g}); "
                "scale them to [0, 1] (divide 0..255 values by 255)"
            )
        return values
    raise ImageError(f"{name} has dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]")


def _array_to_grey(array: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (2, 3, 4))):
        raise ImageError(
            f"{name} has shape {array.shape}; expected (H, W) grey or (H, W, C) with C = 2 (grey "
            "+ alpha), "
            "3 (RGB) or 4 (RGBA)"
        )
    _check_size((array.shape[1], array.shape[0]), name)
    values = _array_values(array, name)
    if values.ndim == 2:
        return values, None
    channels = values.shape[2]
    if channels == 2:
        return values[..., 0], values[..., 1]
    grey = _luma(values[..., :3])
    return grey, (values[..., 3] if channels == 4 else None)


def _composite(grey: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Composite onto a backdrop chosen so that the transparent part reads as background.

    Mostly transparent (a canvas export): the opaque strokes are the ink, and the backdrop is
    white under dark strokes and black under light ones, so both exports keep their contrast.
    Mostly opaque (a photo with transparent padding): white, like paper.
    """
    if alpha is None:
        return grey
    opaque = alpha > 0.5
    if opaque.all():
        return grey
    backdrop = 1.0
    if 0 < opaque.mean() < 0.5 and float(np.median(grey[opaque])) > 0.5:
        backdrop = 0.0
    return (alpha * grey + (1.0 - alpha) * backdrop).astype(np.float32)


def _reduction_factor(size: tuple[int, ...]) -> int:
    return max(1, math.ceil(max(size) / _WORK_SIDE))


def _reduce(grey: np.ndarray) -> np.ndarray:
    factor = _reduction_factor(grey.shape)
    if factor <= 1:
        return np.ascontiguousarray(grey, dtype=np.float32)
    # Area-averaging keeps a thin stroke as a fainter stroke; the ink threshold is relative to
    # the noise, which averaging lowers by more than the stroke.
    rows, cols = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
    blocks = grey[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Finding the ink


def _find_ink(grey: np.ndarray, name: str) -> np.ndarray:
    """Ink of a grey image, cropped to its bounding box: float32 (h, w) in [0, 1], 1 at stroke
    cores."""
    upscale = 1
    if max(grey.shape) < MNIST_SIDE:
        upscale = math.ceil(_SMALL_SIDE / max(grey.shape))
        grey = np.asarray(
            Image.fromarray(grey).resize(
                (grey.shape[1] * upscale, grey.shape[0] * upscale), Image.Resampling.BILINEAR
            ),
            np.float32,
        )
    background = _fit_background(grey)
    residual = grey - background
    # Smoothing lets noise average out before any pixel is judged, so a JPEG block or a fibre of
    # paper texture does not pass for ink while a 1-px line keeps about half its contrast.
    smooth = ndimage.gaussian_filter(residual, sigma=1.0, mode="nearest")
    noise = _background_noise(smooth)
    floor = max(_FLOOR_SIGMAS * noise, _NOISE_FLOOR)
    dark_mass = float(np.clip(-smooth - floor, 0, None).sum())
    light_mass = float(np.clip(smooth - floor, 0, None).sum())
    if dark_mass == 0 and light_mass == 0:
        raise NoDigitFound(
            f"no digit found in {name}: the image is blank (no ink stands out from the background)"
        )
    if dark_mass != light_mass:
        dark_ink = dark_mass > light_mass
    else:
        dark_ink = float(np.median(grey)) > 0.5
    if dark_ink:
        residual, smooth = -residual, -smooth
        # Light falls on ink and paper alike, so in a shadow the ink's contrast shrinks with the
        # paper's brightness; dividing by the paper's level restores it (reflectance instead of
        # brightness). Light ink on a dark board has no paper level to divide by.
        level = float(np.median(background))
        gain = level / np.maximum(background, 0.1 * level + 1e-3)
        residual, smooth = residual * gain, smooth * gain
        noise = _background_noise(smooth)
        floor = max(_FLOOR_SIGMAS * noise, _NOISE_FLOOR)

    candidates = smooth > floor
    # Ruling is searched for down to half the floor: a faint 1-px line on a JPEG breaks up at the
    # floor itself, and its fragments next to the digit would stay as ink.
    if candidates.any() and _erase_ruling(residual, candidates, smooth > 0.5 * floor):
        smooth = ndimage.gaussian_filter(residual, sigma=1.0, mode="nearest")
        candidates = smooth > floor
    if not candidates.any():
        raise NoDigitFound(
            f"no digit found in {name}: the image is blank (no ink stands out from the background)"
        )
    level = float(np.percentile(np.maximum(residual[candidates], smooth[candidates]), 90))
    if level < max(_MIN_CONTRAST, _SIGNAL_SIGMAS * noise):
        raise NoDigitFound(
            f"no digit found in {name}: the image is blank or too faint "
            f"(ink contrast {level:.2f} against noise {noise:.3f})"
        )
    if min(grey.shape) >= _GRAIN_MIN_SIDE and _graininess(residual, candidates, level) > _GRAINY:
        # Pencil on paper with tooth: graphite only on the fibres' peaks, so a stroke is a
        # spray of dots. Judged pixel by pixel it comes out faint and, to the stroke-width step,
        # hairline; a closing fills the pinholes and keeps the stroke's outline where it was
        # (smoothing would dim its edges and narrow it instead).
        residual = ndimage.grey_closing(residual, size=(_GRAIN_CLOSING, _GRAIN_CLOSING))
        level = float(np.percentile(residual[candidates], 90))
    ink = np.clip((residual - floor) / (level - floor), 0.0, 1.0)
    # Faint pixels belong to the ink only as the soft edge of a stroke, within a few pixels of
    # its core. Farther out they are lighting the background fit could not follow: the burnt-out
    # plateau of an over-exposed photo falling off into a grey corner. Kept, that haze joins
    # the digit and shrinks it in the frame.
    strokes = ndimage.binary_dilation(ink > 0.5, iterations=_FRINGE * upscale)
    keep = _digit_components(candidates & strokes, ink, name)
    rows, cols = np.nonzero(keep)
    extent = max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1
    if extent < max(_MIN_DIGIT_PIXELS, _MIN_DIGIT_FRACTION * max(grey.shape)):
        raise NoDigitFound(
            f"no digit found in {name}: the image is nearly blank (only a speck {extent} px across)"
        )
    # Anti-aliased fringe pixels whose smoothed value fell below the floor belong to the stroke;
    # one pixel around the kept components takes them in.
    top, bottom = max(int(rows.min()) - 1, 0), int(rows.max()) + 2
    left, right = max(int(cols.min()) - 1, 0), int(cols.max()) + 2
    keep = ndimage.binary_dilation(keep[top:bottom, left:right], structure=np.ones((3, 3), bool))
    ink = np.where(keep, ink[top:bottom, left:right], 0.0).astype(np.float32)
    return _crop_to_ink(ink, name)


def _erase_ruling(residual: np.ndarray, candidates: np.ndarray, faint: np.ndarray) -> bool:
    """Erase the ruling of lined or squared paper from ``residual`` (H, W), ink positive, in
    place; True if there was any. ``candidates`` marks the pixels that may be ink, ``faint``
    those that may be a line.

    A ruling line is straight, runs across the whole image (its band of rows, or columns, is at
    least _RULING_COVER ink), and is thin: at most _RULING_THICKNESS of the image (or 3 px) and
    well under the digit's own strokes, so that the bar of a 7 cropped tight, or the stem of a
    small 4, is never taken for one. Where a stroke crosses a line, the line's pixels take the
    weaker of the values just beyond it on either side (a stroke going on through stays, the
    line goes), except pixels far darker than the line itself, which are ink lying along it.
    """
    bands = [(axis, *band) for axis in (0, 1) for band in _line_bands(faint, axis)]
    if not bands:
        return False
    in_bands = np.zeros(candidates.shape, bool)
    for axis, start, stop in bands:
        (in_bands[start:stop] if axis == 0 else in_bands[:, start:stop])[...] = True
    rest = candidates & ~in_bands
    # The digit's boldest stroke (twice the deepest point inside the rest of the ink): a line
    # the search missed is thin and must not make the digit look thin.
    width = _boldest_stroke(rest)
    erased = False
    for axis, start, stop in bands:
        across = candidates.shape[axis]
        mask = candidates if axis == 0 else candidates.T
        # How many pixels thick the line is (its smoothed fringe above the floor included)
        # where no stroke runs along it: a digit's stem can follow a grid line over nearly half
        # its length, so the lower quartile, not the median.
        thickness = float(np.percentile(mask[max(start - 3, 0) : stop + 3].sum(axis=0), 25))
        limit = min(max(_RULING_MIN_LIMIT, _RULING_THICKNESS * across), _RULING_STROKE * width)
        if thickness > limit:
            continue
        view = residual if axis == 0 else residual.T
        # Beyond the band on either side; at the image's edge, the one side there is.
        sides = [view[i] for i in (start - 1, stop) if 0 <= i < across]
        if not sides:
            continue
        beyond = np.minimum.reduce(sides)
        band = view[start:stop]
        # The line's own contrast: its peak across the band, where no stroke lies on it.
        line_level = float(np.percentile(band.max(axis=0), 25))
        ink_along = band > _RULING_INK * line_level
        view[start:stop] = np.where(ink_along, band, np.broadcast_to(beyond, band.shape))
        erased = True
    return erased


def _boldest_stroke(mask: np.ndarray) -> float:
    """Twice the largest distance from a pixel of ``mask`` to its outside (inf if empty),
    measured on at most about 160 px across for speed."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return math.inf
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    step: int = max(1, math.ceil(max(box.shape) / 160))
    depth = np.asarray(ndimage.distance_transform_edt(np.pad(box[::step, ::step], 1)))
    return 2.0 * step * float(depth.max())


def _line_bands(candidates: np.ndarray, axis: int) -> list[tuple[int, int]]:
    """Bands of rows (axis 0) or columns (axis 1), [start, stop), whose candidates widened by
    one pixel across cover at least _RULING_COVER of their length: ruling lines, or a stroke."""
    mask = candidates if axis == 0 else candidates.T
    widened = mask.copy()
    widened[1:] |= mask[:-1]
    widened[:-1] |= mask[1:]
    full = widened.mean(axis=1) >= _RULING_COVER
    if not full.any():
        return []
    labels, count = ndimage.label(full)
    return [(s.start, s.stop) for (s,) in ndimage.find_objects(labels)]


def _graininess(residual: np.ndarray, candidates: np.ndarray, level: float) -> float:
    """Share of the ink's area that is holes one or two pixels wide: about 0.02 for pen
    strokes (only concave corners; at most 0.06 on every other kind of rendering), 0.12-0.36
    for the pencil renderings."""
    rows, cols = np.flatnonzero(candidates.any(axis=1)), np.flatnonzero(candidates.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    core = np.pad((residual[box] > 0.5 * level) & candidates[box], 1)
    closed = ndimage.binary_closing(core, structure=np.ones((3, 3), bool))
    area = int(closed.sum())
    return float((closed & ~core).sum() / area) if area else 0.0


def _fit_background(grey: np.ndarray) -> np.ndarray:
    """Quadratic surface fitted to the background, ignoring ink by iterated outlier rejection.

    A quadratic follows lighting gradients, vignetting and soft shadows; it cannot bend around
    strokes, so unlike a median or morphological filter it never eats into a thick felt-pen
    digit that fills the frame.
    """
    rows, cols = grey.shape
    step = max(1, max(rows, cols) // 64)
    sample = grey[::step, ::step].astype(np.float64)
    ys = np.linspace(-1.0, 1.0, rows)[::step]
    xs = np.linspace(-1.0, 1.0, cols)[::step]
    y, x = np.meshgrid(ys, xs, indexing="ij")
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    values = sample.reshape(-1)
    # Start from the level of the image's outer ring, not a least-squares fit of everything:
    # ink pulls such a fit into a bowl whose residuals no longer single out the background. Nor
    # the median of the whole image: a bold digit cropped to its strokes can be more than half
    # ink, while along the border it only touches the frame here and there.
    coefficients = np.zeros(6)
    coefficients[0] = np.median(
        np.concatenate([sample[0], sample[-1], sample[1:-1, 0], sample[1:-1, -1]])
    )
    keep = np.ones(values.shape, bool)
    for iteration in range(6):
        residual = values - design @ coefficients
        # The spread of the background's own side: ink lies on one side of it, noise on both.
        spread = 1.4826 * _one_sided_median(residual) + 1e-3
        new_keep = np.abs(residual) < 2.5 * spread
        # The first pass always fits: a strong gradient can keep every pixel at first.
        if new_keep.sum() < 12 or (iteration > 0 and np.array_equal(new_keep, keep)):
            break
        keep = new_keep
        # Normal equations: a 6x6 solve, where lstsq's SVD of the whole sample costs milliseconds.
        kept = design[keep]
        coefficients = np.linalg.solve(
            kept.T @ kept + 1e-6 * len(kept) * np.eye(6), kept.T @ values[keep]
        )
    full_y = np.linspace(-1.0, 1.0, rows)[:, None]
    full_x = np.linspace(-1.0, 1.0, cols)[None, :]
    c = coefficients
    surface = (
        c[0]
        + c[1] * full_x
        + c[2] * full_y
        + c[3] * full_x**2
        + c[4] * full_x * full_y
        + c[5] * full_y**2
    )
    return np.clip(surface, values.min(), values.max()).astype(np.float32)


def _one_sided_median(residual: np.ndarray) -> float:
    """The smaller of the medians of |x| over the positive and the negative side of zero.

    An empty side counts as zero: in a narrow crop filled with ink, smoothing can pull every
    paper pixel below the background, and the ink's side alone says nothing about the noise.
    """
    sides = (residual[residual >= 0], -residual[residual <= 0])
    return float(min(np.median(side) if side.size else 0.0 for side in sides))


def _background_noise(residual: np.ndarray) -> float:
    """Standard deviation of the background's noise in a residual centred on the background.

    Ink lies on one side of the background, noise on both: the quieter side measures the noise
    even where ink covers a large part of the image (a bold digit cropped tight), which a plain
    median absolute deviation mistakes for noise.
    """
    # A strided sample is plenty for a median and keeps this cheap.
    step = max(1, int(math.sqrt(residual.size / 16384)))
    # The median of |x| over one side of a normal distribution is 0.6745 sigma.
    return _one_sided_median(residual[::step, ::step]) / 0.6745


def _digit_components(candidates: np.ndarray, ink: np.ndarray, name: str) -> np.ndarray:
    """Mask of the components that make up the digit: bool (H, W)."""
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3), bool))
    if count == 0:
        raise NoDigitFound(f"no digit found in {name}: the image is blank")
    indices = np.arange(1, count + 1)
    masses = np.asarray(ndimage.sum_labels(ink, labels, indices))
    boxes = ndimage.find_objects(labels)
    rows, cols = candidates.shape

    def is_edge(index: int) -> bool:
        # A page edge, a table or a finger along the border: a band that runs almost the whole
        # length of the side it lies along, touching it most of the way, and reaches less than
        # a third into the image. A digit cropped to its strokes spans the image both ways and
        # touches each side only where a stroke meets it.
        box = boxes[index]
        height, width = box[0].stop - box[0].start, box[1].stop - box[1].start
        mine = labels[box] == index + 1
        contacts = []
        if width >= 0.9 * cols and height <= _EDGE_DEPTH * rows:
            if box[0].start == 0:
                contacts.append(mine[0].sum() / cols)
            if box[0].stop == rows:
                contacts.append(mine[-1].sum() / cols)
        if height >= 0.9 * rows and width <= _EDGE_DEPTH * cols:
            if box[1].start == 0:
                contacts.append(mine[:, 0].sum() / rows)
            if box[1].stop == cols:
                contacts.append(mine[:, -1].sum() / rows)
        return any(contact >= _EDGE_CONTACT for contact in contacts)

    order = [int(i) for i in np.argsort(-masses)]
    edges = {i for i in order if is_edge(i)}
    if len(edges) < len(order):
        order = [i for i in order if i not in edges]
    largest = order[0]
    if masses[largest] <= 0:
        raise NoDigitFound(f"no digit found in {name}: the image is blank")
    order = [i for i in order if masses[i] >= _SPECK_FRACTION * masses[largest]]

    # Grow a cluster from the largest component: pieces of a broken stroke lie close to it,
    # a smudge or a second scribble across the page does not.
    top, bottom = boxes[largest][0].start, boxes[largest][0].stop
    left, right = boxes[largest][1].start, boxes[largest][1].stop
    chosen = {largest}
    grown = True
    while grown:
        grown = False
        reach = 0.5 * max(bottom - top, right - left)
        for index in order:
            if index in chosen:
                continue
            box = boxes[index]
            gap_rows = max(box[0].start - bottom, top - box[0].stop, 0)
            gap_cols = max(box[1].start - right, left - box[1].stop, 0)
            if max(gap_rows, gap_cols) <= reach:
                chosen.add(index)
                top, bottom = min(top, box[0].start), max(bottom, box[0].stop)
                left, right = min(left, box[1].start), max(right, box[1].stop)
                grown = True
    keep_labels = np.zeros(count + 1, bool)
    keep_labels[[i + 1 for i in chosen]] = True
    return keep_labels[labels]


def _crop_to_ink(ink: np.ndarray, name: str) -> np.ndarray:
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise NoDigitFound(f"no digit found in {name}: the image is blank")
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


# ---------------------------------------------------------------------------------------------
# Geometry


def _fit_into_mnist_frame(ink: np.ndarray, name: str) -> np.ndarray:
    """(h, w) ink cropped to its bounding box -> float32 (28, 28) in MNIST's geometry."""
    ink = _to_crop_scale(ink)
    ink = _normalise_stroke_width(ink)
    rows, cols = ink.shape
    total = float(ink.sum())
    if total <= 0:
        raise NoDigitFound(f"no digit found in {name}: the image is blank")
    # Continuous coordinates (pixel i spans [i, i + 1]) keep the scaling arithmetic simple.
    com_row, com_col = (float(c) + 0.5 for c in ndimage.center_of_mass(ink))
    scale = BOX_SIDE / max(rows, cols)
    # A digit whose mass sits far off its box centre (a heavy-topped 7) cannot be centred on
    # its mass at full size without leaving the frame; shrink it until it can.
    for _ in range(60):
        placement_rows = _placement(rows, com_row, scale)
        placement_cols = _placement(cols, com_col, scale)
        if placement_rows and placement_cols:
            break
        scale *= 0.97
    else:
        raise NoDigitFound(f"no digit found in {name}: the ink cannot be centred")
    (top, height), (left, width) = placement_rows, placement_cols

    # Lanczos, widened by Pillow when reducing, anti-aliases like MNIST's own downscaling and
    # upsamples small crops smoothly. Only the output pixels the crop covers are computed, so
    # the filter's reach cannot spread ink beyond the 20-px box; zero padding gives it a clean
    # neighbourhood at the crop's edges.
    pad = math.ceil(_LANCZOS_REACH / min(scale, 1.0)) + 1
    source_height, source_width = height / scale, width / scale
    padded = np.zeros(
        (pad + math.ceil(source_height) + pad, pad + math.ceil(source_width) + pad), np.float32
    )
    padded[pad : pad + rows, pad : pad + cols] = ink
    small = Image.fromarray(padded).resize(
        (width, height),
        Image.Resampling.LANCZOS,
        box=(pad, pad, pad + source_width, pad + source_height),
    )
    frame = np.zeros((MNIST_SIDE, MNIST_SIDE), np.float32)
    # Lanczos overshoots by a few percent at edges; clipping first keeps solid strokes at 1.0
    # instead of dimming them to make room for the overshoot.
    frame[top : top + height, left : left + width] = np.clip(
        np.asarray(small, dtype=np.float32), 0.0, 1.0
    )
    peak = float(frame.max())
    if peak <= 0:
        raise NoDigitFound(f"no digit found in {name}: the ink vanished when scaled to 20 pixels")
    return np.clip(frame / peak, 0.0, 1.0)


def _placement(length: int, centre_of_mass: float, scale: float) -> tuple[int, int] | None:
    """Where a crop of ``length`` source pixels goes on one axis: (first pixel, pixel count).

    The crop starts on a whole pixel, as in MNIST, at the offset that puts its centre of mass
    nearest CENTRE; None if it would then leave the 28-px frame.
    """
    span = length * scale
    count = max(1, math.ceil(span - 1e-6))
    if count > BOX_SIDE:
        return None
    # A symmetric digit has its centre of mass on a half pixel; rounding such ties the same way
    # every time keeps float noise (from the polarity, the format) from moving it a pixel.
    start = math.floor(CENTRE + 1.0 - centre_of_mass * scale + 1e-4)
    if start < 0 or start + count > MNIST_SIDE:
        return None
    return start, count


def _to_crop_scale(ink: np.ndarray) -> np.ndarray:
    """Bring the crop's long side down to at most _CROP_MAX_SIDE; smaller crops stay as they are."""
    long_side = max(ink.shape)
    if long_side > _CROP_MAX_SIDE:
        # Max-pooling rather than averaging: a 2-px line on a 1000-px photo must stay a line
        # (one pooled pixel wide) for the stroke-width step to find and widen it.
        factor = math.ceil(long_side / _CROP_MAX_SIDE)
        rows, cols = ink.shape
        padded = np.zeros(
            (math.ceil(rows / factor) * factor, math.ceil(cols / factor) * factor), np.float32
        )
        padded[:rows, :cols] = ink
        blocks = padded.reshape(
            padded.shape[0] // factor, factor, padded.shape[1] // factor, factor
        )
        return blocks.max(axis=(1, 3))
    return ink


def _stroke_width(ink: np.ndarray) -> float | None:
    """Typical stroke width in pixels: 2 * area / boundary length of the pixels above 0.5."""
    mask = ink > 0.5
    area = int(mask.sum())
    if area == 0:
        return None
    boundary = int((mask & ~ndimage.binary_erosion(mask)).sum())
    return 2.0 * area / max(boundary, 1)


def _normalise_stroke_width(ink: np.ndarray) -> np.ndarray:
    """Widen strokes that would come out thinner than MNIST's, thin those far thicker."""
    width = _stroke_width(ink)
    if width is None:
        return ink
    pixels_per_output_pixel = max(ink.shape) / BOX_SIDE
    width_out = width / pixels_per_output_pixel
    if width_out < _THINNEST_STROKE:
        radius = round((_TARGET_STROKE - width_out) * pixels_per_output_pixel / 2)
        if radius >= 1:
            padded = np.pad(ink, radius)
            return _crop_nonzero(_dilate(padded, radius))
    elif width_out > _THICKEST_STROKE:
        radius = round((width_out - _THICK_TARGET_STROKE) * pixels_per_output_pixel / 2)
        if radius >= 1:
            thinned = _erode(ink, radius)
            # Thinning must not break a stroke or erase a part of the digit.
            eight = np.ones((3, 3), bool)
            before = ndimage.label(ink > 0.5, structure=eight)[1]
            after = ndimage.label(thinned > 0.5, structure=eight)[1]
            if after == before:
                return _crop_nonzero(thinned)
    return ink


def _dilate(ink: np.ndarray, radius: int) -> np.ndarray:
    # Alternating square and cross steps grow an octagon, close enough to a round pen tip and
    # much cheaper than a disk footprint of the full radius.
    cross = ndimage.generate_binary_structure(2, 1)
    for step in range(radius):
        ink = (
            ndimage.maximum_filter(ink, size=3)
            if step % 2 == 0
            else ndimage.grey_dilation(ink, footprint=cross)
        )
    return ink


def _erode(ink: np.ndarray, radius: int) -> np.ndarray:
    cross = ndimage.generate_binary_structure(2, 1)
    for step in range(radius):
        ink = (
            ndimage.minimum_filter(ink, size=3)
            if step % 2 == 0
            else ndimage.grey_erosion(ink, footprint=cross)
        )
    return ink


def _crop_nonzero(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return ink[:0, :0]
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
