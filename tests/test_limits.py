"""What one image may cost, and what it may not do: hostile images, files that are not files.

The promises (SECURITY.md lists them): at most 150 MB of peak memory per image whatever its
bytes, measured in a fresh process for the crafted images of issue 14 and for the largest image
each format may decode; only the formats the README lists are decoded; files that are not
regular files, or are too large, are refused unread; every failure is an ``ImageError``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin, features

from digitnet.errors import ImageError
from digitnet.inference import preprocess
from digitnet.inference.preprocess import (
    DECODE_BUDGET,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    preprocess_image,
    read_grey,
)

PEAK_LIMIT_MB = 150


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def seven(size: tuple[int, int], mode: str = "L", ink=0, paper=255) -> Image.Image:
    """A '7' drawn over ``size``: content, so that the image really is decoded and read."""
    width, height = size
    image = Image.new(mode, size, paper)
    ImageDraw.Draw(image).line(
        [(0.3 * width, 0.2 * height), (0.7 * width, 0.2 * height), (0.45 * width, 0.8 * height)],
        fill=ink,
        width=max(2, width // 30),
    )
    return image


def cap_side(bytes_per_pixel: int, copies: int = 1) -> int:
    """The side of the largest square image DECODE_BUDGET lets a format decode."""
    return int((DECODE_BUDGET // (bytes_per_pixel * copies)) ** 0.5) - 16


def ico_around(png: bytes) -> bytes:
    """An ICO file whose one entry is ``png``: Pillow's ICO plugin decodes it while opening."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)
    return header + entry + png


def tiff_with_strips(strips: int) -> bytes:
    """An 8-px-wide uncompressed TIFF, one row per strip, written from the TIFF 6.0 layout."""
    entries = 9
    offsets_at = 8 + 2 + 12 * entries + 4
    counts_at = offsets_at + 4 * strips

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, kind, count, value)

    table = [
        entry(256, 4, 1, 8),  # width
        entry(257, 4, 1, strips),  # height
        entry(258, 3, 1, 8),  # bits per sample
        entry(259, 3, 1, 1),  # no compression
        entry(262, 3, 1, 1),  # black is zero
        entry(273, 4, strips, offsets_at),  # strip offsets
        entry(277, 3, 1, 1),  # samples per pixel
        entry(278, 4, 1, 1),  # rows per strip
        entry(279, 4, strips, counts_at),  # strip byte counts
    ]
    return (
        b"II*\x00"
        + struct.pack("<IH", 8, entries)
        + b"".join(table)
        + b"\x00" * 4
        + struct.pack(f"<{strips}I", *([0] * strips))
        + struct.pack(f"<{strips}I", *([8] * strips))
    )


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_text_bombs(count: int) -> bytes:
    """A 16x16 PNG carrying ``count`` zTXt chunks, each 1 KB inflating to 1 MB."""
    png = encode(Image.new("L", (16, 16), 255), "PNG")
    bomb = zlib.compress(b"a" * 1_000_000, 9)
    chunks = b"".join(png_chunk(b"zTXt", b"k%d\x00\x00" % i + bomb) for i in range(count))
    return png[:33] + chunks + png[33:]  # after the signature and IHDR


def rle8_bmp(width: int, height: int, run: int) -> bytes:
    """An 8-bit run-length compressed BMP (BI_RLE8) of runs ``run`` pixels long."""
    row = b""
    left = width
    while left:
        count = min(run, left)
        row += bytes([count, 200])
        left -= count
    pixels = (row + b"\x00\x00") * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    size = offset + len(pixels)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, offset) + info + palette + pixels


def progressive_jpeg(side: int, subsampling: int = 0) -> bytes:
    return encode(
        seven((side, side), "RGB", (0, 0, 0), (255, 255, 255)),
        "JPEG",
        quality=80,
        progressive=True,
        subsampling=subsampling,
    )


# ---------------------------------------------------------------------------------------------
# Peak memory, measured in a fresh process per image

# The peak is read from VmHWM (the high-water mark of this process image's resident set), not
# ru_maxrss: Linux carries ru_maxrss across exec, so a child of a large pytest process starts
# with its parent's peak and would report nothing.
_MEASURE = """
import io, json, sys
from PIL import Image
from digitnet.errors import ImageError
from digitnet.inference.preprocess import preprocess_image

def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

# Warm up with a small image of every format, so that plugins and their libraries are loaded.
for image_format in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format=image_format)
    try:
        preprocess_image(buffer.getvalue())
    except ImageError:
        pass
before = peak_kb()
try:
    preprocess_image(sys.argv[1])
    outcome = "read"
except ImageError as error:
    refused = any(word in str(error) for word in ("too large", "refused", "not a supported"))
    outcome = "refused: " + str(error) if refused else "read"
print(json.dumps({"megabytes": (peak_kb() - before) / 1024, "outcome": outcome}))
"""


def peak_megabytes(path: Path) -> tuple[float, str]:
    """Peak resident memory (MB) that ``preprocess_image(path)`` adds in a fresh process, and
    whether the image was read (a digit or "no digit found") or refused."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["megabytes"], report["outcome"]


def _issue_16_bit_png() -> bytes:
    # 77 KB declaring 6300x6300 16-bit grey: 1 GB per request before (widened to float64).
    return encode(Image.new("I;16", (6300, 6300), 0), "PNG")


def _issue_rgba_png() -> bytes:
    return encode(Image.new("RGBA", (6300, 6300), (255, 255, 255, 0)), "PNG")


def _issue_ico() -> bytes:
    return ico_around(encode(Image.new("RGBA", (6300, 6300), (0, 0, 0, 0)), "PNG"))


# name -> (bytes, expected outcome). The "cap" images are the largest each format may decode.
MEMORY_CASES = {
    "issue: 16-bit grey PNG 6300x6300": (_issue_16_bit_png, "read"),
    "issue: RGBA PNG 6300x6300": (_issue_rgba_png, "refused"),
    "issue: ICO around a large PNG": (_issue_ico, "refused"),
    "cap: RGBA PNG": (
        lambda: encode(
            seven((cap_side(4),) * 2, "RGBA", (0, 0, 0, 255), (255, 255, 255, 0)),
            "PNG",
            compress_level=1,
        ),
        "read",
    ),
    "cap: progressive JPEG 4:4:4": (lambda: progressive_jpeg(cap_side(6)), "read"),
    "cap: baseline JPEG 40 MP": (
        lambda: encode(seven((7300, 5400), "RGB", (0, 0, 0), (255, 255, 255)), "JPEG"),
        "read",
    ),
    "cap: RGBA TIFF": (
        lambda: encode(
            seven((cap_side(4, 2),) * 2, "RGBA", (0, 0, 0, 255), (255, 255, 255, 255)),
            "TIFF",
            compression="tiff_deflate",
        ),
        "read",
    ),
    "cap: RGBA WebP": (
        lambda: encode(
            seven((cap_side(4, 4),) * 2, "RGBA", (0, 0, 0, 255), (255, 255, 255, 255)),
            "WEBP",
            lossless=True,
            quality=0,
            method=0,
        ),
        "read",
    ),
    "cap: GIF 40 MP": (lambda: encode(seven((6300, 6300), "L"), "GIF"), "read"),
    "cap: RLE BMP": (lambda: rle8_bmp(cap_side(1, 3), cap_side(1, 3), 255), "read"),
}


@pytest.fixture(scope="module")
def peaks(tmp_path_factory) -> dict[str, tuple[float, str]]:
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc/self/status (Linux)")
    directory = tmp_path_factory.mktemp("bombs")
    measured = {}
    for index, (name, (make, _)) in enumerate(MEMORY_CASES.items()):
        path = directory / f"case-{index}"
        path.write_bytes(make())
        measured[name] = peak_megabytes(path)
    # Shown with -s; the README and SECURITY.md quote these figures.
    print("\npeak memory per image (MB):")
    for name, (megabytes, outcome) in measured.items():
        print(f"  {name:40s} {megabytes:6.1f}  {outcome.split(':')[0]}")
    return measured


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_peak_memory_per_image_is_bounded(peaks, case):
    megabytes, outcome = peaks[case]
    assert outcome.startswith(MEMORY_CASES[case][1]), outcome
    assert megabytes <= PEAK_LIMIT_MB


def test_the_largest_images_really_are_decoded(peaks):
    # The bound is not met by refusing everything: the cap images cost tens of megabytes.
    assert peaks["cap: RGBA PNG"][0] > 0.5 * DECODE_BUDGET / 2**20
    assert peaks["issue: 16-bit grey PNG 6300x6300"][0] > 40


# ---------------------------------------------------------------------------------------------
# Refused before decoding, each with its own one-line reason


def _unsupported(image_format: str) -> bytes:
    """A small valid file in ``image_format``, in the first mode its writer takes."""
    for mode in ("RGBA", "RGB", "P", "1"):
        try:
            return encode(seven((64, 64)).convert(mode), image_format)
        except (KeyError, OSError, ValueError):
            continue
    pytest.skip(f"this Pillow cannot write {image_format}")


UNSUPPORTED = ["ICO", "DDS", "BLP", "TGA", "PCX", "PPM", "SGI", "ICNS", "QOI", "MSP", "XBM"]
if features.check("avif"):
    UNSUPPORTED.append("AVIF")
if features.check("jpg_2000"):
    UNSUPPORTED.append("JPEG2000")


@pytest.mark.parametrize("image_format", UNSUPPORTED)
def test_formats_outside_the_list_are_not_decoded(image_format):
    data = _unsupported(image_format)
    Image.open(io.BytesIO(data)).load()  # a valid file that Pillow itself reads
    with pytest.raises(ImageError, match="is not a supported image"):
        preprocess_image(data)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_issue_rgba_png, "6300x6300 pixels of mode RGBA in PNG need 151 MB"),
        (lambda: tiff_with_strips(100_000), "tag 273 holds 100000 values"),
        (lambda: png_with_text_bombs(20), "too many text chunks"),
        (lambda: rle8_bmp(1000, 1000, 1), "run-length compressed BMP larger than 1 MB"),
        (lambda: progressive_jpeg(cap_side(6) + 200), "progressive JPEG"),
    ],
    ids=["rgba-6300", "tiff-strips", "png-text", "bmp-rle-runs", "progressive-jpeg"],
)
def test_costly_images_are_refused_before_decoding(make, message):
    with pytest.raises(ImageError, match=message) as caught:
        preprocess_image(make(), name="x")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [
        b"II*\x00",
        b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 2**64 - 1) + b"\x00" * 32,
        b"MM\x00*" + struct.pack(">I", 2**32 - 1),
        b"II*\x00" + struct.pack("<IH", 8, 65535) + b"\x00" * 12,
    ],
    ids=["header-only", "bigtiff-offset-2**64", "offset-2**32", "directory-cut"],
)
def test_tiff_headers_pointing_anywhere_are_image_errors(data):
    with pytest.raises(ImageError):
        preprocess_image(data)


def test_jpeg_with_too_many_scans_is_refused():
    data = progressive_jpeg(1200, subsampling=2)
    scans = data.count(b"\xff\xda")
    preprocess_image(data)  # an ordinary progressive JPEG reads
    assert 2 <= scans < 20
    # Empty scan headers before the end marker: libjpeg would make a pass for each.
    crafted = data[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * 1000 + data[-2:]
    with pytest.raises(ImageError, match="scans"):
        preprocess_image(crafted)


def test_pillows_warning_limit_is_not_needed_and_no_warning_is_emitted():
    # 100 MP declared: above Pillow's own warning threshold (89 MP), below its error threshold.
    data = bytearray(encode(Image.new("L", (16, 16), 255), "PNG"))
    data[16:24] = struct.pack(">II", 10000, 10000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="100 megapixels"):
            preprocess_image(bytes(data))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert list(warnings.filters) == filters


def test_concurrent_reads_of_bombs_and_digits_each_get_their_answer():
    # The old guard changed the process-wide warnings filters inside each call; threads
    # racing through it could restore one another's state.
    digit = encode(seven((300, 300)), "PNG")
    expected = preprocess_image(digit)
    bomb = _issue_rgba_png()
    filters = list(warnings.filters)
    failures: list[str] = []

    def work(index: int) -> None:
        for turn in range(15):
            if (index + turn) % 2:
                if not np.allclose(preprocess_image(digit), expected, atol=1e-6):
                    failures.append("digit")
            else:
                try:
                    preprocess_image(bomb)
                    failures.append("bomb read")
                except ImageError:
                    pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert list(warnings.filters) == filters


# ---------------------------------------------------------------------------------------------
# Files that are not files, files too large


def _returns_within(seconds: float, function) -> object:
    """``function()``'s exception or result, failing the test if it takes longer (a hang)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(function())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return outcome[0]


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    error = _returns_within(10, lambda: preprocess_image(fifo))
    assert isinstance(error, ImageError)
    assert "not a regular file" in str(error)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_refused_unread():
    error = _returns_within(10, lambda: preprocess_image("/dev/zero"))
    assert isinstance(error, ImageError) and "not a regular file" in str(error)


def test_files_over_the_size_limit_are_refused_unread(tmp_path):
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:  # sparse: no disk space used
        handle.write(encode(Image.new("L", (16, 16)), "PNG"))
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageError, match=r"too large: 50 MB, the limit is 50 MB \(refused unread"):
        preprocess_image(path)
    data = path.read_bytes()
    with pytest.raises(ImageError, match="refused unread"):
        preprocess_image(data)
    with pytest.raises(ImageError, match="refused unread"):
        preprocess_image(io.BytesIO(data))


def test_a_file_object_is_read_only_up_to_the_limit():
    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            buffer[:] = b"\x00" * len(buffer)
            return len(buffer)

    with pytest.raises(ImageError, match="refused unread"):
        preprocess_image(io.BufferedReader(Endless()))


# ---------------------------------------------------------------------------------------------
# Every failure contained


@pytest.mark.parametrize(
    "error",
    [
        KeyError("x"),
        struct.error("unpack requires a buffer"),
        ZeroDivisionError("division by zero"),
        RuntimeError("decoder"),
        TypeError("NoneType"),
        AttributeError("no attribute"),
        MemoryError(),
        Image.DecompressionBombError("bomb"),
    ],
    ids=lambda error: type(error).__name__,
)
@pytest.mark.parametrize("stage", ["_open", "load"])
def test_any_exception_from_a_decoder_becomes_an_image_error(monkeypatch, error, stage):
    def explode(*args, **kwargs):
        raise error

    monkeypatch.setattr(PngImagePlugin.PngImageFile, stage, explode)
    with pytest.raises(ImageError) as caught:
        preprocess_image(encode(seven((100, 100)), "PNG"), name="x.png")
    assert str(caught.value).startswith("x.png ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "shape", [(8, 64000), (64000, 8), (9, 6401), (8, 641), (13, 40000)], ids=str
)
@pytest.mark.parametrize("kind", ["uint8", "uint16", "float32", "rgba", "png16", "png"])
def test_very_thin_or_wide_images_never_reduce_to_nothing(shape, kind):
    grey = np.full(shape, 230, np.uint8)
    grey[: shape[0] // 2, : shape[1] // 2] = 20
    if kind == "uint16":
        image: object = grey.astype(np.uint16) * 257
    elif kind == "float32":
        image = grey.astype(np.float32) / 255
    elif kind == "rgba":
        image = np.dstack([grey, grey, grey, np.full(shape, 255, np.uint8)])
    elif kind == "png16":
        image = encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    else:
        image = encode(Image.fromarray(grey), "PNG")
    reduced = read_grey(image)
    assert min(reduced.shape) >= 1 and max(reduced.shape) <= 640
    try:
        out = preprocess_image(image)
    except ImageError:
        return
    assert out.shape == (28, 28)


def test_reduction_averages_partial_blocks_like_pillow():
    # An array and the PNG of it take two code paths (NumPy and Pillow) to the same pixels.
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (1283, 997), dtype=np.uint8)
    from_array = read_grey(grey)
    from_png = read_grey(encode(Image.fromarray(grey), "PNG"))
    assert from_array.shape == from_png.shape == (428, 333)
    np.testing.assert_allclose(from_array, from_png, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(orientation):
    image = seven((90, 60))
    ImageDraw.Draw(image).rectangle([0, 0, 10, 5], fill=128)  # no symmetry left
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(image, "PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), np.float32)
    np.testing.assert_allclose(read_grey(data), expected / 255, atol=1e-6)


def test_large_16_bit_images_keep_their_range():
    # Reduced in tiles, but the white level is chosen from the range of all the pixels.
    values = np.full((2000, 1500), 1000, np.uint16)
    values[100:300, 100:1400] = 60000
    grey = read_grey(encode(Image.fromarray(values), "PNG"))
    assert grey.shape == (500, 375)
    assert grey.max() == pytest.approx(60000 / 65535, abs=1e-6)
    assert grey.min() == pytest.approx(1000 / 65535, abs=1e-6)


def test_limits_are_consistent():
    assert MAX_PIXELS * 2 <= DECODE_BUDGET  # 16-bit grey decodes up to the pixel limit
    assert preprocess.SUPPORTED_FORMATS == ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WebP")
