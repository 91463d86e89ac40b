"""Model files: round trip, and a clear refusal of truncated, tampered, foreign and future files."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest

from digitnet.errors import ModelFileError
from digitnet.inference.model import Model
from digitnet.inference.modelfile import (
    CHECKPOINT_KIND,
    FORMAT_VERSION,
    load_model,
    save_model,
    write_bundle,
)
from digitnet.models import architectures


def make_model(name="seed", seed=0):
    architecture = architectures.named_architecture(name)
    rng = np.random.default_rng(seed)
    parameters = {
        k: rng.normal(0, 0.1, shape).astype(np.float32)
        for k, shape in architectures.parameter_shapes(architecture).items()
    }
    for k in parameters:
        if k.startswith("variance"):
            parameters[k] = np.abs(parameters[k]) + 0.5
    return Model(
        architecture,
        parameters,
        {
            "training": {"model": name, "seed": seed},
            "metrics": {"test_accuracy": 0.97},
            "history": [{"epoch": 1, "cost": 0.5}],
            "data": {"sha256": "ab" * 32},
        },
    )


@pytest.mark.parametrize("name", ["seed", "mlp", "cnn"])
def test_round_trip_keeps_weights_architecture_and_metadata(tmp_path, name):
    model = make_model(name)
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.architecture == model.architecture
    for key, value in model.parameters.items():
        assert np.array_equal(loaded.parameters[key], value)
    assert loaded.metadata["training"] == model.metadata["training"]
    assert loaded.metadata["history"] == model.metadata["history"]
    assert loaded.metadata["data"]["sha256"] == "ab" * 32
    assert loaded.metadata["digitnet_version"]
    X = np.random.default_rng(1).random((4, 784), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_model(make_model(seed=1), path)
    before = path.read_bytes()

    import digitnet.inference.modelfile as modelfile

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("safetensors.numpy.save", explode)
    with pytest.raises(RuntimeError):
        save_model(make_model(seed=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert modelfile  # imported for the monkeypatch target


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    data = path.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated|not a digitnet"):
            load_model(path)


def test_tampered_weights_fail_the_checksum(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x40  # a bit of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)


def test_tampered_header_fails_the_checksum(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    data = path.read_bytes()
    text = data.replace(b"0.97", b"0.99")  # same length: claim a better accuracy
    assert text != data
    path.write_bytes(text)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)


def _rewrite_metadata(path, **changes):
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"].update(changes)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])


def test_unknown_format_version_says_to_upgrade(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    _rewrite_metadata(path, format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="upgrade digitnet"):
        load_model(path)


def test_foreign_files_are_refused(tmp_path):
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps({"W1": np.zeros(3)}))
    with pytest.raises(ModelFileError):
        load_model(pickled)
    checkpoint = tmp_path / "checkpoint.safetensors"
    write_bundle(checkpoint, CHECKPOINT_KIND, {"x": np.zeros(2, np.float32)}, {})
    with pytest.raises(ModelFileError, match="checkpoint file, not a model"):
        load_model(checkpoint)
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="directory"):
        load_model(tmp_path)


def test_parameters_that_do_not_fit_the_architecture_are_refused():
    model = make_model()
    parameters = dict(model.parameters)
    parameters["W2"] = parameters["W2"][:, :50]
    with pytest.raises(ValueError, match="W2"):
        Model(model.architecture, parameters)
    del parameters["W2"]
    with pytest.raises(ValueError, match="missing"):
        Model(model.architecture, parameters)


# ---------------------------------------------------------------------------------------------
# Crafted files: each a ModelFileError with a one-line reason, never a traceback


def raw_safetensors(header: object, payload: bytes = b"") -> bytes:
    """A safetensors file from a header object written as given, however wrong."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + payload


def valid_parts(tmp_path):
    """(safetensors header dict, payload bytes) of a real model file."""
    path = tmp_path / "valid.safetensors"
    save_model(make_model(), path)
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def rechecksummed(tmp_path, header: dict | str, tensors=None, name="crafted.safetensors"):
    """A model file whose digitnet header is ``header`` (a dict, or JSON text as given) with a
    correct sha256: what anyone who edits a file can produce."""
    from safetensors.numpy import save

    from digitnet.inference.modelfile import _digest

    model = make_model()
    tensors = tensors or {f"parameters/{k}": v for k, v in model.parameters.items()}
    header_json = header if isinstance(header, str) else json.dumps(header)
    metadata = {
        "format": "digitnet-model",
        "format_version": "1",
        "header": header_json,
        "sha256": _digest(header_json, tensors),
    }
    path = tmp_path / name
    path.write_bytes(save(tensors, metadata=metadata))
    return path


def model_header(**changes):
    model = make_model()
    header = {"architecture": model.architecture, "digitnet_version": "0.1.0", **model.metadata}
    header.update(changes)
    return header


def assert_refused(path, match: str | None = None) -> str:
    with pytest.raises(ModelFileError, match=match) as caught:
        load_model(path)
    message = str(caught.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize(
    "offsets",
    [[0], [0, 1, 2], "0-10", [0, "400"], [True, 400], [-4, 400], [400, 0], None, [0.0, 400]],
    ids=str,
)
def test_data_offsets_that_are_not_two_ordered_integers(tmp_path, offsets):
    header, payload = valid_parts(tmp_path)
    name = next(key for key in header if key != "__metadata__")
    header[name]["data_offsets"] = offsets
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw_safetensors(header, payload))
    assert_refused(path, "damaged")


def test_overlapping_tensors_are_refused(tmp_path):
    header, payload = valid_parts(tmp_path)
    names = sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    first, second = header[names[0]], header[names[1]]
    second["data_offsets"] = [first["data_offsets"][0], second["data_offsets"][1]]
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(raw_safetensors(header, payload))
    assert_refused(path, "starts at byte 0, not where the previous one ends")


@pytest.mark.parametrize(
    "header",
    [[], "a string", 5, None, {"W1": "not an entry"}, {"W1": {"dtype": 5}}],
    ids=["list", "string", "number", "null", "entry-string", "dtype-number"],
)
def test_safetensors_headers_that_are_not_objects_of_entries(tmp_path, header):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw_safetensors(header))
    assert_refused(path)


def test_deeply_nested_json_is_refused_without_recursion(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.safetensors"
    encoded = ('{"__metadata__": {}, "x": ' + deep + "}").encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded)
    assert_refused(path, "nests 100001 levels deep")
    inner = rechecksummed(tmp_path, '{"a": ' + deep + "}", name="inner.safetensors")
    assert_refused(inner, "digitnet header nests 100001 levels deep")


@pytest.mark.parametrize(
    "metadata",
    [{"format": 5}, {"format_version": 1}, {"header": {"a": 1}}, {"sha256": None}],
    ids=["format", "version", "header", "sha256"],
)
def test_metadata_values_that_are_not_strings(tmp_path, metadata):
    header, payload = valid_parts(tmp_path)
    header["__metadata__"].update(metadata)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw_safetensors(header, payload))
    assert_refused(path, "metadata is not a map of strings")


@pytest.mark.parametrize(
    "version",
    ["", "x", "1.0", "-1", "١", "9" * 5000, " 1"],
    ids=["empty", "x", "1.0", "-1", "arabic", "long", "space"],
)
def test_format_versions_that_are_not_numbers(tmp_path, version):
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    _rewrite_metadata(path, format_version=version)
    assert_refused(path, "format version")


@pytest.mark.parametrize(
    "header",
    ['"just a string"', "[1, 2]", "not json {", "null"],
    ids=["string", "list", "invalid", "null"],
)
def test_digitnet_headers_that_are_not_objects(tmp_path, header):
    assert_refused(rechecksummed(tmp_path, header), "digitnet header")


@pytest.mark.parametrize(
    "changes",
    [
        {"training": ["seed"]},
        {"metrics": 0.97},
        {"history": {"epoch": 1}},
        {"data": "official"},
        {"digitnet_version": 1},
    ],
    ids=["training", "metrics", "history", "data", "version"],
)
def test_metadata_fields_of_the_wrong_type(tmp_path, changes):
    (field,) = changes
    assert_refused(rechecksummed(tmp_path, model_header(**changes)), f"'{field}' is a")


@pytest.mark.parametrize(
    "architecture",
    [
        5,
        [],
        {"layers": 5},
        {"input_shape": "784", "layers": []},
        {"input_shape": [784.0], "layers": [{"type": "dense", "units": 10}]},
        {"layers": [{"type": ["dense"], "units": 10}]},
        {"layers": [{"type": "dense", "units": {"n": 10}}]},
        {"layers": [{"type": "dense", "units": "10"}]},
        {"layers": [{"type": "dense"}]},
        {"layers": [{"type": "conv", "filters": 8}]},
        {"layers": [{"type": "dense", "units": 10, "activation": "tanh"}]},
        {"layers": [{"type": "teleport", "units": 10}]},
        {"layers": []},
        {"input_shape": [0], "layers": [{"type": "dense", "units": 10}]},
    ],
    ids=lambda a: json.dumps(a)[:40],
)
def test_architectures_that_are_not_valid(tmp_path, architecture):
    assert_refused(rechecksummed(tmp_path, model_header(architecture=architecture)))


def _dense_model_file(tmp_path, sizes, output="softmax"):
    architecture = architectures.dense_stack(sizes, output_activation=output)
    rng = np.random.default_rng(0)
    parameters = {
        f"parameters/{k}": rng.normal(0, 0.1, shape).astype(np.float32)
        for k, shape in architectures.parameter_shapes(architecture).items()
    }
    return rechecksummed(tmp_path, model_header(architecture=architecture), parameters)


def test_a_model_must_take_28x28_images(tmp_path):
    assert_refused(_dense_model_file(tmp_path, [100, 10]), "takes 100 values per image")
    assert load_model(_dense_model_file(tmp_path, [784, 10])).n_inputs == 784


@pytest.mark.parametrize(
    ("sizes", "output"), [([784, 10], "relu"), ([784, 10], "linear"), ([784, 1], "softmax")]
)
def test_a_model_must_output_class_scores(tmp_path, sizes, output):
    assert_refused(_dense_model_file(tmp_path, sizes, output), "predicts with softmax or sigmoid")


def test_huge_declared_sizes_are_refused(tmp_path):
    header, payload = valid_parts(tmp_path)
    name = next(key for key in header if key != "__metadata__")
    header[name]["shape"] = [2**40, 2**40]
    path = tmp_path / "huge-shape.safetensors"
    path.write_bytes(raw_safetensors(header, payload))
    assert_refused(path, "truncated or damaged")
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    assert_refused(path, "not a digitnet model file, or it is truncated")


def test_files_larger_than_any_model_are_refused_unread(tmp_path):
    from digitnet.inference.modelfile import MAX_MODEL_BYTES

    path = tmp_path / "huge.safetensors"
    with path.open("wb") as handle:  # sparse
        handle.truncate(MAX_MODEL_BYTES + 1)
    assert_refused(path, "refused unread")


def test_fifo_and_devices_are_refused_at_once(tmp_path):
    import threading

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    outcome: dict[str, BaseException] = {}

    def load(path) -> None:
        try:
            load_model(path)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome[str(path)] = error

    for path in (str(fifo), "/dev/zero"):
        if not os.path.exists(path):
            continue
        thread = threading.Thread(target=load, args=(path,), daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), f"loading {path} hangs"
        assert isinstance(outcome[path], ModelFileError)
        assert "not a regular file" in str(outcome[path])


# ---------------------------------------------------------------------------------------------
# What the checksum protects, and the signature with a key the user holds


def _edited_and_rechecksummed(tmp_path, source) -> object:
    """``source`` with its accuracy claim raised and its sha256 recomputed."""
    data = source.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    digitnet_header = json.loads(header["__metadata__"]["header"])
    digitnet_header["metrics"]["test_accuracy"] = 0.999
    from safetensors.numpy import load

    tensors = load(data)
    return rechecksummed(tmp_path, json.dumps(digitnet_header), tensors, "edited.safetensors")


def test_the_checksum_alone_does_not_stop_a_deliberate_edit(tmp_path, monkeypatch):
    # What the README and SECURITY.md say: the sha256 detects damage, not an edit.
    monkeypatch.delenv("DIGITNET_MODEL_KEY", raising=False)
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    edited = _edited_and_rechecksummed(tmp_path, path)
    assert load_model(edited).metadata["metrics"]["test_accuracy"] == 0.999


def test_with_a_key_only_files_signed_with_it_load(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITNET_MODEL_KEY", "correct horse battery staple")
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    assert load_model(path).metadata["metrics"]["test_accuracy"] == 0.97
    monkeypatch.delenv("DIGITNET_MODEL_KEY")
    edited = _edited_and_rechecksummed(tmp_path, path)  # the signature is kept, now stale
    load_model(edited)  # without the key, an edit goes unnoticed ...
    monkeypatch.setenv("DIGITNET_MODEL_KEY", "correct horse battery staple")
    assert_refused(edited, "not signed")  # ... with it, the edited file is refused
    monkeypatch.setenv("DIGITNET_MODEL_KEY", "another key of enough length")
    assert_refused(path, "does not carry a valid signature")
    monkeypatch.delenv("DIGITNET_MODEL_KEY")
    unsigned = tmp_path / "unsigned.safetensors"
    save_model(make_model(), unsigned)
    monkeypatch.setenv("DIGITNET_MODEL_KEY", "correct horse battery staple")
    assert_refused(unsigned, "not signed, and DIGITNET_MODEL_KEY is set")


def test_a_signature_copied_onto_an_edited_file_does_not_verify(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITNET_MODEL_KEY", "correct horse battery staple")
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    signature = json.loads(data[8 : 8 + size])["__metadata__"]["hmac_sha256"]
    monkeypatch.delenv("DIGITNET_MODEL_KEY")
    edited = _edited_and_rechecksummed(tmp_path, path)
    _rewrite_metadata(edited, hmac_sha256=signature)
    monkeypatch.setenv("DIGITNET_MODEL_KEY", "correct horse battery staple")
    assert_refused(edited, "does not carry a valid signature")


@pytest.mark.parametrize("field", ["sha256", "hmac_sha256"])
def test_checksums_and_signatures_of_any_text_are_refused(tmp_path, monkeypatch, field):
    monkeypatch.setenv("DIGITNET_MODEL_KEY", "correct horse battery staple")
    path = tmp_path / "model.safetensors"
    save_model(make_model(), path)
    _rewrite_metadata(path, **{field: "é" * 64})
    assert_refused(path, "checksum" if field == "sha256" else "valid signature")


def test_a_short_key_is_a_clear_error(tmp_path, monkeypatch):
    from digitnet.errors import ConfigError

    monkeypatch.setenv("DIGITNET_MODEL_KEY", "short")
    with pytest.raises(ConfigError, match="at least 16"):
        save_model(make_model(), tmp_path / "model.safetensors")
