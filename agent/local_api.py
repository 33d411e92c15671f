"""The local endpoint: applications on the box POST inputs over HTTP and get the model's
answer back, typed as on the `result` topic (top-k labels, detections, areas, ...).

Bound to 127.0.0.1 by default. Bodies are an image (`image/jpeg`, `image/png`: pre-processed
as the bundle's description says), JSON (`{"inputs": [...]}`, the model's tensor) or a NumPy
`.npy` array (`application/x-npy`: uint8 = pixels, float = the tensor). A bad input gets a
4xx with one clear line and never reaches the engine, so it cannot stop the frame loop.

    curl -s localhost:8765/v1/infer -H 'Content-Type: image/jpeg' --data-binary @frame.jpg
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from lepton_edge.agent.results import answer_fields
from lepton_edge.agent.sources import QueueSource

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BATCH = 256


@dataclass(frozen=True)
class ModelInfo:
    variant: str
    input_shape: tuple[int, ...]
    labels: list[str]
    task: str = "classification"
    takes_images: bool = False


IMAGE_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/webp")


class BadInput(ValueError):
    """The request's input cannot be fed to the model; the message says why."""


def parse_image(body: bytes, content_type: str) -> np.ndarray:
    """An image body (or a uint8 .npy) -> pixels (N, H, W, C); raise `BadInput`."""
    if content_type.startswith("application/x-npy"):
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BadInput(f"body is not a .npy array: {exc}") from None
    else:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:
            raise BadInput("image bodies need Pillow on the box: pip install pillow") from None
        try:
            with Image.open(io.BytesIO(body)) as img:
                arr = np.asarray(img.convert("L" if img.mode in ("L", "I;16") else "RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise BadInput(f"body is not a readable {content_type} image: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[3] not in (1, 3) or 0 in arr.shape:
        raise BadInput(
            f"image of shape {'x'.join(map(str, arr.shape))} not accepted: send height x "
            "width x 3 (RGB) or height x width (grey) pixels"
        )
    if not 1 <= len(arr) <= MAX_BATCH:
        raise BadInput(f"batch of {len(arr)} not accepted: send 1 to {MAX_BATCH} images")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _is_pixels(body: bytes, content_type: str) -> bool:
    if content_type.startswith(IMAGE_TYPES):
        return True
    if content_type.startswith("application/x-npy"):
        try:
            return bool(np.load(io.BytesIO(body), allow_pickle=False).dtype == np.uint8)
        except (ValueError, OSError, EOFError):
            return False
    return False


def parse_inputs(body: bytes, content_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """Request body -> float32 batch (N, *shape); raise `BadInput` naming what is wrong."""
    if content_type.startswith("application/x-npy"):
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BadInput(f"body is not a .npy array: {exc}") from None
        if arr.dtype.kind != "f":
            raise BadInput(
                f"dtype {arr.dtype} not accepted: send uint8 pixels or the model's float tensor"
            )
    elif content_type.startswith("application/json") or not content_type:
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput(f"body is not JSON: {exc}") from None
        if not isinstance(doc, dict) or "inputs" not in doc:
            raise BadInput('JSON body must be an object with "inputs": a nested list of numbers')
        try:
            arr = np.asarray(doc["inputs"], dtype=np.float32)
        except (ValueError, TypeError):
            raise BadInput(
                '"inputs" must be a rectangular nested list of numbers (no strings, no ragged rows)'
            ) from None
    else:
        raise BadInput(f"content type {content_type!r} not accepted: use application/json or .npy")
    want = "x".join(map(str, shape))
    if arr.shape == shape:
        arr = arr[None]
    elif shape[-1] == 1 and arr.shape == shape[:-1]:  # one image without its channel axis
        arr = arr[None, ..., None]
    elif arr.shape[1:] == shape[:-1] and shape[-1] == 1 and arr.ndim == len(shape):
        arr = arr[..., None]
    elif arr.shape[1:] != shape:
        raise BadInput(
            f"input shape {'x'.join(map(str, arr.shape)) or 'scalar'} does not fit the model: "
            f"send one {want} sample or a batch N x {want}"
        )
    if not 1 <= len(arr) <= MAX_BATCH:
        raise BadInput(f"batch of {len(arr)} not accepted: send 1 to {MAX_BATCH} samples")
    if not np.isfinite(arr).all():
        raise BadInput("inputs contain NaN or infinity")
    return np.ascontiguousarray(arr, dtype=np.float32)


class LocalEndpoint:
    """A small threaded HTTP server feeding a `QueueSource`."""

    def __init__(
        self,
        source: QueueSource,
        model: Callable[[], ModelInfo | None],
        host: str = "127.0.0.1",
        port: int = 8765,
        timeout_s: float = 10.0,
    ) -> None:
        self.source = source
        self.model = model
        self.timeout_s = timeout_s
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{self.port}"

    def start(self) -> LocalEndpoint:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lepton-local-api", daemon=True
        )
        self._thread.start()
        log.info("local endpoint on %s/v1/infer", self.url)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def infer(self, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        """Handle one request; (HTTP status, JSON document)."""
        info = self.model()
        if info is None:
            return 503, {"error": "no model is active yet: deploy a bundle first"}
        try:
            if _is_pixels(body, content_type):
                if not info.takes_images:
                    raise BadInput(
                        f"this {info.task} model takes a tensor, not an image: send its input "
                        f"{'x'.join(map(str, info.input_shape))} as JSON or float .npy"
                    )
                batch, image = None, parse_image(body, content_type)
            else:
                batch, image = parse_inputs(body, content_type, info.input_shape), None
        except BadInput as exc:
            return 400, {"error": str(exc)}
        try:
            result = self.source.submit(batch, self.timeout_s, image=image)
        except queue.Full:
            return 503, {"error": "engine busy: too many requests queued, retry shortly"}
        except TimeoutError as exc:
            return 504, {"error": str(exc)}
        if result.error is not None or result.scores is None:
            return 422, {"error": result.error, "variant": result.variant}
        doc: dict[str, Any] = {
            "variant": result.variant,
            "task": info.task,
            "latency_ms": round(result.latency_s * 1e3, 4),
        }
        if result.pipeline is not None:
            doc["results"] = [
                {k: _plain(v) for k, v in answer_fields(a, result.pipeline).items()}
                for a in result.answers
            ]
        if info.task == "classification" and result.scores.ndim == 2:
            top1 = result.scores.argmax(1).tolist()
            doc["scores"] = result.scores.tolist()
            doc["top1"] = top1
            if info.labels:
                doc["labels"] = [info.labels[i] if i < len(info.labels) else str(i) for i in top1]
        return 200, doc

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("local api: " + format, *args)

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._send(200, {"status": "ok"})
                elif self.path == "/v1/model":
                    info = endpoint.model()
                    if info is None:
                        self._send(503, {"error": "no model is active yet"})
                    else:
                        self._send(
                            200,
                            {
                                "variant": info.variant,
                                "input_shape": list(info.input_shape),
                                "input_dtype": "float32",
                                "labels": info.labels,
                                "task": info.task,
                                "takes_images": info.takes_images,
                            },
                        )
                else:
                    self._send(404, {"error": f"no such path {self.path}: use POST /v1/infer"})

            def do_POST(self) -> None:
                if self.path != "/v1/infer":
                    self._send(404, {"error": f"no such path {self.path}: use POST /v1/infer"})
                    return
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    self._send(411, {"error": "Content-Length required"})
                    return
                if length > MAX_BODY_BYTES:
                    self.close_connection = True
                    self._send(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                    return
                body = self.rfile.read(length)
                ctype = self.headers.get("Content-Type", "").lower()
                try:
                    status, doc = endpoint.infer(body, ctype)
                except Exception as exc:
                    log.exception("local endpoint failed")
                    status, doc = 500, {"error": f"internal error: {exc}"}
                self._send(status, doc)

        return Handler


def _plain(value: Any) -> Any:
    """Pydantic pieces of a result as JSON-ready data."""
    if isinstance(value, list):
        return [v.model_dump() if hasattr(v, "model_dump") else v for v in value]
    return value
