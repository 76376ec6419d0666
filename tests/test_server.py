"""`gpunet serve`: the drawing page and /predict, bad requests, and the page in a real headless browser."""

import base64
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from gpunet.backends.cpu import CpuBackend
from gpunet.files.checkpoint import save_model
from gpunet.files.data import load_sample, split_validation
from gpunet.errors import GpunetError
from gpunet.frontends.images import prepare_digit
from gpunet.frontends.server import MAX_BODY, make_server
from gpunet.training.loop import TrainConfig, train

# The server rounds each probability to 6 decimals: off by at most half of 1e-6 (and a float64 ulp).
ROUNDED = 0.5e-6 + float(np.finfo(np.float64).eps)
# Ten of them, computed in float32 (their sum is 1 to ~10 eps) and each rounded.
SUM_OF_ROUNDED = 10 * (ROUNDED + float(np.finfo(np.float32).eps))


@pytest.fixture(scope="module")
def network():
    """784-100-10, 3 epochs on the bundled sample: well under a second."""
    train_digits, val_digits = split_validation(load_sample(), 1000, 0)
    return train(CpuBackend(), train_digits, val_digits, TrainConfig(hidden=(100,), epochs=3, batch_size=256)).network


@pytest.fixture(scope="module")
def server(network):
    """A server on a free port of 127.0.0.1, in a thread; yields (host, port)."""
    httpd = make_server(network, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[:2]
    httpd.shutdown()
    httpd.server_close()


def request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(*server, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def canvas_like(pixels) -> Image.Image:
    """A 28x28 digit drawn the way the page sends it: dark ink on a white 280x280 canvas, RGBA."""
    ink = Image.fromarray(pixels.reshape(28, 28)).resize((200, 200), Image.Resampling.BICUBIC)
    canvas = np.full((280, 280), 255, dtype=np.uint8)
    canvas[40:240, 40:240] = 255 - np.asarray(ink)
    return Image.fromarray(canvas).convert("RGBA")


def post_predict(server, payload):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, kind, answer = request(server, "POST", "/predict", body, {"Content-Type": "application/json"})
    return status, json.loads(answer)


def test_the_page_is_served_and_self_contained(server):
    status, kind, page = request(server, "GET", "/")
    assert status == 200 and kind.startswith("text/html")
    text = page.decode()
    assert '<canvas id="pad"' in text and 'id="clear"' in text and "pointerdown" in text
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), "the page must load nothing from elsewhere"


def test_predict_a_drawing(server, network):
    digits = load_sample()
    for k in range(5):
        image = canvas_like(digits.images[k])
        status, answer = post_predict(server, {"image": data_url(image)})
        assert status == 200
        expected = network.probabilities(prepare_digit(image)[None, :])[0]
        assert answer["label"] == int(expected.argmax())
        np.testing.assert_allclose(answer["probabilities"], expected, atol=ROUNDED, rtol=0)
        assert len(answer["pixels"]) == 784 and max(answer["pixels"]) == 255


BAD_REQUESTS = {
    "not json": (b"{not json", 400),
    "not utf-8": (b"\xff\xfe\x00", 400),
    "a list": (b"[1, 2]", 400),
    "no image": (b'{"picture": "x"}', 400),
    "image not a string": (b'{"image": 7}', 400),
    "not a data url": (b'{"image": "data:text/plain;base64,aGk="}', 400),
    "bad base64": (b'{"image": "data:image/png;base64,@@@"}', 400),
    "not an image": (json.dumps({"image": "data:image/png;base64," + base64.b64encode(b"hello").decode()}).encode(), 400),
    "blank canvas": (json.dumps({"image": data_url(Image.new("RGBA", (280, 280), "white"))}).encode(), 422),
    "too many pixels": (json.dumps({"image": data_url(Image.new("L", (4000, 4000)))}).encode(), 413),
    "oversized body": (b'{"image": "' + b"A" * MAX_BODY + b'"}', 413),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_4xx_and_the_server_goes_on(server, name):
    body, expected = BAD_REQUESTS[name]
    status, answer = post_predict(server, body)
    assert status == expected
    assert answer["error"] and "\n" not in answer["error"]
    good = canvas_like(load_sample().images[0])
    assert post_predict(server, {"image": data_url(good)})[0] == 200


def raw(server, data: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    with socket.create_connection(server, timeout=5) as connection:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("head, expected", [
    (b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n", b" 411 "),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b" 411 "),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\n", b" 400 "),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n", b" 400 "),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{}", b" 413 "),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"image\"", b" 400 "),
    (b"GARBAGE\r\n\r\n", b" 400 "),
    (b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", b" 404 "),
])
def test_broken_http_gets_4xx(server, head, expected):
    answer = raw(server, head)
    assert answer.split(b"\r\n", 1)[0].find(expected) > 0, answer[:200]
    assert request(server, "GET", "/")[0] == 200


def test_unknown_page_is_404(server):
    assert request(server, "GET", "/nothing")[0] == 404


def test_a_failure_inside_is_a_500_and_the_server_goes_on(capsys):
    httpd = make_server(None, "127.0.0.1", 0)  # no network: answering a drawing fails
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        address = httpd.server_address[:2]
        status, answer = post_predict(address, {"image": data_url(canvas_like(load_sample().images[0]))})
        assert status == 500 and "internal error" in answer["error"]
        assert request(address, "GET", "/")[0] == 200
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "Traceback" in capsys.readouterr().err  # logged for whoever runs the server


def test_a_port_in_use_is_one_line(network, server):
    with pytest.raises(GpunetError, match=f"cannot serve on 127.0.0.1:{server[1]}"):
        make_server(network, "127.0.0.1", server[1])


# --- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(network, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    save_model(path, network.host_params(), {})
    return path


def test_serve_command_on_localhost_until_ctrl_c(model_file):
    process = subprocess.Popen([sys.executable, "-m", "gpunet", "serve", "--model", str(model_file), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + process.stderr.read() if process.poll() is not None else line
        address = ("127.0.0.1", int(match[1]))
        assert request(address, "GET", "/")[0] == 200
        status, answer = post_predict(address, {"image": data_url(canvas_like(load_sample().images[0]))})
        assert status == 200 and 0 <= answer["label"] <= 9
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0 and "Stopped." in out and "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- the page in a real browser ---------------------------------------------------------------


def browser_path():
    for candidate in (os.environ.get("GPUNET_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="no browser test: pip install playwright")
    executable = browser_path()
    if executable is None:
        pytest.skip("no browser test: no Chromium found (apt-get install chromium, or set GPUNET_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        # Root in a container needs --no-sandbox; the rest keeps Chromium off the (closed) network.
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


def shown(page):
    """(label text, the ten probabilities the bars show; None where a bar has none)."""
    return page.evaluate("""() => [document.getElementById('label').textContent,
        [...Array(10).keys()].map(d => { const p = document.getElementById('prob-' + d).dataset.p;
                                         return p === undefined ? null : Number(p); })]""")


def wait_until_answered(page):
    """Until the page shows the answer for its latest drawing (it marks the pad 'idle')."""
    page.wait_for_function("() => document.getElementById('pad').dataset.state === 'idle'", timeout=10000)


def check_matches_server(page, server, network):
    """What the page shows is the server's answer for exactly the drawing on the canvas."""
    label, probs = shown(page)
    drawn = page.evaluate("() => document.getElementById('pad').toDataURL('image/png')")
    status, answer = post_predict(server, {"image": drawn})
    assert status == 200
    assert label == str(answer["label"])
    np.testing.assert_allclose(probs, answer["probabilities"], atol=1e-6)
    return int(label)


def clear_and_check(page):
    page.click("#clear")
    label, probs = shown(page)
    assert label == "\u2013" and probs == [None] * 10
    blank = page.evaluate("""() => { const c = document.getElementById('pad');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return d.every(v => v === 255); }""")
    assert blank


def stroke_points(box, shape):
    """Points on the pad (page coordinates) for a '1' (a vertical bar) or a '0' (an ellipse)."""
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    if shape == "1":
        return [(x0 + 0.5 * w, y0 + h * (0.15 + 0.7 * t / 30)) for t in range(31)]
    return [(x0 + w * (0.5 + 0.22 * np.sin(a)), y0 + h * (0.5 - 0.33 * np.cos(a)))
            for a in np.linspace(0, 2 * np.pi * 1.05, 48)]


def test_draw_with_the_mouse_read_the_prediction_clear(browser, server, network):
    page = browser.new_page()
    try:
        page.goto(f"http://{server[0]}:{server[1]}/")
        box = page.locator("#pad").bounding_box()
        points = stroke_points(box, "1")
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:20]:
            page.mouse.move(x, y)
        # Probabilities arrive while the button is still down: they update as you draw.
        page.wait_for_function("() => document.getElementById('label').textContent !== '\u2013'", timeout=5000)
        for x, y in points[20:]:
            page.mouse.move(x, y)
        page.mouse.up()
        wait_until_answered(page)
        label, probs = shown(page)
        assert sum(probs) == pytest.approx(1, abs=SUM_OF_ROUNDED)
        # The bar's width eases to its value (an 80 ms CSS transition): read it once its animations are done.
        bar = page.evaluate(f"""async () => {{
            const fill = document.querySelector('#prob-{label} .fill');
            await Promise.all(fill.getAnimations().map(animation => animation.finished));
            return fill.getBoundingClientRect().width;
        }}""")
        track = page.evaluate(f"() => document.querySelector('#prob-{label} .track').getBoundingClientRect().width")
        assert bar == pytest.approx(track * probs[int(label)], abs=2)
        assert check_matches_server(page, server, network) == 1
        clear_and_check(page)
    finally:
        page.close()


def test_draw_with_a_finger(browser, server, network):
    """Real touch input (CDP touch events): the page gets pointer events of type 'touch'."""
    context = browser.new_context(has_touch=True, viewport={"width": 420, "height": 800})
    page = context.new_page()
    try:
        page.goto(f"http://{server[0]}:{server[1]}/")
        page.evaluate("() => { window.kinds = new Set(); document.getElementById('pad')"
                      ".addEventListener('pointermove', e => window.kinds.add(e.pointerType)); }")
        box = page.locator("#pad").bounding_box()
        cdp = context.new_cdp_session(page)
        points = stroke_points(box, "0")
        for k, (x, y) in enumerate(points):
            kind = "touchStart" if k == 0 else "touchMove"
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        wait_until_answered(page)
        assert page.evaluate("() => [...window.kinds]") == ["touch"]
        assert check_matches_server(page, server, network) == 0
        clear_and_check(page)
    finally:
        context.close()
