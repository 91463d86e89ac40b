"""Tests for digitnet.data.mnist: IDX parsing, where the files come from, downloads, splits."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import types
import urllib.error
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split

from conftest import write_dataset
from digitnet.data import mnist as data
from digitnet.data.idx import read_idx
from digitnet.data.mnist import (
    MNIST_FILES,
    MNIST_SHA256,
    dataset_fingerprint,
    default_cache_dir,
    download_mnist,
    load_mnist,
    load_mnist_arrays,
)
from digitnet.errors import DataError

TYPE_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">i4"): 0x0C,
    np.dtype(">f4"): 0x0D,
    np.dtype(">f8"): 0x0E,
}


def encode_idx(array: np.ndarray, dtype=np.uint8) -> bytes:
    """IDX bytes written by hand from the format description, not by the code under test."""
    dtype = np.dtype(dtype)
    big_endian = dtype if dtype.itemsize == 1 else dtype.newbyteorder(">")
    array = np.asarray(array).astype(big_endian)
    header = bytes([0, 0, TYPE_CODES[big_endian], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.tobytes()


def fake_dataset(n_train=50, n_test=20, n_classes=3, rows=28, cols=28, seed=0):
    """Kind -> uint8 array; every class appears in train."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(n_train, rows, cols), dtype=np.uint8),
        "train_labels": rng.permutation(np.arange(n_train) % n_classes).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, rows, cols), dtype=np.uint8),
        "test_labels": rng.integers(0, n_classes, size=n_test, dtype=np.uint8),
    }


def decompressed_sha256(arrays: dict) -> dict[str, str]:
    return {kind: hashlib.sha256(encode_idx(array)).hexdigest() for kind, array in arrays.items()}


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens, so connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def no_internet_no_home_cache(monkeypatch, tmp_path):
    """No test may reach the real mirrors or write into the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(data, "MIRRORS", [closed_port_url()])
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_SECONDS", 5.0)


@pytest.fixture
def without_env_dir(monkeypatch):
    monkeypatch.delenv("DIGITNET_DATA_DIR", raising=False)


# --------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("gzipped", [True, False])
@pytest.mark.parametrize("shape", [(7, 28, 28), (7,)])
def test_read_idx_round_trips_images_and_labels(tmp_path, gzipped, shape):
    array = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    content = encode_idx(array)
    path = tmp_path / "file"
    path.write_bytes(gzip.compress(content) if gzipped else content)

    result = read_idx(path)

    assert result.dtype == np.uint8
    assert result.shape == shape
    np.testing.assert_array_equal(result, array)
    result[0] = 0  # a reader hands back an array the caller may modify


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple),
    dtype=st.sampled_from(list(TYPE_CODES)),
    gzipped=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_read_idx_round_trips_any_small_shape_and_type(shape, dtype, gzipped, seed):
    rng = np.random.default_rng(seed)
    array = (rng.random(shape) * 200 - (0 if dtype == np.uint8 else 100)).astype(dtype)
    content = encode_idx(array, dtype)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "file.idx"
        path.write_bytes(gzip.compress(content) if gzipped else content)
        result = read_idx(path)
    assert result.shape == shape
    assert result.dtype == dtype.newbyteorder("=")
    np.testing.assert_array_equal(result, array)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    misnamed_gzip = tmp_path / "images-idx3-ubyte"
    misnamed_gzip.write_bytes(gzip.compress(encode_idx(array)))
    misnamed_raw = tmp_path / "images-idx3-ubyte.gz"
    misnamed_raw.write_bytes(encode_idx(array))
    np.testing.assert_array_equal(read_idx(misnamed_gzip), array)
    np.testing.assert_array_equal(read_idx(misnamed_raw), array)


def _write(tmp_path, content: bytes, name="broken-idx3-ubyte") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_truncated_payload_says_expected_and_actual_bytes(tmp_path):
    content = encode_idx(np.zeros((4, 5, 5), dtype=np.uint8))
    path = _write(tmp_path, content[:-30])
    with pytest.raises(DataError, match="truncated") as caught:
        read_idx(path)
    message = str(caught.value)
    assert str(path) in message
    assert "100" in message and "70" in message


def test_truncated_payload_inside_gzip_is_reported_too(tmp_path):
    content = encode_idx(np.zeros((4, 5, 5), dtype=np.uint8))
    path = _write(tmp_path, gzip.compress(content[:-1]), "short.gz")
    with pytest.raises(DataError, match="truncated") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_trailing_bytes_are_rejected(tmp_path):
    path = _write(tmp_path, encode_idx(np.zeros(10, dtype=np.uint8)) + b"junk")
    with pytest.raises(DataError, match="4 unexpected trailing bytes") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "magic number"),
        (b"PK\x03\x04\x00", "magic number"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "type code 0x07"),
        (b"\x00\x00\x08\x00\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00", "IDX header"),
        (b"\x00\x00", "only 2 bytes"),
        (b"", "only 0 bytes"),
    ],
)
def test_bad_headers_are_rejected_naming_the_file(tmp_path, content, expected):
    path = _write(tmp_path, content)
    with pytest.raises(DataError, match=expected) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_corrupt_gzip_is_reported_naming_the_file(tmp_path):
    # Random pixels do not compress, so the deflate stream is long enough to hit its middle.
    array = np.random.default_rng(2).integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    content = bytearray(gzip.compress(encode_idx(array)))
    middle = len(content) // 2
    content[middle : middle + 8] = bytes(byte ^ 0xFF for byte in content[middle : middle + 8])
    path = _write(tmp_path, bytes(content), "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="corrupt gzip") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_cut_off_gzip_stream_is_reported_as_truncated(tmp_path):
    content = gzip.compress(encode_idx(np.arange(200, dtype=np.uint8)))
    path = _write(tmp_path, content[: len(content) // 2], "labels.gz")
    with pytest.raises(DataError, match="gzip stream is truncated") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found") as caught:
        read_idx(tmp_path / "nope.gz")
    assert "nope.gz" in str(caught.value)


def _gzip_bomb(header: bytes, megabytes: int) -> bytes:
    """A gzip stream of ``header`` and then ``megabytes`` MB of zeros (about 1 KB per MB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(header)]
    parts += [compressor.compress(bytes(1 << 20)) for _ in range(megabytes)]
    return b"".join(parts) + compressor.flush()


def test_gzip_bomb_stops_inflating_past_the_declared_size(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 10, 28, 28)
    bomb = _gzip_bomb(header, 256)
    assert len(bomb) < 512 * 1024  # 256 MB inflated from a quarter of a megabyte
    path = _write(tmp_path, bomb, "bomb.gz")
    with pytest.raises(DataError, match="inflates past the 7,856 bytes its IDX header declares"):
        read_idx(path)


def test_header_declaring_more_than_the_cap_is_refused_while_inflating(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 100_000, 200, 200)  # 4 GB
    path = _write(tmp_path, _gzip_bomb(header, 4), "huge.gz")
    with pytest.raises(DataError, match="more than the 1,073,741,824 digitnet reads"):
        read_idx(path)


def test_concatenated_gzip_members_still_read(tmp_path):
    content = encode_idx(np.arange(100, dtype=np.uint8))
    path = _write(tmp_path, gzip.compress(content[:37]) + gzip.compress(content[37:]), "two.gz")
    np.testing.assert_array_equal(read_idx(path), np.arange(100))


def test_bytes_after_the_gzip_stream_are_corrupt_data(tmp_path):
    content = gzip.compress(encode_idx(np.arange(10, dtype=np.uint8))) + b"junk"
    with pytest.raises(DataError, match="corrupt gzip data"):
        read_idx(_write(tmp_path, content, "junk.gz"))


def test_fifo_and_devices_are_refused_at_once(tmp_path):
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read(path) -> None:
        try:
            read_idx(path)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    for path in (fifo, Path("/dev/zero")):
        if not path.exists():
            continue
        thread = threading.Thread(target=read, args=(path,), daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), f"reading {path} hangs"
        assert isinstance(outcome[-1], DataError)
        assert "not a regular file" in str(outcome[-1])


# --------------------------------------------------------------------------------------------
# load_mnist_arrays: validation and where the files come from


def test_mismatched_image_and_label_counts_name_both_files(tmp_path):
    arrays = fake_dataset()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    directory = write_dataset(tmp_path / "mismatch", arrays)
    with pytest.raises(DataError, match="50 images but .* 49 labels") as caught:
        load_mnist_arrays(data_dir=directory)
    message = str(caught.value)
    assert str(directory / MNIST_FILES["train_images"]) in message
    assert str(directory / MNIST_FILES["train_labels"]) in message


def test_labels_file_in_place_of_images_is_rejected(tmp_path):
    arrays = fake_dataset()
    arrays["test_images"] = arrays["test_labels"]
    directory = write_dataset(tmp_path / "swapped", arrays)
    with pytest.raises(DataError, match="expected 3-D") as caught:
        load_mnist_arrays(data_dir=directory)
    assert MNIST_FILES["test_images"] in str(caught.value)


def test_train_and_test_image_sizes_must_agree(tmp_path):
    arrays = fake_dataset()
    arrays["test_images"] = arrays["test_images"][:, :20, :20]
    with pytest.raises(DataError, match="same dataset"):
        load_mnist_arrays(data_dir=write_dataset(tmp_path / "sizes", arrays))


def test_arrays_and_digests(tmp_path):
    arrays = fake_dataset()
    gzipped = load_mnist_arrays(data_dir=write_dataset(tmp_path / "gz", arrays))
    raw = load_mnist_arrays(data_dir=write_dataset(tmp_path / "raw", arrays, gzipped=False))

    for kind, array in arrays.items():
        np.testing.assert_array_equal(getattr(gzipped, kind), array)
        assert getattr(gzipped, kind).dtype == np.uint8
    assert gzipped.sha256 == decompressed_sha256(arrays)
    assert gzipped.directory == tmp_path / "gz"
    # Digests are of the decompressed bytes: the same for a raw and a gzipped copy.
    assert raw.sha256 == gzipped.sha256


def test_loaded_arrays_are_read_only(tmp_path):
    loaded = load_mnist_arrays(data_dir=write_dataset(tmp_path / "d", fake_dataset()))
    with pytest.raises(ValueError):
        loaded.train_images[0, 0, 0] = 1


def test_raw_and_dotted_file_names_are_accepted(tmp_path):
    arrays = fake_dataset()
    dotted = {
        "train_images": "train-images.idx3-ubyte",
        "train_labels": "train-labels.idx1-ubyte",
        "test_images": "t10k-images.idx3-ubyte",
        "test_labels": "t10k-labels.idx1-ubyte",
    }
    directory = write_dataset(tmp_path / "dotted", arrays, gzipped=False, names=dotted)
    loaded = load_mnist_arrays(data_dir=directory)
    np.testing.assert_array_equal(loaded.test_labels, arrays["test_labels"])


def test_non_mnist_checksum_in_named_dir_is_logged_not_rejected(tmp_path, caplog):
    arrays = fake_dataset()
    directory = write_dataset(tmp_path / "fashion", arrays)
    with caplog.at_level(logging.INFO, logger="digitnet.data.mnist"):
        loaded = load_mnist_arrays(data_dir=directory)
    np.testing.assert_array_equal(loaded.train_images, arrays["train_images"])
    assert "differs from canonical MNIST" in caplog.text
    assert all(path.exists() for path in directory.iterdir())  # nothing deleted


def test_explicit_dir_beats_env_beats_cache(tmp_path, monkeypatch):
    explicit = write_dataset(tmp_path / "explicit", fake_dataset(n_train=5))
    from_env = write_dataset(tmp_path / "env", fake_dataset(n_train=7))
    cache_arrays = fake_dataset(n_train=9)
    cache = write_dataset(tmp_path / "cache", cache_arrays)
    # Cache files are only trusted if they match the canonical checksums; make ours canonical.
    monkeypatch.setattr(data, "MNIST_SHA256", decompressed_sha256(cache_arrays))
    monkeypatch.setenv("DIGITNET_DATA_DIR", str(from_env))

    chosen = load_mnist_arrays(data_dir=explicit, cache_dir=cache)
    assert (chosen.directory, len(chosen.train_images)) == (explicit, 5)

    chosen = load_mnist_arrays(cache_dir=cache)
    assert (chosen.directory, len(chosen.train_images)) == (from_env, 7)

    monkeypatch.delenv("DIGITNET_DATA_DIR")
    chosen = load_mnist_arrays(cache_dir=cache)
    assert (chosen.directory, len(chosen.train_images)) == (cache, 9)


def test_default_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "digitnet" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/invalid")
    assert default_cache_dir() == Path.home() / ".cache" / "digitnet" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "digitnet" / "mnist"


def test_default_cache_dir_is_used_without_cache_dir(tmp_path, monkeypatch, without_env_dir):
    arrays = fake_dataset()
    write_dataset(default_cache_dir(), arrays)
    monkeypatch.setattr(data, "MNIST_SHA256", decompressed_sha256(arrays))
    assert load_mnist_arrays().directory == tmp_path / "xdg-cache" / "digitnet" / "mnist"


@pytest.mark.parametrize("through_env", [False, True])
def test_named_dir_missing_files_is_an_error_listing_them(tmp_path, monkeypatch, through_env):
    directory = write_dataset(tmp_path / "partial", fake_dataset())
    (directory / MNIST_FILES["train_labels"]).unlink()
    (directory / MNIST_FILES["test_images"]).unlink()
    # A complete cache must not be used instead: the user asked for this directory.
    cache = write_dataset(tmp_path / "cache", fake_dataset())
    if through_env:
        monkeypatch.setenv("DIGITNET_DATA_DIR", str(directory))
        call = lambda: load_mnist_arrays(cache_dir=cache)  # noqa: E731
    else:
        call = lambda: load_mnist_arrays(data_dir=directory, cache_dir=cache)  # noqa: E731

    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert MNIST_FILES["train_labels"] in message and MNIST_FILES["test_images"] in message
    assert MNIST_FILES["train_images"] not in message and MNIST_FILES["test_labels"] not in message
    assert str(directory) in message


def test_named_dir_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist_arrays(data_dir=tmp_path / "typo")


# --------------------------------------------------------------------------------------------
# Downloads


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror_server():
    """A local HTTP server; set ``.routes`` (path -> body), read ``.requests`` and ``.url``."""
    handler = type("Handler", (_MirrorHandler,), {"routes": {}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield types.SimpleNamespace(
        routes=handler.routes,
        requests=handler.requests,
        url=f"http://127.0.0.1:{server.server_address[1]}",
    )
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def served_dataset(mirror_server, monkeypatch, without_env_dir):
    """A fake dataset whose checksums are declared canonical, served by three mirrors:
    /dead/ (404 everywhere), /corrupt/ (valid gzip, wrong content), /good/."""
    arrays = fake_dataset(seed=5)
    monkeypatch.setattr(data, "MNIST_SHA256", decompressed_sha256(arrays))
    for kind, array in arrays.items():
        name = MNIST_FILES[kind]
        wrong = array.copy()
        wrong.flat[0] ^= 1
        mirror_server.routes[f"/corrupt/{name}"] = gzip.compress(encode_idx(wrong))
        mirror_server.routes[f"/good/{name}"] = gzip.compress(encode_idx(array))
    mirrors = {label: f"{mirror_server.url}/{label}/" for label in ("dead", "corrupt", "good")}
    return types.SimpleNamespace(arrays=arrays, mirrors=mirrors, server=mirror_server)


def assert_cache_holds_exactly_verified_files(cache: Path, arrays: dict):
    assert sorted(path.name for path in cache.iterdir()) == sorted(MNIST_FILES.values())
    for kind, array in arrays.items():
        content = gzip.decompress((cache / MNIST_FILES[kind]).read_bytes())
        assert content == encode_idx(array)


@pytest.mark.parametrize("dead", ["refused", "404"])
def test_download_skips_dead_and_corrupt_mirrors(
    tmp_path, monkeypatch, served_dataset, dead, capsys
):
    mirrors = served_dataset.mirrors
    first = closed_port_url() if dead == "refused" else mirrors["dead"]
    monkeypatch.setattr(data, "MIRRORS", [first, mirrors["corrupt"], mirrors["good"]])
    cache = tmp_path / "cache"

    loaded = load_mnist_arrays(cache_dir=cache)

    for kind, array in served_dataset.arrays.items():
        np.testing.assert_array_equal(getattr(loaded, kind), array)
    assert loaded.directory == cache
    assert_cache_holds_exactly_verified_files(cache, served_dataset.arrays)
    requested = served_dataset.server.requests
    for name in MNIST_FILES.values():
        assert f"/corrupt/{name}" in requested  # tried, rejected by checksum
        assert f"/good/{name}" in requested
    assert "downloading" in capsys.readouterr().err


def test_checksum_mismatch_everywhere_fails_and_caches_nothing(tmp_path, served_dataset):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch") as caught:
        download_mnist(cache, mirrors=[served_dataset.mirrors["corrupt"]])
    assert served_dataset.mirrors["corrupt"] in str(caught.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_mnist_takes_checksums_directly(tmp_path, mirror_server):
    arrays = fake_dataset(seed=9)
    for kind, array in arrays.items():
        mirror_server.routes[f"/m/{MNIST_FILES[kind]}"] = gzip.compress(encode_idx(array))
    paths = download_mnist(
        tmp_path / "cache",
        mirrors=[f"{mirror_server.url}/m/"],
        timeout=5,
        checksums=decompressed_sha256(arrays),
    )
    assert set(paths) == set(MNIST_FILES)
    assert_cache_holds_exactly_verified_files(tmp_path / "cache", arrays)


@pytest.mark.parametrize("damage", ["wrong content", "truncated gzip"])
def test_damaged_cache_file_is_downloaded_again(tmp_path, monkeypatch, served_dataset, damage):
    good = served_dataset.mirrors["good"]
    monkeypatch.setattr(data, "MIRRORS", [good])
    cache = tmp_path / "cache"
    load_mnist_arrays(cache_dir=cache)
    damaged = cache / MNIST_FILES["train_labels"]
    if damage == "wrong content":
        damaged.write_bytes(gzip.compress(encode_idx(np.zeros(50, dtype=np.uint8))))
    else:
        damaged.write_bytes(damaged.read_bytes()[:-10])
    served_dataset.server.requests.clear()

    loaded = load_mnist_arrays(cache_dir=cache)

    assert served_dataset.server.requests == [f"/good/{MNIST_FILES['train_labels']}"]
    np.testing.assert_array_equal(loaded.train_labels, served_dataset.arrays["train_labels"])
    assert_cache_holds_exactly_verified_files(cache, served_dataset.arrays)


def test_complete_cache_needs_no_network(tmp_path, monkeypatch, served_dataset):
    cache = tmp_path / "cache"
    download_mnist(cache, mirrors=[served_dataset.mirrors["good"]])
    monkeypatch.setattr(data, "MIRRORS", [closed_port_url()])
    loaded = load_mnist_arrays(cache_dir=cache)
    np.testing.assert_array_equal(loaded.test_images, served_dataset.arrays["test_images"])


@pytest.fixture
def hanging_mirror():
    """A mirror that accepts connections and never answers; yields (url, accepted sockets)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def accept_forever():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/", accepted
    listener.close()
    for connection in accepted:
        connection.close()


def test_hanging_mirror_costs_one_timeout_not_one_per_file(
    tmp_path, served_dataset, hanging_mirror
):
    url, accepted = hanging_mirror
    download_mnist(tmp_path / "cache", mirrors=[url, served_dataset.mirrors["good"]], timeout=0.5)
    assert len(accepted) == 1
    assert_cache_holds_exactly_verified_files(tmp_path / "cache", served_dataset.arrays)


def test_hanging_mirror_alone_reports_the_timeout(tmp_path, served_dataset, hanging_mirror):
    with pytest.raises(DataError, match="timed out after 0.5 s"):
        download_mnist(tmp_path / "cache", mirrors=[hanging_mirror[0]], timeout=0.5)


def test_no_files_and_no_network_explains_everything(tmp_path, monkeypatch, without_env_dir):
    mirrors = [closed_port_url(), closed_port_url() + "other/"]
    monkeypatch.setattr(data, "MIRRORS", mirrors)
    cache = tmp_path / "empty-cache"
    with pytest.raises(DataError) as caught:
        load_mnist(cache_dir=cache)
    message = str(caught.value)
    for name in MNIST_FILES.values():
        assert name in message
    for mirror in mirrors:
        assert mirror in message
    assert str(cache) in message
    assert "--data-dir" in message and "DIGITNET_DATA_DIR" in message
    assert "refused" in message.lower()
    assert "\n" not in message


def test_download_false_never_touches_the_network(tmp_path, monkeypatch, served_dataset):
    monkeypatch.setattr(data, "MIRRORS", [served_dataset.mirrors["good"]])
    with pytest.raises(DataError, match="downloading is off") as caught:
        load_mnist_arrays(cache_dir=tmp_path / "cache", download=False)
    assert MNIST_FILES["test_labels"] in str(caught.value)
    assert served_dataset.server.requests == []


# --------------------------------------------------------------------------------------------
# load_mnist


@pytest.fixture
def small_dataset(tmp_path):
    arrays = fake_dataset(n_train=50, n_test=20, n_classes=3)
    return arrays, write_dataset(tmp_path / "small", arrays)


def _assert_model_ready(X, y, n_classes):
    assert X.dtype == np.float32 and y.dtype == np.float32
    assert X.min() >= 0.0 and X.max() <= 1.0
    assert y.shape[1] == n_classes
    np.testing.assert_array_equal(y.sum(axis=1), 1.0)
    assert set(np.unique(y)) <= {0.0, 1.0}


def test_official_split_keeps_the_files_order(small_dataset):
    arrays, directory = small_dataset
    X_train, X_test, y_train, y_test = load_mnist(split="official", data_dir=directory)

    assert X_train.shape == (50, 784) and X_test.shape == (20, 784)
    assert y_train.shape == (50, 3) and y_test.shape == (20, 3)
    _assert_model_ready(X_train, y_train, 3)
    _assert_model_ready(X_test, y_test, 3)
    np.testing.assert_array_equal(
        X_train, arrays["train_images"].reshape(50, 784).astype(np.float32) / 255
    )
    np.testing.assert_array_equal(X_test.reshape(20, 28, 28) * 255, arrays["test_images"])
    np.testing.assert_array_equal(y_train.argmax(axis=1), arrays["train_labels"])
    np.testing.assert_array_equal(y_test.argmax(axis=1), arrays["test_labels"])


def test_seed_split_is_the_tutorials_train_test_split(small_dataset):
    arrays, directory = small_dataset
    result = load_mnist(split="seed", data_dir=directory)

    X_all = np.concatenate([arrays["train_images"], arrays["test_images"]]).reshape(70, 784) / 255.0
    labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    y_all = np.eye(3)[labels]
    expected = train_test_split(
        X_all.astype(np.float32), y_all.astype(np.float32), test_size=0.2, random_state=1
    )

    assert [part.shape for part in result] == [(56, 784), (14, 784), (56, 3), (14, 3)]
    for got, want in zip(result, expected):
        np.testing.assert_array_equal(got, want)
    _assert_model_ready(result[0], result[2], 3)


def test_class_count_comes_from_the_largest_label_anywhere(tmp_path):
    arrays = fake_dataset(n_classes=3)
    arrays["test_labels"][0] = 4  # a class seen only in the test file
    directory = write_dataset(tmp_path / "five", arrays)
    _, _, y_train, y_test = load_mnist(split="official", data_dir=directory)
    assert y_train.shape[1] == y_test.shape[1] == 5
    assert y_test[0, 4] == 1.0


def test_feature_count_follows_the_image_size(tmp_path):
    directory = write_dataset(tmp_path / "small-images", fake_dataset(rows=20, cols=16))
    X_train, X_test, _, _ = load_mnist(split="official", data_dir=directory)
    assert X_train.shape[1] == X_test.shape[1] == 320


def test_shared_fake_mnist_fixture_loads(fake_mnist_dir):
    X_train, X_test, y_train, y_test = load_mnist(split="official", data_dir=fake_mnist_dir)
    assert X_train.shape == (60, 784) and y_test.shape == (20, 10)


@pytest.mark.parametrize(
    "arguments, allowed",
    [({"split": "random"}, "'seed', 'official'"), ({"source": "tfds"}, "'idx', 'openml'")],
)
def test_unknown_split_or_source_names_the_allowed_values(small_dataset, arguments, allowed):
    with pytest.raises(ValueError, match=allowed):
        load_mnist(data_dir=small_dataset[1], **arguments)


# --------------------------------------------------------------------------------------------
# OpenML route, offline


@pytest.fixture
def fake_openml(monkeypatch):
    """Replace fetch_openml with a fake that returns 70,000 rows (6 pixels, to stay small)
    and string labels, as scikit-learn does; records the call."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(70000, 6)).astype(np.float64)
    labels = rng.integers(0, 10, size=70000)
    calls = []

    def fetch(name, **kwargs):
        calls.append((name, kwargs))
        return types.SimpleNamespace(data=pixels, target=labels.astype(str).astype(object))

    monkeypatch.setattr(data, "fetch_openml", fetch)
    return types.SimpleNamespace(pixels=pixels, labels=labels, calls=calls)


def test_openml_official_split_and_call(fake_openml, tmp_path):
    X_train, X_test, y_train, y_test = load_mnist(
        split="official", source="openml", cache_dir=tmp_path
    )

    assert X_train.shape == (60000, 6) and X_test.shape == (10000, 6)
    _assert_model_ready(X_train, y_train, 10)
    np.testing.assert_array_equal(X_train, (fake_openml.pixels[:60000] / 255).astype(np.float32))
    np.testing.assert_array_equal(y_test.argmax(axis=1), fake_openml.labels[60000:])
    ((name, kwargs),) = fake_openml.calls
    assert name == "mnist_784"
    assert kwargs["version"] == 1 and kwargs["as_frame"] is False
    assert Path(kwargs["data_home"]) == tmp_path / "openml"


def test_openml_seed_split_is_the_tutorials(fake_openml, tmp_path):
    X_train, X_test, y_train, y_test = load_mnist(split="seed", source="openml", cache_dir=tmp_path)
    expected_train, expected_test, labels_train, labels_test = train_test_split(
        fake_openml.pixels, fake_openml.labels, test_size=0.2, random_state=1
    )
    np.testing.assert_array_equal(X_test, (expected_test / 255).astype(np.float32))
    np.testing.assert_array_equal(y_train.argmax(axis=1), labels_train)
    assert y_train.dtype == np.float32 and y_train.shape == (56000, 10)


def test_openml_network_failure_is_a_data_error(monkeypatch, tmp_path):
    def unreachable(name, **kwargs):
        raise urllib.error.URLError("name resolution failed")

    monkeypatch.setattr(data, "fetch_openml", unreachable)
    with pytest.raises(DataError, match="OpenML"):
        load_mnist(source="openml", cache_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Fingerprints and import cost


def test_dataset_fingerprint_covers_values_dtype_and_shape():
    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.eye(3, dtype=np.float32)
    base = dataset_fingerprint(X, y)
    assert base == dataset_fingerprint(X.copy(), y.copy())
    assert len(base) == 64
    changed = X.copy()
    changed[0, 0] = 99
    assert dataset_fingerprint(changed, y) != base
    assert dataset_fingerprint(X.astype(np.float64), y) != base
    assert dataset_fingerprint(X.reshape(4, 3), y) != base
    assert dataset_fingerprint(np.asfortranarray(X), y) == base


def test_importing_data_pulls_in_neither_tensorflow_nor_sklearn():
    code = (
        "import sys, digitnet.data.mnist\n"
        "print(sorted({'tensorflow', 'sklearn'} & set(sys.modules)))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Real MNIST (skipped unless DIGITNET_DATA_DIR is set)


def test_real_mnist_files_are_canonical(mnist_dir):
    arrays = load_mnist_arrays(data_dir=mnist_dir)
    assert arrays.sha256 == MNIST_SHA256
    assert arrays.train_images.shape == (60000, 28, 28) and arrays.train_images.dtype == np.uint8
    assert arrays.test_labels.shape == (10000,)
    # Well-known first labels of each file: the files are in their original order.
    assert list(arrays.train_labels[:3]) == [5, 0, 4]
    assert list(arrays.test_labels[:3]) == [7, 2, 1]


def test_real_mnist_seed_split(mnist_dir):
    X_train, X_test, y_train, y_test = load_mnist(split="seed", data_dir=mnist_dir)
    assert X_train.shape == (56000, 784) and X_test.shape == (14000, 784)
    assert y_train.shape == (56000, 10) and y_test.shape == (14000, 10)
    assert X_train.dtype == np.float32 and X_train.max() == 1.0 and X_train.min() == 0.0


def test_real_mnist_official_split(mnist_dir):
    X_train, X_test, y_train, y_test = load_mnist(split="official", data_dir=mnist_dir)
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert y_train.shape == (60000, 10) and y_test.shape == (10000, 10)
    assert list(y_train[:3].argmax(axis=1)) == [5, 0, 4]
