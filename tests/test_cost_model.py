"""The cost model of a training step (gpunet/backends/cost_model.py) and ``--device auto``'s choice by it.

The launch counts are held to issue 15's table (counted on the CuPy stand-in) and budgets, the FLOPs to an
independent count (BENCHMARKS.md's 947 GFLOP a CNN epoch), a device's rates to NVIDIA's datasheets, and
the choice is tested on fake devices and on the CuPy stand-in, for the default network (the CPU wins),
the CNN (the GPU wins) and the boundary.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpunet.backends import cost_model as cm
from gpunet.backends.cpu import CpuBackend

CNN = "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5"  # issue 15's CNN
OPTIMIZERS = ("gd", "sgd", "momentum", "adam")


def default_step(optimizer="adam", case="today", weight_decay=0.1, batch=64):
    return cm.step_work(cm.network_layers(), batch, optimizer, weight_decay, 4, case)


def cnn_step(case="today", optimizer="adam", weight_decay=0.1):
    return cm.step_work(cm.network_layers(arch=CNN), 128, optimizer, weight_decay, 4, case)


# -- the launch table -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("optimizer", "counts"), [
    ("adam", (7, 28, 3, 8)), ("sgd", (7, 8, 3, 8)), ("momentum", (7, 12, 3, 8)),
])
def test_todays_launches_are_issue_15s_count_of_the_default_network(optimizer, counts):
    """784-16-16-10 at batch 64 (weight decay on, as gpunet train's defaults): RawKernel, elementwise,
    reductions, cuBLAS as counted on the stand-in: 46, 26 and 30 launches."""
    assert default_step(optimizer).launches.counts() == counts


def test_todays_launches_are_issue_15s_count_of_the_cnn():
    assert cnn_step().launches.counts() == (17, 30, 4, 11)  # 62 launches


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_fused_launches_are_within_issue_15s_budgets(optimizer, weight_decay):
    assert default_step(optimizer, "fused", weight_decay).launches.total <= 16
    assert cnn_step("fused", optimizer, weight_decay).launches.total <= 40


def test_weight_decay_is_one_launch_today_and_none_fused():
    assert default_step("sgd", weight_decay=0.1).launches.total - default_step("sgd", weight_decay=0.0).launches.total == 1
    assert default_step("sgd", "fused", 0.1).launches == default_step("sgd", "fused", 0.0).launches


def test_a_layer_the_model_does_not_know_is_refused():
    class Mystery:
        input_shape, output_shape = (4,), (4,)

    with pytest.raises(TypeError, match="no launch count for a Mystery layer"):
        cm.step_work([Mystery()], 8)


# -- FLOPs and bytes ----------------------------------------------------------------------------------------
def test_the_default_networks_flops_are_its_products():
    """Forward W.A for each layer, dW for each, dA for all but the first: 2 FLOPs a multiply-add."""
    m, sizes = 64, [(784, 16), (16, 16), (16, 10)]
    expected = sum(2 * n_in * n_out * m * (2 if k == 0 else 3) for k, (n_in, n_out) in enumerate(sizes))
    assert default_step(batch=m).flops == expected
    assert default_step(batch=m).parameters == 784 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10


def test_the_cnns_flops_are_benchmarks_947_gflop_an_epoch():
    """BENCHMARKS.md ("the CNN epoch", measured independently): the products of one epoch of 41,000 digits,
    without dropout (it has no product), are 947 GFLOP."""
    step = cm.step_work(cm.network_layers(arch="conv32k5,pool2,conv64k5,pool2,dense256"), 128)
    assert step.flops * 41_000 / 128 == pytest.approx(947e9, rel=1e-3)


def test_bytes_grow_with_the_batch_and_the_optimizers_state():
    assert default_step(batch=128).bytes > default_step(batch=64).bytes
    assert default_step("adam", "fused").bytes > default_step("momentum", "fused").bytes > default_step(
        "sgd", "fused").bytes


# -- the devices --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "gpu"), [
    (b"NVIDIA H100 80GB HBM3", cm.H100_SXM), ("NVIDIA H100 PCIe", cm.H100_PCIE), (b"NVIDIA H200", cm.H200),
])
def test_the_cited_cards_are_known_by_name(name, gpu):
    found = cm.gpu_from_properties({"name": name, "major": 9, "minor": 0})
    assert (found.bandwidth, found.fp32, found.fp64) == (gpu.bandwidth, gpu.fp32, gpu.fp64)
    assert found.name == (name.decode() if isinstance(name, bytes) else name)


def test_another_cards_rates_come_from_its_properties():
    """An A100 40GB's cudaDeviceProp (108 SMs at 1,410 MHz, HBM2 at 1,215 MHz on 5,120 bits): the A100
    datasheet's 19.5 TFLOPS FP32, 9.7 FP64 (without tensor cores), 1,555 GB/s."""
    props = {"name": b"NVIDIA A100-SXM4-40GB", "major": 8, "minor": 0, "multiProcessorCount": 108,
             "clockRate": 1_410_000, "memoryClockRate": 1_215_000, "memoryBusWidth": 5120}
    gpu = cm.gpu_from_properties(props)
    assert gpu.fp32 == pytest.approx(19.5e12, rel=0.01)
    assert gpu.fp64 == pytest.approx(9.7e12, rel=0.01)
    assert gpu.bandwidth == pytest.approx(1555e9, rel=0.01)


@pytest.mark.parametrize("props", [
    {"name": b"CuPy stand-in", "major": 8, "minor": 6},  # no clocks (CUDA 13 dropped them)
    {"name": b"Some GPU", "major": 8, "minor": 6, "multiProcessorCount": 0, "clockRate": 0,
     "memoryClockRate": 0, "memoryBusWidth": 0},
])
def test_a_card_whose_rates_are_unknown_is_taken_as_a_t4(props):
    gpu = cm.gpu_from_properties(props)
    assert (gpu.bandwidth, gpu.fp32) == (cm.T4_FLOOR.bandwidth, cm.T4_FLOOR.fp32)


def test_the_eager_and_graph_costs_add_up_as_stated():
    """Eager: each launch's host cost by kind; graph: one launch plus a cost per node."""
    costs = cm.LaunchCosts()
    launches = cm.Launches(raw=1, elementwise=2, reductions=3, cublas=4)
    assert costs.eager(launches) == pytest.approx(1 * costs.raw + 2 * costs.elementwise + 3 * costs.reduction
                                                  + 4 * costs.cublas)
    assert costs.graph(launches) == pytest.approx(costs.graph_launch + 10 * costs.graph_node)
    step = default_step()
    assert cm.gpu_step_seconds(step, cm.H100_SXM) == pytest.approx(
        costs.eager(step.launches) + step.bytes / 3.35e12 + step.flops / 67e12)


# -- the choice ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "momentum"])
def test_the_default_network_trains_on_the_cpu_when_launched_eagerly(optimizer):
    """Today's 26-46 launches from Python cost an H100 more than the CPU's whole step; after point 3's fusion
    too (16 launches, eagerly)."""
    for case in cm.CASES:
        choice = cm.choose(default_step(optimizer, case), cm.H100_SXM)
        assert choice.device == "cpu" and choice.gpu_step > choice.cpu_step


def test_the_default_network_trains_on_the_gpu_as_one_fused_graph():
    choice = cm.choose(default_step("sgd", "fused"), cm.H100_SXM, graph=True)
    assert choice.device == "cuda" and choice.gpu_step < choice.cpu_step


@pytest.mark.parametrize("case", cm.CASES)
def test_the_cnn_trains_on_the_gpu_at_least_30_times_faster(case):
    choice = cm.choose(cnn_step(case), cm.H100_SXM)
    assert choice.device == "cuda" and choice.cpu_step >= 30 * choice.gpu_step
    assert cm.choose(cnn_step(case), cm.T4_FLOOR).device == "cuda"  # on the slowest card assumed, too


def test_at_the_boundary_a_tie_goes_to_the_cpu():
    """A CPU whose step takes exactly the GPU's predicted step (all of it overhead): the CPU; a hair slower: the GPU."""
    step = default_step()
    gpu_step = cm.gpu_step_seconds(step, cm.H100_SXM)
    tie = cm.Cpu("tie", gpu_step, float("inf"), {"adam": 0.0})
    assert cm.cpu_step_seconds(step, tie) == gpu_step
    assert cm.choose(step, cm.H100_SXM, cpu=tie).device == "cpu"
    slower = replace(tie, step_overhead=gpu_step * (1 + 1e-9))
    assert cm.choose(step, cm.H100_SXM, cpu=slower).device == "cuda"


def test_the_choice_says_which_device_and_why_in_one_line():
    line = cm.choose(default_step(), cm.H100_SXM).line()
    assert line.startswith("--device auto chose the CPU: the cost model predicts ") and "\n" not in line
    assert "on H100 SXM (46 kernels launched one by one from Python) against " in line
    assert line.endswith(" us on the CPU (modelled on a 2-core x86; BENCHMARKS.md)")
    assert cm.choose(cnn_step(), cm.H100_SXM).line().startswith("--device auto chose the GPU: ")


# -- --device auto on the CuPy stand-in ------------------------------------------------------------------------
@pytest.fixture
def h100(stand_in_cuda, monkeypatch):
    """The CUDA backend on the stand-in, its device calling itself an H100."""
    from gpunet.backends import cuda as backend_cuda

    monkeypatch.setitem(backend_cuda.cupy.DEVICE_PROPERTIES, "name", b"NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(backend_cuda, "unavailable_reason", lambda: None)
    return stand_in_cuda


@pytest.mark.kernels
def test_device_auto_follows_the_cost_model_on_the_stand_in(h100):
    from gpunet.backends.devices import follow_cost_model

    backend, line = follow_cost_model("auto", h100, default_step())
    assert isinstance(backend, CpuBackend) and line.startswith("--device auto chose the CPU: ")
    backend, line = follow_cost_model("auto", h100, cnn_step())
    assert backend is h100 and line.startswith("--device auto chose the GPU: ") and "on NVIDIA H100" in line
    assert follow_cost_model("cuda", h100, default_step()) == (h100, None)  # --device cuda forces the GPU
    cpu = CpuBackend()
    assert follow_cost_model("auto", cpu, cnn_step()) == (cpu, None)  # no usable CUDA: nothing to choose


@pytest.mark.kernels
def test_gpunet_train_says_which_device_auto_chose(h100, tmp_path, capsys):
    """The default network with a usable (stand-in) H100: trained on the CPU, the banner saying why."""
    from tests.conftest import run

    code, out, err = run(capsys, "train", "--epochs", "1", "--val-size", "100", "--out", str(tmp_path / "m.npz"))
    assert code == 0, err
    lines = out.splitlines()
    device_line = next(line for line in lines if line.startswith("Device: "))
    assert device_line.startswith("Device: --device auto chose the CPU: the cost model predicts ")
    network_line = next(line for line in lines if line.startswith("Network "))
    assert " on CPU" in network_line and "CUDA" not in network_line


def test_the_predictions_script_prints_benchmarks_rows():
    """scripts/predict_step_times.py: a row for the default network per optimizer and one for the CNN."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "predict_step_times.py"
    done = subprocess.run([sys.executable, str(script), "--gpu", "h200"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 784") or line.startswith("| CNN")]
    assert [row.split(" | ")[2] for row in rows] == ["46 / 16", "26 / 16", "30 / 16", "62 / 36"]
    assert done.stdout.startswith("GPU: H200, 4.80 TB/s")


@pytest.mark.kernels
def test_the_estimators_device_auto_follows_the_cost_model(h100, capsys):
    """gpunet.Classifier(device="auto") chooses as gpunet train does: the small dense network on the CPU."""
    from gpunet import Classifier
    from gpunet.files.data import load_sample

    digits = load_sample()
    Classifier(epochs=5, verbose=True, val_size=0.1).fit(digits.images[:1000], digits.labels[:1000])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("--device auto chose the CPU: the cost model predicts ")


@pytest.mark.kernels
def test_gpunet_train_cuda_graph_judges_the_gpu_by_its_graph_figures(h100, tmp_path, capsys):
    """--cuda-graph: --device auto weighs the replayed step (18 nodes, one launch), which beats the CPU's for the
    default network, so it trains on the (stand-in) H100, each whole step after the first one graph launch;
    --device cpu ignores the option. The stand-in refuses cuBLAS while capturing, as CuPy does: the default
    network's products are gpunet's matmul kernel in a --cuda-graph run, so its step is captured all the same."""
    from tests.conftest import run
    from tests.cupy_stand_in import GRAPH

    assert not h100.captures_products()
    code, out, err = run(capsys, "train", "--cuda-graph", "--epochs", "1", "--val-size", "100",
                         "--out", str(tmp_path / "m.npz"))
    assert code == 0, err
    lines = out.splitlines()
    assert next(line for line in lines if line.startswith("Device: ")).startswith("Device: --device auto chose the "
                                                                                "GPU: ")
    assert "CUDA graph: each whole batch's step captured once, then replayed as one launch" in lines
    assert sum(event.kind == GRAPH for event in h100.xp.events) > 0
    code, out, err = run(capsys, "train", "--cuda-graph", "--device", "cpu", "--epochs", "1", "--val-size", "100",
                         "--out", str(tmp_path / "cpu.npz"))
    assert code == 0, err
    assert "CUDA graph" not in out and " on CPU" in next(line for line in out.splitlines() if line.startswith("Network "))


@pytest.mark.kernels
@pytest.mark.parametrize("network", [("--hidden", "512"), ("--arch", "conv8k5,pool2,dense16")])
def test_gpunet_train_cuda_graph_where_cupy_refuses_cublas_in_capture(h100, tmp_path, capsys, network):
    """As CuPy is (it refuses every cuBLAS call on a capturing stream), --cuda-graph cannot replay a step whose
    products are too large for gpunet's matmul kernel (784-512-10's first, 25.7 M multiply-adds at batch 64; a
    convolution's, 7.4 M for conv8k5): --device cuda trains eagerly, and the banner says why no graph is used."""
    from tests.conftest import run
    from tests.cupy_stand_in import GRAPH

    code, out, err = run(capsys, "train", "--cuda-graph", "--device", "cuda", *network, "--epochs", "1",
                         "--val-size", "10800", "--out", str(tmp_path / "m.npz"))
    assert code == 0, err
    assert ("CUDA graph: not used (this CuPy refuses cuBLAS products while a stream is captured, and this network's "
            "are too large for gpunet's product kernel); the steps run eagerly") in out.splitlines()
    assert not any(event.kind == GRAPH for event in h100.xp.events)
    assert any(event.kind == "cublas" for event in h100.xp.events)
