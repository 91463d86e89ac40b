"""Bring real photos, scans and drawings of digits into MNIST's form.

MNIST form is a float32 array of shape (28, 28) with values in [0, 1]: white ink (1.0) on black
(0.0), the digit scaled so that its longer side spans 20 pixels, and placed so that its centre of
mass (``scipy.ndimage.center_of_mass``, in row/column index coordinates) lies within half a pixel
of ``(CENTRE, CENTRE) == (14.0, 14.0)``. That is MNIST's own convention: measured over its test
set the centres of mass lie in [13.5, 14.5] with mean 14.0, and every digit's bounding box of
nonzero pixels is 20 pixels on its longer side.

The pipeline, for what people really photograph, scan and draw:

1. read: PNG, JPEG, GIF, BMP, TIFF or WebP (first frame of an animation), recognised by
   signature; decompression bombs refused by their declared size and decoding cost before
   decoding (see "Reading"); EXIF orientation applied; transparency composited onto
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
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Union

import numpy as np
from PIL import Image, ImageFile, ImageMode
from scipy import ndimage

from digitnet.errors import ImageError, NoDigitFound
from digitnet.files import NotARegularFile, open_regular_file

__all__ = [
    "BOX_SIDE",
    "CENTRE",
    "DECODE_BUDGET",
    "MAX_FILE_BYTES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "MNIST_SIDE",
    "SUPPORTED_FORMATS",
    "ImageInput",
    "InkMap",
    "find_ink",
    "fit_into_mnist_frame",
    "preprocess_image",
    "read_grey",
]

MNIST_SIDE = 28
BOX_SIDE = 20
# Index coordinates as scipy.ndimage.center_of_mass reports them (pixel i spans [i - 0.5, i + 0.5]).
CENTRE = 14.0
# Refused by declared size before decoding: 40 MP is more than any phone camera produces, whereas
# a crafted 50000x50000 PNG would need 10 GB. DECODE_BUDGET bounds the bytes per format and mode.
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
# Along a line of digits (find_ink), components this many of the line's heights apart still
# belong to it.
_LINE_GAP = 1.5
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
# Levels the background fit starts from, in the order they are tried when no ink is found:
# the image's border, its median, its lightest 5 %.
_BACKGROUND_STARTS = ("border", "median", "light")
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


@dataclass(frozen=True)
class InkMap:
    """The ink of an image, as ``preprocess_image`` finds it, and where it lies in the image.

    ``ink`` is float32 (h, w) in [0, 1], 1 at stroke cores, cropped to its bounding box.
    Ink pixel (row, col) covers the image's pixels from ``(top + row) * scale`` to
    ``(top + row + 1) * scale`` down, and likewise across from ``left``; ``scale`` is the image's
    pixels per ink pixel (above 1 for images reduced to 640 px, below 1 for enlarged small ones),
    ``image_shape`` the (height, width) of the image as read (EXIF orientation applied).
    ``more_along_line``: found without ``line``, more ink lies along the line than was kept.
    ``origin``: the (x, y) of the image's pixel where the region read starts (see ``find_ink``).
    """

    ink: np.ndarray
    top: float
    left: float
    scale: float
    image_shape: tuple[int, int]
    more_along_line: bool = False
    origin: tuple[int, int] = (0, 0)

    def to_image_box(
        self, top: int, left: int, bottom: int, right: int
    ) -> tuple[int, int, int, int]:
        """Ink rows [top, bottom) and columns [left, right) as (x0, y0, x1, y1) in the image's
        pixels, x1 and y1 exclusive, clipped to the image."""
        height, width = self.image_shape
        x, y = self.origin
        x0 = min(max(x + math.floor((self.left + left) * self.scale), 0), width)
        y0 = min(max(y + math.floor((self.top + top) * self.scale), 0), height)
        x1 = min(max(x + math.ceil((self.left + right) * self.scale), x0), width)
        y1 = min(max(y + math.ceil((self.top + bottom) * self.scale), y0), height)
        return x0, y0, x1, y1


def find_ink(
    image: ImageInput,
    *,
    name: str | None = None,
    line: bool = True,
    region: tuple[int, int, int, int] | None = None,
) -> InkMap:
    """The ink of ``image`` before it is fitted into MNIST's frame.

    Reads ``image`` as ``preprocess_image`` does, raising the same errors, and finds its ink by
    the same steps (lighting, polarity, ruling, specks, page edges). With ``line`` the
    components along the line of the largest one are kept too, gaps up to 1.5 times its height,
    so that a number written on one line comes back whole; without it, exactly the ink
    ``preprocess_image`` fits (``fit_into_mnist_frame(find_ink(image, line=False).ink)`` is
    ``preprocess_image(image)``).

    ``region`` (x0, y0, x1, y1 in the image's pixels, clipped to it) reads only that part of
    the image, reduced to 640 px only if it is larger: a closer look at a small number in a
    large photo (an image stored turned, by its EXIF orientation, is read whole).
    """
    label = _describe(image, name)
    grey, image_shape, (x0, y0, x1, y1) = _read(image, label, region)
    ink, top, left, upscale, more_along_line = _locate_ink(grey, label, line=line)
    scale = max((y1 - y0) / grey.shape[0], (x1 - x0) / grey.shape[1]) / upscale
    return InkMap(ink, top, left, scale, image_shape, more_along_line, (x0, y0))


def fit_into_mnist_frame(ink: np.ndarray, *, name: str = "the image") -> np.ndarray:
    """Ink float32 (h, w) in [0, 1] cropped to its bounding box -> float32 (28, 28) MNIST form,
    as the last step of ``preprocess_image``. Raises ``NoDigitFound`` if nothing is left."""
    return _fit_into_mnist_frame(ink, name)


# ---------------------------------------------------------------------------------------------
# Reading
#
# What one image may cost, whatever its bytes claim. Only regular files up to MAX_FILE_BYTES
# are read; only SUPPORTED_FORMATS are decoded, chosen by their signature (never by Pillow's
# guess among its forty-odd plugins, some of which decode while opening); structures that
# Pillow would expand in memory while opening (TIFF value arrays, PNG compressed text) are
# counted first; the full-size buffers a decoder needs are checked against DECODE_BUDGET before
# any pixel is decoded. After decoding, everything works on tiles of a quarter megapixel and keeps
# only the image reduced to _WORK_SIDE, so no full-size copy in another mode (premultiplied
# RGBA, float) ever exists. tests/test_limits.py measures the peak of the worst cases.

SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WebP")
# Larger files are refused unread: a phone photo is 2-12 MB, a 40-MP PNG scan about 30 MB.
MAX_FILE_BYTES = 50 * 2**20
# Full-size pixel buffers a decoder may hold at once (Pillow's image and the library's own).
DECODE_BUDGET = 96 * 2**20

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
# Full-size pixel buffers each decoder holds at once, in units of Pillow's image of that size,
# as measured (tests/test_limits.py): libwebp keeps its canvas and hands over a copy of the
# frame; Pillow's RLE reader for BMP assembles the pixels in a bytearray and copies it once
# more. TIFF measured about 1; 2 leaves a margin for libtiff's many layouts.
_DECODER_COPIES = {"PNG": 1, "JPEG": 1, "GIF": 1, "BMP": 1, "TIFF": 2, "WebP": 4}
_BMP_RLE_COPIES = 3
# Pillow decodes RLE-compressed BMP in Python, about a second per megabyte of one-pixel runs.
_MAX_BMP_RLE_BYTES = 1 << 20
# Pillow unpacks TIFF tags of these numeric types into tuples of Python objects, 5-50 times the
# bytes they take in the file; a 5 MB TIFF declaring 600,000 one-row strips cost 200 MB and 4 s
# to open. Real files have one entry per strip or tile: 65,536 is a 40-MP image in 16x16 tiles.
_TIFF_NUMERIC_TYPES = frozenset({3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18})
_MAX_TIFF_VALUES = 65_536
_MAX_TIFF_ENTRIES = 65_535
# Pillow inflates each compressed PNG text chunk to up to 1 MB and keeps up to 64 MB of them.
_MAX_PNG_TEXT_CHUNKS = 16
_MAX_PNG_CHUNKS = 65_536
# A progressive (or non-interleaved) JPEG is decoded scan by scan into a buffer holding every
# DCT coefficient of the image, each scan a pass over all of it: bound the passes too.
_MAX_JPEG_SCAN_PIXELS = 1_000_000_000
# Decoded pixels are converted and reduced in tiles of about this many source pixels.
_TILE_PIXELS = 1 << 18


def read_grey(image: ImageInput, *, name: str | None = None) -> np.ndarray:
    """Read any supported input as grey float32 (H, W) in [0, 1], 0 black, transparency composited.

    Images larger than 640 px on the long side come back reduced by area-averaging to at most
    that (blocks cut by the right and bottom edges averaged over the pixels they hold).
    Raises ``ImageError`` with a one-line message naming the image for unreadable input, and
    for nothing else: every exception a decoder raises becomes one.
    """
    return _read(image, _describe(image, name))[0]


Region = tuple[int, int, int, int]


def _read(
    image: ImageInput, label: str, region: Region | None = None
) -> tuple[np.ndarray, tuple[int, int], Region]:
    """``read_grey``'s image (of ``region`` only, if given), the (height, width) of the whole
    image before reduction, upright, and the region read (x0, y0, x1, y1)."""
    if isinstance(image, np.ndarray):
        shape = (int(image.shape[0]), int(image.shape[1])) if image.ndim >= 2 else (0, 0)
        box = _clip_region(region, shape)
        if region is not None and image.ndim >= 2:
            image = image[box[1] : box[3], box[0] : box[2]]
        grey, alpha = _array_to_grey(image, label)
    elif isinstance(image, Image.Image):
        _check_size(image.size, label)
        if isinstance(image, ImageFile.ImageFile) and image.tile:
            # Opened but not decoded yet: decoding it here is ours to bound.
            _check_decoding_cost(image, image.format or "", label)
            _load(image, label)
        orientation = _orientation(image)
        shape = _upright_shape(image.size, orientation)
        # A region is cut from the image as stored, so only from an upright one.
        if orientation != 1:
            region = None
        box = _clip_region(region, shape)
        if region is not None:
            image = image.crop(box)
        grey, alpha = _pil_to_grey(image, label)
        grey, alpha = _upright(grey, alpha, orientation)
    else:
        grey, alpha, shape, box = _read_encoded(image, label, region)
    return _composite(grey, alpha), shape, box


def _clip_region(region: Region | None, shape: tuple[int, int]) -> Region:
    height, width = shape
    if region is None:
        return 0, 0, width, height
    x0, y0, x1, y1 = region
    x0, y0 = min(max(x0, 0), max(width - 1, 0)), min(max(y0, 0), max(height - 1, 0))
    return x0, y0, min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)


def _upright_shape(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(height, width) of an image of PIL ``size`` (width, height) turned upright."""
    width, height = size
    # Orientations 5-8 turn the image by a quarter.
    return (width, height) if orientation >= 5 else (height, width)


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


def _read_encoded(
    image: object, name: str, region: Region | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int], Region]:
    if isinstance(image, (str, os.PathLike)):
        with _open_regular_file(os.fspath(image), name) as stream:
            return _decode(stream, name, region)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif hasattr(image, "read"):
        try:
            data = image.read(MAX_FILE_BYTES + 1)
        except OSError as error:
            raise ImageError(f"cannot read {name}: {error.strerror or error}") from None
        if isinstance(data, str):
            raise ImageError(f"{name} was opened in text mode; open it with 'rb'")
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{name}.read() returned a {type(data).__name__}, not bytes")
        data = bytes(data)
    else:
        raise ImageError(
            f"{name} is a {type(image).__name__}; expected a path, bytes, a file, a PIL image or "
            "a numpy array"
        )
    _check_file_size(len(data), name)
    return _decode(io.BytesIO(data), name, region)


def _open_regular_file(path: str, name: str) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file of an acceptable size."""
    try:
        stream, size = open_regular_file(path)
    except FileNotFoundError:
        raise ImageError(f"{name} does not exist") from None
    except IsADirectoryError:
        raise ImageError(f"{name} is a directory, not an image") from None
    except NotARegularFile:
        raise ImageError(
            f"{name} is not a regular file (a pipe, device or socket); images are read only "
            "from regular files"
        ) from None
    except OSError as error:
        raise ImageError(f"cannot read {name}: {error.strerror or error}") from None
    try:
        _check_file_size(size, name)
    except ImageError:
        stream.close()
        raise
    return stream


def _check_file_size(size: int, name: str) -> None:
    if size == 0:
        raise ImageError(f"{name} is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageError(
            f"{name} is too large: {size / 2**20:.0f} MB, the limit is "
            f"{MAX_FILE_BYTES // 2**20} MB (refused unread)"
        )


def _decode(
    stream: IO[bytes], name: str, region: Region | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int], Region]:
    """Grey and alpha (reduced, upright) of the encoded image in ``stream`` (seekable), or of
    ``region`` of it (when upright), its upright (height, width) before reduction, and the
    region read."""
    image_format = _format_from_signature(stream.read(16))
    if image_format is None:
        raise ImageError(
            f"{name} is not a supported image (not an image, or not in one of the formats "
            f"digitnet reads: {', '.join(SUPPORTED_FORMATS)})"
        )
    _check_structure(stream, image_format, name)
    file_bytes = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    try:
        opened = _open_as(image_format, stream)
    except Image.DecompressionBombError:
        raise _too_many_pixels(name) from None
    except MemoryError:
        raise ImageError(f"{name} is too large to decode") from None
    except Exception as error:  # noqa: BLE001 - a decoder's own failure, whatever its type
        raise ImageError(
            f"{name} starts like a {image_format} file but cannot be read: it is truncated or "
            f"corrupt ({_one_line(error)})"
        ) from None
    with opened:
        # Taken before a JPEG's draft mode shrinks what it reports.
        size = opened.size
        _check_size(size, name)
        if image_format == "JPEG":
            _check_jpeg(opened, stream, name)
            if region is None:
                _draft_large_jpeg(opened)
        _check_decoding_cost(opened, image_format, name, file_bytes)
        orientation = _orientation(opened)
        shape = _upright_shape(size, orientation)
        if orientation != 1:
            region = None
        box = _clip_region(region, shape)
        _load(opened, name)
        # A region is cut from the decoded image: a copy of that part only.
        source = opened if region is None else opened.crop(box)
        grey, alpha = _pil_to_grey(source, name)
        return (*_upright(grey, alpha, orientation), shape, box)


def _format_from_signature(data: bytes) -> str | None:
    """The supported format whose magic bytes ``data`` starts with, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for signature, image_format in _SIGNATURES:
        if data.startswith(signature):
            return image_format
    return None


def _open_as(image_format: str, stream: IO[bytes]) -> Image.Image:
    """Open ``stream`` with the plugin of ``image_format`` only.

    Calling the plugin directly, rather than ``Image.open``, skips Pillow's decompression-bomb
    check, which signals through the process-wide warnings filters (not thread-safe to
    change); ``_check_size`` and ``_check_decoding_cost`` apply stricter limits instead.
    """
    from PIL import (
        BmpImagePlugin,
        GifImagePlugin,
        JpegImagePlugin,
        PngImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )

    openers: dict[str, Callable[[IO[bytes]], Image.Image]] = {
        "PNG": PngImagePlugin.PngImageFile,
        "JPEG": JpegImagePlugin.jpeg_factory,
        "GIF": GifImagePlugin.GifImageFile,
        "BMP": BmpImagePlugin.BmpImageFile,
        "TIFF": TiffImagePlugin.TiffImageFile,
        "WebP": WebPImagePlugin.WebPImageFile,
    }
    return openers[image_format](stream)


def _load(image: Image.Image, name: str) -> None:
    try:
        image.load()
    except MemoryError:
        raise ImageError(f"{name} is too large to decode") from None
    except Image.DecompressionBombError:
        raise _too_many_pixels(name) from None
    except Exception as error:  # noqa: BLE001 - a decoder's own failure, whatever its type
        message = _one_line(error)
        if "truncated" in message or isinstance(error, EOFError):
            raise ImageError(f"{name} is truncated: {message}") from None
        raise ImageError(f"{name} is corrupt or truncated: {message}") from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _too_many_pixels(name: str) -> ImageError:
    return ImageError(
        f"{name} is too large: it declares more than {MAX_PIXELS // 1_000_000} megapixels "
        "(refused before decoding)"
    )


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


def _bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of a Pillow image in ``mode``: several bands always take 4."""
    try:
        descriptor = ImageMode.getmode(mode)
    except KeyError:
        return 4
    return 4 if len(descriptor.bands) > 1 else max(np.dtype(descriptor.typestr).itemsize, 1)


def _check_decoding_cost(
    image: Image.Image, image_format: str, name: str, file_bytes: int = 0
) -> None:
    """Refuse an image whose decoder would hold more than DECODE_BUDGET bytes of pixels, or
    take seconds on a file of ``file_bytes``."""
    width, height = image.size
    copies = _DECODER_COPIES.get(image_format, 1)
    tile = getattr(image, "tile", None)
    if image_format == "BMP" and tile and tile[0][0] == "bmp_rle":
        copies = _BMP_RLE_COPIES
        if file_bytes > _MAX_BMP_RLE_BYTES:
            raise ImageError(
                f"{name} is a run-length compressed BMP larger than "
                f"{_MAX_BMP_RLE_BYTES // 2**20} MB; refused (save it as PNG)"
            )
    cost = width * height * _bytes_per_pixel(image.mode) * copies
    if cost > DECODE_BUDGET:
        raise ImageError(
            f"{name} is too large to decode: {width}x{height} pixels of mode {image.mode} in "
            f"{image_format or 'this format'} need {cost / 2**20:.0f} MB, the limit is "
            f"{DECODE_BUDGET // 2**20} MB (refused before decoding)"
        )


def _check_structure(stream: IO[bytes], image_format: str, name: str) -> None:
    """Refuse files whose structure Pillow would expand in memory or time while opening."""
    stream.seek(0)
    if image_format == "TIFF":
        _check_tiff(stream, name)
    elif image_format == "PNG":
        _check_png(stream, name)


def _check_tiff(stream: IO[bytes], name: str) -> None:
    """Count the values of the first IFD's numeric tags, as Pillow will unpack them."""
    head = stream.read(16)
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    if len(head) < (16 if big else 8):
        return  # Pillow reports the truncation
    if big:
        (offset,) = struct.unpack(order + "Q", head[8:16])
        count_format, entry_size = order + "Q", 20
    else:
        (offset,) = struct.unpack(order + "I", head[4:8])
        count_format, entry_size = order + "H", 12
    if offset >= stream.seek(0, os.SEEK_END):
        return  # Pillow reports the directory missing
    stream.seek(offset)
    raw_count = stream.read(struct.calcsize(count_format))
    if len(raw_count) < struct.calcsize(count_format):
        return
    (entries,) = struct.unpack(count_format, raw_count)
    if entries > _MAX_TIFF_ENTRIES:
        raise ImageError(f"{name} is a TIFF file with {entries} tags in one directory; refused")
    table = stream.read(entries * entry_size)
    value_format = order + ("HHQ" if big else "HHI")
    for start in range(0, len(table) - entry_size + 1, entry_size):
        tag, kind, count = struct.unpack_from(value_format, table, start)
        if kind in _TIFF_NUMERIC_TYPES and count > _MAX_TIFF_VALUES:
            raise ImageError(
                f"{name} is a TIFF file whose tag {tag} holds {count} values, more than "
                f"{_MAX_TIFF_VALUES} (too many strips or tiles); refused"
            )


def _check_png(stream: IO[bytes], name: str) -> None:
    """Count the chunks, and the compressed text chunks Pillow inflates while opening."""
    stream.seek(8)
    chunks = text_chunks = 0
    while True:
        header = stream.read(8)
        if len(header) < 8:
            return
        length, kind = struct.unpack(">I4s", header)
        chunks += 1
        text_chunks += kind in (b"zTXt", b"iTXt")
        if chunks > _MAX_PNG_CHUNKS or text_chunks > _MAX_PNG_TEXT_CHUNKS:
            what = "text chunks" if text_chunks > _MAX_PNG_TEXT_CHUNKS else "chunks"
            raise ImageError(f"{name} is a PNG file with too many {what}; refused")
        if kind == b"IEND":
            return
        stream.seek(length + 4, os.SEEK_CUR)


def _check_jpeg(image: Image.Image, stream: IO[bytes], name: str) -> None:
    """Bound what libjpeg needs for a JPEG decoded scan by scan (progressive or not
    interleaved): a buffer of every DCT coefficient (2 bytes each), and one pass per scan."""
    layers = getattr(image, "layers", 0)
    components = _jpeg_first_scan_components(stream)
    if "progressive" not in image.info and (components is None or components >= layers):
        return
    width, height = image.size
    sampling = [(h, v) for _, h, v, _ in getattr(image, "layer", [])]
    if not sampling or any(not (1 <= h <= 4 and 1 <= v <= 4) for h, v in sampling):
        sampling = [(1, 1)] * max(layers, 1)
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    coefficients = 0
    for h, v in sampling:
        # libjpeg's jdcoefct: blocks per component, rounded up to whole MCUs.
        blocks_wide = -(-width * h // (8 * h_max))
        blocks_high = -(-height * v // (8 * v_max))
        coefficients += (-(-blocks_wide // h) * h) * (-(-blocks_high // v) * v) * 64
    if 2 * coefficients > DECODE_BUDGET:
        raise ImageError(
            f"{name} is a progressive JPEG of {width}x{height} pixels whose decoding needs "
            f"{2 * coefficients / 2**20:.0f} MB, the limit is {DECODE_BUDGET // 2**20} MB "
            "(refused before decoding)"
        )
    scans = _count(stream, b"\xff\xda")
    if scans * width * height > _MAX_JPEG_SCAN_PIXELS:
        raise ImageError(
            f"{name} is a JPEG of {width}x{height} pixels in {scans} scans, too many to decode "
            "in reasonable time; refused"
        )


def _jpeg_first_scan_components(stream: IO[bytes]) -> int | None:
    """The number of components in a JPEG's first scan (SOS), or None if there is none."""
    stream.seek(2)
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue  # junk between segments, which libjpeg skips too
        marker = stream.read(1)
        while marker == b"\xff":
            marker = stream.read(1)
        if not marker:
            return None
        code = marker[0]
        if code == 0xD9:
            return None
        if code in (0x00, 0x01, 0xD8) or 0xD0 <= code <= 0xD7:
            continue  # markers without a length
        length = stream.read(2)
        if len(length) < 2:
            return None
        if code == 0xDA:
            count = stream.read(1)
            return count[0] if count else None
        stream.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)


def _count(stream: IO[bytes], needle: bytes) -> int:
    """Occurrences of a two-byte ``needle`` in the whole stream, read in 1 MB blocks."""
    stream.seek(0)
    total, tail = 0, b""
    while block := stream.read(1 << 20):
        total += (tail + block).count(needle)
        tail = block[-1:]
    return total


def _draft_large_jpeg(image: Image.Image) -> None:
    # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing; a 12-MP phone photo then
    # costs a few ms instead of 100. Requesting 3/4 of the working side keeps a margin above it.
    width, height = image.size
    if max(width, height) > 2 * _WORK_SIDE:
        factor = 0.75 * _WORK_SIDE / max(width, height)
        image.draft(image.mode, (math.ceil(width * factor), math.ceil(height * factor)))


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable."""
    # EXIF is optional metadata that Pillow parses leniently and fails on in many ways; a photo
    # with broken EXIF is still a photo, shown as stored.
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the turn that shows the stored pixels upright, as ImageOps.exif_transpose
# applies it (Pillow's ROTATE_90 is counter-clockwise, np.rot90's k=1 too).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _upright(
    grey: np.ndarray, alpha: np.ndarray | None, orientation: int
) -> tuple[np.ndarray, np.ndarray | None]:
    # Turned after reduction: the same pixels, without a full-size copy.
    turn = _UPRIGHT[orientation]
    return (
        np.ascontiguousarray(turn(grey)),
        None if alpha is None else np.ascontiguousarray(turn(alpha)),
    )


_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _reduction_factor(size: tuple[int, ...]) -> int:
    return max(1, math.ceil(max(size) / _WORK_SIDE))


def _tiles(height: int, width: int, factor: int) -> Iterator[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of tiles covering an image, about _TILE_PIXELS each; their
    sides are multiples of ``factor`` except at the bottom and right edges."""
    side = factor * max(1, math.isqrt(_TILE_PIXELS) // factor)
    for top in range(0, height, side):
        for left in range(0, width, side):
            yield top, min(top + side, height), left, min(left + side, width)


def _reduce_in_tiles(
    height: int,
    width: int,
    factor: int,
    reduced_tile: Callable[[int, int, int, int], np.ndarray],
    dtype: type[np.generic],
) -> np.ndarray:
    """Assemble ``reduced_tile(top, bottom, left, right)`` (the tile reduced by ``factor``,
    (ceil(h/f), ceil(w/f)[, c])) into the reduced image (ceil(H/f), ceil(W/f)[, c])."""
    out: np.ndarray | None = None
    rows, cols = -(-height // factor), -(-width // factor)
    for top, bottom, left, right in _tiles(height, width, factor):
        block = reduced_tile(top, bottom, left, right)
        if out is None:
            out = np.empty((rows, cols) + block.shape[2:], dtype)
        out[top // factor : -(-bottom // factor), left // factor : -(-right // factor)] = block
    assert out is not None  # _check_size guarantees at least one tile
    return out


def _block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor`` x ``factor`` blocks over the first two axes of numeric (h, w[, c]) ->
    float64 (ceil(h/f), ceil(w/f)[, c]); blocks cut by the bottom and right edges are averaged
    over the pixels they hold, as Pillow's ``reduce`` does."""
    if factor == 1:
        return values.astype(np.float64, copy=False)
    rows, cols = values.shape[:2]
    out_rows, out_cols = -(-rows // factor), -(-cols // factor)
    if rows % factor or cols % factor:
        padded = np.zeros((out_rows * factor, out_cols * factor) + values.shape[2:], np.float64)
        padded[:rows, :cols] = values
        values = padded
    sums = values.reshape(out_rows, factor, out_cols, factor, *values.shape[2:]).sum(
        axis=(1, 3), dtype=np.float64
    )
    counts = np.multiply.outer(
        np.minimum(factor, rows - factor * np.arange(out_rows)),
        np.minimum(factor, cols - factor * np.arange(out_cols)),
    )
    means: np.ndarray = sums / counts.reshape(counts.shape + (1,) * (values.ndim - 2))
    return means


def _pil_to_grey(image: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey float32 (h, w) in [0, 1] and alpha float32 (h, w) in [0, 1] or None, reduced to at
    most _WORK_SIDE on the long side.

    Conversion to grey (ITU-R 601 luma, as Pillow's 'L') and the reduction of large images
    happen in Pillow, on one byte per pixel: several times faster than float arrays in NumPy.
    """
    width, height = image.size
    factor = _reduction_factor(image.size)
    if image.mode in _WIDE_MODES:
        return _wide_to_grey(image, factor, name), None
    with_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info

    def reduced_tile(top: int, bottom: int, left: int, right: int) -> np.ndarray:
        try:
            tile = image.crop((left, top, right, bottom))
            if with_alpha:
                # convert() knows P/L/RGB transparency keys and premultiplied modes; reducing
                # premultiplied keeps the hidden colour of transparent pixels out of the
                # strokes they are averaged with.
                grey_alpha = tile.convert("RGBA").convert("LA")
                if factor > 1:
                    grey_alpha = grey_alpha.convert("La").reduce(factor).convert("LA")
                return np.asarray(grey_alpha)
            grey = _to_l(tile, name)
            return np.asarray(grey.reduce(factor) if factor > 1 else grey)
        except ImageError:
            raise
        except Exception as error:  # noqa: BLE001 - Pillow's own failure on this mode or data
            raise ImageError(
                f"{name} cannot be converted to grey (mode {image.mode}): {_one_line(error)}"
            ) from None

    values = _reduce_in_tiles(height, width, factor, reduced_tile, np.uint8)
    values = values.astype(np.float32) / np.float32(255.0)
    if with_alpha:
        return values[..., 0], values[..., 1]
    return values, None


def _to_l(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    if mode in ("L", "1", "RGB"):
        return image.convert("L")
    try:
        return image.convert("RGB").convert("L")
    except ValueError:
        # LAB and other exotic modes: the first band is lightness or close enough.
        if mode != "LAB":
            raise ImageError(f"{name} has an unsupported pixel mode {mode!r}") from None
        return image.getchannel(0)


def _wide_to_grey(image: Image.Image, factor: int, name: str) -> np.ndarray:
    """16-bit, 32-bit integer and float images: float32 (h, w) in [0, 1], reduced."""
    width, height = image.size
    low, high = math.inf, -math.inf

    def reduced_tile(top: int, bottom: int, left: int, right: int) -> np.ndarray:
        nonlocal low, high
        try:
            tile = np.asarray(image.crop((left, top, right, bottom)))
        except Exception as error:  # noqa: BLE001 - Pillow's own failure on this mode or data
            raise ImageError(
                f"{name} cannot be read (mode {image.mode}): {_one_line(error)}"
            ) from None
        if tile.dtype.kind == "f":
            tile = np.nan_to_num(tile.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = min(low, float(tile.min())), max(high, float(tile.max()))
        return _block_mean(tile, factor)

    means = _reduce_in_tiles(height, width, factor, reduced_tile, np.float64)
    return _scale_wide(means, low, high)


def _scale_wide(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` (float64) of a wide mode scaled to float32 [0, 1], given the range ``low`` ..
    ``high`` of the pixels they were averaged from."""
    # 16-bit and 32-bit modes carry no reliable white level: 16-bit scans fill 0..65535, some
    # writers store 8-bit data in 'I', float TIFFs use 0..1. Pick the range the values fit.
    if low >= 0 and high <= 1:
        return values.astype(np.float32)
    if low >= 0 and high <= 255:
        return (values / 255.0).astype(np.float32)
    if low >= 0 and high <= 65535:
        return (values / 65535.0).astype(np.float32)
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114).astype(np.float32)


def _array_values(tile: np.ndarray, array: np.ndarray, name: str) -> np.ndarray:
    """Pixel values of a ``tile`` of ``array`` as float32 in [0, 1]; ImageError for ranges not
    understood (messages quote the whole array's range)."""
    if tile.dtype == np.bool_:
        return tile.astype(np.float32)
    if tile.dtype.kind == "u" and tile.dtype.itemsize == 2:
        return (tile / 65535.0).astype(np.float32)
    if tile.dtype.kind in "iu":
        if tile.size and (tile.min() < 0 or tile.max() > 255):
            raise ImageError(
                f"{name} has integer values outside 0..255 ({array.min()}..{array.max()}); "
                "use uint8 0..255, uint16, or float in [0, 1]"
            )
        return (tile / 255.0).astype(np.float32)
    values = tile.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise ImageError(f"{name} contains NaN or infinite values")
    if values.size and (values.min() < 0 or values.max() > 1):
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        raise ImageError(
            f"{name} has float values outside [0, 1] ({low:g}..{high:g}); "
            "scale them to [0, 1] (divide 0..255 values by 255)"
        )
    return values


def _array_to_grey(array: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (2, 3, 4))):
        raise ImageError(
            f"{name} has shape {array.shape}; expected (H, W) grey or (H, W, C) with C = 2 (grey "
            "+ alpha), "
            "3 (RGB) or 4 (RGBA)"
        )
    if array.dtype.kind not in "biuf":
        raise ImageError(
            f"{name} has dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]"
        )
    height, width = array.shape[:2]
    _check_size((width, height), name)
    factor = _reduction_factor((width, height))
    channels = 1 if array.ndim == 2 else array.shape[2]

    def reduced_tile(top: int, bottom: int, left: int, right: int) -> np.ndarray:
        values = _array_values(array[top:bottom, left:right], array, name)
        if channels in (1, 2):
            grey = values if channels == 1 else values[..., 0]
        else:
            grey = _luma(values[..., :3])
        if channels in (1, 3):
            return _block_mean(grey, factor)
        alpha = values[..., -1]
        if factor == 1:
            return np.stack([grey, alpha], axis=-1)
        # Premultiplied, as for PIL images: transparent pixels' hidden grey must not count.
        premultiplied = _block_mean(grey * alpha, factor)
        coverage = _block_mean(alpha, factor)
        unpremultiplied = np.divide(
            premultiplied, coverage, out=np.zeros_like(premultiplied), where=coverage > 0
        )
        return np.stack([unpremultiplied, coverage], axis=-1)

    values = _reduce_in_tiles(height, width, factor, reduced_tile, np.float32)
    if values.ndim == 2:
        return values, None
    return np.ascontiguousarray(values[..., 0]), np.ascontiguousarray(values[..., 1])


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
    composited: np.ndarray = (alpha * grey + (1.0 - alpha) * backdrop).astype(np.float32)
    return composited


# ---------------------------------------------------------------------------------------------
# Finding the ink


def _find_ink(grey: np.ndarray, name: str) -> np.ndarray:
    """Ink of a grey image, cropped to its bounding box: float32 (h, w) in [0, 1], 1 at stroke
    cores."""
    # A digit filling a tiny frame (a bold 0 in 13x13 px) is ink along most of the border, so
    # the border's level is the ink's: the fit then starts from the whole image's median, or
    # from its lightest level (paper under dark ink). Not from the darkest: on blank squared
    # paper that is the grid, and the paper between its lines would pass for light ink.
    return _locate_ink(grey, name)[0]


def _locate_ink(
    grey: np.ndarray, name: str, *, line: bool = False
) -> tuple[np.ndarray, int, int, int, bool]:
    """``_find_ink``'s ink, the row and column of its top left corner in ``grey`` enlarged by
    the whole factor small images are enlarged by, that factor, and whether more ink lies along
    the line than was kept. ``line``: keep the components of a line of digits (see
    _digit_components)."""
    for start in _BACKGROUND_STARTS[:-1]:
        try:
            return _find_ink_from(grey, name, start, line)
        except NoDigitFound:
            pass
    return _find_ink_from(grey, name, _BACKGROUND_STARTS[-1], line)


def _find_ink_from(
    grey: np.ndarray, name: str, start: str, line: bool = False
) -> tuple[np.ndarray, int, int, int, bool]:
    """``_locate_ink`` with the background fit started from ``start`` (see _fit_background)."""
    upscale = 1
    if max(grey.shape) < MNIST_SIDE:
        upscale = math.ceil(_SMALL_SIDE / max(grey.shape))
        grey = np.asarray(
            Image.fromarray(grey).resize(
                (grey.shape[1] * upscale, grey.shape[0] * upscale), Image.Resampling.BILINEAR
            ),
            np.float32,
        )
    background = _fit_background(grey, start)
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
    keep, more_along_line = _digit_components(candidates & strokes, ink, name, line)
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
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise NoDigitFound(f"no digit found in {name}: the image is blank")
    return (
        _crop_to_ink(ink, name),
        top + int(rows[0]),
        left + int(cols[0]),
        upscale,
        more_along_line,
    )


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


def _fit_background(grey: np.ndarray, start: str = "border") -> np.ndarray:
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
    coefficients: np.ndarray = np.zeros(6)
    ring = np.concatenate([sample[0], sample[-1], sample[1:-1, 0], sample[1:-1, -1]])
    if start == "border":
        coefficients[0] = np.median(ring)
    elif start == "median":
        coefficients[0] = np.median(values)
    else:  # "light"
        coefficients[0] = np.percentile(values, 95)
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
    fitted: np.ndarray = np.clip(surface, values.min(), values.max()).astype(np.float32)
    return fitted


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


def _digit_components(
    candidates: np.ndarray, ink: np.ndarray, name: str, line: bool = False
) -> tuple[np.ndarray, bool]:
    """Mask of the components that make up the digit: bool (H, W). With ``line``, those of a
    number written on one line: the gaps between digits reach farther along the line. Also
    whether, without ``line``, the line's rule would have kept more components."""
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

    def spans(index: int, axis: int) -> bool:
        extent: int = boxes[index][axis].stop - boxes[index][axis].start
        return bool(extent >= 0.9 * candidates.shape[axis])

    # A number cropped tight (a form field, a small scan) has every digit spanning the image's
    # height, and a 1 at either end is then a thin band along the side like a page edge. A
    # real edge lies beside the digits; it is a stroke when another component of weight
    # spans the image the same way.
    weighty = [i for i in order if i not in edges and masses[i] >= _SPECK_FRACTION * masses.max()]
    for axis in (0, 1):
        if any(spans(i, axis) for i in weighty):
            edges = {i for i in edges if not spans(i, axis)}
    if len(edges) < len(order):
        order = [i for i in order if i not in edges]
    largest = order[0]
    if masses[largest] <= 0:
        raise NoDigitFound(f"no digit found in {name}: the image is blank")
    order = [i for i in order if masses[i] >= _SPECK_FRACTION * masses[largest]]

    def grow(along_line: bool) -> set[int]:
        # Grow a cluster from the largest component: pieces of a broken stroke lie close to it,
        # a smudge or a second scribble across the page does not.
        top, bottom = boxes[largest][0].start, boxes[largest][0].stop
        left, right = boxes[largest][1].start, boxes[largest][1].stop
        chosen = {largest}
        grown = True
        while grown:
            grown = False
            reach = 0.5 * max(bottom - top, right - left)
            # Between the digits of a number, gaps of a digit's width are common.
            reach_cols = max(reach, _LINE_GAP * (bottom - top)) if along_line else reach
            for index in order:
                if index in chosen:
                    continue
                box = boxes[index]
                gap_rows = max(box[0].start - bottom, top - box[0].stop, 0)
                gap_cols = max(box[1].start - right, left - box[1].stop, 0)
                if gap_rows <= reach and gap_cols <= reach_cols:
                    chosen.add(index)
                    top, bottom = min(top, box[0].start), max(bottom, box[0].stop)
                    left, right = min(left, box[1].start), max(right, box[1].stop)
                    grown = True
        return chosen

    chosen = grow(line)
    more_along_line = not line and len(grow(True)) > len(chosen)
    keep_labels = np.zeros(count + 1, bool)
    keep_labels[[i + 1 for i in chosen]] = True
    kept: np.ndarray = keep_labels[labels]
    return kept, more_along_line


def _crop_to_ink(ink: np.ndarray, name: str) -> np.ndarray:
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise NoDigitFound(f"no digit found in {name}: the image is blank")
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


# ---------------------------------------------------------------------------------------------
# Geometry


def ink_to_mnist(ink: np.ndarray, *, name: str = "the ink") -> np.ndarray:
    """Place ``ink`` (h, w) in [0, 1], white on black at any size, as ``preprocess_image``
    places the digit it found: cropped to its box, strokes brought to MNIST's width, 20 px on
    the longer side, centred by mass. Returns float32 (28, 28); ``NoDigitFound`` when blank."""
    return _fit_into_mnist_frame(_crop_to_ink(np.asarray(ink, dtype=np.float32), name), name)


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
    normalised: np.ndarray = np.clip(frame / peak, 0.0, 1.0)
    return normalised


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
        pooled: np.ndarray = blocks.max(axis=(1, 3))
        return pooled
    return ink


def stroke_width(ink: np.ndarray) -> float | None:
    """Typical stroke width in pixels: 2 * area / boundary length of the pixels above 0.5
    (None without such pixels). Strokes 2 px wide or less all measure 2: every pixel of them
    is on the boundary."""
    mask = ink > 0.5
    area = int(mask.sum())
    if area == 0:
        return None
    boundary = int((mask & ~ndimage.binary_erosion(mask)).sum())
    return 2.0 * area / max(boundary, 1)


def _normalise_stroke_width(ink: np.ndarray) -> np.ndarray:
    """Widen strokes that would come out thinner than MNIST's, thin those far thicker."""
    width = stroke_width(ink)
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
