"""The cost model's predicted training step and epoch times (gpunet/backends/cost_model.py), as BENCHMARKS.md gives them:

    python scripts/predict_step_times.py            # H100 SXM
    python scripts/predict_step_times.py --gpu h200

For the default network (784-16-16-10, batch 64, each optimizer with gpunet train's weight decay) and issue
15's CNN (conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5, Adam, batch 128), over an epoch of 41,000
digits: the GPU step with today's launches and with point 3's fused ones, each launched eagerly from Python
or, fused, replayed as one CUDA graph; the CPU step the model predicts. Nothing is timed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # gpunet from this checkout, installed or not

from gpunet.backends import cost_model as cm  # noqa: E402
from gpunet.nn.optimizers import DEFAULTS  # noqa: E402

SAMPLES = 41_000
CNN = "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5"
GPUS = {"h100": cm.H100_SXM, "h100-pcie": cm.H100_PCIE, "h200": cm.H200}
# (case, graph) for each GPU column; a graph needs point 3's allocation-free step, so only "fused" has one.
MODES = (("today", False), ("fused", False), ("fused", True))


def rows():
    """(network, optimizer, batch, {case/graph: (launches, GPU step s)}, CPU step s) for each row of the table."""
    networks = [("784-16-16-10", None, optimizer, 64) for optimizer in ("adam", "sgd", "momentum")]
    networks.append(("CNN", CNN, "adam", 128))
    for name, arch, optimizer, batch in networks:
        layers = cm.network_layers(arch=arch)
        steps = {case: cm.step_work(layers, batch, optimizer, DEFAULTS[optimizer]["weight_decay"], 4, case)
                 for case in cm.CASES}
        yield name, optimizer, batch, steps, cm.cpu_step_seconds(steps["today"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", choices=GPUS, default="h100")
    gpu = GPUS[parser.parse_args().gpu]
    print(f"GPU: {gpu.name}, {gpu.bandwidth / 1e12:.2f} TB/s, {gpu.fp32 / 1e12:.0f} TFLOPS FP32; "
          f"epoch: {SAMPLES:,} digits; step in us, epoch in ms")
    header = ["network", "optimizer", "launches today/fused", "MB a step", "MFLOP a step"]
    header += [f"{case}{' graph' if graph else ' eager'}: step, epoch" for case, graph in MODES]
    header += ["CPU model: step, epoch"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, optimizer, batch, steps, cpu_step in rows():
        epoch_steps = math.ceil(SAMPLES / batch)
        cells = [name, f"{optimizer}, batch {batch}",
                 f"{steps['today'].launches.total} / {steps['fused'].launches.total}",
                 f"{steps['today'].bytes / 1e6:.2f} / {steps['fused'].bytes / 1e6:.2f}",
                 f"{steps['today'].flops / 1e6:,.1f}"]
        for case, graph in MODES:
            seconds = cm.gpu_step_seconds(steps[case], gpu, graph)
            cells.append(f"{seconds * 1e6:,.0f} us, {seconds * epoch_steps * 1e3:,.1f} ms")
        cells.append(f"{cpu_step * 1e6:,.0f} us, {cpu_step * epoch_steps * 1e3:,.0f} ms")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
