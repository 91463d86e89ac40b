"""MNIST loading: IDX files from a directory, the cache, a mirror, or OpenML.

Nothing here imports TensorFlow, and scikit-learn is imported only inside the functions that
use it, so commands that merely look at data start fast.

Where the four IDX files come from, first match wins:

1. ``data_dir=`` (the CLI's ``--data-dir``);
2. the environment variable ``DIGITNET_DATA_DIR``;
3. the cache, ``cache_dir=`` or :func:`default_cache_dir`;
4. a download from :data:`MIRRORS` into the cache (only with ``download=True``).

A directory named in 1 or 2 must hold all four files: the user asked for it, so falling back to
a download would hide the mistake. Its files may be any MNIST-format dataset (Fashion-MNIST,
KMNIST, ...), so a checksum that differs from MNIST's is only logged. In the cache a differing
checksum means a damaged file, which is deleted and fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitnet.atomic import atomic_write_bytes
from digitnet.data.idx import GZIP_MAGIC, gunzip, read_idx_with_digest
from digitnet.errors import DataError
from digitnet.models.choices import SOURCES, SPLITS, check

logger = logging.getLogger(__name__)

MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# sha256 of the DECOMPRESSED files: mirrors recompress, so the .gz bytes differ between copies.
MNIST_SHA256: dict[str, str] = {
    "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

MIRRORS: list[str] = [
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # the CVDF mirror TFDS uses
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
    "http://yann.lecun.com/exdb/mnist/",  # the original; answers 403 since 2024
]

DOWNLOAD_TIMEOUT_SECONDS: float = 30.0

# The largest MNIST file is 47 MB uncompressed; a mirror sending far more is not serving MNIST,
# and reading it all would only exhaust memory.
MAX_DOWNLOAD_BYTES: int = 128 * 1024 * 1024

DATA_DIR_ENV = "DIGITNET_DATA_DIR"

# The tutorial's split of the 70,000 images.
SEED_TEST_SIZE = 0.2
SEED_RANDOM_STATE = 1

OPENML_NAME = "mnist_784"
OPENML_VERSION = 1
OFFICIAL_TRAIN_COUNT = 60000
OFFICIAL_TEST_COUNT = 10000


def default_cache_dir() -> Path:
    """The download cache: ``$XDG_CACHE_HOME/digitnet/mnist``, else ``~/.cache/digitnet/mnist``."""
    xdg_cache = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg_cache) if os.path.isabs(xdg_cache) else Path.home() / ".cache"
    return base / "digitnet" / "mnist"


# --------------------------------------------------------------------------------------------
# The four files, wherever they are


@dataclass(frozen=True, eq=False)
class MnistArrays:
    """The four MNIST arrays as stored in the IDX files, before any scaling.

    ``train_images`` is uint8 (60000, 28, 28) for MNIST, ``train_labels`` uint8 (60000,),
    ``test_images`` and ``test_labels`` likewise with 10000; other MNIST-format datasets may
    differ in counts. Pixels are 0-255 with 0 = background (white ink on black). The arrays are
    read-only because ``sha256`` describes them. ``directory`` is where the files were found;
    ``sha256`` maps each kind (keys of MNIST_FILES) to the hex digest of its decompressed file.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    directory: Path
    sha256: dict[str, str] = field(default_factory=dict)


def _candidate_names(kind: str) -> list[str]:
    """File names accepted for ``kind``: canonical gzipped, canonical raw, dotted raw.

    The dotted form (``train-images.idx3-ubyte``) is what some unpackers produce.
    """
    gzipped = MNIST_FILES[kind]
    raw = gzipped.removesuffix(".gz")
    prefix, _, suffix = raw.rpartition("-idx")
    return [gzipped, raw, f"{prefix}.idx{suffix}"]


def _find_files(directory: Path) -> dict[str, Path]:
    """Kind -> the first accepted file name present in ``directory``; absent kinds are omitted."""
    found = {}
    for kind in MNIST_FILES:
        for name in _candidate_names(kind):
            candidate = directory / name
            if candidate.is_file():
                found[kind] = candidate
                break
    return found


def load_mnist_arrays(
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> MnistArrays:
    """Find, validate and read the four MNIST IDX files; see the module docstring for the order.

    Raises DataError if a named directory lacks a file, a file is malformed, image and label
    counts disagree, or the files are neither present nor downloadable.
    """
    named = _named_directory(data_dir)
    if named is not None:
        return _assemble(_load_explicit(named), named)
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _assemble(_load_cache(directory, download), directory)


def _named_directory(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """The directory the user named (argument, then environment), or None."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_environment = os.environ.get(DATA_DIR_ENV, "")
    return Path(from_environment).expanduser() if from_environment else None


def _load_explicit(directory: Path) -> dict[str, tuple[Path, np.ndarray, str]]:
    found = _find_files(directory)
    missing = [MNIST_FILES[kind] for kind in MNIST_FILES if kind not in found]
    if missing:
        where = f"{directory} (which does not exist)" if not directory.is_dir() else str(directory)
        raise DataError(
            f"missing {', '.join(missing)} in {where}; put the MNIST IDX files there "
            f"(gzipped or raw), or drop --data-dir / {DATA_DIR_ENV} to use the cache"
        )
    loaded = {}
    for kind, path in found.items():
        array, digest = read_idx_with_digest(path)
        if digest != MNIST_SHA256[kind]:
            # Not an error: any MNIST-format dataset is welcome here.
            logger.info(
                "%s differs from canonical MNIST (sha256 %s); loading it as given", path, digest
            )
        loaded[kind] = (path, array, digest)
    return loaded


def _load_cache(directory: Path, download: bool) -> dict[str, tuple[Path, np.ndarray, str]]:
    loaded = {}
    for kind, path in _find_files(directory).items():
        try:
            array, digest = read_idx_with_digest(path)
            problem = (
                None if digest == MNIST_SHA256[kind] else "its checksum does not match MNIST's"
            )
        except DataError as error:
            problem = str(error)
        if problem is not None:
            # The cache only ever holds verified downloads, so any difference is damage.
            logger.warning("discarding damaged cached file %s (%s)", path, problem)
            path.unlink(missing_ok=True)
            continue
        loaded[kind] = (path, array, digest)
    missing = [kind for kind in MNIST_FILES if kind not in loaded]
    if missing:
        if not download:
            _raise_not_available(missing, directory, failures=None)
        paths = download_mnist(directory, kinds=missing)
        for kind in missing:
            array, digest = read_idx_with_digest(paths[kind])
            loaded[kind] = (paths[kind], array, digest)
    return loaded


def _assemble(loaded: dict[str, tuple[Path, np.ndarray, str]], directory: Path) -> MnistArrays:
    """Check that the four arrays fit together and wrap them."""
    for kind, (path, array, _) in loaded.items():
        wanted_dimensions = 3 if kind.endswith("images") else 1
        if array.ndim != wanted_dimensions or array.dtype != np.uint8:
            raise DataError(
                f"{path}: expected {wanted_dimensions}-D unsigned-byte data, got {array.ndim}-D "
                f"{array.dtype}; is it the right file?"
            )
    for split in ("train", "test"):
        images_path, images, _ = loaded[f"{split}_images"]
        labels_path, labels, _ = loaded[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                "labels; "
                "use files from the same dataset"
            )
    (train_path, train_images, _), (test_path, test_images, _) = (
        loaded["train_images"],
        loaded["test_images"],
    )
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{train_path} has {train_images.shape[1:]} images but {test_path} has "
            f"{test_images.shape[1:]}; "
            "use files from the same dataset"
        )
    for _, array, _ in loaded.values():
        array.flags.writeable = False
    return MnistArrays(
        train_images=loaded["train_images"][1],
        train_labels=loaded["train_labels"][1],
        test_images=loaded["test_images"][1],
        test_labels=loaded["test_labels"][1],
        directory=directory,
        sha256={kind: loaded[kind][2] for kind in MNIST_FILES},
    )


# --------------------------------------------------------------------------------------------
# Downloading


class _MirrorFailure(Exception):
    """One mirror could not supply one file; ``unreachable`` means skip it for the other files."""

    def __init__(self, reason: str, unreachable: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.unreachable = unreachable


def download_mnist(
    cache_dir: str | os.PathLike[str] | None = None,
    kinds: Iterable[str] | None = None,
    mirrors: Iterable[str] | None = None,
    timeout: float | None = None,
    checksums: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Download MNIST files into ``cache_dir`` and return kind -> path.

    Each file is tried on each mirror in order until one serves bytes whose decompressed sha256
    equals ``checksums[kind]``. Files are written atomically under their canonical names, so the
    cache never holds a partial or unverified file. ``None`` arguments mean: the default cache,
    all four kinds, MIRRORS, DOWNLOAD_TIMEOUT_SECONDS (seconds per request), MNIST_SHA256; they
    are looked up at call time so tests can patch the module constants.

    Raises DataError listing the files that no mirror supplied and why each mirror failed.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    kinds = list(MNIST_FILES) if kinds is None else list(kinds)
    mirrors = list(MIRRORS if mirrors is None else mirrors)
    timeout = DOWNLOAD_TIMEOUT_SECONDS if timeout is None else timeout
    checksums = MNIST_SHA256 if checksums is None else checksums

    failures: dict[str, list[str]] = {mirror: [] for mirror in mirrors}
    unreachable: set[str] = set()
    paths: dict[str, Path] = {}
    for kind in kinds:
        name = MNIST_FILES[kind]
        for mirror in mirrors:
            if mirror in unreachable:
                continue
            try:
                content = _fetch_verified(mirror, name, timeout, checksums[kind])
            except _MirrorFailure as failure:
                if failure.reason not in failures[mirror]:
                    failures[mirror].append(failure.reason)
                if failure.unreachable:
                    unreachable.add(mirror)
                continue
            paths[kind] = directory / name
            atomic_write_bytes(paths[kind], content)
            break
    missing = [kind for kind in kinds if kind not in paths]
    if missing:
        _raise_not_available(missing, directory, failures)
    return paths


def _fetch_verified(mirror: str, name: str, timeout: float, expected_sha256: str) -> bytes:
    """The file's bytes as served, if their decompressed sha256 is ``expected_sha256``."""
    url = mirror.rstrip("/") + "/" + name
    print(f"digitnet: downloading {name} from {mirror}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            content: bytes = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise _MirrorFailure(f"HTTP {error.code}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise _MirrorFailure(f"timed out after {timeout:g} s", unreachable=True) from None
        raise _MirrorFailure(
            getattr(reason, "strerror", None) or str(reason), unreachable=True
        ) from None
    except TimeoutError:
        raise _MirrorFailure(f"timed out after {timeout:g} s", unreachable=True) from None
    except OSError as error:  # e.g. connection reset mid-body
        raise _MirrorFailure(error.strerror or type(error).__name__) from None
    if len(content) > MAX_DOWNLOAD_BYTES:
        raise _MirrorFailure(f"larger than {MAX_DOWNLOAD_BYTES} bytes")
    try:
        raw = gunzip(content, url) if content[:2] == GZIP_MAGIC else content
    except DataError:
        raise _MirrorFailure("corrupt gzip") from None
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise _MirrorFailure("checksum mismatch")
    return content


def _raise_not_available(
    kinds: list[str], directory: Path, failures: Mapping[str, list[str]] | None
) -> None:
    names = ", ".join(MNIST_FILES[kind] for kind in kinds)
    if failures is None:
        why = "downloading is off"
    else:
        tried = "; ".join(
            f"{mirror} ({', '.join(reasons) or 'not tried'})"
            for mirror, reasons in failures.items()
        )
        why = f"no mirror supplied them: {tried}" if tried else "no mirrors are configured"
    raise DataError(
        f"MNIST files {names} not found in {directory} and {why}; download them into {directory}, "
        f"or pass --data-dir DIR or set {DATA_DIR_ENV}=DIR to a directory that holds them"
    )


# --------------------------------------------------------------------------------------------
# Model-ready arrays


def fetch_openml(*args: Any, **kwargs: Any) -> Any:
    """``sklearn.datasets.fetch_openml``, imported on first use (importing it costs ~0.6 s).

    A module-level name so tests can replace it with an offline fake.
    """
    from sklearn.datasets import fetch_openml as sklearn_fetch_openml

    return sklearn_fetch_openml(*args, **kwargs)


def load_mnist(
    split: str = "seed",
    data_dir: str | os.PathLike[str] | None = None,
    source: str = "idx",
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST as the tutorial's model consumes it: ``(X_train, X_test, y_train, y_test)``.

    X is float32 (n, rows*cols) = (n, 784) for MNIST, one flattened image per row, pixels
    scaled to [0, 1] by /255 in MNIST form: white ink on a black background, 0 = background.
    y is float32 one-hot (n, n_classes) with n_classes = the largest label + 1 over train and
    test (10 for MNIST, so other MNIST-format datasets work too).

    ``split="seed"`` is the tutorial's: all 70,000 images (train file then test file) split by
    ``train_test_split(test_size=0.2, random_state=1)`` into 56,000 / 14,000.
    ``split="official"`` keeps the files' 60,000 / 10,000.

    ``source="idx"`` reads the IDX files (see :func:`load_mnist_arrays` for where from);
    ``source="openml"`` uses scikit-learn's ``fetch_openml("mnist_784")``, cached under
    ``<cache_dir>/openml``, whose rows keep the original order (first 60,000 = train).
    """
    check("split", split, SPLITS)
    check("source", source, SOURCES)

    if source == "idx":
        arrays = load_mnist_arrays(data_dir=data_dir, cache_dir=cache_dir, download=download)
        pixels = np.concatenate([_flatten(arrays.train_images), _flatten(arrays.test_images)])
        labels = np.concatenate([arrays.train_labels, arrays.test_labels]).astype(np.int64)
        train_count = len(arrays.train_images)
    else:
        pixels, labels = _load_openml(cache_dir, download)
        train_count = OFFICIAL_TRAIN_COUNT
        if split == "official" and len(pixels) != OFFICIAL_TRAIN_COUNT + OFFICIAL_TEST_COUNT:
            raise DataError(
                f"OpenML {OPENML_NAME} returned {len(pixels)} rows, not the "
                f"{OFFICIAL_TRAIN_COUNT + OFFICIAL_TEST_COUNT} the official split needs; use "
                "split='seed'"
            )

    if split == "seed":
        train_index, test_index = _seed_split_indices(len(pixels))
    else:
        train_index, test_index = np.arange(train_count), np.arange(train_count, len(pixels))
    class_count = int(labels.max()) + 1
    return (
        _scale(pixels[train_index]),
        _scale(pixels[test_index]),
        _one_hot(labels[train_index], class_count),
        _one_hot(labels[test_index], class_count),
    )


def _flatten(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def _seed_split_indices(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the tutorial's split.

    ``train_test_split`` shuffles by sample count only, so splitting the indices gives the same
    rows as splitting the data itself, while letting us index the uint8 pixels before the
    4x larger float conversion.
    """
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(count), test_size=SEED_TEST_SIZE, random_state=SEED_RANDOM_STATE
    )
    return np.asarray(train), np.asarray(test)


def _scale(pixels: np.ndarray) -> np.ndarray:
    scaled = pixels.astype(np.float32)
    scaled /= np.float32(255)
    return scaled


def _one_hot(labels: np.ndarray, class_count: int) -> np.ndarray:
    one_hot: np.ndarray = np.eye(class_count, dtype=np.float32)[labels]
    return one_hot


def _load_openml(
    cache_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """OpenML's mnist_784 as (pixels (70000, 784) 0-255, integer labels (70000,))."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        bunch = fetch_openml(
            OPENML_NAME,
            version=OPENML_VERSION,
            as_frame=False,
            data_home=str(cache / "openml"),
            download_if_missing=download,
        )
    except OSError as error:  # urllib's URLError and a missing cache with downloads off
        raise DataError(
            f"could not fetch {OPENML_NAME} from OpenML into {cache / 'openml'} ({error}); "
            "check the network, or use source='idx'"
        ) from None
    pixels = np.asarray(bunch.data)
    try:
        labels = np.asarray(bunch.target).astype(np.int64)
    except ValueError:
        raise DataError(
            f"OpenML {OPENML_NAME} returned non-integer labels; use source='idx'"
        ) from None
    if labels.size and labels.min() < 0:
        raise DataError(f"OpenML {OPENML_NAME} returned negative labels; use source='idx'")
    return pixels, labels


def dataset_fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    """sha256 hex digest of the arrays' dtype, shape and bytes.

    Recorded in model files as "the data this was trained on": the training arrays after the
    split, however the files were found or compressed.
    """
    digest = hashlib.sha256()
    for array in (X, y):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode("ascii"))
        digest.update(array.data)  # the buffer itself: no copy of a possibly large array
    return digest.hexdigest()
