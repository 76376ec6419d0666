"""`gpunet serve` under a crowd: does it keep answering a normal request, and within what memory?

Starts `gpunet serve` on a free port of 127.0.0.1 (loopback only), then, all at once:
  --posts   POST /predict with a 280x280 drawing, as the page sends (default 2,000), each on its own connection;
  --big     POST /predict with a --big-side x --big-side drawing (default 50 of 2048x2048);
and meanwhile a probe (a process of its own) asks, one after another, for the page (GET /) and for one normal drawing
(POST /predict), each on a fresh connection, as a user's browser would. It reports each probe's
time to answer, the answers the crowd got, and the server's memory (VmRSS sampled, VmHWM at the
end). Bounded: every connection and the whole run have time limits (--limit), the server is
stopped at the end, and the script exits by itself; exit status 1 when a goal is missed
(a probe answered in over --probe-goal seconds, or the server's peak over --memory-goal MB).

    python scripts/server_load.py                      # the issue's figures: 2,000 + 50 of 2048x2048
    python scripts/server_load.py --posts 20 --big 2 --big-side 512 --limit 60   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import multiprocessing
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def drawing(side: int, pixels=None) -> bytes:
    """A POST /predict body: a digit (or a bar) drawn dark on a white side x side RGBA canvas, as PNG."""
    if pixels is not None:
        ink = Image.fromarray(pixels.reshape(28, 28)).resize((side * 5 // 7, side * 5 // 7), Image.Resampling.BICUBIC)
        canvas = Image.new("L", (side, side), 255)
        canvas.paste(Image.fromarray(255 - np.asarray(ink)), (side // 7, side // 7))
        image = canvas.convert("RGBA")
    else:
        image = Image.new("RGBA", (side, side), "white")
        image.paste((0, 0, 0, 255), (side // 2 - side // 28, side // 7, side // 2 + side // 28, 6 * side // 7))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return json.dumps({"image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}).encode()


def post_bytes(port: int, body: bytes) -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (port, len(body), body))


async def exchange(port: int, request: bytes, limit: float) -> str:
    """Send one request on a new connection; the status code, or what went wrong."""
    writer = None
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            await reader.read()  # to the end: the server closes after answering (Connection: close)
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", status_line)
        return match[1].decode() if match else f"bad answer {status_line[:40]!r}"
    except TimeoutError:
        return "timed out"
    except OSError as error:
        return type(error).__name__
    finally:
        if writer is not None:
            writer.close()


async def crowd(port: int, posts: list[bytes], big: list[bytes], limit: float) -> tuple[Counter, Counter, float]:
    """All requests at once; (statuses of the normal posts, statuses of the big ones, seconds until all answered)."""
    start = time.perf_counter()
    tasks = [asyncio.create_task(exchange(port, post_bytes(port, body), limit)) for body in posts + big]
    results = await asyncio.gather(*tasks)
    return Counter(results[:len(posts)]), Counter(results[len(posts):]), time.perf_counter() - start


class Probe:
    """A user meanwhile: GET / and POST one normal drawing, one after another, each on a fresh connection.

    It runs in a process of its own (``probe_process``), so that its times are the server's, not
    those of this process's event loop busy with the crowd.
    """

    def __init__(self, port: int, body: bytes, limit: float):
        self.port, self.body, self.limit = port, body, limit
        self.answers: list[tuple[str, str, float, float]] = []  # (what, status, seconds, when sent: time.time())

    def ask(self, what: str, request: bytes) -> None:
        sent, start = time.time(), time.perf_counter()
        status = asyncio.run(exchange(self.port, request, self.limit))
        self.answers.append((what, status, time.perf_counter() - start, sent))

    def ask_both(self) -> None:
        self.ask("GET /", b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % self.port)
        self.ask("POST /predict", post_bytes(self.port, self.body))


def probe_process(port: int, body: bytes, limit: float, ready, stop, answers) -> None:
    """Ask both, again and again, from ``ready`` until ``stop``; then put the answers on the queue ``answers``."""
    probe = Probe(port, body, limit)
    ready.set()
    while not stop.is_set():
        probe.ask_both()
        stop.wait(0.05)
    answers.put(probe.answers)


class Memory(threading.Thread):
    """The server's resident memory, sampled every 20 ms (Linux /proc)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def read(self, field: str) -> float:
        """A field of /proc/PID/status in MB (VmRSS now, VmHWM the peak so far)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} for process {self.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far (/proc/PID/stat)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.samples.append(self.read("VmRSS"))
            except (OSError, RuntimeError):
                return


def make_model(folder: Path) -> Path:
    """A 784-100-10 network trained for 3 epochs on the bundled sample (seconds)."""
    from gpunet.backends.cpu import CpuBackend
    from gpunet.files.checkpoint import save_model
    from gpunet.files.data import load_sample, split_validation
    from gpunet.training.loop import TrainConfig, train

    train_digits, val_digits = split_validation(load_sample(), 1000, 0)
    network = train(CpuBackend(), train_digits, val_digits, TrainConfig(hidden=(100,), epochs=3, batch_size=256)).network
    path = folder / "model.npz"
    save_model(path, network.host_params(), {})
    return path


def start_server(model: Path, limit: float) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-m", "gpunet", "serve", "--model", str(model), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + limit
    line = ""
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        if match := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
            return process, int(match[1])
    process.kill()
    raise SystemExit(f"server_load: gpunet serve did not start: {line.strip()} {process.stderr.read().strip()}")


def stop_server(process: subprocess.Popen) -> str:
    """SIGINT (as Ctrl-C), then the server's stderr (its log: only failures of its own are written)."""
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def raise_open_file_limit(needed: int) -> None:
    """This process holds every connection of the crowd at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def summary(seconds: list[float]) -> str:
    if not seconds:
        return "none"
    return (f"{len(seconds)} answers, median {1000 * statistics.median(seconds):.0f} ms, "
            f"max {1000 * max(seconds):.0f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=2000, help="normal drawings posted at once [2000]")
    parser.add_argument("--big", type=int, default=50, help="large drawings posted at once [50]")
    parser.add_argument("--big-side", type=int, default=2048, help="their side in pixels [2048]")
    parser.add_argument("--limit", type=float, default=180.0, help="seconds any connection, and the crowd, may take [180]")
    parser.add_argument("--probe-goal", type=float, default=1.0, help="seconds a probe may take [1]")
    parser.add_argument("--memory-goal", type=float, default=500.0, help="MB the server may use at its peak [500]")
    parser.add_argument("--model", type=Path, help="a model to serve [a small one trained here on the bundled sample]")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        raise SystemExit("server_load: reads the server's memory from /proc: Linux only")
    raise_open_file_limit(args.posts + args.big + 256)

    from gpunet.files.data import load_sample

    digits = load_sample()
    posts = [drawing(280, digits.images[k % len(digits.images)]) for k in range(min(args.posts, 100))]
    posts = [posts[k % len(posts)] for k in range(args.posts)]
    big = [drawing(args.big_side)] * args.big
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or make_model(Path(folder))
        process, port = start_server(model, args.limit)
        try:
            memory = Memory(process.pid)
            memory.start()
            calm = Probe(port, posts[0], args.limit)
            calm.ask_both()
            spawn = multiprocessing.get_context("spawn")
            ready, stop, answers = spawn.Event(), spawn.Event(), spawn.Queue()
            prober = spawn.Process(target=probe_process, args=(port, posts[0], args.limit, ready, stop, answers))
            prober.start()
            ready.wait(args.limit)
            crowd_start, cpu_before = time.time(), memory.cpu_seconds()
            normal, large, seconds = asyncio.run(asyncio.wait_for(crowd(port, posts, big, args.limit), args.limit * 2))
            cpu = memory.cpu_seconds() - cpu_before
            load = os.getloadavg()[0]
            stop.set()
            probe_answers = answers.get(timeout=args.limit)
            prober.join(args.limit)
            time.sleep(0.5)
            after = memory.read("VmRSS")
            peak = memory.read("VmHWM")
            memory.stop.set()
        finally:
            log = stop_server(process)

    print(f"gpunet serve on 127.0.0.1:{port}, pid {process.pid}; {os.cpu_count()} CPUs")
    print("before the crowd: " + ", ".join(f"{what} {status} in {1000 * s:.0f} ms" for what, status, s, _ in calm.answers))
    print(f"crowd: {args.posts} normal POSTs and {args.big} of {args.big_side}x{args.big_side}, all at once; "
          f"all answered in {seconds:.1f} s, using {cpu:.1f} s of the server's CPU time "
          f"(load average {load:.1f} on {os.cpu_count()} CPUs)")
    print(f"  normal POSTs: {dict(sorted(normal.items()))}")
    print(f"  {args.big_side}x{args.big_side} POSTs: {dict(sorted(large.items()))}")
    probe_goal_met = True
    for what in ("GET /", "POST /predict"):
        answers = [(status, s) for w, status, s, _ in probe_answers if w == what]
        statuses = Counter(status for status, _ in answers)
        print(f"probe {what} meanwhile: {summary([s for _, s in answers])}; {dict(sorted(statuses.items()))}")
        probe_goal_met &= all(s <= args.probe_goal and status.isdigit() for status, s in answers)
    slow = [f"{what} sent at {at - crowd_start:.1f} s: {status} after {s:.2f} s"
            for what, status, s, at in probe_answers if s > args.probe_goal]
    if slow:
        print("  slower than the goal: " + "; ".join(slow))
    print(f"server memory: peak {peak:.0f} MB (VmHWM), largest sample {max(memory.samples, default=0):.0f} MB, "
          f"{after:.0f} MB after")
    if log.strip():
        print("server's log:\n" + log.strip()[-2000:])
    memory_goal_met = peak < args.memory_goal
    print(f"goals: every probe answered within {args.probe_goal} s: {'yes' if probe_goal_met else 'NO'}; "
          f"peak memory under {args.memory_goal:.0f} MB: {'yes' if memory_goal_met else 'NO'}")
    return 0 if probe_goal_met and memory_goal_met else 1


if __name__ == "__main__":
    sys.exit(main())
