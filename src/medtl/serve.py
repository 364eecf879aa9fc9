"""``medtl serve``: a finished run or its export behind a small HTTP API (FastAPI + uvicorn).

Endpoints:

- ``POST /v1/predict``: one or several images as multipart uploads (PNG, JPEG or DICOM, told apart by
  their first bytes, never by the name). A multi-frame DICOM gives one result per frame, plus the
  volume's aggregate when the run evaluates at patient level. Each result holds the calibrated
  probabilities and the decision at the run's stored operating point; ``?cam=1`` adds a Grad-CAM
  overlay PNG (base64; served runs only, an exported graph has no gradients).
- ``GET /v1/model``: the model card (:func:`medtl.report.card.card_data`) and the graph's contract.
- ``GET /healthz`` and ``GET /metrics`` (Prometheus text: requests, latency, errors, batch sizes).

Bad input is answered with a 4xx and ``{"error": "..."}`` naming the upload (never a server path or
a traceback): a body over ``max_bytes`` (413), a file that is not PNG/JPEG/DICOM (415), a truncated or
corrupt image, a DICOM without pixel data or with an unsupported number of channels (422), more pixels
than ``max_pixels`` (a decompression bomb, 413). No endpoint reads a server-side path.

Concurrent requests are micro-batched: each image joins an asyncio queue; a batcher waits up to
``max_wait_ms`` for more (at most ``max_batch``) and runs the batch in one worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from medtl.config import DicomConfig
from medtl.data.dicom import iter_frames
from medtl.data.images import to_array
from medtl.errors import DataError
from medtl.evaluate.aggregate import aggregate_scores
from medtl.evaluate.metrics import predict_classes
from medtl.export import LoadedGraph, first_model, graph_input, load_graph

log = logging.getLogger(__name__)

PNG_MAGIC, JPEG_MAGIC, DICOM_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"DICM"
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
ACCEPTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
"""PIL modes :func:`medtl.data.images.to_array` turns into grey or RGB; others (CMYK, ...) are refused."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
ENDPOINTS = ("/v1/predict", "/v1/model", "/healthz", "/metrics")


@dataclass(frozen=True)
class ServeOptions:
    """Limits and batching of the server.

    Attributes:
        max_bytes: Largest request body (413 above).
        max_files: Most uploads in one request.
        max_pixels: Most pixels of one upload (a DICOM: rows x columns x frames); more is a decompression bomb.
        max_wait_ms: How long the batcher waits for more images once it holds one.
        max_batch: Most images in one forward pass.
        threads: Intra-op threads of onnxruntime (None: its default).
    """

    max_bytes: int = 32 * 2**20
    max_files: int = 32
    max_pixels: int = 50_000_000
    max_wait_ms: float = 5.0
    max_batch: int = 32
    threads: int | None = None


class BadInput(Exception):
    """A request the server refuses: HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------- decoding uploads


@dataclass
class Decoded:
    """One image of an upload, decoded and resized per the contract."""

    file: str
    kind: str
    frame: int | None
    pixels: np.ndarray


def sniff(data: bytes) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` from the first bytes (DICOM: ``DICM`` at offset 128), else None."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[128:132] == DICOM_MAGIC:
        return "dicom"
    return None


def decode_upload(name: str, data: bytes, spec: dict[str, Any], options: ServeOptions) -> list[Decoded]:
    """The images of one upload (a DICOM: one per frame), as uint8 arrays of the contract's size and colour.

    Raises:
        BadInput: Not PNG/JPEG/DICOM (415), too many pixels (413), undecodable or unsupported (422).
    """
    kind = sniff(data)
    if kind is None:
        raise BadInput(415, f"{name}: not a PNG, JPEG or DICOM file (the content is checked, not the name)")
    if kind == "dicom":
        return _decode_dicom(name, data, spec, options)
    return [Decoded(name, kind, None, _resize(_decode_picture(name, kind, data, options), spec))]


def _resize(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    pre = spec["preprocessing"]
    return to_array(img, pre["image_size"], pre["color"], pre["resize"], pre.get("crop", "none"))


def _decode_picture(name: str, kind: str, data: bytes, options: ServeOptions) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[kind]])
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise BadInput(422, f"{name}: starts like a {kind.upper()} file but its header cannot be read") from None
    width, height = img.size
    if width * height > options.max_pixels:
        raise BadInput(413, f"{name}: {width}x{height} pixels is more than the server's limit of "
                            f"{options.max_pixels} (a decompression bomb?); send a smaller image")
    if img.mode not in ACCEPTED_MODES:
        raise BadInput(422, f"{name}: {kind.upper()} in mode {img.mode} ({len(img.getbands())} channels); "
                            "send a grey or RGB image")
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(422, f"{name}: the {kind.upper()} data is truncated or corrupt ({exc})") from None
    return img


def _decode_dicom(name: str, data: bytes, spec: dict[str, Any], options: ServeOptions) -> list[Decoded]:
    import pydicom

    from medtl.data.dicom import DICOM_ERRORS

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except DICOM_ERRORS:
        raise BadInput(422, f"{name}: a DICOM file whose header cannot be read") from None
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    if samples not in (1, 3):
        raise BadInput(422, f"{name}: DICOM with {samples} samples per pixel; the model takes grey (1) or "
                            "colour (3) images")
    frames = _int(header.get("NumberOfFrames", 1)) or 1
    pixels = _int(header.get("Rows", 0)) * _int(header.get("Columns", 0)) * frames
    if pixels > options.max_pixels:
        raise BadInput(413, f"{name}: {frames} frame(s) of {header.get('Rows')}x{header.get('Columns')} pixels is "
                            f"more than the server's limit of {options.max_pixels} pixels; send fewer frames")
    cfg = DicomConfig(**(spec["preprocessing"].get("dicom") or {}))
    try:
        decoded = [(f.index, _resize(f.image, spec)) for f in iter_frames(_Named(data, name), None, cfg)]
    except DataError as exc:
        reason = "no pixel data" if "no pixel data" in str(exc).lower() else "pixel data cannot be decoded"
        raise BadInput(422, f"{name}: DICOM with {reason}; send a DICOM image with its pixel data") from None
    except (KeyError, ValueError, OSError) as exc:
        raise BadInput(422, f"{name}: DICOM pixels cannot be converted ({type(exc).__name__})") from None
    if not decoded:
        raise BadInput(422, f"{name}: DICOM with no frames")
    return [Decoded(name, "dicom", index if frames > 1 else None, arr) for index, arr in decoded]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class _Named(io.BytesIO):
    """An upload's bytes whose ``str`` is the upload's name (pydicom and medtl messages name their source)."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name

    def __str__(self) -> str:
        return self.label


# ---------------------------------------------------------------- metrics


class Metrics:
    """Counters and histograms, rendered in the Prometheus text format by hand."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.errors: Counter[int] = Counter()
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.batch = _Histogram(BATCH_BUCKETS)
        self.images = 0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests[(endpoint, status)] += 1
        if status >= 400:
            self.errors[status] += 1
        if endpoint == "/v1/predict":
            self.latency.observe(seconds)

    def render(self) -> str:
        """The Prometheus text exposition."""
        lines = ["# HELP medtl_requests_total HTTP requests by endpoint and status code.",
                 "# TYPE medtl_requests_total counter"]
        lines += [f'medtl_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in
                  sorted(self.requests.items())]
        lines += ["# HELP medtl_errors_total Requests answered with an error, by status code.",
                  "# TYPE medtl_errors_total counter"]
        lines += [f'medtl_errors_total{{status="{s}"}} {n}' for s, n in sorted(self.errors.items())]
        lines += ["# HELP medtl_images_total Images predicted.", "# TYPE medtl_images_total counter",
                  f"medtl_images_total {self.images}"]
        lines += self.latency.lines("medtl_predict_latency_seconds", "Latency of POST /v1/predict.")
        lines += self.batch.lines("medtl_batch_size", "Images per forward pass (micro-batching).")
        return "\n".join(lines) + "\n"


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, help_text: str) -> list[str]:
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{edge:g}"}} {c}' for edge, c in zip(self.buckets, self.counts, strict=True)]
        return [*out, f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]


# ---------------------------------------------------------------- micro-batching


class Batcher:
    """Collects single images from concurrent requests into batches run in one worker thread.

    Args:
        run: Maps a float32 batch ``(N, 3, S, S)`` to probabilities ``(N, K)``.
        executor: The one worker thread (shared with Grad-CAM, so the model runs one thing at a time).
        options: ``max_batch`` and ``max_wait_ms``.
        metrics: Records each batch's size.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], executor: ThreadPoolExecutor, options: ServeOptions,
                 metrics: Metrics) -> None:
        self.run, self.executor, self.options, self.metrics = run, executor, options, metrics
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    def _ensure(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self.task is None or self.task.done():
            self.loop, self.queue = loop, asyncio.Queue()
            self.task = loop.create_task(self._serve(self.queue))
        assert self.queue is not None
        return self.queue

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(K,)`` of one normalised image ``(3, S, S)``."""
        future = asyncio.get_running_loop().create_future()
        await self._ensure().put((x, future))
        return await future

    async def stop(self) -> None:
        """Cancel the batching task."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    async def _serve(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            deadline = loop.time() + self.options.max_wait_ms / 1000.0
            while len(items) < self.options.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            await self._run_batch(items)

    async def _run_batch(self, items: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        batch = np.stack([x for x, _ in items])
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, batch)
        except Exception as exc:  # noqa: BLE001  (handed to every waiting request, which answers 500)
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        self.metrics.batch.observe(len(items))
        self.metrics.images += len(items)
        for (_, future), p in zip(items, probs, strict=True):
            if not future.done():
                future.set_result(p)


# ---------------------------------------------------------------- the service


class Service:
    """The loaded graph, its batcher, metrics and the logic of each endpoint (independent of FastAPI)."""

    def __init__(self, graph: LoadedGraph, options: ServeOptions) -> None:
        self.graph, self.options = graph, options
        self.spec = graph.contract
        self.metrics = Metrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtl-infer")
        self.batcher = Batcher(graph.run, self.executor, options, self.metrics)

    @property
    def model(self) -> dict[str, Any]:
        """Identity of the served model."""
        return {"id": self.spec["model_id"], "sha256": self.graph.sha256, "kind": self.graph.kind,
                "medtl_version": self.spec.get("medtl_version")}

    async def predict(self, uploads: list[tuple[str, bytes]], cam: bool) -> dict[str, Any]:
        """The JSON answer of ``POST /v1/predict`` for ``(name, bytes)`` uploads."""
        started = time.perf_counter()
        if not uploads:
            raise BadInput(400, "no files: send one or more images as multipart/form-data (field 'file')")
        if len(uploads) > self.options.max_files:
            raise BadInput(413, f"{len(uploads)} files in one request; the server takes at most "
                                f"{self.options.max_files}")
        if cam and first_model(self.graph) is None:
            raise BadInput(400, "cam=1 needs the model's gradients: serve the run directory, not an exported graph")
        decoded = [d for name, data in uploads for d in decode_upload(name, data, self.spec, self.options)]
        x = graph_input(np.stack([d.pixels for d in decoded]), self.spec)
        probs = await asyncio.gather(*(self.batcher.submit(row) for row in x))
        results = [self._result(d, p) for d, p in zip(decoded, probs, strict=True)]
        if cam:
            maps = await asyncio.get_running_loop().run_in_executor(self.executor, self._cams, x, decoded, results)
            for result, png in zip(results, maps, strict=True):
                result["cam_png_base64"] = png
        return {"model": self.model, "threshold": self.spec["threshold"],
                "positive_class": self.spec["positive_class"], "results": results,
                "volumes": self._volumes(decoded, probs),
                "latency_ms": round((time.perf_counter() - started) * 1000.0, 3)}

    def _decide(self, p: np.ndarray) -> str:
        index = int(predict_classes(np.asarray(p)[None, :], self.spec["positive_index"], self.spec["threshold"])[0])
        return self.spec["class_names"][index]

    def _result(self, d: Decoded, p: np.ndarray) -> dict[str, Any]:
        names = self.spec["class_names"]
        return {"file": d.file, "kind": d.kind, "frame": d.frame,
                "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)}, "decision": self._decide(p)}

    def _volumes(self, decoded: list[Decoded], probs: list[np.ndarray]) -> list[dict[str, Any]]:
        """Per multi-frame DICOM, its frames aggregated as the run aggregates a patient's images."""
        level = self.spec.get("patient_level")
        if not level:
            return []
        frames: dict[str, list[np.ndarray]] = {}
        for d, p in zip(decoded, probs, strict=True):
            if d.frame is not None:
                frames.setdefault(d.file, []).append(p)
        out = []
        for file, rows in frames.items():
            agg = aggregate_scores(np.stack(rows), level.get("method", "mean"), level.get("k", 3))
            agg = agg / agg.sum()
            out.append({"file": file, "frames": len(rows), "method": level.get("method", "mean"),
                        "probabilities": {n: float(v) for n, v in zip(self.spec["class_names"], agg, strict=True)},
                        "decision": self._decide(agg)})
        return out

    def _cams(self, x: np.ndarray, decoded: list[Decoded], results: list[dict[str, Any]]) -> list[str]:
        import torch

        from medtl.evaluate.cam import grad_cam, overlay

        model = first_model(self.graph)
        assert model is not None
        targets = [self.spec["class_names"].index(r["decision"]) for r in results]
        maps = grad_cam(model, torch.from_numpy(x), targets)
        pngs = []
        for d, m in zip(decoded, maps, strict=True):
            buf = io.BytesIO()
            Image.fromarray(overlay(d.pixels, m)).save(buf, format="PNG")
            pngs.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        return pngs

    def card(self) -> dict[str, Any]:
        """``GET /v1/model``: the model card and the contract (without the card twice)."""
        contract = {k: v for k, v in self.spec.items() if k != "card"}
        return {"model": self.model, "card": self.spec.get("card"), "contract": contract}


# ---------------------------------------------------------------- the ASGI application


class _Guard:
    """ASGI middleware: refuses bodies over ``max_bytes`` (413) and records every request in the metrics."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        limit = self.service.options.max_bytes

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        try:
            if not length.isdigit() or int(length) > limit:
                await _send_json(counted_send, 413, {"error": f"request body over the server's limit of {limit} "
                                                              "bytes; send fewer or smaller files"})
            else:
                await self.app(scope, _limited(receive, limit), counted_send)
        finally:
            self.service.metrics.request(endpoint, status[0], time.perf_counter() - started)


def _limited(receive: Callable, limit: int) -> Callable:
    """``receive`` that raises a 413 :class:`BadInput` once more than ``limit`` body bytes arrived."""
    seen = [0]

    async def inner() -> dict:
        message = await receive()
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise BadInput(413, f"request body over the server's limit of {limit} bytes; send fewer or "
                                    "smaller files")
        return message

    return inner


async def _send_json(send: Callable, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(source: Path, options: ServeOptions | None = None) -> _Guard:
    """The FastAPI application serving a run directory, an export folder or an exported graph file.

    Args:
        source: What :func:`medtl.export.load_graph` takes.
        options: Limits and batching (defaults: :class:`ServeOptions`).

    Raises:
        MedtlError: ``source`` cannot be served (the message says what to pass).
    """
    service = Service(load_graph(Path(source), (options or ServeOptions()).threads), options or ServeOptions())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await service.batcher.stop()
        service.executor.shutdown(wait=False)

    app = FastAPI(title="medtl", version=str(service.spec.get("medtl_version")), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(BadInput)
    async def _bad(_request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {exc.errors()[0].get('msg', '')}"}, status_code=422)

    @app.post("/v1/predict")
    async def predict(request: Request, cam: int = 0) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadInput(415, "send the images as multipart/form-data (field 'file', one or more)")
        try:
            form = await request.form(max_files=service.options.max_files + 1, max_fields=16)
            uploads = [(v.filename or f"upload{i}", await v.read()) for i, (_, v) in enumerate(form.multi_items())
                       if isinstance(v, UploadFile)]
            await form.close()
            return JSONResponse(await service.predict(uploads, bool(cam)))
        except (BadInput, HTTPException):
            raise
        except Exception:  # noqa: BLE001  (logged here; the client gets no traceback and no path)
            log.exception("POST /v1/predict failed")
            return JSONResponse({"error": "internal error while predicting; see the server log"}, status_code=500)

    @app.get("/v1/model")
    async def model() -> JSONResponse:
        return JSONResponse(service.card())

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "model": service.model})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    return _Guard(app, service)


def run_server(source: Path, host: str = "127.0.0.1", port: int = 8000, options: ServeOptions | None = None) -> None:
    """Serve ``source`` with uvicorn until interrupted."""
    import uvicorn

    app = create_app(source, options)
    log.info("serving %s on http://%s:%d", app.service.spec["model_id"], host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
