"""``gpunet serve``: a page to draw a digit on, and the network's answer as you draw.

Standard library only: a ThreadingHTTPServer with two routes.

    GET  /          the drawing page (gpunet/frontends/static/draw.html, self-contained)
    POST /predict   {"image": "data:image/png;base64,..."}  ->
                    {"label": 7, "probabilities": [10 floats], "pixels": [784 ints]}

The drawing goes through :func:`gpunet.frontends.images.prepare_digit`, the same preparation
as ``predict --image``; ``pixels`` is the prepared 28x28 digit the network saw.
A request the server cannot use gets a 4xx status with {"error": "..."} and the
server carries on: a body over MAX_BODY bytes is refused without being parsed.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from gpunet.errors import GpunetError
from gpunet.frontends.images import ImageError, ImageTooLarge, NoDigit, prepare_digit, read_image

MAX_BODY = 1 << 20  # bytes; a 280x280 canvas as PNG is 5-40 KB
MAX_PIXELS = 2048 * 2048  # a posted image larger than this is refused before decoding
DRAIN_LIMIT = 16 * MAX_BODY  # a refused body up to this size is read and dropped
SOCKET_TIMEOUT = 10  # seconds a client may stall mid-request


class RequestError(Exception):
    """A request the page cannot answer: sent back as a JSON error with its HTTP status."""
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def page() -> bytes:
    """The drawing page's HTML (gpunet/frontends/static/draw.html)."""
    return (resources.files("gpunet.frontends") / "static" / "draw.html").read_bytes()


def predict_drawing(network, payload) -> dict:
    """The answer to one POST /predict body (already parsed JSON); RequestError when unusable."""
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        raise RequestError(HTTPStatus.BAD_REQUEST, 'expected a JSON object {"image": "data:image/png;base64,..."}')
    image = decode_data_url(payload["image"])
    try:
        pixels = prepare_digit(read_image(image, "drawing", max_pixels=MAX_PIXELS), "drawing")
    except ImageTooLarge as error:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error)) from None
    except NoDigit as error:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, str(error)) from None
    except ImageError as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(error)) from None
    probs = network.probabilities(pixels[None, :])[0]
    return {"label": int(probs.argmax()), "probabilities": [round(float(p), 6) for p in probs],
            "pixels": pixels.tolist()}


def decode_data_url(text: str) -> bytes:
    """The bytes of a base64 data URL (or of bare base64)."""
    header, comma, data = text.partition(",")
    if comma:
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise RequestError(HTTPStatus.BAD_REQUEST, "image must be a base64 data URL of an image")
    else:
        data = header
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(HTTPStatus.BAD_REQUEST, "image is not valid base64") from None


class Handler(BaseHTTPRequestHandler):
    """Answers GET / (the page) and POST /predict (a drawing -> probabilities)."""
    server_version = "gpunet"
    timeout = SOCKET_TIMEOUT
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        """The drawing page, or 404."""
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self.send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self.send(HTTPStatus.NO_CONTENT, b"", None)
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

    def do_POST(self) -> None:
        """A drawn digit in, the network's label and probabilities out (JSON)."""
        try:
            if self.path.split("?", 1)[0] != "/predict":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {self.path}; POST to /predict")
            body = self.read_body()
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, ValueError):
                raise RequestError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
            answer = predict_drawing(self.server.network, payload)
        except RequestError as error:
            self.send_json(error.status, {"error": str(error)})
            return
        except Exception:  # a bug: say so to the page, log it, keep serving
            self.log_error("error answering %s:\n%s", self.path, traceback.format_exc())
            self.close_connection = True
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the server's log)"})
            return
        self.send_json(HTTPStatus.OK, answer)

    def read_body(self) -> bytes:
        """The request body, refused (RequestError) if missing or larger than the limit."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}")
        if size > MAX_BODY:
            self.discard(size)
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {size:,} bytes is over the limit of {MAX_BODY:,}")
        body = self.rfile.read(size)
        if len(body) < size:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "body ended before Content-Length bytes")
        return body

    def discard(self, size: int) -> None:
        """Read and drop a refused body, so the client gets the answer rather than a reset connection.

        Past DRAIN_LIMIT bytes the connection is simply closed.
        """
        self.close_connection = True
        left = min(size, DRAIN_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def send_json(self, status: HTTPStatus, value) -> None:
        """Send an object as a JSON response."""
        self.send(status, json.dumps(value).encode(), "application/json")

    def send(self, status: HTTPStatus, body: bytes, content_type: str | None) -> None:
        """Send a response with a body and its content type."""
        try:
            self._send(status, body, content_type)
        except (BrokenPipeError, ConnectionResetError):  # the client left before its answer: nobody to tell
            self.close_connection = True

    def _send(self, status: HTTPStatus, body: bytes, content_type: str | None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # The page loads nothing from elsewhere: inline script and style, requests to this server only.
        self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                         "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_request(self, code="-", size="-") -> None:
        """No access log (a request per stroke would flood the terminal); errors are still logged."""


class DigitServer(ThreadingHTTPServer):
    """Serves the page and /predict with one network (CPU, read-only, shared by the request threads)."""

    daemon_threads = True

    def __init__(self, address, network):
        super().__init__(address, Handler)
        self.network = network
        self.page = page()

    @property
    def url(self) -> str:
        """The page's address, e.g. http://127.0.0.1:8000/."""
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


class DigitServer6(DigitServer):
    """The same server on an IPv6 address."""
    address_family = socket.AF_INET6


def make_server(network, host: str = "127.0.0.1", port: int = 8000) -> DigitServer:
    """Bind (port 0 picks a free one); GpunetError with one line when the address cannot be used."""
    server_class = DigitServer6 if ":" in host else DigitServer
    try:
        return server_class((host, port), network)
    except OSError as error:
        reason = error.strerror or str(error)
        hint = "; try another --port" if error.errno in (98, 48, 10048) else ""
        raise GpunetError(f"cannot serve on {host}:{port}: {reason}{hint}") from None
