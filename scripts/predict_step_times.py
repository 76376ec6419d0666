"""The cost model's predicted training step and epoch times (gpunet/backends/cost_model.py), as BENCHMARKS.md gives them:

    python scripts/predict_step_times.py            # H100 SXM
    python scripts/predict_step_times.py --gpu h200
    python scripts/predict_step_times.py --presets  # each gpunet train --preset's step, epoch and run

For the default network (784-16-16-10, batch 64, each optimizer with gpunet train's weight decay) and issue
15's CNN (conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5, Adam, batch 128), over an epoch of 41,000
digits: the GPU step with today's launches and with point 3's fused ones, each launched eagerly from Python
or, fused, replayed as one CUDA graph; the CPU step the model predicts. Nothing is timed.

--presets: the same for each preset's network, optimizer, decay and batch (scripts/bench_presets.py's
``preset_config``, what ``gpunet train --preset`` runs) on 41,000 training digits, with the CUDA backend's
launches of this checkout (the model's LAUNCHES_NOW), eager and as one graph a step, and the whole run: the
preset's epochs times its epoch. The model counts the training steps alone: the per-epoch evaluation of the
held-out digits, reading the data and the start-up are not in it, nor is augmentation's sampling (``cnn``'s
--augment: one more kernel and a pass over the batch's pixels a step, small beside the CNN's products).
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


def preset_rows(samples: int = SAMPLES):
    """(preset, network, settings, steps an epoch, epochs, Step) of each preset, as gpunet train --preset runs it."""
    scripts = str(Path(__file__).resolve().parent)
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    from bench_presets import network_text, preset_config

    from gpunet.training.presets import PRESETS

    for name in PRESETS:
        config = preset_config(name)
        step = cm.training_step(config, samples)
        batch = "full batch" if config.batch_size <= 0 else f"batch {config.batch_size}"
        settings = f"{config.optimizer}, {batch}, {config.epochs} epochs" + (", augment" if config.augment else "")
        yield name, network_text(config), settings, math.ceil(samples / step.batch), config.epochs, step


def print_presets(gpu) -> None:
    """--presets: each preset's step, epoch and run on the GPU (eager and as one graph) and the CPU model's."""
    print(f"GPU: {gpu.name}, {gpu.bandwidth / 1e12:.2f} TB/s, {gpu.fp32 / 1e12:.0f} TFLOPS FP32; {SAMPLES:,} training "
          f"digits; launches as this checkout's CUDA backend ({cm.LAUNCHES_NOW}); training steps alone")
    header = ["preset", "network", "settings", "launches a step", "GPU eager: step, epoch, run",
              "GPU graph: step, epoch, run", "CPU model: step, epoch, run"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, network, settings, steps, epochs, step in preset_rows():
        cells = [name, network, settings, str(step.launches.total)]
        for seconds in (cm.gpu_step_seconds(step, gpu, False), cm.gpu_step_seconds(step, gpu, True),
                        cm.cpu_step_seconds(step)):
            cells.append(f"{seconds * 1e6:,.0f} us, {duration(seconds * steps)}, {duration(seconds * steps * epochs)}")
        print("| " + " | ".join(cells) + " |")


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min" if seconds < 6000 else f"{seconds / 60:,.0f} min"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", choices=GPUS, default="h100")
    parser.add_argument("--presets", action="store_true", help="each gpunet train --preset's step, epoch and run")
    args = parser.parse_args()
    gpu = GPUS[args.gpu]
    if args.presets:
        print_presets(gpu)
        return 0
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
