"""Fuzzing as tests: every reader of untrusted input either works or raises its documented error.

IDX files -> the array or ``DataError``; images (bytes or arrays) -> MNIST form or
``ImageError``; model files -> a ``Model`` or ``ModelFileError``. Anything else (a KeyError, a
RecursionError, a MemoryError...) fails the test. The last test mutates small valid files of
every supported format, and of formats that must be refused, through Pillow's decoders.

Input counts: ``python -m pytest tests/test_fuzz.py --hypothesis-show-statistics``; set
``DIGITNET_FUZZ_EXAMPLES`` (default 4000) for a longer run of the decoder fuzzer.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageDraw, features

from digitnet.data.idx import read_idx
from digitnet.errors import DataError, ImageError, ModelFileError
from digitnet.inference.model import Model
from digitnet.inference.modelfile import _digest, load_model
from digitnet.inference.preprocess import preprocess_image, read_grey
from digitnet.models import architectures

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_mnist_form(out: np.ndarray) -> None:
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() == 1.0


def in_file(data: bytes, suffix: str = "") -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    with handle:
        handle.write(data)
    return Path(handle.name)


# ---------------------------------------------------------------------------------------------
# IDX


@st.composite
def idx_like(draw) -> bytes:
    """Arbitrary bytes, or bytes that start like an IDX file (so the parser goes deeper)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    type_code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]))
    dims = draw(st.integers(0, 5))
    size = st.integers(0, 2**32 - 1) | st.integers(0, 6)
    sizes = draw(st.lists(size, min_size=dims, max_size=dims))
    header = bytes([0, 0, type_code, dims]) + struct.pack(f">{dims}I", *sizes)
    return header + draw(st.binary(max_size=400))


@settings(FUZZ, max_examples=400)
@given(content=idx_like(), compression=st.sampled_from(["raw", "gzip", "corrupt-gzip"]))
def test_idx_reader_returns_an_array_or_a_data_error(content, compression):
    if compression == "gzip":
        content = gzip.compress(content)
    elif compression == "corrupt-gzip":
        content = b"\x1f\x8b" + content
    path = in_file(content)
    try:
        array = read_idx(path)
    except DataError as error:
        assert str(error) and "\n" not in str(error)
        event("DataError")
        return
    finally:
        path.unlink()
    event("read")
    assert isinstance(array, np.ndarray) and array.flags.writeable


# ---------------------------------------------------------------------------------------------
# Images: bytes and arrays

SIGNATURES = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
]


@settings(FUZZ, max_examples=400)
@given(
    prefix=st.sampled_from([b"", *SIGNATURES]),
    body=st.binary(max_size=2000),
    as_path=st.booleans(),
)
def test_preprocess_image_of_any_bytes_is_mnist_form_or_an_image_error(prefix, body, as_path):
    data = prefix + body
    source: object = in_file(data) if as_path else data
    try:
        out = preprocess_image(source)
    except ImageError as error:
        assert str(error) and "\n" not in str(error)
        event(type(error).__name__)
        return
    finally:
        if as_path:
            Path(source).unlink()  # type: ignore[arg-type]
    event("read")
    assert_mnist_form(out)


ANY_DTYPE = st.one_of(
    hnp.scalar_dtypes(),
    hnp.byte_string_dtypes(),
    hnp.unicode_string_dtypes(),
    st.just(np.dtype(object)),
    st.just(np.dtype([("a", np.uint8), ("b", np.float32)])),
)


@st.composite
def plausible_array(draw) -> np.ndarray:
    """Arrays of the dtypes and shapes images come in, with any values in their range."""
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.bool_, np.float32, np.float64]))
    height, width = draw(st.integers(8, 80)), draw(st.integers(8, 80))
    channels = draw(st.sampled_from([(), (1,), (2,), (3,), (4,)]))
    elements = (
        st.floats(0, 1, width=32 if dtype == np.float32 else 64)
        if np.dtype(dtype).kind == "f"
        else None
    )
    return draw(hnp.arrays(dtype, (height, width, *channels), elements=elements))


@st.composite
def any_array(draw) -> np.ndarray:
    if draw(st.booleans()):
        return draw(plausible_array())
    dtype = draw(ANY_DTYPE)
    shape = draw(
        st.one_of(
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
            st.tuples(st.integers(8, 90), st.integers(8, 90)),
            st.tuples(st.integers(8, 60), st.integers(8, 60), st.sampled_from([1, 2, 3, 4, 5])),
            st.tuples(st.integers(1, 9), st.integers(640, 3000)),
        )
    )
    if dtype == np.dtype(object):
        return np.full(shape, draw(st.sampled_from([None, 1, "x", 0.5])), dtype=object)
    array = draw(hnp.arrays(dtype, shape, elements=None, fill=hnp.from_dtype(dtype)))
    if draw(st.booleans()) and array.ndim >= 2:
        array = array[::-1, ::2]  # not contiguous
    return array


@settings(FUZZ, max_examples=300)
@given(array=any_array())
def test_preprocess_image_of_any_array_is_mnist_form_or_an_image_error(array):
    try:
        out = preprocess_image(array)
    except ImageError as error:
        assert str(error) and "\n" not in str(error)
        event(type(error).__name__)
        return
    event("read")
    assert_mnist_form(out)


# ---------------------------------------------------------------------------------------------
# Model files

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _reference_model() -> Model:
    architecture = architectures.named_architecture("seed")
    rng = np.random.default_rng(0)
    parameters = {
        name: rng.normal(0, 0.1, shape).astype(np.float32)
        for name, shape in architectures.parameter_shapes(architecture).items()
    }
    return Model(architecture, parameters, {"training": {"model": "seed"}})


REFERENCE = _reference_model()
TENSORS = {f"parameters/{k}": v for k, v in REFERENCE.parameters.items()}


def _layer() -> st.SearchStrategy:
    """Layer specs near valid ones: known types and fields, any JSON values."""
    field = st.sampled_from(
        [
            "units",
            "activation",
            "use_bias",
            "filters",
            "kernel",
            "stride",
            "padding",
            "rate",
            "size",
            "momentum",
            "type",
            "extra",
        ]
    )
    value = st.one_of(
        st.integers(-3, 1000),
        st.sampled_from(["relu", "sigmoid", "softmax", "linear", "same", "valid", "tanh"]),
        st.sampled_from(["dense", "conv", "batchnorm", "maxpool", "dropout", "flatten"]),
        JSON,
    )
    return st.dictionaries(field, value, max_size=5)


@st.composite
def digitnet_headers(draw) -> str:
    """The digitnet JSON header: the reference's, with fields replaced by anything."""
    header = {"architecture": REFERENCE.architecture, "digitnet_version": "0.1.0"}
    header.update(REFERENCE.metadata)
    for name in draw(
        st.lists(
            st.sampled_from(
                ["architecture", "training", "metrics", "history", "data", "digitnet_version", "x"]
            ),
            max_size=3,
        )
    ):
        header[name] = draw(JSON)
    if draw(st.booleans()):
        header["architecture"] = {
            "input_shape": draw(st.sampled_from([[784], [28, 28, 1], [100], [0], ["784"]]) | JSON),
            "layers": draw(st.lists(_layer(), max_size=4) | JSON),
        }
    text = json.dumps(header, allow_nan=True)
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.sampled_from(["[", "[]", "null", '"x"', "[" * 3000 + "]" * 3000]))
    return text


def _safetensors_file(header: object, payload: bytes) -> bytes:
    encoded = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<Q", len(encoded)) + encoded + payload


@st.composite
def model_files(draw) -> bytes:
    """Whole model files: arbitrary bytes, arbitrary safetensors headers around the reference's
    tensors, or the reference's tensors under an arbitrary digitnet header with a correct
    sha256 (what anyone editing a file can produce)."""
    from safetensors.numpy import save

    kind = draw(st.sampled_from(["bytes", "safetensors-header", "digitnet-header"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "digitnet-header":
        header_json = draw(digitnet_headers())
        metadata = {
            "format": "digitnet-model",
            "format_version": draw(st.sampled_from(["1", "1", "2", "x", ""])),
            "header": header_json,
            "sha256": _digest(header_json, TENSORS),
        }
        if draw(st.integers(0, 4)) == 0:
            metadata[draw(st.sampled_from(sorted(metadata) + ["hmac_sha256"]))] = draw(st.text())
        return save(TENSORS, metadata=metadata)
    data = save(
        TENSORS,
        metadata={"format": "digitnet-model", "format_version": "1", "header": "{}", "sha256": ""},
    )
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    payload = data[8 + size :]
    for name in draw(st.lists(st.sampled_from(sorted(header)), max_size=3)):
        entry = header[name]
        if isinstance(entry, dict) and draw(st.booleans()):
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = draw(JSON)
        else:
            header[name] = draw(JSON)
    return _safetensors_file(header, payload)


@settings(FUZZ, max_examples=400)
@given(data=model_files())
def test_model_file_reader_returns_a_model_or_a_model_file_error(data):
    path = in_file(data, ".safetensors")
    try:
        model = load_model(path)
    except ModelFileError as error:
        assert str(error) and "\n" not in str(error)
        event("ModelFileError")
        return
    finally:
        path.unlink()
    event("loaded")
    assert model.n_inputs == 784
    probabilities = model.predict_proba(np.zeros((1, 784), np.float32))
    assert probabilities.shape == (1, model.n_classes)


# ---------------------------------------------------------------------------------------------
# Pillow's decoders, through preprocess_image: small valid seeds, mutated


def _seed_image(mode: str) -> Image.Image:
    image = Image.new("RGB", (48, 40), (235, 230, 220))
    ImageDraw.Draw(image).line([(14, 8), (34, 8), (22, 34)], fill=(20, 20, 30), width=4)
    return image.convert(mode)


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    """Small valid files of every supported format in several modes and encodings, and of
    formats digitnet must refuse (ICO wraps PNG; AVIF, DDS, BLP, PSD-like...)."""
    seeds = {
        "png-rgb": _encode(_seed_image("RGB"), "PNG"),
        "png-rgba": _encode(_seed_image("RGBA"), "PNG"),
        "png-16": _encode(Image.fromarray(np.asarray(_seed_image("L"), np.uint16) * 257), "PNG"),
        "png-palette": _encode(_seed_image("P"), "PNG", transparency=0),
        "jpeg": _encode(_seed_image("RGB"), "JPEG", quality=70),
        "jpeg-progressive": _encode(_seed_image("RGB"), "JPEG", progressive=True),
        "jpeg-cmyk": _encode(_seed_image("CMYK"), "JPEG"),
        "gif": _encode(_seed_image("P"), "GIF"),
        "bmp": _encode(_seed_image("RGB"), "BMP"),
        "bmp-1bit": _encode(_seed_image("1"), "BMP"),
        "tiff": _encode(_seed_image("RGB"), "TIFF"),
        "tiff-deflate-16": _encode(
            Image.fromarray(np.asarray(_seed_image("L"), np.uint16) * 257),
            "TIFF",
            compression="tiff_deflate",
        ),
        "tiff-jpeg": _encode(_seed_image("RGB"), "TIFF", compression="jpeg"),
        "bigtiff": _encode(_seed_image("L"), "TIFF", big_tiff=True),
        "tiff-float": _encode(
            Image.fromarray(np.asarray(_seed_image("L"), np.float32) / 255), "TIFF"
        ),
        "webp-lossy": _encode(_seed_image("RGB"), "WEBP", quality=60),
        "webp-lossless": _encode(_seed_image("RGBA"), "WEBP", lossless=True),
        "ico": _encode(_seed_image("RGBA"), "ICO"),
        "dds": _encode(_seed_image("RGBA"), "DDS"),
        "tga": _encode(_seed_image("RGB"), "TGA"),
        "psd-like": b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 40, 48, 8, 3),
    }
    for name, image_format, mode in [("avif", "AVIF", "RGB"), ("blp", "BLP", "P")]:
        if image_format != "AVIF" or features.check("avif"):
            try:
                seeds[name] = _encode(_seed_image(mode), image_format)
            except (KeyError, OSError, ValueError):
                pass
    return seeds


SEEDS = _seeds()
# About 20-30 s on two busy cores; raise it for a longer campaign.
MUTATIONS = int(os.environ.get("DIGITNET_FUZZ_EXAMPLES", "4000"))


@st.composite
def mutated_files(draw) -> bytes:
    """A seed with a few bytes changed, inserted, deleted, or cut off; or chunks of two seeds
    spliced."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        operation = draw(st.sampled_from(["set", "set", "set", "insert", "delete", "cut", "int"]))
        # Half the time within the first 64 bytes, where headers keep sizes and offsets.
        last = max(len(data) - 1, 0)
        position = draw(st.integers(0, min(last, 63)) | st.integers(0, last))
        if operation == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        elif operation == "cut":
            del data[position:]
        elif operation == "int":
            # Sizes, offsets and counts live in 2-, 4- and 8-byte fields: make them extreme.
            layout = draw(st.sampled_from([">H", "<H", ">I", "<I", ">Q", "<Q"]))
            bits = 8 * struct.calcsize(layout)
            value = draw(st.sampled_from([0, 1, 0xFF, 65500, 2 ** (bits - 1) - 1, 2**bits - 1]))
            field = struct.pack(layout, value)
            if len(data) >= position + len(field):
                data[position : position + len(field)] = field
    return bytes(data)


def test_every_seed_is_what_it_claims():
    # Supported seeds read; the others are valid files that Pillow reads and digitnet refuses.
    for name, data in SEEDS.items():
        if name.split("-")[0] in ("ico", "dds", "tga", "psd", "avif", "blp"):
            with pytest.raises(ImageError, match="not a supported image"):
                preprocess_image(data)
        else:
            assert read_grey(data).shape == (40, 48)


@settings(FUZZ, max_examples=MUTATIONS)
@given(data=mutated_files())
def test_mutated_files_through_pillows_decoders_give_mnist_form_or_an_image_error(data):
    assume(data)
    try:
        out = preprocess_image(data)
    except ImageError as error:
        assert str(error) and "\n" not in str(error)
        event(type(error).__name__)
        return
    event("read")
    assert_mnist_form(out)
