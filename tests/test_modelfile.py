"""Model files: round trip, and a clear refusal of truncated, tampered, foreign and future files."""

from __future__ import annotations

import json
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
