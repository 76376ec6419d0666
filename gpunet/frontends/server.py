"""``gpunet serve``: a page to draw a digit on, and the network's answer as you draw.

Standard library only: a ThreadingHTTPServer with two routes.

    GET  /          the drawing page (gpunet/frontends/static/draw.html, self-contained)
    POST /predict   {"image": "data:image/png;base64,..."}  ->
                    {"label": 7, "probabilities": [10 floats], "pixels": [784 ints]}

The drawing goes through :func:`gpunet.frontends.images.prepare_digit`, the same preparation
as ``predict --image``; ``pixels`` is the prepared 28x28 digit the network saw.

What any page the user visits, or a crowd of requests, could do to it, and what stops it:

- another site drives it (CSRF, DNS rebinding): only a Host naming the bound address or
  localhost is answered; a request with an Origin other than the page's own is refused; a POST
  must say ``Content-Type: application/json`` (which a cross-site form or "simple" fetch cannot
  send, and whose preflight OPTIONS is refused). All 403, 415 or 405.
- a crowd: connections beyond MAX_CONNECTIONS wait in a listen backlog of LISTEN_BACKLOG;
  at most IN_FLIGHT requests hold a body in memory (let in newest first, see
  :class:`gpunet.frontends.admission.Gate`) and at most WORKERS decode a drawing at once; the
  rest wait at most PATIENCE seconds, or are answered 503 with Retry-After. A body over
  MAX_BODY bytes and a drawing over MAX_PIXELS are refused (413) before they are read or decoded.
- malformed HTTP: a strict Content-Length (digits only, one header, no Transfer-Encoding), 408
  for a body that stalls SOCKET_TIMEOUT seconds, 400 for JSON of any depth that is not the
  expected object, 405/501 for other methods.

Every answer, errors included, carries the same security headers and a JSON or HTML body
with its Content-Length; ``Server:`` names no version. Only failures of the server itself
(500) are logged.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import socket
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from gpunet.errors import GpunetError
from gpunet.frontends.admission import Gate
from gpunet.frontends.images import ImageError, ImageTooLarge, NoDigit, prepare_digit, read_image

MAX_BODY = 1 << 20  # bytes; a 280x280 canvas as PNG is 5-40 KB
# A posted image larger than this is refused before decoding. The page sends 280x280; a decoded
# 1024x1024 drawing takes ~30 MB on its way through prepare_digit (2048x2048 took ~110 MB).
MAX_PIXELS = 1024 * 1024
DRAIN_LIMIT = 16 * MAX_BODY  # a refused body up to this size is read and dropped
SOCKET_TIMEOUT = 10  # seconds a client may stall mid-request
WORKERS = 2  # drawings decoded and answered at once (the GIL lets little more run in parallel)
IN_FLIGHT = 8  # requests holding their body in memory, waiting (oldest first) for a worker or working
QUEUE = 256  # requests waiting for one of the IN_FLIGHT places; one more refuses the oldest
# Seconds a request waits for a place, then 503 (Retry-After): the page sends a drawing per stroke, and
# one that waited longer is stale; it is better asked again with the drawing as it is by then.
PATIENCE = 0.5
MAX_CONNECTIONS = 4096  # connections served at once (a thread each); more wait in the listen backlog
LISTEN_BACKLOG = 4096  # connections the kernel holds for us (Linux caps it at net.core.somaxconn)
RETRY_AFTER = 1  # seconds, in a 503's Retry-After
FILE_RESERVE = 64  # file descriptors kept free of connections (the model, the log, the listener)

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\[\]:/@\s]+))(?::(?P<port>[0-9]{1,5}))?")
CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")  # what int() accepts beyond this ("1_0", "+10") is refused
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    # The page loads nothing from elsewhere: inline script and style, requests to this server only.
    ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'none'"),
)
ALLOWED_METHODS = "GET, HEAD, POST"


class RequestError(Exception):
    """A request the page cannot answer: sent back as a JSON error with its HTTP status."""
    def __init__(self, status: HTTPStatus, message: str, headers: tuple = ()):
        super().__init__(message)
        self.status = status
        self.headers = headers


class Busy(RequestError):
    """No place for the request within PATIENCE seconds: 503, try again."""
    def __init__(self):
        super().__init__(HTTPStatus.SERVICE_UNAVAILABLE, "the server is busy with other drawings; try again",
                         (("Retry-After", str(RETRY_AFTER)),))


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


def split_host(value: str) -> tuple[str, str] | None:
    """'name:port', '[v6]:port' or a bare name -> (name, port or ''); None when malformed."""
    match = HOST.fullmatch(value)
    if match is None:
        return None
    return match["v6"] or match["name"], match["port"] or ""


class Audience:
    """Which Host and Origin headers name this server: the bound address and the localhost names.

    A page elsewhere that the user visits can send requests here; its own name in Host (DNS
    rebinding) or Origin (a cross-site request) gives it away. Listening on a wildcard address
    (--host 0.0.0.0) also admits any IP address and this machine's name, as other machines use them.
    """

    def __init__(self, hosts: set[str], port: int):
        self.port = str(port)
        self.wildcard = bool(hosts & WILDCARD_HOSTS)
        self.names = set(LOCAL_NAMES) | {host.lower() for host in hosts}
        if self.wildcard:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def host_allowed(self, value: str) -> bool:
        """A Host header ('127.0.0.1:8000'): an allowed name, and the bound port when one is given."""
        parts = split_host(value.strip())
        if parts is None:
            return False
        name, port = parts
        if port and port != self.port:
            return False
        name = name.lower().removesuffix(".")
        if name in self.names:
            return True
        return self.wildcard and is_ip_address(name)

    def origin_allowed(self, value: str) -> bool:
        """An Origin header: this server itself ('http://' + an allowed host); 'null' and others are not."""
        scheme, sep, rest = value.strip().partition("://")
        return sep == "://" and scheme.lower() == "http" and "/" not in rest and self.host_allowed(rest)


def is_ip_address(name: str) -> bool:
    """An IP address literal (no DNS name: nothing an attacker's DNS can point here)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Handler(BaseHTTPRequestHandler):
    """Answers GET / (the page) and POST /predict (a drawing -> probabilities); refuses the rest."""
    server_version = "gpunet"
    timeout = SOCKET_TIMEOUT  # seconds a read may stall (the stdlib sets it on the socket)
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # not 0.9, whose answers have no status line and no headers
    unread = 0  # bytes of the current request's body not read yet

    def version_string(self) -> str:
        """The Server header: no Python version (the stdlib adds it)."""
        return self.server_version

    def do_GET(self) -> None:
        """The drawing page, or 404."""
        self.unread = 0
        if self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body on a GET is not read: the connection cannot go on
        try:
            self.check_audience()
        except RequestError as error:
            self.send_error_json(error)
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self.send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self.send(HTTPStatus.NO_CONTENT, b"", None)
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

    do_HEAD = do_GET  # the same headers, no body (send() leaves it out)

    def do_POST(self) -> None:
        """A drawn digit in, the network's label and probabilities out (JSON)."""
        self.unread = 0
        try:
            self.unread = self.body_size()  # where the body ends first: any refusal below then drops it
            self.check_audience()
            if self.path.split("?", 1)[0] != "/predict":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {self.path}; POST to /predict")
            self.check_json_content_type()
            answer = self.server.answer(self.read_body)
        except RequestError as error:
            self.send_error_json(error)
            return
        except Exception:  # a bug: say so to the page, log it, keep serving
            self.log_message("error answering %s:\n%s", self.path, traceback.format_exc())
            self.close_connection = True
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the server's log)"})
            return
        self.send_json(HTTPStatus.OK, answer)

    def refuse_method(self) -> None:
        """PUT, DELETE, OPTIONS (a cross-site preflight) and the like: 405, with the methods there are."""
        self.send_error_json(RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not accepted here; "
                                          f"GET / for the page, POST /predict for a drawing",
                                          (("Allow", ALLOWED_METHODS),)))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = refuse_method

    def check_audience(self) -> None:
        """Host names this server and Origin, when sent, is its own page; else 403 (see Audience)."""
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1:
            raise RequestError(HTTPStatus.BAD_REQUEST, "one Host header is required")
        if not self.server.audience.host_allowed(hosts[0]):
            raise RequestError(HTTPStatus.FORBIDDEN, "this server answers only requests to its own address "
                               "(Host must be localhost or the address it listens on)")
        origins = self.headers.get_all("Origin") or []
        if len(origins) > 1 or (origins and not self.server.audience.origin_allowed(origins[0])):
            raise RequestError(HTTPStatus.FORBIDDEN, "this server answers only its own page (cross-origin request)")

    def check_json_content_type(self) -> None:
        """415 unless the body is declared JSON (cross-site forms and 'simple' requests cannot declare it)."""
        kind = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be JSON (Content-Type: application/json)")

    def body_size(self) -> int:
        """The declared body size; RequestError when missing, malformed, doubled or over the limit."""
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding is not accepted; send Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        length = lengths[0].strip()
        if len(lengths) > 1 or not CONTENT_LENGTH.fullmatch(length):
            self.close_connection = True  # where the body ends is unknown: nothing after it can be read
            problem = "more than one Content-Length" if len(lengths) > 1 else f"bad Content-Length {length[:40]!r}"
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{problem}: one header of digits only")
        size = int(length)
        if size > MAX_BODY:
            self.unread = size
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {size:,} bytes is over the limit of {MAX_BODY:,}")
        return size

    def read_body(self) -> bytes:
        """The request body (Content-Length bytes); 408 when it stalls, 400 when it ends early."""
        size, self.unread = self.unread, 0
        try:
            body = self.rfile.read(size)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the body stalled: no data for {self.timeout} s") from None
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

    def send_error(self, code, message=None, explain=None) -> None:
        """The stdlib's own refusals (a bad request line, an unknown method, headers too long), as ours."""
        self.close_connection = True
        if message is None:
            try:
                message = HTTPStatus(code).phrase
            except ValueError:
                message = "error"
        self.send_error_json(RequestError(code, message))

    def send_error_json(self, error: RequestError) -> None:
        """A refusal: drop what is left of the body, then the error as JSON."""
        if error.status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.close_connection = True  # a busy server lets the thread go; the client comes back later
        if self.unread:
            self.discard(self.unread)
            self.unread = 0
        self.send_json(error.status, {"error": str(error)}, error.headers)

    def send_json(self, status: HTTPStatus, value, headers: tuple = ()) -> None:
        """Send an object as a JSON response."""
        self.send(status, json.dumps(value).encode(), "application/json", headers)

    def send(self, status: HTTPStatus, body: bytes, content_type: str | None, headers: tuple = ()) -> None:
        """Send a response with a body and its content type."""
        try:
            self._send(status, body, content_type, headers)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the client left or stopped reading
            self.close_connection = True

    def _send(self, status: HTTPStatus, body: bytes, content_type: str | None, headers: tuple) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if status != HTTPStatus.NO_CONTENT:
            self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS + tuple(headers):
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def log_request(self, code="-", size="-") -> None:
        """No access log (a request per stroke would flood the terminal)."""

    def log_error(self, format, *args) -> None:
        """Nothing either for what clients do wrong (the stdlib's refusals, idle connections timing out):
        a hostile page could flood the terminal. The server's own failures are logged (log_message)."""


class DigitServer(ThreadingHTTPServer):
    """Serves the page and /predict with one network (CPU, read-only, shared by the request threads)."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, network):
        super().__init__(address, Handler)
        self.network = network
        self.page = page()
        self.audience = Audience({address[0], self.server_address[0]}, self.server_address[1])
        self.in_flight = Gate(IN_FLIGHT, QUEUE, PATIENCE)
        # Oldest first here: a request let in ahead of others keeps its place (newest first at both
        # steps would leave it behind every later one, for as long as the burst lasts).
        self.workers = threading.Semaphore(WORKERS)
        self.max_connections = connection_limit()
        self.connections = 0
        self._room = threading.Condition()

    def answer(self, read_body) -> dict:
        """read_body() -> a drawing -> the answer, within the bounds on requests in flight and on workers."""
        if not self.in_flight.enter():
            raise Busy()
        try:
            body = read_body()
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deeply
                raise RequestError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
            del body
            if not self.workers.acquire(timeout=PATIENCE):
                raise Busy()
            try:
                return predict_drawing(self.network, payload)
            finally:
                self.workers.release()
        finally:
            self.in_flight.leave()

    def process_request(self, request, client_address) -> None:
        """A thread per connection, at most max_connections at once: the rest wait in the listen backlog."""
        with self._room:
            while self.connections >= self.max_connections:
                self._room.wait()
            self.connections += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connection_done()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_done()

    def _connection_done(self) -> None:
        with self._room:
            self.connections -= 1
            self._room.notify()

    @property
    def url(self) -> str:
        """The page's address, e.g. http://127.0.0.1:8000/."""
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


class DigitServer6(DigitServer):
    """The same server on an IPv6 address."""
    address_family = socket.AF_INET6


def connection_limit() -> int:
    """MAX_CONNECTIONS, or fewer when the process may not open that many files."""
    try:
        import resource  # Unix only
    except ImportError:
        return MAX_CONNECTIONS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FILE_RESERVE))


def make_server(network, host: str = "127.0.0.1", port: int = 8000) -> DigitServer:
    """Bind (port 0 picks a free one); GpunetError with one line when the address cannot be used."""
    server_class = DigitServer6 if ":" in host else DigitServer
    try:
        return server_class((host, port), network)
    except OSError as error:
        reason = error.strerror or str(error)
        hint = "; try another --port" if error.errno in (98, 48, 10048) else ""
        raise GpunetError(f"cannot serve on {host}:{port}: {reason}{hint}") from None
