"""Benchmark: gpunet against PyTorch eager on the same device, the same network, optimizer and data.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench.py [--repeats 7] [--device all]
        [--samples 41000] [--batches 32,128,512] [--cnn-repeats 3] [--threads N]

Times, on the CPU and (where gpunet's CUDA backend is usable) on the GPU:
  - one full-batch gradient-descent step, m = 41,000 digits, 784-16-16-10, float32;
  - one epoch of mini-batch SGD at batch 32, 128 and 512;
  - one epoch of a LeNet-like CNN (conv32k5,pool2,conv64k5,pool2,dense256, gpunet's --arch), batch 128, Adam;
for gpunet and, where torch imports, the same thing in PyTorch. Prints one table
with the medians, the gpunet/PyTorch ratios, the full-batch step's floors (the
bytes of X read once over a measured copy bandwidth; its FLOPs over a measured
large-matrix-product rate), and the time to read train.csv.gz, first and from
the parse cache. A benchmark, not a test: nothing here passes or fails.

gpunet runs on its default path, and bench.py prints which: on the CPU, the 16-16 network's steps
compiled with numba (gpunet/backends/cpu_fused.py) and the CNN's layer passes compiled with numba
(gpunet/backends/cpu_layers.py, its products on BLAS) where numba is installed, else NumPy array calls.

Timing: gpunet and PyTorch take turns, three rounds each; in a round a side
runs once untimed, then a third of ``--repeats`` timed runs back to back (as
training runs its steps). The table shows the median of the timed runs, and
the fastest in brackets. A CNN epoch takes seconds, so its sides take turns every
epoch instead (``--cnn-repeats`` rounds), each epoch after a short untimed warm-up.

``--launches`` times nothing: it counts, without a GPU, what one training step costs one. The real
CUDA backend and training loop run on the CuPy stand-in (tests/cupy_stand_in.py, its kernels walked on
the CPU; needs g++ and this checkout's tests/), and it prints per steady-state step the launches by kind
(gpunet's custom kernels, CuPy's elementwise kernels, reductions, cuBLAS products), device allocations,
transfers each way, the launches' bytes and the products' FLOPs, for the 784-16-16-10 network with each
optimizer and for a CNN, eagerly and as ``--cuda-graph`` runs them (one graph launch a step); then the
same per epoch outside the steps, per evaluation of 1,000 digits, and what each step's graph replays
(tests/launch_count.py; tests/test_launch_budget.py holds the counts to their budgets).

``--threads N`` holds PyTorch's intra-op threads and the BLAS libraries (threadpoolctl) to N for the
whole run, so that both sides may use as many; gpunet's mini-batch epochs hold BLAS to one thread of their
own accord (``CpuBackend.compute_threads``): the 16-16 network's, and the CNN's, whose steps are split into
one part per core (``training.loop.step_parts``), each part on a thread of gpunet's own pool. gpunet's own
thread pools (the full-batch step's and the CNN steps' parts, numba's) are not held. bench.py prints the
settings it ran with, and how gpunet's CNN steps run.

scripts/bench_presets.py times each ``gpunet train --preset`` with these sides: ``GpunetEpochs`` (gpunet's
train_epoch over any network and optimizer) and ``TorchLayers`` (PyTorch's twins of gpunet's built layers).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# --gpunet-root OTHER_CHECKOUT times that checkout's gpunet instead (for before/after figures).
_other = sys.argv[sys.argv.index("--gpunet-root") + 1] if "--gpunet-root" in sys.argv[:-1] else None
sys.path.insert(0, str(Path(_other).resolve() if _other else ROOT))

# Older checkouts (before c4e1515) keep the same modules flat in gpunet/: --gpunet-root times them too.
FLAT_NAMES = {"backends.cpu": "backend", "backends.cuda": "backend_cuda", "nn.model": "model",
              "nn.optimizers": "optimizers", "training.loop": "training", "files.data": "data"}


def gpunet_module(name: str):
    """gpunet's module ``name`` (as in this checkout's folders), or its flat twin in an older checkout."""
    try:
        return importlib.import_module(f"gpunet.{name}")
    except ModuleNotFoundError:
        if name not in FLAT_NAMES:
            raise
        return importlib.import_module(f"gpunet.{FLAT_NAMES[name]}")


CpuBackend = gpunet_module("backends.cpu").CpuBackend
Network, init_params, layer_sizes = (getattr(gpunet_module("nn.model"), name)
                                     for name in ("Network", "init_params", "layer_sizes"))
make_optimizer = gpunet_module("nn.optimizers").make_optimizer
DeviceData, train_epoch = gpunet_module("training.loop").DeviceData, gpunet_module("training.loop").train_epoch

M = 41_000  # the full-batch step's m: train.csv's 42,000 digits less the 1,000 held out
HIDDEN = (16, 16)
LR = 0.1
BATCHES = (32, 128, 512)
CNN_ARCH = "conv32k5,pool2,conv64k5,pool2,dense256"  # gpunet train --arch's spec; the 10-way output is added
CNN_BATCH = 128
CNN_LR = 0.001  # Adam at PyTorch's default rate, no weight decay on either side
CNN_REPEATS = 3  # timed epochs per side
CNN_WARM = 1024  # digits of the untimed run before each timed epoch (wakes thread pools, fills caches)
MATMUL_SIZES = {"cpu": 2048, "cuda": 8192}  # n of the n x n product that measures a device's best FLOP/s
DATA = ROOT.parent / "shared" / "data" / "train.csv.gz"


# -- data ---------------------------------------------------------------------------
class Digits:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)


def read_csv_rows(path: Path, m: int) -> Digits:
    """The first m rows of a Kaggle train.csv.gz, without gpunet.files.data (which is timed separately)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=np.uint8, nrows=m)
    values = frame.to_numpy()
    return Digits(np.ascontiguousarray(values[:, 1:]), values[:, 0].copy())


def bench_data(m: int = M, data: Path = DATA) -> tuple[Digits, str]:
    """The first m digits of ``data`` (a train.csv.gz) where it is, else m synthetic ones."""
    if data.is_file():
        try:
            from gpunet.files.data import load_digits

            digits = load_digits(data, labeled=True)
            digits = Digits(np.ascontiguousarray(digits.images[:m]), digits.labels[:m].copy())
        except ImportError:
            digits = read_csv_rows(data, m)
        if len(digits) == m:
            return digits, f"real digits: the first {m:,} rows of {data.name}"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(m, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=m).astype(np.uint8)
    return Digits(images, labels), f"synthetic uint8 digits, {m:,} x 784 ({data} not found)"


# -- the two sides ---------------------------------------------------------------------
def optimizer(name: str, groups, lr: float, backend, weight_decay: float = 0.0):
    """gpunet's optimizer, given the backend (its whole step as one kernel on CUDA) where this checkout's takes one."""
    decay = {"weight_decay": weight_decay} if weight_decay else {}
    if "backend" in inspect.signature(make_optimizer).parameters:
        return make_optimizer(name, groups, lr, backend=backend, **decay)
    return make_optimizer(name, groups, lr, **decay)



class Gpunet:
    """gpunet's own training code: train_epoch with a batch of 0 (full batch) or b."""

    def __init__(self, backend, digits):
        self.backend = backend
        self.network = Network(backend, init_params(layer_sizes(HIDDEN), "he", 0, np.float32))
        groups = getattr(self.network, "groups", self.network.params)  # older checkouts: per layer
        self.optimizer = optimizer("sgd", groups, LR, backend)
        self.data = DeviceData(backend, digits)
        self.rng = np.random.default_rng(1)

    def run(self, batch: int) -> None:
        train_epoch(self.network, self.optimizer, self.data, batch, self.rng)
        self.backend.synchronize()


class Torch:
    """The same network and optimizer in PyTorch eager: nn.Linear + ReLU, cross-entropy, optim.SGD.

    X is held as float32 scaled to [0, 1] (what a PyTorch user does), converted once, outside the timing.
    """

    threads = None  # --threads: PyTorch's intra-op threads, set again before every run (see ``hold``)

    def __init__(self, torch, device: str, digits):
        self.torch, self.device = torch, device
        torch.manual_seed(0)
        nn = torch.nn
        self.model = nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                                   nn.Linear(16, 10)).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.loss = nn.CrossEntropyLoss()
        self.X = (torch.from_numpy(digits.images).to(device).float() / 255).contiguous()
        self.y = torch.from_numpy(digits.labels.astype(np.int64)).to(device)

    def step(self, xb, yb) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(xb), yb).backward()
        self.optimizer.step()

    def hold(self) -> None:
        """PyTorch's threads back to --threads: torch and numba load the same libgomp, and a numba parallel loop
        (gpunet's compiled epochs) sets OpenMP's thread count, which PyTorch reads as its own, back to all cores."""
        if self.threads is not None:
            self.torch.set_num_threads(self.threads)

    def run(self, batch: int) -> None:
        torch = self.torch
        self.hold()
        if batch <= 0:
            self.step(self.X, self.y)
        else:
            m = len(self.y)
            order = torch.randperm(m, device=self.device)
            for start in range(0, m, batch):
                index = order[start : start + batch]
                self.step(self.X[index], self.y[index])
        if self.device == "cuda":
            torch.cuda.synchronize()


class GpunetEpochs:
    """gpunet's own train_epoch over a network and its optimizer; ``warm`` runs CNN_WARM digits untimed first."""

    def __init__(self, backend, digits, network, optimizer, rate=None):
        self.backend, self.network, self.optimizer, self.rate = backend, network, optimizer, rate
        self.data = DeviceData(backend, digits)
        self.warm_data = DeviceData(backend, Digits(digits.images[:CNN_WARM], digits.labels[:CNN_WARM]))
        self.rng = np.random.default_rng(1)
        self.loss = None  # the last epoch's mean training loss (the tests read it)

    def run(self, batch: int) -> None:
        rate = {} if self.rate is None else {"rate": self.rate}
        self.loss, _ = train_epoch(self.network, self.optimizer, self.data, batch, self.rng, **rate)
        self.backend.synchronize()

    def warm(self, batch: int) -> None:
        if batch <= 0:  # a full batch of fewer digits is another step (another workspace): warm with the real one
            return self.run(batch)
        train_epoch(self.network, self.optimizer, self.warm_data, batch, self.rng)
        self.backend.synchronize()


class GpunetCNN(GpunetEpochs):
    """gpunet's LayerStack of CNN_ARCH (what ``gpunet train --arch`` builds), Adam, its own train_epoch."""

    def __init__(self, backend, digits):
        model = gpunet_module("nn.model")
        LayerStack, arch_input_shape, build_layers, init_stack_params, parse_arch_text = (
            model.LayerStack, model.arch_input_shape, model.build_layers, model.init_stack_params,
            model.parse_arch_text)

        arch = parse_arch_text(CNN_ARCH)
        shape = arch_input_shape(arch, 784)
        params = init_stack_params(build_layers(arch, shape, 10), "he", 0, np.float32)
        network = LayerStack(backend, arch, params, shape, 10)
        super().__init__(backend, digits, network, optimizer("adam", network.groups, CNN_LR, backend))


def torch_modules(nn, layers) -> list:
    """PyTorch's twins of gpunet's built layers (``model.build_layers``: the spec's, the implied Flatten, the
    output): Conv2d/Linear (+ ReLU where gpunet's has one), MaxPool2d, Dropout, Flatten. ValueError for a
    layer that has none here."""
    modules = []
    for layer in layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            padding = "same" if getattr(layer, "padding", "valid") == "same" else 0
            modules.append(nn.Conv2d(layer.input_shape[0], layer.outputs, layer.k, padding=padding))
        elif kind == "Dense":
            modules.append(nn.Linear(layer.fan_in, layer.outputs))
        elif kind == "MaxPool2D":
            modules.append(nn.MaxPool2d(layer.size))
        elif kind == "Dropout":
            modules.append(nn.Dropout(layer.p))
        elif kind == "Flatten":
            modules.append(nn.Flatten())
        else:
            raise ValueError(f"no PyTorch twin for gpunet's {kind} layer in bench.py")
        if kind in ("Conv2D", "Dense") and layer.relu:
            modules.append(nn.ReLU())
    return modules


def torch_optimizer(torch, model, name: str, lr: float, weight_decay: float = 0.0):
    """PyTorch's twin of gpunet's optimizer ``name``: SGD for gd and sgd, SGD with momentum 0.9, AdamW for adam
    (Adam's betas and eps, decoupled decay). The decay on the weights alone, as gpunet's (not the biases)."""
    weights = [p for p in model.parameters() if p.dim() > 1]
    biases = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]
    if name in ("gd", "sgd"):
        return torch.optim.SGD(groups, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    raise ValueError(f"no PyTorch twin for gpunet's optimizer {name!r} in bench.py")


class TorchLayers(Torch):
    """gpunet's built layers (``torch_modules``) in PyTorch eager, cross-entropy, the optimizer's twin.

    X is held as float32 scaled to [0, 1], as images (m, 1, 28, 28) where the first layer takes maps, else as
    rows (m, 784), converted once, outside the timing.
    """

    def __init__(self, torch, device: str, digits, layers, optimizer_name: str, lr: float, weight_decay: float = 0.0):
        self.torch, self.device = torch, device
        torch.manual_seed(0)
        nn = torch.nn
        self.model = nn.Sequential(*torch_modules(nn, layers)).to(device)
        self.optimizer = torch_optimizer(torch, self.model, optimizer_name, lr, weight_decay)
        self.loss = nn.CrossEntropyLoss()
        images = torch.from_numpy(digits.images.reshape(-1, *layers[0].input_shape))
        self.X = (images.to(device).float() / 255).contiguous()
        self.y = torch.from_numpy(digits.labels.astype(np.int64)).to(device)

    def warm(self, batch: int) -> None:
        if batch <= 0:  # as GpunetEpochs.warm: the full batch's own step
            return self.run(batch)
        self.hold()
        for start in range(0, min(CNN_WARM, len(self.y)), batch):
            self.step(self.X[start : start + batch], self.y[start : start + batch])
        if self.device == "cuda":
            self.torch.cuda.synchronize()


class TorchCNN(TorchLayers):
    """The same CNN in PyTorch eager: Conv2d + ReLU + MaxPool2d twice, Flatten, Linear + ReLU, Linear; Adam."""

    def __init__(self, torch, device: str, digits):
        model = gpunet_module("nn.model")
        arch = model.parse_arch_text(CNN_ARCH)
        layers = model.build_layers(arch, model.arch_input_shape(arch, 784), 10)
        super().__init__(torch, device, digits, layers, "adam", CNN_LR)


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compare(sides: dict, batch: int, repeats: int, rounds: int = 3) -> dict:
    """{name: [seconds, ...]} for each side (an error message instead, where it fails).

    In each of ``rounds`` rounds each side runs once untimed (its ``warm``
    run where it has one), then its share of ``repeats`` timed runs back to
    back, as steps follow one another in training: its thread pools are awake
    and its data in cache, as they are there. The sides take turns, so that
    load from other programs falls on both.
    """
    times = {name: [] for name in sides}
    for round_ in range(rounds):
        share = repeats // rounds + (round_ < repeats % rounds)
        for name, side in sides.items():
            if isinstance(times[name], str):
                continue
            try:
                getattr(side, "warm", side.run)(batch)
            except Exception as exc:  # one side failing still leaves the other's figures
                times[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:60]
                continue
            times[name] += [seconds(lambda: side.run(batch)) for _ in range(share)]
    return times


# -- floors ----------------------------------------------------------------------------
def copy_bandwidth(backend) -> float:
    """Bytes per second copied on the backend's device (each byte read once, written once), median of 7, 256 MB."""
    xp = backend.xp
    src = xp.ones(64 * 2**20, dtype=np.float32)
    dst = xp.empty_like(src)

    def copy():
        xp.copyto(dst, src)
        backend.synchronize()

    copy()
    return src.nbytes / statistics.median(seconds(copy) for _ in range(7))


def matmul_rate(backend, n: int) -> float:
    """FLOP/s of an n x n float32 matrix product, median of 5: what the device's BLAS does at its best."""
    a = backend.asarray(np.random.default_rng(0).random((n, n), dtype=np.float32))

    def product():
        a @ a
        backend.synchronize()

    product()
    return 2 * n**3 / statistics.median(seconds(product) for _ in range(5))


def step_flops(m: int) -> int:
    """FLOPs of one full-batch step: W.A forward, dW = dZ.A^T, and W^T.dZ for all but the first layer."""
    sizes = layer_sizes(HIDDEN)
    products = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    back = sum(a * b for a, b in zip(sizes[1:-1], sizes[2:]))
    return 2 * m * (2 * products + back)


def cnn_epoch_flops(m: int) -> int:
    """FLOPs of a CNN epoch's products: W.columns forward, dW = dZ.columns^T, and W^T.dZ but for the first layer.

    A convolution's products are its dense formula's on H_out.W_out columns per sample (im2col).
    """
    model = gpunet_module("nn.model")
    arch = model.parse_arch_text(CNN_ARCH)
    arch_input_shape, build_layers = model.arch_input_shape, model.build_layers
    layers = [layer for layer in build_layers(arch, arch_input_shape(arch, 784), 10) if layer.param_shapes()]
    per_sample = [2 * layer.outputs * layer.fan_in * int(np.prod(layer.output_shape[1:])) for layer in layers]
    return m * (2 * sum(per_sample) + sum(per_sample[1:]))


def read_times(data: Path = DATA) -> tuple[float, float] | None:
    """Seconds to read train.csv.gz with gpunet.files.data: the first time (parsing) and from its cache."""
    try:
        load_digits = gpunet_module("files.data").load_digits
    except (ImportError, AttributeError):
        return None
    if not data.is_file():
        return None
    saved = os.environ.get("GPUNET_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GPUNET_CACHE_DIR"] = cache
        try:
            first = seconds(lambda: load_digits(data, labeled=True))
            cached = statistics.median(seconds(lambda: load_digits(data, labeled=True)) for _ in range(5))
        finally:
            if saved is None:
                os.environ.pop("GPUNET_CACHE_DIR", None)
            else:
                os.environ["GPUNET_CACHE_DIR"] = saved
    return first, cached


# -- the machine ------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hold_threads(threads: int | None, torch) -> None:
    """PyTorch's intra-op threads and every BLAS library's threads to ``threads`` for the run (None: as they are)."""
    if threads is None:
        return
    if torch is not None:
        torch.set_num_threads(threads)
        Torch.threads = threads
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("(threadpoolctl not installed: --threads cannot hold BLAS)")
        return
    try:
        import scipy.linalg  # noqa: F401  (the compiled CPU path's BLAS: loaded now, so that the limit reaches it)
    except ImportError:
        pass
    threadpool_limits(limits=threads, user_api="blas")


def describe_machine(torch) -> list[str]:
    lines = [f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}, "
             f"NumPy {np.__version__}"]
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            kernels = f", {lib['architecture']} kernels" if lib.get("architecture") else ""
            lines.append(f"  {lib['user_api']}: {lib['internal_api']} {lib['version'] or ''} "
                         f"({lib['num_threads']} threads{kernels}) {Path(lib['filepath']).name}")
    except ImportError:
        lines.append("  (threadpoolctl not installed: BLAS kernel unknown, and gpunet cannot hold BLAS to one thread)")
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if name in os.environ:
            lines.append(f"  note: {name}={os.environ[name]} is set")
    if torch is not None:
        lines.append(f"PyTorch {torch.__version__} ({torch.get_num_threads()} CPU threads)")
    else:
        lines.append("PyTorch: not installed (no comparison column)")
    return lines


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def devices(choice: str) -> list[str]:
    found = ["cpu"]
    if choice in ("all", "cuda"):
        backend_cuda = gpunet_module("backends.cuda")
        reason = backend_cuda.unavailable_reason()
        if reason is None:
            found.append("cuda")
        elif choice == "cuda":
            print(f"CUDA: not usable ({reason})")
        else:
            print(f"CUDA: not benchmarked ({reason.split(';')[0]})")
    return found if choice != "cuda" else [d for d in found if d == "cuda"]


def gpunet_backend(device: str, cuda_graph: bool = False):
    """The backend of ``device``; on CUDA with ``cuda_graph``, each whole mini-batch step one graph launch
    (``gpunet train --cuda-graph``; a checkout without it ignores the attribute)."""
    if device == "cpu":
        return CpuBackend()
    backend = gpunet_module("backends.cuda").CupyBackend()
    backend.cuda_graph = cuda_graph
    return backend


def cnn_steps(backend) -> str:
    """How gpunet's training loop takes the CNN's steps of CNN_BATCH: split between the cores, or whole."""
    step_parts = getattr(gpunet_module("training.loop"), "step_parts", None)
    if step_parts is None:  # a checkout from before split steps
        return "whole steps, BLAS on its threads"
    from gpunet.nn.model import LayerStack, arch_input_shape, build_layers, init_stack_params, parse_arch_text

    arch = parse_arch_text(CNN_ARCH)
    shape = arch_input_shape(arch, 784)
    network = LayerStack(backend, arch, init_stack_params(build_layers(arch, shape, 10), "he", 0, np.float32), shape)
    parts = step_parts(network, CNN_BATCH)
    if parts > 1:
        return f"each step of {CNN_BATCH} split into {parts} parts, one per core, BLAS on one thread each"
    return "whole steps, BLAS on its threads"


def describe_cuda(backend, torch) -> str:
    text = f"GPU: {backend.describe()}"
    if torch is not None and torch.cuda.is_available():
        text += f"; PyTorch CUDA {torch.version.cuda}"
    return text


def measure(device: str, backend, digits, batches, repeats: int, torch=None, cnn_repeats: int = 0) -> list[tuple]:
    """The table's rows for one device: (device, work, gpunet ms, PyTorch ms, ratio or note).

    ``cnn_repeats``: timed CNN epochs per side (0: no CNN rows).
    """
    with_torch = torch is not None and (device == "cpu" or torch.cuda.is_available())
    sides = {"gpunet": Gpunet(backend, digits)}
    if with_torch:
        sides["pytorch"] = Torch(torch, device, digits)
    rows = []
    for batch in [0, *batches]:
        times = compare(sides, batch, repeats)
        work = "full-batch GD step" if batch == 0 else f"SGD epoch, batch {batch}"
        rows.append(row(device, work, times))
    rate = matmul_rate(backend, MATMUL_SIZES[device])
    if cnn_repeats > 0:
        rows += measure_cnn(device, backend, digits, cnn_repeats, torch if with_torch else None, rate)
    bandwidth = copy_bandwidth(backend)
    x_bytes = len(digits) * 784  # uint8
    rows.append((device, "floor: read X once", f"{1e3 * x_bytes / bandwidth:9.2f}", "",
                 f"{x_bytes / 1e6:.1f} MB at {bandwidth / 1e9:.1f} GB/s copy"))
    flops = step_flops(len(digits))
    rows.append((device, "floor: FLOPs of a step", f"{1e3 * flops / rate:9.2f}", "",
                 f"{flops / 1e9:.2f} GFLOP at {rate / 1e9:.0f} GFLOP/s (large sgemm)"))
    return rows


def measure_cnn(device: str, backend, digits, repeats: int, torch, rate: float) -> list[tuple]:
    """The CNN epoch's row, the sides taking turns every epoch, and its products' floor at ``rate`` FLOP/s."""
    sides = {}
    try:
        sides["gpunet"] = GpunetCNN(backend, digits)
    except ImportError:  # an older checkout (--gpunet-root) without LayerStack
        sides["gpunet"] = None
    if torch is not None:
        sides["pytorch"] = TorchCNN(torch, device, digits)
    times = compare({name: side for name, side in sides.items() if side is not None}, CNN_BATCH, repeats, repeats)
    times.setdefault("gpunet", "no LayerStack in this checkout")
    work = f"CNN epoch, batch {CNN_BATCH}, Adam"
    flops = cnn_epoch_flops(len(digits))
    return [row(device, work, times),
            (device, "floor: FLOPs of a CNN epoch", f"{1e3 * flops / rate:9.2f}", "",
             f"{flops / 1e9:.0f} GFLOP at {rate / 1e9:.0f} GFLOP/s (large sgemm)")]


# -- the table --------------------------------------------------------------------------
def row(device: str, work: str, times: dict) -> tuple:
    """A timed row: gpunet's and PyTorch's times and their ratio."""
    return (device, work, cell(times["gpunet"]), cell(times["pytorch"]) if "pytorch" in times else "-",
            ratio(times["gpunet"], times.get("pytorch")))


def cell(times) -> str:
    if isinstance(times, str):
        return times
    return f"{1e3 * statistics.median(times):9.2f} ({1e3 * min(times):.2f})"


def ratio(ours, theirs) -> str:
    if isinstance(ours, str) or isinstance(theirs, str) or theirs is None:
        return "-"
    return f"{statistics.median(ours) / statistics.median(theirs):.2f}x"


def print_launches() -> None:
    """--launches: tests/launch_count.py's tables, each case trained on the CuPy stand-in."""
    from tests import launch_count
    from tests.kernel_support import HostWalk, WalkProcess, build_walk

    with tempfile.TemporaryDirectory() as folder:
        process = WalkProcess(build_walk(Path(folder)), Path(folder))
        try:
            counts = [launch_count.count(case, HostWalk(process))
                      for case in (*launch_count.CASES, *launch_count.GRAPH_CASES)]
        finally:
            process.close()
    print(launch_count.report(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each case, per side")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--gpunet-root", help="time the gpunet package of another checkout (before/after)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="mini-batch sizes, comma-separated")
    parser.add_argument("--samples", type=int, default=M, help="digits in the full batch and each epoch")
    parser.add_argument("--data", type=Path, default=DATA, help="a Kaggle train.csv.gz (synthetic digits where missing)")
    parser.add_argument("--cnn-repeats", type=int, default=CNN_REPEATS,
                        help=f"timed epochs of the CNN ({CNN_ARCH}) per side; 0 leaves it out")
    parser.add_argument("--threads", type=int, help="PyTorch's and BLAS's threads (default: as the libraries set them)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="on CUDA, replay each whole mini-batch step as one captured graph (gpunet train --cuda-graph)")
    parser.add_argument("--launches", action="store_true",
                        help="time nothing: count a training step's GPU launches, allocations and transfers on the "
                             "CuPy stand-in")
    args = parser.parse_args()
    if args.launches:
        if _other:
            parser.error("--launches counts this checkout's gpunet (its tests/ hold the stand-in), not --gpunet-root's")
        print_launches()
        return
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: give 1 or more")
    batches = [int(b) for b in args.batches.split(",") if b]
    try:
        import torch
    except ImportError:
        torch = None

    hold_threads(args.threads, torch)
    print("\n".join(describe_machine(torch)))
    import gpunet

    print(f"gpunet from {Path(gpunet.__file__).parent}")
    digits, source = bench_data(args.samples, args.data)
    print(f"Data: {source}")
    print(f"Network 784-16-16-10, float32; full batch: gradient descent, lr {LR}; "
          f"epochs: mini-batch SGD, lr {LR}, reshuffled each epoch")
    if args.cnn_repeats > 0:
        print(f"CNN: {CNN_ARCH} + a 10-way output, float32, Adam lr {CNN_LR}, batch {CNN_BATCH}, "
              f"{args.cnn_repeats} epochs per side, taking turns")
    print(f"Times in ms: median of {args.repeats} runs (fastest in brackets); ratio = gpunet / PyTorch\n")

    rows = []
    for device in devices(args.device):
        backend = gpunet_backend(device, args.cuda_graph)
        if device == "cuda":
            print(describe_cuda(backend, torch) + ("; each whole step one CUDA graph launch" if args.cuda_graph else ""))
        else:  # its default path: compiled (numba) where installed, else NumPy array calls
            path = backend.cpu_path() if hasattr(backend, "cpu_path") else "NumPy array calls (this checkout has no other)"
            print(f"gpunet on the CPU: {path}")
            if args.cnn_repeats > 0 and hasattr(backend, "layers_path"):
                print(f"gpunet's CNN on the CPU: {backend.layers_path()}; {cnn_steps(backend)}")
        rows += measure(device, backend, digits, batches, args.repeats, torch, args.cnn_repeats)

    reads = read_times(args.data)
    if reads is not None:
        rows.append(("cpu", "read train.csv.gz, first", f"{1e3 * reads[0]:9.2f}", "", "gpunet.files.data, parse"))
        rows.append(("cpu", "read train.csv.gz, cached", f"{1e3 * reads[1]:9.2f}", "", "gpunet.files.data, parse cache"))
    else:
        rows.append(("cpu", "read train.csv.gz", "-", "", "gpunet.files.data or the file is missing"))

    print(f"Load average while this ran (1, 5, 15 min): {load_average()}; other programs' load slows both sides\n")
    header = ("device", "work", "gpunet ms", "PyTorch ms", "gpunet/PyTorch")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()
