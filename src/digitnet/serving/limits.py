"""What one server accepts and spends per request: every limit and timeout, in one place.

``ServerLimits()`` holds the defaults ``digitnet serve`` uses (its flags change them);
``create_app`` and ``build_server`` take one. Times are in seconds, sizes in bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# Enough for a typical phone photo (a 12-megapixel JPEG is 3 to 5 MB); far below what would
# strain memory. `digitnet serve --max-request-mb` changes it.
MAX_BODY_BYTES = 5 * 1024 * 1024
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# More work processes than CPUs: a request holding one (a large photo, a crafted image, a 5 MB
# body) leaves others free for small ones, which then share the CPUs instead of queueing.
WORK_PROCESSES_PER_CPU = 2


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


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
