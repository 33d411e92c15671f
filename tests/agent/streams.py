"""An HTTP MJPEG camera on loopback (multipart/x-mixed-replace, as IP cameras serve it),
which can be stopped and started again to test reconnecting."""

from __future__ import annotations

import http.server
import threading
import time

import numpy as np

from lepton_edge.agent.results import jpeg_encoder


def jpeg(image: np.ndarray) -> bytes:
    """One RGB frame as JPEG bytes (an MJPEG stream's part), by the agent's own encoder."""
    encode = jpeg_encoder()
    assert encode is not None, "PyAV is part of the test extra"
    return encode(np.ascontiguousarray(image))


class MjpegCamera:
    def __init__(self, parts: list[bytes], fps: float = 30.0, port: int = 0) -> None:
        self.parts = parts
        self.fps = fps
        self.port = port
        self.served = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video.mjpg"

    def start(self) -> MjpegCamera:
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while camera._server is not None:
                        part = camera.parts[i % len(camera.parts)]
                        head = (
                            b"--frame\r\nContent-Type: image/jpeg\r\n"
                            + f"Content-Length: {len(part)}\r\n\r\n".encode()
                        )
                        self.wfile.write(head + part + b"\r\n")
                        camera.served += 1
                        i += 1
                        time.sleep(1 / camera.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
