"""``/report`` on a running server: built once on first request, cached, only its files."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image

from digitnet.serving.routes.report import report_directory
from test_server import RunningServer, random_seed_model


@pytest.fixture()
def report_server(fake_mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITNET_DATA_DIR", str(fake_mnist_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = random_seed_model()
    with RunningServer(model) as running:
        yield running, model


def test_report_is_built_on_first_request_then_served_from_the_cache(report_server):
    server, model = report_server
    with httpx.Client(base_url=server.url, timeout=120) as http:
        redirect = http.get("/report")
        assert redirect.status_code == 307 and redirect.headers["location"] == "/report/"
        page = http.get("/report/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src" not in page.headers["content-security-policy"]
        listing = http.get("/report/report.json").json()
        # The counts are of this model on the fake test set: its official split, 20 images.
        assert sum(map(sum, listing["test"]["confusion_matrix"])) == 20
        for figure in listing["figures"].values():
            assert figure["file"] in page.text
            png = http.get(f"/report/{figure['file']}")
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            with Image.open(io.BytesIO(png.content)) as image:
                assert image.size == (figure["width"], figure["height"])

        cached = report_directory(model) / "index.html"
        built_at = cached.stat().st_mtime_ns
        assert http.get("/report/").status_code == 200
        assert cached.stat().st_mtime_ns == built_at  # not built again

        for name in ("../report.json", "secret.txt", "%2e%2e%2fetc%2fpasswd", "index.htm"):
            answer = http.get(f"/report/{name}")
            assert answer.status_code == 404, name
            assert "error" in answer.json()


def test_report_without_mnist_answers_503_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITNET_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with RunningServer(random_seed_model(1)) as server:
        answer = httpx.get(f"{server.url}/report/", timeout=60)
    assert answer.status_code == 503
    assert "MNIST test set" in json.loads(answer.text)["error"]
