"""What one server accepts and spends per request: every limit and timeout, in one place.

``ServerLimits()`` holds the defaults ``digitnet serve`` uses (its flags change them);
``create_app`` and ``build_server`` take one. Times are in seconds, sizes in bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from digitnet.inference.batch import usable_cpus

# Enough for a typical phone photo (a 12-megapixel JPEG is 3 to 5 MB); far below what would
# strain memory. `digitnet serve --max-request-mb` changes it.
MAX_BODY_BYTES = 5 * 1024 * 1024
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Requests known to be cheap go to their own lane of work processes (see work.WorkLanes): an
# image whose header declares at most LIGHT_PIXELS (a 1000x1000 drawing or scan; preprocessed
# in tens of milliseconds) in a body of at most LIGHT_BYTES.
LIGHT_PIXELS = 1_000_000
LIGHT_BYTES = 1 << 20
# More work processes than CPUs: a request holding one (a large photo, a crafted image, a 5 MB
# body) leaves others free for small ones, which then share the CPUs instead of queueing.
WORK_PROCESSES_PER_CPU = 2


@dataclass(frozen=True)
class ServerLimits:
    #: largest request body (413 above it); ``--max-request-mb``
    max_body_bytes: int = MAX_BODY_BYTES
    #: request line plus headers (431 above it). Browsers send about 1 KB; nginx allows 32 KB.
    max_header_bytes: int = 32 * 1024
    #: a request must arrive whole (head and body) within this long of its first byte, else
    #: 408 and the connection is closed: a client sending a byte now and then (slowloris)
    #: cannot hold a connection. 5 MB in 15 s needs 2.8 Mbit/s. ``--read-timeout``
    read_timeout: float = 15.0
    #: a connection without a request in progress is closed after this long; ``--keep-alive``
    keep_alive_timeout: float = 5.0
    #: open connections per worker process; beyond it a request answers 503 and the
    #: connection is closed. Each may hold a body in memory: 64 x 5 MB at most.
    #: ``--max-connections``
    max_connections: int = 64
    #: images decoded and big JSON bodies parsed at once (per worker process), each in its own
    #: process; 0 is WORK_PROCESSES_PER_CPU per usable CPU. ``--work-processes``
    work_processes: int = 0
    #: how long a request waits for one of those processes before it answers 503 with
    #: Retry-After; waiting requests hold only their body
    max_queue_wait: float = 10.0
    #: JSON bodies up to this size without images are parsed and predicted on the event loop:
    #: that costs at most about a millisecond, less than handing them to another process
    inline_body_bytes: int = 32 * 1024
    #: names the Host header may give, beyond LOOPBACK_HOSTS; "*" accepts any
    allowed_hosts: tuple[str, ...] = field(default=())

    def processes(self) -> int:
        return self.work_processes or WORK_PROCESSES_PER_CPU * usable_cpus()

    def lanes(self) -> tuple[int, int]:
        """Work processes of the light lane and of the heavy lane: ``processes()`` split in
        two, at least one each."""
        light = max(1, self.processes() // 2)
        return light, max(1, self.processes() - light)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header of a PNG, GIF, BMP, JPEG or WebP image in ``data``
    declares it, read without decoding (microseconds, safe on the event loop); None for other
    or unreadable data. Only routes work: the decoder checks every size itself."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data.startswith(b"BM"):
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        return width, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


# JPEG start-of-frame markers (baseline, progressive, lossless, ...): not DHT, JPG or DAC.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        offset += 2 + length
    return None
