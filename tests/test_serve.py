"""`medtl serve`: every endpoint and every bad input through FastAPI's TestClient, and one real uvicorn process.

The fast tests serve a fabricated run (:func:`report.conftest.make_run`: random-initialised
EfficientNet-Lite0 folds on synthetic 64 px images); the served probabilities are checked against
:func:`medtl.predict.predict_files`. DICOM inputs are pydicom's own test files.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

from medtl import rundir
from medtl.errors import MedtlError
from medtl.predict import predict_files
from medtl.serve import ServeOptions, create_app, sniff

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from report.conftest import make_run

    run_dir = make_run(tmp_path_factory.mktemp("serve"), val=True)
    rundir.mark_complete(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def client(run: Path):
    app = create_app(run, ServeOptions(max_bytes=600_000, max_pixels=4_000_000, max_files=4, max_wait_ms=2))
    with TestClient(app) as c:
        yield c


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _image_files(run: Path) -> list[Path]:
    return sorted((run.parent / "images").rglob("*.png"))[:3]


def _post(client: TestClient, files: list[tuple[str, bytes]], **params: str):
    return client.post("/v1/predict", params=params, files=[("file", (n, d, "application/octet-stream"))
                                                            for n, d in files])


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert "Traceback" not in body["error"] and "/tmp" not in body["error"] and "/work" not in body["error"]
    return body["error"]


# ---------------------------------------------------------------- endpoints


def test_predict_matches_medtl_predict(client: TestClient, run: Path) -> None:
    files = _image_files(run)
    # names say JPEG and DICOM: the content decides
    response = _post(client, [(f"scan{i}.dcm" if i else "x.jpg", f.read_bytes()) for i, f in enumerate(files)])
    assert response.status_code == 200, response.text
    body = response.json()
    expected = predict_files(run, files)
    assert len(body["results"]) == len(files)
    for got, want in zip(body["results"], expected, strict=True):
        assert got["kind"] == "png"
        assert abs(got["probabilities"]["yes"] - want["prob_yes"]) <= 1e-5
        assert got["decision"] == want["pred"]
    assert body["model"]["id"] == "fabricated" and re.fullmatch(r"[0-9a-f]{64}", body["model"]["sha256"])
    assert body["threshold"] == 0.5 and body["latency_ms"] > 0


def test_jpeg_and_dicom_frames(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(buf, format="JPEG")
    emri = Path(get_testdata_file("emri_small.dcm")).read_bytes()  # 10 frames
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    body = _post(client, [("a.png", buf.getvalue()), ("vol", emri), ("ct", ct)]).json()
    kinds = [(r["kind"], r["frame"]) for r in body["results"]]
    assert kinds == [("jpeg", None), *[("dicom", i) for i in range(10)], ("dicom", None)]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in body["results"])


def test_cam_overlay(client: TestClient, run: Path) -> None:
    body = _post(client, [("a", _image_files(run)[0].read_bytes())], cam="1").json()
    png = base64.b64decode(body["results"][0]["cam_png_base64"])
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_model_card_health_and_metrics(client: TestClient) -> None:
    model = client.get("/v1/model").json()
    assert model["card"]["name"] == "fabricated" and model["contract"]["class_names"] == ["no", "yes"]
    assert model["card"]["metrics"]["auc"]["ci95"] is not None
    assert client.get("/healthz").json()["status"] == "ok"
    text = client.get("/metrics").text
    assert 'medtl_requests_total{endpoint="/v1/model",status="200"} 1' in text
    assert "# TYPE medtl_batch_size histogram" in text and "medtl_predict_latency_seconds_count" in text


def test_concurrent_requests_are_batched(run: Path) -> None:
    app = create_app(run, ServeOptions(max_wait_ms=200, max_batch=8))
    data = _image_files(run)[0].read_bytes()

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            responses = await asyncio.gather(*(c.post("/v1/predict", files={"file": ("a", data)}) for _ in range(6)))
            metrics = (await c.get("/metrics")).text
        assert all(r.status_code == 200 for r in responses)
        return [int(m) for m in re.findall(r'medtl_batch_size_bucket\{le="1"\} (\d+)', metrics)]

    singles = asyncio.run(burst())
    assert singles == [0] or singles[0] < 6, "six concurrent one-image requests ran as six batches"


# ---------------------------------------------------------------- bad input


def test_too_large_body(client: TestClient) -> None:
    assert "limit of 600000 bytes" in _error(_post(client, [("big", b"\x89PNG\r\n\x1a\n" + bytes(700_000))]), 413)


def test_too_large_without_content_length(client: TestClient, run: Path) -> None:
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"
        for _ in range(20):
            yield bytes(50_000)

    response = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert "limit" in _error(response, 413)


@pytest.mark.parametrize(("name", "data", "status", "phrase"), [
    ("notes.png", b"just some text, not an image", 415, "not a PNG, JPEG or DICOM"),
    ("gif.png", b"GIF89a" + bytes(100), 415, "not a PNG, JPEG or DICOM"),
    ("empty.png", b"", 415, "not a PNG, JPEG or DICOM"),
    ("head.png", b"\x89PNG\r\n\x1a\n" + bytes(40), 422, "header cannot be read"),
])
def test_not_an_image(client: TestClient, name: str, data: bytes, status: int, phrase: str) -> None:
    assert phrase in _error(_post(client, [(name, data)]), status)


def test_truncated_png_and_jpeg(client: TestClient) -> None:
    png = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert "truncated or corrupt" in _error(_post(client, [("cut.png", png[: len(png) // 2])]), 422)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    message = _error(_post(client, [("cut.jpg", buf.getvalue()[:300])]), 422)
    assert "cut.jpg" in message


def test_decompression_bomb(client: TestClient) -> None:
    bomb = _png(np.zeros((3000, 3000), dtype=np.uint8))  # 9 Mpixel of zeros: a few kB
    assert len(bomb) < 100_000
    assert "decompression bomb" in _error(_post(client, [("bomb.png", bomb)]), 413)


def test_dicom_bomb(client: TestClient) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.NumberOfFrames = 400  # 400 x 128 x 128 > 4 Mpixel, announced in the header
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert "limit of 4000000 pixels" in _error(_post(client, [("many.dcm", buf.getvalue())]), 413)


def test_dicom_without_pixels(client: TestClient) -> None:
    data = Path(get_testdata_file("rtplan.dcm")).read_bytes()
    assert sniff(data) == "dicom"
    assert "rtplan.dcm: DICOM with no pixel data" in _error(_post(client, [("rtplan.dcm", data)]), 422)


def test_wrong_channels(client: TestClient) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SamplesPerPixel = 4
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert "4 samples per pixel" in _error(_post(client, [("four.dcm", buf.getvalue())]), 422)
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 32)).save(cmyk, format="JPEG")
    assert "mode CMYK" in _error(_post(client, [("cmyk.jpg", cmyk.getvalue())]), 422)


def test_request_shape_errors(client: TestClient, run: Path) -> None:
    assert "multipart/form-data" in _error(client.post("/v1/predict", json={"path": "/etc/passwd"}), 415)
    assert "multipart/form-data" in _error(client.post("/v1/predict", data={"path": "/etc/passwd"}), 415)
    field_only = b'--b\r\nContent-Disposition: form-data; name="path"\r\n\r\n/etc/passwd\r\n--b--\r\n'
    response = client.post("/v1/predict", content=field_only,
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert "no files" in _error(response, 400)
    data = _image_files(run)[0].read_bytes()
    assert "at most 4" in _error(_post(client, [(f"f{i}", data) for i in range(5)]), 413)
    assert _error(client.get("/v1/nothing"), 404)
    assert _error(client.get("/v1/predict"), 405)


def test_cam_needs_gradients(run: Path, tmp_path: Path) -> None:
    from medtl.export import export_run

    graph = export_run(run, "torchscript", tmp_path).graph
    with TestClient(create_app(graph)) as c:
        data = _image_files(run)[0].read_bytes()
        assert _post(c, [("a", data)]).status_code == 200
        assert "serve the run directory" in _error(_post(c, [("a", data)], cam="1"), 400)


def test_unservable_source(tmp_path: Path) -> None:
    with pytest.raises(MedtlError, match="not a finished run directory, an export folder"):
        create_app(tmp_path / "missing")
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    with pytest.raises(MedtlError, match="onnxruntime cannot load it"):
        create_app(tmp_path / "m.onnx")


# ---------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_process_batches_concurrent_requests(run: Path) -> None:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", "from medtl.cli import app; app()", "serve", str(run), "--port", str(port),
           "--max-wait-ms", "100", "--max-batch", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        data = _image_files(run)[0].read_bytes()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"{base}/v1/predict", files={"file": ("a", data)},
                                                       timeout=60).status_code, range(8)))
        assert codes == [200] * 8
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        count = int(re.search(r"medtl_batch_size_count (\d+)", metrics).group(1))
        assert 1 <= count < 8, f"8 concurrent requests ran in {count} batches"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
