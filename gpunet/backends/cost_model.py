"""What one training step costs on a GPU and on the CPU, predicted without running it: ``--device auto``'s choice.

The model (issue 15), for one steady-state training step of a network at a batch size:

    GPU step = launches + bytes / memory bandwidth + FLOPs / peak arithmetic rate
        launches, eager:       the sum over the step's launches of the host's cost of one launch of its
                               kind from Python (a RawKernel, a CuPy elementwise kernel, a reduction, cuBLAS)
        launches, CUDA graph:  one graph launch + kernel nodes x the cost of one node in a replayed graph
    CPU step = per-step overhead + FLOPs / sustained rate + parameters x the optimizer's cost per parameter

The GPU's three terms are added although a GPU overlaps them (kernels run while Python launches the next):
the sum over-estimates its step, so where the model errs, ``--device auto`` errs towards the CPU. The
FLOPs term is at the datasheet's peak, which small products do not reach: for the CNN it is a floor, and
issue 15's point 6 (a profile on a real GPU) corrects it.

The CPU side is a model too, fitted to the epochs measured on this project's 2-core machines
(BENCHMARKS.md), not a timing taken at start-up: the same network and batch then give the same device on
every run, under any load, and the choice is tested like any other function. A larger CPU runs faster
than the model says, so it may lose a close call to the GPU it would have won; the calls that matter are
not close (the default network's eager GPU step is 3-6 times the CPU's, the CNN's CPU step 30 times the
GPU's).

A step's launches, bytes and FLOPs come from its layers: ``STEP_LAUNCHES`` counts the launches of each kind
of layer, in two cases: "today", the CUDA backend before issue 15's point 3, as counted on the CuPy stand-in
(issue 15's table: 46, 26 and 30 for the default network with adam, sgd and momentum, 62 for the CNN), and
"fused", the backend since (one optimizer kernel, no allocation in a step): the notes' network's bias add and
correct count inside its loss kernel and its bias gradients in one sum (16 launches with any optimizer), a
layer stack's still a loss and a count kernel, a sum per layer and dropout applied by CuPy (``FUSED_STACK``:
36 for the CNN). ``LAUNCHES_NOW`` names the case this checkout's CUDA backend runs;
tests/test_launch_budget.py holds its counts by kind to the stand-in's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from gpunet.nn import layers as L
from gpunet.nn.model import CLASSES, INPUTS, arch_input_shape, build_layers, parse_arch_text

US = 1e-6


# -- the launches of one step, by layer ---------------------------------------------------------------------
@dataclass(frozen=True)
class Launches:
    """Launches by kind, as issue 15's table counts them."""

    raw: int = 0  # gpunet's own kernels (kernels/*.cu, cupy.RawModule)
    elementwise: int = 0  # CuPy elementwise kernels: ufuncs, in-place arithmetic, fills
    reductions: int = 0  # CuPy reductions: a sum over the samples
    cublas: int = 0  # cuBLAS products

    def __add__(self, other: Launches) -> Launches:
        return Launches(*(a + b for a, b in zip(self.counts(), other.counts())))

    def counts(self) -> tuple[int, int, int, int]:
        return self.raw, self.elementwise, self.reductions, self.cublas

    @property
    def total(self) -> int:
        return sum(self.counts())


# STEP_LAUNCHES[case][part]: the launches of one steady-state training step, by part of the network
# (forward | backward). Check against `python scripts/bench.py --launches` (the stand-in's counts) after
# a change to the CUDA backend's step; tests/test_cost_model.py holds the totals to issue 15's table and budgets.
STEP_LAUNCHES = {
    "today": {  # the split by layer read off the code at 8942c6a; its totals by kind are issue 15's stand-in count
        "data": Launches(raw=1),  # gather_scaled: the batch's pixels, scaled and transposed
        "loss": Launches(raw=2, elementwise=2),  # softmax_cross_entropy, count_correct; the count's zero fill, its sum
        "dense": Launches(raw=2, reductions=1, cublas=2),  # W.A, bias_relu | relu_backward, db = sum(dZ), dW
        "output": Launches(elementwise=1, reductions=1, cublas=2),  # W.A, Z += b | db, dW
        "conv": Launches(raw=3, reductions=1, cublas=2),  # im2col, W.columns, bias_relu | relu_backward, db, dW
        "pool": Launches(raw=2),  # max_pool | max_pool_backward
        "dropout": Launches(raw=1, elementwise=2),  # the mask, A.mask | dA.mask
        "flatten": Launches(),  # a reshape: no launch
    },
    "fused": {  # issue 15's point 3 within its budgets
        "data": Launches(raw=1),
        "loss": Launches(raw=1),  # softmax-cross-entropy with the output's bias add and the correct count
        "dense": Launches(raw=2, cublas=2),  # W.A, bias_relu | relu_backward producing db, dW
        "output": Launches(reductions=1, cublas=2),  # W.A (its bias in the loss kernel) | db, dW
        "conv": Launches(raw=3, cublas=2),  # im2col, W.columns, bias_relu | relu_backward producing db, dW
        "pool": Launches(raw=2),
        "dropout": Launches(raw=2),  # mask and apply | apply
        "flatten": Launches(),
    },
}
# "fused" for a layer stack (any layer but Dense): where its step differs from the notes' network's.
FUSED_STACK = {
    "loss": Launches(raw=2),  # softmax_cross_entropy, count_correct (into the epoch's counter)
    "output": Launches(elementwise=1, reductions=1, cublas=2),  # W.A, Z += b | db = sum(dZ), dW
    "dense": Launches(raw=2, reductions=1, cublas=2),  # W.A, bias_relu | relu_backward, db, dW
    "conv": Launches(raw=3, reductions=1, cublas=2),  # im2col, W.columns, bias_relu | relu_backward, db, dW
    "dropout": Launches(raw=1, elementwise=2),  # the mask, A.mask | dA.mask
}
# The input gradient (dA = W^T.dZ, and col2im after a convolution), which the first layer with parameters skips.
INPUT_GRADIENT = {
    "dense": Launches(cublas=1),
    "output": Launches(cublas=1),
    "conv": Launches(raw=1, cublas=1),
}
# The optimizer's update, over the two flat parameter groups (all weights, all biases), without weight decay;
# "today": nn/optimizers.py's in-place NumPy-ufunc arithmetic, one launch per operation per group.
OPTIMIZER_LAUNCHES = {
    "today": {"gd": Launches(elementwise=4), "sgd": Launches(elementwise=4), "momentum": Launches(elementwise=8),
              "adam": Launches(elementwise=24)},
    "fused": {name: Launches(raw=1) for name in ("gd", "sgd", "momentum", "adam")},  # one kernel, decay included
}
WEIGHT_DECAY_LAUNCHES = {"today": Launches(elementwise=1), "fused": Launches()}  # W *= 1 - alpha.lambda
# Values each optimizer reads and writes per parameter in one step. Fused: Adam reads p, g, m, s and writes
# p, m, s. Today: each elementwise launch reads up to two arrays and writes one.
OPTIMIZER_VALUES = {"fused": {"gd": 3, "sgd": 3, "momentum": 5, "adam": 7}, "today_per_launch": 3}
CASES = tuple(STEP_LAUNCHES)
# The case the CUDA backend of this checkout runs (tests/test_launch_budget.py: the stand-in's counts by kind).
LAUNCHES_NOW = "fused"


# -- the devices --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchCosts:
    """Seconds the host spends on one launch from Python (eager), and a replayed CUDA graph's costs."""

    # A CuPy RawKernel call: 5 us, the figure and the low end of what is published for one
    # launch from Python: "usually, the launch time on the CPU side is between 5-20 microseconds"
    # (HolisticTraceAnalysis docs, docs/source/features/cuda_kernel_launch_stats.rst, for PyTorch's
    # launches); 4-6 us for the driver and runtime calls of one launch alone, from C++
    # (susun-blog.com/blog/pegainfer-3-cuda-graph, RTX 5070 Ti, CUDA 13.0).
    raw: float = 5 * US
    # A CuPy elementwise kernel: 8.3-8.7 us of CPU per ElementwiseKernel call (cupy/cupy#2474), 10.9-12.2 us
    # for cupy.abs on 100 values (cupy/cupy#3298).
    elementwise: float = 10 * US
    # A CuPy reduction: 27-28 us of CPU per ReductionKernel call (cupy/cupy#7265).
    reduction: float = 28 * US
    # A cuBLAS product from Python: 8.3-8.6 us per torch.matmul of 512x512 (pytorch/pytorch#161822), and
    # CuPy's matmul spends more on the host than PyTorch's (cupy/cupy#8191).
    cublas: float = 10 * US
    # A replayed graph, from CUDA.jl's manual (cuda.juliagpu.org, "Graphs"): a small MLP at batch 16 (four
    # products and four broadcasts, 8 kernels) takes 50 us a call eagerly and 16 us as a graph, with the
    # CPU busy 8 us of it; 80 broadcast kernels (10 RK4 steps) go from 260 us to 70 us. So: 8 us to launch
    # a graph, and 2 us a kernel node (16 us / 8 nodes, the MLP's, products included; 0.9 us for RK4's).
    graph_launch: float = 8 * US
    graph_node: float = 2 * US

    def eager(self, launches: Launches) -> float:
        return (launches.raw * self.raw + launches.elementwise * self.elementwise
                + launches.reductions * self.reduction + launches.cublas * self.cublas)

    def graph(self, launches: Launches) -> float:
        return self.graph_launch + launches.total * self.graph_node


@dataclass(frozen=True)
class Gpu:
    """A GPU's memory bandwidth (bytes/s) and peak arithmetic (FLOP/s, without tensor cores: CuPy's cuBLAS
    products of float32 do not use TF32 unless CUPY_TF32=1)."""

    name: str
    bandwidth: float
    fp32: float
    fp64: float
    launch: LaunchCosts = LaunchCosts()

    def peak(self, itemsize: int) -> float:
        return self.fp64 if itemsize == 8 else self.fp32


# NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100), "Technical Specifications":
# H100 SXM 3.35 TB/s, FP32 67 TFLOPS, FP64 34 TFLOPS; H100 PCIe 2 TB/s, 51 and 26. (132 SMs x 128 FP32
# lanes x 2 FLOP x 1.98 GHz = 66.9 TFLOPS for the SXM.)
H100_SXM = Gpu("H100 SXM", 3.35e12, 67e12, 34e12)
H100_PCIE = Gpu("H100 PCIe", 2.0e12, 51e12, 26e12)
# NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): 4.8 TB/s, FP32 67 TFLOPS, FP64 34 TFLOPS.
H200 = Gpu("H200", 4.8e12, 67e12, 34e12)
# A device none of the above names and whose properties do not give its rates: taken as slow as an NVIDIA
# T4 (datasheet: 320 GB/s, FP32 8.1 TFLOPS; FP64 at 1/32 of it), the slowest data-centre card CuPy supports
# today.
T4_FLOOR = Gpu("T4-class (assumed)", 320e9, 8.1e12, 8.1e12 / 32)
# FP32 lanes per SM by compute capability (CUDA C++ Programming Guide, "Arithmetic Instructions",
# throughput of 32-bit floating-point add, multiply, multiply-add): 64 on 6.0, 7.x, 8.0; 128 on the others.
FP32_LANES_64 = (60, 70, 72, 75, 80)
FP64_HALF_RATE = (60, 70, 80, 90, 100)  # data-centre parts: FP64 at half the FP32 rate; others at 1/32 or less


def gpu_from_properties(props: dict) -> Gpu:
    """The Gpu for a device's ``cudaDeviceProp`` (CuPy's getDeviceProperties): by name for the cards this
    module cites, else from its clocks, bus width and SM count where the runtime reports them (CUDA 13
    dropped clockRate and memoryClockRate), else T4_FLOOR."""
    name = props.get("name", b"")
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    if "H200" in name:
        return replace(H200, name=name)
    if "H100" in name:
        return replace(H100_PCIE if "PCIe" in name else H100_SXM, name=name)
    try:
        capability = 10 * int(props["major"]) + int(props["minor"])
        clock = float(props["clockRate"]) * 1e3  # kHz
        memory_clock = float(props["memoryClockRate"]) * 1e3  # kHz, double data rate
        bus_bytes = int(props["memoryBusWidth"]) / 8
        sms = int(props["multiProcessorCount"])
    except (KeyError, TypeError, ValueError):
        return replace(T4_FLOOR, name=name or T4_FLOOR.name)
    if min(clock, memory_clock, bus_bytes, sms) <= 0:
        return replace(T4_FLOOR, name=name or T4_FLOOR.name)
    fp32 = sms * (64 if capability in FP32_LANES_64 else 128) * 2 * clock
    return Gpu(name, 2 * memory_clock * bus_bytes, fp32, fp32 / (2 if capability in FP64_HALF_RATE else 32))


@dataclass(frozen=True)
class Cpu:
    """The CPU step's model: seconds a step beyond its products, products' sustained FLOP/s, and the
    optimizer's seconds per parameter beyond SGD's."""

    name: str
    step_overhead: float
    flops: float
    optimizer_per_parameter: dict


# Fitted to BENCHMARKS.md's 2-core Intel Xeon, NumPy 2.4.6 / OpenBLAS 0.3.31, numba 0.68.1 ("the compiled
# dense path at every width", Adam and SGD, batch 64, m = 41,000; "the CNN epoch"): SGD epochs give
# 89-113 GFLOP/s over widths 64-800 (16-16: 36.3 ms) -> 110 GFLOP/s and 25 us a step; Adam's epochs are
# 2.2-2.9 ns a parameter a step longer than SGD's at widths 64-800 -> 2.5 ns. Momentum was not measured:
# half Adam's. The CNN's (Adam, batch 128) predicted 8.9 s an epoch against 7.6-9.0 s measured at 3a0b604.
CPU_REFERENCE = Cpu("a 2-core x86", 25 * US, 110e9,
                    {"gd": 0.0, "sgd": 0.0, "momentum": 1.25e-9, "adam": 2.5e-9})


# -- a step's work, from its layers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One training step's work: its launches, the bytes its kernels read and write, its FLOPs."""

    launches: Launches
    bytes: float
    flops: float
    parameters: int
    optimizer: str
    batch: int


def network_layers(hidden=(16, 16), arch: str | None = None, inputs: int = INPUTS, classes: int = CLASSES):
    """The built layers of ``--hidden`` sizes or an ``--arch`` spec (with the implied Flatten and output layer)."""
    parts = parse_arch_text(arch) if arch else tuple(f"dense{units}" for units in hidden)
    return build_layers(parts, arch_input_shape(parts, inputs), classes)


def step_work(layers, batch: int, optimizer: str = "adam", weight_decay: float = 0.0, itemsize: int = 4,
              case: str = LAUNCHES_NOW) -> Step:
    """The launches, bytes and FLOPs of one training step of ``layers`` (network_layers) on ``batch`` samples."""
    table, m = STEP_LAUNCHES[case], batch
    if case == "fused" and not all(isinstance(layer, L.Dense) for layer in layers):  # a layer stack
        table = {**table, **FUSED_STACK}
    launches = table["data"] + table["loss"]
    features, classes = math.prod(layers[0].input_shape), math.prod(layers[-1].output_shape)
    values = features * m + 2 * classes * m + m  # the batch written as floats; the logits read, dZ and losses written
    data_bytes = features * m + 8 * m  # its uint8 pixels and int64 indices
    flops, parameters, first = 0.0, 0, True
    for layer in layers:
        part = _part(layer)
        launches += table[part]
        inputs, outputs = math.prod(layer.input_shape) * m, math.prod(layer.output_shape) * m
        weights = sum(math.prod(shape) for shape in layer.param_shapes())
        parameters += weights
        input_gradient = part in INPUT_GRADIENT and not first
        if input_gradient:
            launches += INPUT_GRADIENT[part]
        if part in INPUT_GRADIENT:
            first = False
            # a convolution's products take its columns (C.k.k, H_out.W_out.m) for the dense layer's A (inputs, m)
            columns = layer.fan_in * math.prod(layer.output_shape[1:]) * m if part == "conv" else inputs
            products = 3 if input_gradient else 2  # Z = W.A, dW = dZ.A^T, dA = W^T.dZ
            flops += products * 2 * layer.outputs * columns
            values += _layer_values(part, inputs, outputs, columns, weights, products, input_gradient)
        elif part == "pool":
            values += 2 * inputs + 3 * outputs  # read x, write y and argmax | read dy and argmax, write dx
        elif part == "dropout":
            values += 7 * outputs  # write the mask, read A and the mask, write | read dA and the mask, write
    optimizer_launches = OPTIMIZER_LAUNCHES[case][optimizer]
    if weight_decay:
        optimizer_launches += WEIGHT_DECAY_LAUNCHES[case]
    values += parameters * _optimizer_values(case, optimizer)
    return Step(launches + optimizer_launches, itemsize * values + data_bytes, flops, parameters, optimizer, batch)


def _layer_values(part: str, inputs: int, outputs: int, columns: int, weights: int, products: int,
                  input_gradient: bool) -> int:
    """Values a dense layer or a convolution reads and writes in one step (each kernel from and to memory)."""
    values = products * (weights + columns + outputs)  # each product reads its operands and writes its result
    values += 2 * outputs + outputs  # the bias add (and ReLU) reads and writes Z | the bias gradient reads dZ
    if part != "output":
        values += 3 * outputs  # relu_backward reads dA and A, writes dZ (the output's dZ comes from the loss)
    if part == "conv":
        values += inputs + columns  # im2col reads x, writes the columns
        if input_gradient:
            values += columns + inputs  # col2im reads dcolumns, writes dx
    return values


def _part(layer) -> str:
    if isinstance(layer, L.Conv2D):
        return "conv"
    if isinstance(layer, L.MaxPool2D):
        return "pool"
    if isinstance(layer, L.Dropout):
        return "dropout"
    if isinstance(layer, L.Flatten):
        return "flatten"
    if isinstance(layer, L.Dense):
        return "dense" if layer.relu else "output"
    raise TypeError(f"the cost model has no launch count for a {type(layer).__name__} layer")


def _optimizer_values(case: str, optimizer: str) -> int:
    if case == "fused":
        return OPTIMIZER_VALUES["fused"][optimizer]
    per_group = OPTIMIZER_LAUNCHES[case][optimizer].total // 2
    return OPTIMIZER_VALUES["today_per_launch"] * per_group


# -- predictions and the choice ---------------------------------------------------------------------------------
# What a replayed step adds to the eager step's launches: kernels/step.cu's batch_begin and batch_end, which read
# the step's number on the device (training/graph_epoch.py; tests/test_launch_budget.py counts them).
GRAPH_STEP_KERNELS = Launches(raw=2)


def gpu_step_seconds(step: Step, gpu: Gpu, graph: bool = False, itemsize: int = 4) -> float:
    """The model's GPU step: launches (eager, or one replayed graph) + bytes / bandwidth + FLOPs / peak."""
    launches = gpu.launch.graph(step.launches + GRAPH_STEP_KERNELS) if graph else gpu.launch.eager(step.launches)
    return launches + step.bytes / gpu.bandwidth + step.flops / gpu.peak(itemsize)


def cpu_step_seconds(step: Step, cpu: Cpu = CPU_REFERENCE) -> float:
    """The model's CPU step: overhead + FLOPs / sustained rate + parameters x the optimizer's cost."""
    return cpu.step_overhead + step.flops / cpu.flops + step.parameters * cpu.optimizer_per_parameter[step.optimizer]


@dataclass(frozen=True)
class Choice:
    """``--device auto``'s pick between a usable GPU and the CPU, and the predictions behind it."""

    device: str  # "cuda" or "cpu"
    gpu_step: float
    cpu_step: float
    gpu: str
    launches: int
    graph: bool

    def line(self) -> str:
        """The banner's line: which device and why."""
        chosen = "the GPU" if self.device == "cuda" else "the CPU"
        how = "as one CUDA graph" if self.graph else "launched one by one from Python"
        return (f"--device auto chose {chosen}: the cost model predicts {self.gpu_step / US:,.0f} us a step on "
                f"{self.gpu} ({self.launches} kernels {how}) against {self.cpu_step / US:,.0f} us on the CPU "
                f"(modelled on {CPU_REFERENCE.name}; BENCHMARKS.md)")


def choose(step: Step, gpu: Gpu, graph: bool = False, cpu: Cpu = CPU_REFERENCE, itemsize: int = 4) -> Choice:
    """The GPU where the model predicts its step faster than the CPU's; the CPU otherwise (a tie included: it
    needs no device memory, and its first step compiles nothing)."""
    gpu_step, cpu_step = gpu_step_seconds(step, gpu, graph, itemsize), cpu_step_seconds(step, cpu)
    return Choice("cuda" if gpu_step < cpu_step else "cpu", gpu_step, cpu_step, gpu.name, step.launches.total, graph)


def training_step(config, samples: int, inputs: int = INPUTS, classes: int = CLASSES, case: str = LAUNCHES_NOW) -> Step:
    """The Step of a run's settings (a TrainConfig: hidden, arch, batch_size, optimizer, weight_decay, dtype)
    on ``samples`` training samples (a full batch is all of them) of ``inputs`` features and ``classes`` classes."""
    import numpy as np

    batch = config.batch_size if 0 < config.batch_size < samples else samples
    layers = network_layers(config.hidden, config.arch, inputs, classes)
    return step_work(layers, max(batch, 1), config.optimizer, config.weight_decay, np.dtype(config.dtype).itemsize,
                     case)
