"""``gpunet serve``: a page to draw a digit on, and the network's answer as you draw.

Standard library only: an asyncio event loop serving two routes, with http.server's request parsing.

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
- a crowd: one event loop holds every connection (a connection costs no thread; a stalled one
  costs a buffer); connections beyond MAX_CONNECTIONS wait in a listen backlog of LISTEN_BACKLOG;
  a request's head (line and headers) is at most MAX_HEAD bytes (431 beyond); bodies being read or
  waiting hold at most BODY_BUDGET bytes in all (503 beyond), and a body must arrive within
  BODY_DEADLINE seconds in all (408), so slow clients hold bytes, never a place in the line; at most
  IN_FLIGHT requests with a whole body wait for a decoding thread or use one (let in newest first, see
  :class:`gpunet.frontends.admission.Gate`) and at most WORKERS threads decode a drawing at once; the
  rest wait at most PATIENCE seconds, or are answered 503 with Retry-After. A body over
  MAX_BODY bytes and a drawing over MAX_PIXELS are refused (413) before they are read or decoded.
- malformed HTTP: a strict Content-Length (digits only, one header, no Transfer-Encoding), 408
  for a body that stalls SOCKET_TIMEOUT seconds or is not whole within BODY_DEADLINE, 400 for JSON of
  any depth that is not the expected object, 405/501 for other methods.

Every answer, errors included, carries the same security headers and a JSON or HTML body
with its Content-Length; ``Server:`` names no version. Only failures of the server itself
(500) are logged: a client that leaves or resets its connection at any point is simply let go.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import json
import re
import socket
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
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
BODY_DEADLINE = 10  # seconds a whole body may take to arrive (a byte every few seconds is no way round it)
BODY_BUDGET = 32 * MAX_BODY  # bytes of bodies being read or waiting for a place, all requests together
WORKERS = 2  # drawings decoded and answered at once (the GIL lets little more run in parallel)
IN_FLIGHT = 8  # requests with a whole body, waiting (newest first) for a worker or working
QUEUE = 256  # requests waiting for one of the IN_FLIGHT places; one more refuses the oldest
# Seconds a request waits for a place, then 503 (Retry-After): the page sends a drawing per stroke, and
# one that waited longer is stale; it is better asked again with the drawing as it is by then.
PATIENCE = 0.5
MAX_CONNECTIONS = 4096  # connections served at once (a file descriptor each); more wait in the listen backlog
LISTEN_BACKLOG = 4096  # connections the kernel holds for us (Linux caps it at net.core.somaxconn)
# The page sends small requests: a head (request line and headers) over MAX_HEAD bytes is refused (431),
# so that thousands of stalled connections hold at most a few MB (64 KB lines took 680 MB for 100 clients).
MAX_HEAD = 8192
MAX_HEADERS = 100  # header lines (http.client's limit)
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
        if sep != "://" or scheme.lower() != "http" or "/" in rest:
            return False
        parts = split_host(rest)
        # A browser leaves the port out of an Origin only when it is the scheme's default, 80: a page there
        # is another page than this one unless this server is on port 80.
        return parts is not None and (parts[1] or "80") == self.port and self.host_allowed(rest)


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
    timeout = SOCKET_TIMEOUT  # seconds a read or a write may stall (the server's event loop waits no longer)
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # not 0.9, whose answers have no status line and no headers
    unread = 0  # bytes of the current request's body not read yet
    body_wanted = False  # a POST /predict whose head passed: the server reads its body and answers it

    def __init__(self, head: bytes, server, client_address):
        """One request, from its head (request line and headers) already read; nothing is sent yet.

        The stdlib's parsing runs on these bytes as it would on the socket; the answer is written to
        ``wfile`` (a buffer) for the server's event loop to send.
        """
        self.rfile, self.wfile = io.BytesIO(head), io.BytesIO()
        self.server, self.client_address, self.request = server, client_address, None
        self.close_connection = True

    def respond(self) -> None:
        """BaseHTTPRequestHandler.handle_one_request on the head: parse it, and answer it or set body_wanted."""
        self.raw_requestline = self.rfile.readline(MAX_HEAD + 1)
        if len(self.rfile.getvalue()) > MAX_HEAD:  # read_head stopped there: answered without parsing it
            self.requestline = self.request_version = self.command = ""
            if len(self.raw_requestline) > MAX_HEAD or not self.raw_requestline.endswith(b"\n"):
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, f"request line over {MAX_HEAD:,} bytes")
            else:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head over {MAX_HEAD:,} bytes")
            return
        if not self.raw_requestline or not self.parse_request():
            return  # nothing sent (a connection closed, or a blank line), or parse_request's refusal
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
            return
        method()

    def take_output(self) -> bytes:
        """What was written so far (an answer, or parse_request's '100 Continue'), and an empty buffer."""
        output = self.wfile.getvalue()
        self.wfile = io.BytesIO()
        return output

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
        """A drawn digit in, the network's label and probabilities out (JSON).

        Here only the request's head is checked; its body is read, and the drawing answered, by the
        server's event loop (:meth:`DigitServer.answer`), which sees ``body_wanted``.
        """
        self.unread = 0
        try:
            self.unread = self.body_size()  # where the body ends first: any refusal below then drops it
            self.check_audience()
            if self.path.split("?", 1)[0] != "/predict":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {self.path}; POST to /predict")
            self.check_json_content_type()
        except RequestError as error:
            self.send_error_json(error)
            return
        self.body_wanted = True

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
        """A refusal as JSON (the server drops what is left of the body, ``unread``, before sending it)."""
        if error.status == HTTPStatus.SERVICE_UNAVAILABLE or self.unread:
            # A busy server lets the connection go (the client comes back later); a dropped body may be cut short.
            self.close_connection = True
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


class DigitServer:
    """Serves the page and /predict with one network (CPU, read-only, shared by the decoding threads).

    One asyncio event loop holds every connection: it reads each request, checks it (:class:`Handler`,
    with http.server's parsing) and answers it, and hands only the decoding of an admitted drawing to
    WORKERS threads. A thread per connection made a crowd of 2,000 threads fight for the GIL, and the
    thread accepting connections, starved of it, left a user's request seconds in the listen backlog.

    The socketserver methods ``gpunet serve`` and the tests use: ``serve_forever()`` (calling
    ``service_actions()`` at least every half second), ``shutdown()`` from another thread, ``server_close()``.
    """

    address_family = socket.AF_INET

    def __init__(self, address, network):
        self.socket = socket.socket(self.address_family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(LISTEN_BACKLOG)  # connections wait here from now on, served or not yet
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.network = network
        self.page = page()
        self.audience = Audience({address[0], self.server_address[0]}, self.server_address[1])
        self.in_flight = Gate(IN_FLIGHT, QUEUE, PATIENCE)
        self.max_connections = connection_limit()
        self.connections = 0
        self.body_bytes = 0  # declared sizes of the bodies being read or waiting for a place (BODY_BUDGET)
        self._decoders = ThreadPoolExecutor(WORKERS, thread_name_prefix="gpunet-drawing")
        self._loop = None
        self._stop = None
        self._stopped = threading.Event()
        self._stopped.set()
        self._shutdown_request = False

    def service_actions(self) -> None:
        """Called by serve_forever at least every half second (``gpunet serve`` stops from here on Ctrl-C)."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shutdown(), or until service_actions() raises (then that exception)."""
        self._stopped.clear()
        try:
            asyncio.run(self._serve(poll_interval))
        finally:
            self._shutdown_request = False
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait until it has."""
        self._shutdown_request = True  # seen by a serve_forever that has not started its loop yet
        loop, stop = self._loop, self._stop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # its loop has just closed
                pass
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket; decodings still running finish in their threads."""
        self.socket.close()
        self._decoders.shutdown(wait=False)

    async def _serve(self, poll_interval: float) -> None:
        self._stop = asyncio.Event()  # before _loop: shutdown() reads _loop, then uses _stop
        self._loop = asyncio.get_running_loop()
        self._connections = set()  # the tasks serving them (the loop itself keeps only weak references)
        # Oldest first here: a request let in ahead of others keeps its place (newest first at both
        # steps would leave it behind every later one, for as long as the burst lasts).
        self.workers = asyncio.Semaphore(WORKERS)
        self._room = asyncio.Event()  # set when a connection ends
        accepting = asyncio.create_task(self._accept())
        try:
            while not self._stop.is_set() and not self._shutdown_request:
                self.service_actions()
                try:
                    await asyncio.wait_for(self._stop.wait(), poll_interval)
                except TimeoutError:
                    pass
        finally:
            self._loop = None
            accepting.cancel()

    async def _accept(self) -> None:
        """Take connections from the backlog, at most max_connections at once; each is served by a task."""
        loop = asyncio.get_running_loop()
        while True:
            while self.connections >= self.max_connections:
                self._room.clear()
                await self._room.wait()
            try:
                connection, client_address = await loop.sock_accept(self.socket)
            except OSError:  # out of file descriptors, or a connection reset before it was taken
                await asyncio.sleep(0.05)
                continue
            self.connections += 1
            task = loop.create_task(self._serve_connection(connection, client_address))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve_connection(self, connection: socket.socket, client_address) -> None:
        """Requests on one connection, one after another, until one closes it."""
        writer = None
        try:
            reader, writer = await asyncio.open_connection(sock=connection, limit=MAX_HEAD)
            while True:
                head = await read_head(reader)
                if head is None:
                    return
                handler = Handler(head, self, client_address)
                handler.respond()
                if handler.body_wanted:
                    await send(writer, handler.take_output())  # a '100 Continue', if the client asked
                    await self.answer(handler, reader)
                if handler.unread:
                    await drain(reader, handler.unread)
                await send(writer, handler.take_output())
                if handler.close_connection:
                    return
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return  # the client left or reset, or stalled between requests (or while reading an answer)
        except Exception:  # a bug: log it, drop the connection, keep serving
            sys.stderr.write(f"error on a connection from {client_address[0]}:\n{traceback.format_exc()}")
        finally:
            if writer is None:
                connection.close()
            else:
                writer.close()
            self.connections -= 1
            self._room.set()

    async def answer(self, handler: Handler, reader: asyncio.StreamReader) -> None:
        """A POST /predict whose head passed: read its body, decode the drawing, answer (or refuse), within the
        bounds on bytes of bodies, on requests in flight and on workers.

        The body is read before the request asks for one of the IN_FLIGHT places: a client sending it
        slowly holds its bytes of BODY_BUDGET (for BODY_DEADLINE seconds at most), never a place that
        a whole drawing could use.
        """
        size = handler.unread
        try:
            if self.body_bytes + size > BODY_BUDGET:
                raise Busy()
            self.body_bytes += size
            try:
                body = await read_body(handler, reader)
                try:
                    payload = json.loads(body)
                except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deeply
                    raise RequestError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
                del body
                if not await self.in_flight.enter_async():
                    raise Busy()
                try:
                    try:
                        await asyncio.wait_for(self.workers.acquire(), PATIENCE)
                    except TimeoutError:
                        raise Busy() from None
                    try:
                        answer = await asyncio.get_running_loop().run_in_executor(
                            self._decoders, predict_drawing, self.network, payload)
                    finally:
                        self.workers.release()
                finally:
                    self.in_flight.leave()
            finally:
                self.body_bytes -= size
        except RequestError as error:
            handler.send_error_json(error)
            return
        except (OSError, asyncio.IncompleteReadError):
            raise  # the client left or reset mid-body: not a failure of the server (the connection is let go)
        except Exception:  # a bug: say so to the page, log it, keep serving
            handler.log_message("error answering %s:\n%s", handler.path, traceback.format_exc())
            handler.close_connection = True
            handler.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the server's log)"})
            return
        handler.send_json(HTTPStatus.OK, answer)

    @property
    def url(self) -> str:
        """The page's address, e.g. http://127.0.0.1:8000/."""
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """A request's line and header lines as http.server would read them; None when the client closed first.

    Reading stops once the head is over MAX_HEAD bytes (the reader's limit also bounds a line: it
    holds at most about 2 * MAX_HEAD), or after MAX_HEADERS + 1 header lines: the request is then
    refused (414, 431).
    """
    head = bytearray()
    for count in range(MAX_HEADERS + 2):
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), Handler.timeout)
        except asyncio.LimitOverrunError:  # a line over MAX_HEAD bytes: what is buffered of it is enough to refuse it
            head += await asyncio.wait_for(reader.read(MAX_HEAD + 1), Handler.timeout)
            break
        except asyncio.IncompleteReadError as end:  # the client closed (or half-closed) mid-head
            head += end.partial
            break
        head += line
        if len(head) > MAX_HEAD or (count > 0 and line in (b"\r\n", b"\n")):
            break
        if count == 0 and not line.strip():
            break  # a blank request line: parse_request ignores it and the connection closes
    return bytes(head) if head else None


async def read_body(handler: Handler, reader: asyncio.StreamReader) -> bytes:
    """The request body (Content-Length bytes); 408 when it stalls Handler.timeout seconds or is not whole within
    BODY_DEADLINE seconds, 400 when it ends early."""
    size, handler.unread = handler.unread, 0
    body = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_DEADLINE
    while len(body) < size:
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(reader.read(min(size - len(body), 1 << 16)), min(Handler.timeout, left))
        except TimeoutError:
            handler.close_connection = True
            if left <= Handler.timeout:
                raise RequestError(HTTPStatus.REQUEST_TIMEOUT,
                                   f"the body did not arrive within {BODY_DEADLINE} s") from None
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the body stalled: no data for {Handler.timeout} s") from None
        if not chunk:
            handler.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, "body ended before Content-Length bytes")
        body += chunk
    return bytes(body)


async def drain(reader: asyncio.StreamReader, size: int) -> None:
    """Read and drop a refused body, so the client gets the answer rather than a reset connection.

    Past DRAIN_LIMIT bytes, or when it stalls, the connection is simply closed after the answer.
    """
    left = min(size, DRAIN_LIMIT)
    try:
        while left > 0:
            chunk = await asyncio.wait_for(reader.read(min(left, 1 << 16)), Handler.timeout)
            if not chunk:
                break
            left -= len(chunk)
    except (OSError, TimeoutError):
        pass


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write an answer; a client that stops reading for Handler.timeout seconds is let go (TimeoutError)."""
    if data:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), Handler.timeout)


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
