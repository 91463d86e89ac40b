"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit fsync it and rename it over ``path``.

    If the body raises, the temporary file is removed and ``path`` is left untouched, so a
    failed run never leaves a half-written file behind.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports modes 'wb' and 'w', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(error, OSError) and error.errno is not None:
            # A full disk or a vanished folder: say which file, and that nothing was lost.
            raise OSError(
                error.errno,
                f"{error.strerror or os.strerror(error.errno)}; nothing was written and any "
                f"previous file there is unchanged",
                os.fspath(target),
            ) from error
        raise


def remove_leftovers(path: str | os.PathLike[str]) -> int:
    """Remove the temporary files that writers of ``path`` left behind when they were killed
    mid-write (SIGKILL, power loss: no clean-up runs); return how many were removed.

    Only for a caller that owns ``path``, such as a training run taking over its folder: a
    temporary file of a live writer removed here would make that writer's rename fail.
    """
    target = Path(path)
    removed = 0
    # mkstemp's names are the prefix, 8 random characters and the suffix: exactly 8, so that
    # the temporary files of "model.safetensors.old" are not taken for those of "model.safetensors".
    for leftover in target.parent.glob(f"{glob.escape(_prefix(target))}{'?' * 8}.tmp"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed += 1
    return removed


def _prefix(target: Path) -> str:
    # A leading dot keeps the temporary file out of listings.
    return f".{target.name}."


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on clean exit put it in ``path``'s place.

    A folder cannot be renamed over a non-empty one, so an existing ``path`` is first renamed
    aside and removed after the new folder is in place: a reader sees the old folder or the
    complete new one (or, for the instant between the two renames, none). If the body raises,
    the temporary folder is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A leading dot keeps the temporary folder out of listings, and out of TensorFlow
    # Serving's, which only loads folders named by a version number.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_current_umask())
        yield staging
        if target.exists() or target.is_symlink():
            retired = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, retired / target.name)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(retired / target.name, target)
                retired.rmdir()
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
