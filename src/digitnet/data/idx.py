"""IDX files, the format MNIST ships in: gzipped or raw, checked byte by byte.

An IDX file is two zero bytes, a type byte, a dimension count, big-endian uint32 sizes, then
exactly prod(sizes) elements. Every way a file can be wrong (truncated, corrupt gzip, another
format, trailing bytes, not a regular file, a gzip stream inflating past what its header
declares) is a ``DataError`` that names the file and what to do.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from digitnet.errors import DataError
from digitnet.files import NotARegularFile, open_regular_file

GZIP_MAGIC = b"\x1f\x8b"
# Largest IDX file read, compressed or not: EMNIST's largest is 0.55 GB, MNIST's 47 MB.
MAX_IDX_BYTES = 1 << 30
# Gzip streams are inflated this much at a time, and never past what the IDX header declares.
_INFLATE_CHUNK = 1 << 20

# IDX type byte -> element dtype. IDX stores multi-byte numbers big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzipped or raw, into an array of the shape stored in its header.

    Gzip is recognised by its magic bytes, not by the file name. The array is writable and in
    native byte order; its dtype follows the IDX type byte (``uint8`` for MNIST).

    Raises DataError naming the file if it cannot be read, the gzip stream is corrupt or
    truncated, the header is not IDX, or the payload is shorter or longer than the header says.
    """
    path = Path(path)
    return parse_idx(read_decompressed(path), path)


def read_decompressed(path: Path) -> bytes:
    """The file's bytes, gunzipped if they start with the gzip magic.

    Only regular files are read (a FIFO or a device is refused at once), up to MAX_IDX_BYTES.
    """
    content = _read_regular_file(path)
    if content[:2] != GZIP_MAGIC:
        return content
    return gunzip(content, path)


def _read_regular_file(path: Path) -> bytes:
    advice = "check the path and its permissions"
    try:
        handle, size = open_regular_file(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an IDX file; check the path") from None
    except NotARegularFile:
        raise DataError(
            f"{path}: not a regular file (a pipe, device or socket); IDX files are read only "
            "from regular files"
        ) from None
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error}); {advice}") from None
    with handle:
        if size > MAX_IDX_BYTES:
            raise DataError(
                f"{path}: {size:,} bytes, more than the {MAX_IDX_BYTES:,} digitnet reads from an "
                "IDX file; check the path"
            )
        try:
            return handle.read(MAX_IDX_BYTES + 1)
        except OSError as error:
            raise DataError(
                f"{path}: cannot read it ({error.strerror or error}); {advice}"
            ) from None


def gunzip(content: bytes, path: Path | str) -> bytes:
    """Inflate gzip ``content`` (one or more members) in chunks, stopping as soon as the output
    passes the size its IDX header declares, or MAX_IDX_BYTES: a small file cannot inflate to
    gigabytes."""
    out = bytearray()
    limit = MAX_IDX_BYTES
    declared = False
    pending = content
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        while True:
            chunk = decompressor.decompress(pending, _INFLATE_CHUNK)
            pending = decompressor.unconsumed_tail
            out += chunk
            if not declared:
                size = declared_size(out, path)
                if size is not None:
                    limit, declared = size, True
            if len(out) > limit:
                what = "its IDX header declares" if declared else "digitnet reads"
                raise DataError(
                    f"{path}: the gzip stream inflates past the {limit:,} bytes {what} "
                    "(stopped there); replace it with a good copy"
                )
            if decompressor.eof:
                pending = decompressor.unused_data
                if not pending:
                    break
                if pending[:2] != GZIP_MAGIC:
                    raise DataError(
                        f"{path}: corrupt gzip data (unexpected bytes after the stream); replace "
                        "it with a good copy"
                    )
                decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # the next member
            elif not chunk and not pending:
                raise DataError(
                    f"{path}: the gzip stream is truncated; replace it with a complete copy"
                )
    except zlib.error as error:
        raise DataError(
            f"{path}: corrupt gzip data ({error}); replace it with a good copy"
        ) from None
    return bytes(out)


def declared_size(raw: bytes | bytearray, path: Path | str) -> int | None:
    """Total bytes (header and payload) an IDX header at the start of ``raw`` declares; None
    until ``raw`` holds the whole header, or if it is not an IDX header (``parse_idx`` then
    says what is wrong). DataError if it declares more than MAX_IDX_BYTES."""
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        return None
    header_length = 4 + 4 * raw[3]
    if len(raw) < header_length:
        return None
    shape = struct.unpack(f">{raw[3]}I", bytes(raw[4:header_length]))
    total: int = header_length + math.prod(shape) * _IDX_DTYPES[raw[2]].itemsize
    if total > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: its IDX header declares shape {shape}, {total:,} bytes, more than the "
            f"{MAX_IDX_BYTES:,} digitnet reads from an IDX file; replace it with an IDX file"
        )
    return total


def parse_idx(raw: bytes, path: Path | str) -> np.ndarray:
    """Decode decompressed IDX bytes: 2 zero bytes, type byte, dimension count, big-endian
    uint32 sizes, then exactly prod(sizes) elements."""
    if len(raw) < 4:
        raise DataError(
            f"{path}: not an IDX file (only {len(raw)} bytes); replace it with an IDX file"
        )
    zero_a, zero_b, type_code, dimension_count = raw[:4]
    if zero_a or zero_b:
        raise DataError(
            f"{path}: not an IDX file (magic number {raw[:4].hex()} should start with 0000); "
            "replace it with an IDX file"
        )
    dtype = _IDX_DTYPES.get(type_code)
    if dtype is None:
        known = ", ".join(f"0x{code:02x}" for code in _IDX_DTYPES)
        raise DataError(
            f"{path}: unknown IDX data type code 0x{type_code:02x} (known: {known}; MNIST uses "
            "0x08); "
            "replace it with an IDX file"
        )
    if dimension_count == 0:
        raise DataError(
            f"{path}: IDX header declares 0 dimensions; replace it with a valid IDX file"
        )
    header_length = 4 + 4 * dimension_count
    if len(raw) < header_length:
        raise DataError(
            f"{path}: truncated in the IDX header (expected {header_length} header bytes, got "
            f"{len(raw)}); "
            "replace it with a complete copy"
        )
    shape = struct.unpack(f">{dimension_count}I", raw[4:header_length])
    # Empty arrays too: NumPy refuses a shape such as (0, 2**32 - 1, 2**32 - 1) as too big.
    if math.prod(size for size in shape if size) * dtype.itemsize > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: its IDX header declares shape {shape}, more than the {MAX_IDX_BYTES:,} "
            "bytes digitnet reads from an IDX file; replace it with an IDX file"
        )
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - header_length
    if actual < expected:
        raise DataError(
            f"{path}: truncated (shape {shape} needs {expected} payload bytes, got {actual}); "
            "replace it with a complete copy"
        )
    if actual > expected:
        raise DataError(
            f"{path}: {actual - expected} unexpected trailing bytes after the {expected} payload "
            "bytes "
            f"of shape {shape}; replace it with a good copy"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_length).reshape(shape)
    # frombuffer over bytes is read-only; astype copies into a writable, native-order array.
    return array.astype(dtype.newbyteorder("="))


def read_idx_with_digest(path: Path) -> tuple[np.ndarray, str]:
    """The array and the sha256 hex digest of the file's decompressed bytes, in one read."""
    raw = read_decompressed(path)
    return parse_idx(raw, path), hashlib.sha256(raw).hexdigest()
