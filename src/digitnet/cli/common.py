"""Helpers shared by the CLI verbs: text safe to print, targets checked before the work starts."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from digitnet.errors import ConfigError

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped as Python's repr does
    (``\\t``, ``\\n``, ``\\x1b``, ``\\u2028``) and backslashes doubled, so that a file name can
    neither forge an output line nor a column nor send terminal escapes. Printable text,
    accented letters included, is unchanged."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(
                f"\\x{code:02x}"
                if code < 0x100
                else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
            )
    return "".join(out)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_writable_file(path: Path, flag: str) -> None:
    """Refuse ``path`` as the target of ``flag`` unless a file can be written there: it is not a
    directory, and its folder exists and takes a new file, or can be created. Checked by
    creating and removing a temporary file, which is what the atomic write will need, so it
    holds for read-only file systems and for root alike."""
    if path.is_dir():
        raise ConfigError(f"{flag} {printable(str(path))} is a directory; give a file name")
    check_writable_directory(path.parent, flag, path)


def check_writable_directory(directory: Path, flag: str, shown: Path | None = None) -> None:
    """Refuse ``directory`` for ``flag`` unless files can be created in it (or in the nearest
    existing folder above it, where it will be created)."""
    shown_text = printable(str(shown if shown is not None else directory))
    existing = directory
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{flag} {shown_text}: {printable(str(existing))} is a file, not a folder"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".digitnet-write-check-", dir=existing)
    except OSError as error:
        raise ConfigError(
            f"{flag} {shown_text}: cannot write in {printable(str(existing))} "
            f"({error.strerror or error}); choose another place"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
