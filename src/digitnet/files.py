"""Opening input files that may be hostile: regular files only, and never a wait.

Every reader of untrusted files (images, IDX files, model files) opens them here, so that a FIFO
is refused at once instead of blocking until a writer appears, and ``/dev/zero`` or a socket is
refused before a byte is read. Each reader turns the errors into its own one-line message.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO


class NotARegularFile(OSError):
    """The path is a FIFO, a device or a socket: not a file digitnet reads."""


def open_regular_file(path: str | os.PathLike[str]) -> tuple[BinaryIO, int]:
    """Open ``path`` for binary reading; returns the file and its size in bytes.

    Raises FileNotFoundError, IsADirectoryError, NotARegularFile, or another OSError (such as
    PermissionError) from opening.
    """
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(os.fspath(path))
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(f"{os.fspath(path)} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise
