"""Benchmark: gpunet's presets against PyTorch, as issue 16's "Done when" asks, in one run each.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_presets.py recipe \\
        [--data ../shared/data/train.csv.gz] [--val-size 1000] [--preset fast] [--also cnn] [--rounds 1]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_presets.py epochs \\
        [--presets default,fast,mlp,cnn,notes] [--samples 41000] [--repeats 3] [--threads N] [--device cpu]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_presets.py frontier \\
        [--data ../shared/data/train.csv.gz] [--val-size 5000] [--seeds 0,1] [--settings 'epochs=3,warmup=0.1']
        [--torch] [--threads N] [--recipe-seconds 33.6] [--startup 2.4] [--budget SECONDS]

``recipe``: the wall time a user waits, each run a fresh process reading the CSV: scripts/pytorch_recipe.py
(PyTorch's LeNet-like CNN, AdamW, one-cycle, batch 64, 3 epochs) and ``gpunet train --preset fast`` (and each
--also preset), with the same --data, --val-size and --seed, so both hold out the same digits. gpunet's parse
cache starts empty for each of its runs (a cold start), unless --warm-cache. The children run without
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE. With --rounds N the runs take turns N times (the order reversed every
other round) and the table shows the median. It prints each run's wall seconds, CPU seconds, the seconds its
epochs reported (in all, and the mean epoch against the recipe's: gpunet's epochs include scoring the held-out
digits, the recipe's do not), the validation accuracy each printed, the ratio to the recipe's wall time, and the
goal: fast at most a quarter of the recipe's wall time, at 99.0% or more.

``epochs``: each preset's epoch against PyTorch's epoch of the same layers (bench.py's TorchLayers: the
twins of gpunet's built layers), batch size and optimizer (AdamW for adam, decay on the weights alone as
gpunet's), on the same digits (the first --samples rows of the CSV), in one process, the sides taking turns
(bench.py's ``compare``): each round a short untimed warm-up, then one timed epoch; the median and the
fastest of --repeats. gpunet runs its own ``train_epoch`` on the network ``gpunet train --preset`` builds,
with the preset's rate schedule. Augmentation is left out of both sides (scripts/bench_augment.py measures
its cost); ``notes`` trains full-batch gradient descent, so its epoch is one step. Presets of the same
network, batch and optimizer (fast and cnn) share one row. Nothing here passes or fails.

``frontier``: how fast each of a list of settings reaches 99.0% on the same held-out digits, for issue 16's
quarter of the recipe's wall time. Each setting is ``fast`` with a few values changed (FRONTIER: fewer epochs, a
shorter warm-up, narrower networks, other batches; ``--settings`` gives others, as JSON or ``key=value,...``,
an ``arch`` value's commas kept). gpunet trains each one for each of --seeds with its own ``train`` (what
``gpunet train`` runs) on the digits read once with load_digits and split as ``gpunet train --val-size 5000``
splits them (split seed 0 for every seed). With ``--torch``, PyTorch trains the same layers (bench.py's
twins), and the same with batch normalization after each hidden convolution and dense layer (their bias off),
with AdamW (decay on the weights alone), gpunet's cosine rates set before each step and the same held-out
digits. A run's training seconds are the sum of its epochs' (each scoring the held-out digits at its end, on both
sides). The table: each setting's accuracy per seed, their mean, the mean training seconds, and whether every
seed reached 99.0%; then, per side, the cheapest setting that did, against --budget: a quarter of the recipe's
wall time (--recipe-seconds, BENCHMARKS.md) less the start-up and CSV read (--startup).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the machine's description, the sides, the turn-taking)

from gpunet.nn.model import arch_text, build_layers, arch_input_shape, dense_sizes, parse_arch_text  # noqa: E402
from gpunet.files.data import load_digits, split_validation  # noqa: E402
from gpunet.nn.model import parse_hidden_text  # noqa: E402
from gpunet.training import loop  # noqa: E402  (loop.train: what gpunet train runs)
from gpunet.training.loop import SettingError, TrainConfig, learning_rate, new_network, steps_per_epoch  # noqa: E402
from gpunet.training.presets import PRESETS, command_line  # noqa: E402

ROOT = bench.ROOT
RECIPE = Path(__file__).resolve().parent / "pytorch_recipe.py"
UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # settings of this machine's shells that slow OpenBLAS's kernels
GOAL_SHARE = 4  # fast's wall time at most 1/4 of the recipe's (issue 16)
GOAL_ACCURACY = 99.0
EPOCH_PRESETS = ("default", "fast", "mlp", "cnn", "notes")
STEP_REPEATS = 7  # timed full-batch steps (the notes' epochs): each takes a fraction of a second

ACCURACY = re.compile(r"^Validation accuracy (\d+(?:\.\d+)?)%", re.MULTILINE)
EPOCH_SECONDS = re.compile(r"^epoch +\d+/(\d+) .*\((\d+(?:\.\d+)?)s\)$", re.MULTILINE)


# -- a preset's settings ---------------------------------------------------------------------------------------
def preset_config(name: str, **changes) -> TrainConfig:
    """The TrainConfig ``gpunet train --preset NAME`` runs (the CLI's rules: --hidden as sizes, an --arch of
    dense layers alone as the notes' network), with ``changes`` applied (augment=False, say)."""
    settings = {**PRESETS[name], **changes}
    hidden = parse_hidden_text(str(settings.pop("hidden", "16,16")))
    arch = settings.pop("arch", None)
    if arch is not None:
        parts = parse_arch_text(arch)
        sizes = dense_sizes(parts)
        hidden, arch = (sizes, None) if sizes is not None else ((), arch_text(parts))
    return TrainConfig.for_optimizer(settings.pop("optimizer", "adam"), hidden=hidden, arch=arch, **settings)


def built_layers(config: TrainConfig) -> list:
    """gpunet's built layers of a config's network (its hidden sizes as dense layers), the output included."""
    parts = parse_arch_text(config.arch) if config.arch else tuple(f"dense{units}" for units in config.hidden)
    return build_layers(parts, arch_input_shape(parts, 784), 10)


def network_text(config: TrainConfig) -> str:
    return config.arch if config.arch else "784-" + "-".join(map(str, config.hidden)) + "-10"


# -- recipe: whole runs in fresh processes ---------------------------------------------------------------------
def child_environment(cache: Path | None) -> dict:
    """The children's environment: without UNSET, this checkout's gpunet first, and gpunet's parse cache in
    ``cache`` (an empty folder: a cold start) where given."""
    env = {key: value for key, value in os.environ.items() if key not in UNSET}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if cache is not None:
        env["GPUNET_CACHE_DIR"] = str(cache)
    return env


def recipe_command(data: Path, val_size: int, seed: int, threads: int | None) -> list[str]:
    command = [sys.executable, str(RECIPE), "--data", str(data), "--val-size", str(val_size), "--seed", str(seed)]
    return command + (["--threads", str(threads)] if threads is not None else [])


def gpunet_command(preset: str, data: Path, val_size: int, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "gpunet", "train", "--preset", preset, "--data", str(data), "--val-size",
            str(val_size), "--seed", str(seed), "--out", str(out)]


class Run:
    """One timed run of a command: its wall and CPU seconds and what its output says."""

    def __init__(self, returncode: int, wall: float, cpu: float, stdout: str, stderr: str):
        self.returncode, self.wall, self.cpu, self.stdout, self.stderr = returncode, wall, cpu, stdout, stderr
        self.accuracy = parse_accuracy(stdout)
        self.epochs, self.planned = parse_epoch_seconds(stdout)

    @property
    def epoch_seconds(self) -> float | None:
        """The seconds of all its epochs (None without an epoch line): their sum where every epoch printed its line;
        else the first (always printed, compilation and all) and the mean of the other printed ones for the rest."""
        if not self.epochs:
            return None
        if len(self.epochs) >= self.planned or len(self.epochs) == 1:
            return sum(self.epochs) * max(1, self.planned / len(self.epochs))
        first, rest = self.epochs[0], self.epochs[1:]
        return first + (self.planned - 1) * sum(rest) / len(rest)

    @property
    def mean_epoch(self) -> float | None:
        return None if self.epoch_seconds is None else self.epoch_seconds / self.planned


def parse_accuracy(text: str) -> float | None:
    """The percentage of the last "Validation accuracy 99.12%" line (gpunet train's and the recipe's), or None."""
    found = ACCURACY.findall(text)
    return float(found[-1]) if found else None


def parse_epoch_seconds(text: str) -> tuple[list[float], int]:
    """(each epoch line's "(12.34s)", the run's epochs "N/EPOCHS"): the seconds gpunet train and the recipe report
    for the epochs they print (gpunet train prints every epochs // 25-th of a long run), and how many there are."""
    found = EPOCH_SECONDS.findall(text)
    return [float(seconds) for _, seconds in found], int(found[-1][0]) if found else 0


def timed_run(command: list[str], env: dict, cwd: Path) -> Run:
    """Run ``command`` to its end; wall seconds by the clock, CPU seconds (user + system) of it and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(done.returncode, wall, cpu, done.stdout, done.stderr)


def run_recipe(args) -> int:
    if not args.data.is_file():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2
    args.data = args.data.resolve()  # the children run in a folder of their own
    presets = [args.preset, *[name for name in args.also if name != args.preset]]
    print(machine_lines())
    print(f"Data: {args.data}, --val-size {args.val_size}, --seed {args.seed}; gpunet's parse cache "
          f"{'as it is' if args.warm_cache else 'empty for each run (cold start)'}; children without "
          f"{', '.join(UNSET)}; {args.rounds} round{'s' if args.rounds > 1 else ''}")
    print(f"Load average before (1, 5, 15 min): {bench.load_average()}")
    runs: dict[str, list[Run]] = {"pytorch recipe": [], **{f"gpunet --preset {name}": [] for name in presets}}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for round_ in range(args.rounds):
            order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
            for name in order:
                cache = None if args.warm_cache else Path(tempfile.mkdtemp(dir=folder))
                if name == "pytorch recipe":
                    command = recipe_command(args.data, args.val_size, args.seed, args.threads)
                else:
                    preset = name.split()[-1]
                    command = gpunet_command(preset, args.data, args.val_size, args.seed, folder / f"{preset}.npz")
                print(f"round {round_ + 1}: {' '.join(command[1:])}", flush=True)
                run = timed_run(command, child_environment(cache), folder)
                runs[name].append(run)
                if run.returncode != 0 or args.verbose:
                    print(indent(run.stdout + run.stderr))
    print(f"Load average after (1, 5, 15 min): {bench.load_average()}; other programs' load slows every run\n")
    print(recipe_table(runs))
    print()
    print(goal_line(runs.get(f"gpunet --preset {args.preset}"), runs["pytorch recipe"], args.preset))
    return 0 if all(run.returncode == 0 for done in runs.values() for run in done) else 1


def indent(text: str, lines: int = 30) -> str:
    """The last ``lines`` lines of a child's output, indented (progress bars' carriage returns dropped)."""
    kept = [line.rsplit("\r", 1)[-1] for line in text.strip().splitlines()][-lines:]
    return "\n".join("    " + line for line in kept)


def median_of(runs: list[Run], field: str) -> float | None:
    values = [getattr(run, field) for run in runs if run.returncode == 0 and getattr(run, field) is not None]
    return statistics.median(values) if values else None


def recipe_table(runs: dict[str, list[Run]]) -> str:
    """The markdown table of ``recipe``: one row per command, medians over the rounds. "epoch / recipe's": the
    mean epoch each reported against the recipe's (gpunet's epochs include scoring the held-out digits, the
    recipe's do not: it scores them once, at the end)."""
    reference = median_of(runs["pytorch recipe"], "wall")
    reference_epoch = median_of(runs["pytorch recipe"], "mean_epoch")
    header = ("run", "wall s", "CPU s", "epochs s", "mean epoch s", "epoch / recipe's", "validation", "wall / recipe")
    rows = []
    for name, done in runs.items():
        failed = [run.returncode for run in done if run.returncode != 0]
        wall = median_of(done, "wall")
        if wall is None:
            rows.append((name, f"failed (exit {failed[0]})", *["-"] * (len(header) - 2)))
            continue
        good = [run for run in done if run.returncode == 0]
        walls = " ".join(f"{run.wall:.1f}" for run in good)
        epochs, epoch = median_of(good, "epoch_seconds"), median_of(good, "mean_epoch")
        printed = all(len(run.epochs) == run.planned for run in good)
        accuracy = median_of(done, "accuracy")
        rows.append((name, f"{wall:.1f}" + (f" ({walls})" if len(good) > 1 else ""),
                     f"{median_of(done, 'cpu'):.1f}",
                     "-" if epochs is None else f"{epochs:.1f}" + ("" if printed else " (from the epochs printed)"),
                     "-" if epoch is None else f"{epoch:.2f}",
                     "-" if epoch is None or not reference_epoch else f"{epoch / reference_epoch:.2f}x",
                     "-" if accuracy is None else f"{accuracy:.2f}%",
                     "-" if reference is None else f"{wall / reference:.2f}x"))
    return markdown(header, rows)


def goal_line(gpunet_runs: list[Run] | None, recipe_runs: list[Run], preset: str) -> str:
    """Issue 16's goal for ``fast``: at most 1/GOAL_SHARE of the recipe's wall time, at GOAL_ACCURACY% or more."""
    wall, reference = median_of(gpunet_runs or [], "wall"), median_of(recipe_runs, "wall")
    if wall is None or reference is None:
        return f"Goal ({preset} <= 1/{GOAL_SHARE} of the recipe's wall time): not measured (a run failed)"
    accuracy = median_of(gpunet_runs, "accuracy")
    fast_enough = wall <= reference / GOAL_SHARE
    accurate = accuracy is not None and accuracy >= GOAL_ACCURACY
    return (f"Goal: --preset {preset} <= 1/{GOAL_SHARE} of the recipe's wall time: {wall:.1f} s against "
            f"{reference / GOAL_SHARE:.1f} s ({reference:.1f} s / {GOAL_SHARE}): "
            f"{'met' if fast_enough else 'NOT met'}; "
            f">= {GOAL_ACCURACY}% validation: {'-' if accuracy is None else f'{accuracy:.2f}%'}: "
            f"{'met' if accurate else 'NOT met'}")


# -- epochs: each preset's epoch against PyTorch's ---------------------------------------------------------------
def epoch_groups(names) -> list[tuple[list[str], TrainConfig]]:
    """The presets to time, those of the same network, batch, optimizer and decay (on or off) in one group."""
    groups: dict[tuple, tuple[list[str], TrainConfig]] = {}
    for name in names:
        config = preset_config(name, augment=False)
        key = (config.hidden, config.arch, config.batch_size, config.optimizer, config.weight_decay > 0)
        groups.setdefault(key, ([], config))[0].append(name)
    return list(groups.values())


def gpunet_side(backend, digits, config: TrainConfig):
    """gpunet's epoch of the preset: the network ``gpunet train`` builds, its optimizer, the rate schedule."""
    network = new_network(backend, config, 784)
    optimizer = bench.optimizer(config.optimizer, network.groups, config.lr, backend, config.weight_decay)
    steps = steps_per_epoch(len(digits), config.batch_size)
    return bench.GpunetEpochs(backend, digits, network, optimizer, rate=lambda k: learning_rate(config, k, steps))


def torch_side(torch, device: str, digits, config: TrainConfig):
    return bench.TorchLayers(torch, device, digits, built_layers(config), config.optimizer, config.lr,
                             config.weight_decay)


def measure_presets(device: str, backend, digits, groups, repeats: int, torch=None) -> list[tuple]:
    """The table's rows: (device, presets, network, optimizer and batch, gpunet s, PyTorch s, ratio)."""
    rows = []
    for names, config in groups:
        sides = {}
        try:
            sides["gpunet"] = gpunet_side(backend, digits, config)
        except Exception as exc:  # noqa: BLE001  (a row that says why, and the others still measured)
            sides["gpunet"] = f"{type(exc).__name__}: {exc}"[:60]
        if torch is not None and (device == "cpu" or torch.cuda.is_available()):
            try:
                sides["pytorch"] = torch_side(torch, device, digits, config)
            except ValueError as exc:
                sides["pytorch"] = str(exc)[:60]
        full_batch = config.batch_size <= 0
        timed = {name: side for name, side in sides.items() if not isinstance(side, str)}
        times = bench.compare(timed, config.batch_size, max(repeats, STEP_REPEATS), 3) if full_batch else \
            bench.compare(timed, config.batch_size, repeats, repeats)
        times.update({name: side for name, side in sides.items() if isinstance(side, str)})
        work = (f"{config.optimizer}, full batch (a step)" if full_batch
                else f"{'adamw' if config.optimizer == 'adam' and config.weight_decay else config.optimizer}, "
                     f"batch {config.batch_size}")
        rows.append((device, ", ".join(names), network_text(config), work, seconds_cell(times["gpunet"]),
                     seconds_cell(times["pytorch"]) if "pytorch" in times else "-",
                     bench.ratio(times["gpunet"], times.get("pytorch"))))
    return rows


def seconds_cell(times) -> str:
    if isinstance(times, str):
        return times
    return f"{statistics.median(times):.3f} ({min(times):.3f})"


def run_epochs(args) -> int:
    names = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRESETS]
    if unknown or not names:
        print(f"error: --presets {args.presets}: {'unknown ' + ', '.join(unknown) if unknown else 'none given'} "
              f"(the presets: {', '.join(PRESETS)})", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        torch = None
    bench.hold_threads(args.threads, torch)
    print(machine_lines(torch))
    digits, source = bench.bench_data(args.samples, args.data)
    print(f"Data: {source}")
    groups = epoch_groups(names)
    print(f"Epoch of {args.samples:,} digits, seconds: median of {args.repeats} (fastest in brackets), the sides "
          f"taking turns; a full-batch step: median of {max(args.repeats, STEP_REPEATS)}; augmentation left out of "
          f"both; ratio = gpunet / PyTorch")
    rows = []
    for device in bench.devices(args.device):
        backend = bench.gpunet_backend(device)
        print(bench.describe_cuda(backend, torch) if device == "cuda" else
              f"gpunet on the CPU: {backend.cpu_path()}; layer stacks: {backend.layers_path()}")
        rows += measure_presets(device, backend, digits, groups, args.repeats, torch)
    print(f"Load average while this ran (1, 5, 15 min): {bench.load_average()}; other programs' load slows both "
          f"sides\n")
    print(markdown(("device", "presets", "network", "optimizer, batch", "gpunet s", "PyTorch s", "gpunet/PyTorch"),
                   rows))
    return 0


# -- frontier: the cheapest setting that reaches 99.0% ------------------------------------------------------------
BASE = "fast"  # every setting is this preset with a few values changed
SMALLER = "conv8k5,pool2,conv16k5,pool2,dense64"
MIDDLE = "conv12k5,pool2,conv24k5,pool2,dense96"
FRONTIER = (  # fast itself (4 epochs), fewer epochs, a shorter warm-up, narrower networks, other batches
    {}, {"epochs": 3}, {"epochs": 2},
    {"epochs": 3, "warmup": 0.1}, {"epochs": 2, "warmup": 0.1},
    {"arch": SMALLER, "epochs": 5}, {"arch": SMALLER, "epochs": 4},
    {"arch": MIDDLE, "epochs": 3},
    {"batch_size": 64, "lr": 0.005, "epochs": 2},
    {"batch_size": 256, "lr": 0.02, "epochs": 3},
)
# What a setting may change: the run's own settings, all of TrainConfig's but these. The seed, the held-out digits
# and early stopping are the script's (--seeds, --val-size, split seed 0, none), the same for every setting.
SCRIPTS_OWN = ("seed", "split_seed", "val_size", "patience")
CHANGEABLE = tuple(name for name in TrainConfig.__dataclass_fields__ if name not in SCRIPTS_OWN)
SPLIT_SEED = 0
RECIPE_SECONDS = 33.6  # BENCHMARKS.md, "Presets against PyTorch": the recipe's wall time on the idle machine
STARTUP_SECONDS = 2.4  # there: gpunet train --preset fast's start-up and CSV read (20.6 s wall, 18.2 s of epochs)
SIDES = ("gpunet", "pytorch", "pytorch + BN")
WARM_DIGITS = 2048  # the untimed first run's


def parse_settings(text: str) -> list[dict]:
    """--settings: a JSON object or list of objects, or ``key=value,...`` (a piece without "=" goes on the value
    before it, so that ``arch=conv8k5,pool2,dense64,epochs=4`` keeps the arch's commas). Values as JSON reads
    them (3, 0.1, true) where it can, else as text. ValueError saying what is wrong."""
    text = text.strip()
    if text.startswith(("{", "[")):
        try:
            found = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
        settings = found if isinstance(found, list) else [found]
        if not all(isinstance(setting, dict) for setting in settings):
            raise ValueError("JSON that is not an object or a list of objects")
    else:
        setting: dict = {}
        last = None
        for piece in text.split(","):
            key, equals, value = piece.partition("=")
            if not equals:
                if last is None:
                    raise ValueError(f"{piece.strip()!r} is no key=value")
                setting[last] += "," + piece.strip()
                continue
            last = key.strip().replace("-", "_")
            if last in setting:
                raise ValueError(f"{last} given twice")
            setting[last] = value.strip()
        settings = [{key: typed_value(value) for key, value in setting.items()}]
    settings = [{key.replace("-", "_"): value for key, value in setting.items()} for setting in settings]
    for setting in settings:
        unknown = [key for key in setting if key not in CHANGEABLE]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a setting to change (those: {', '.join(CHANGEABLE)})")
    return settings


def typed_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def setting_config(changes: dict, seed: int, val_size: int) -> TrainConfig:
    """The TrainConfig of ``gpunet train --preset fast`` with ``changes`` given as options, this --seed, these
    held-out digits; a ``hidden`` given replaces the preset's arch, as --hidden does on the command line."""
    if "hidden" in changes and "arch" not in changes:
        changes = {**changes, "arch": None}
    return preset_config(BASE, **changes, seed=seed, split_seed=SPLIT_SEED, val_size=val_size)


def setting_label(changes: dict) -> str:
    """The setting as the table names it: "fast", or "fast, warmup 0.1" (its epochs have a column of their own)."""
    shown = [f"{key.replace('_', ' ')} {value}" for key, value in changes.items() if key != "epochs"]
    return ", ".join([BASE, *shown])


class Result:
    """One setting on one side: each seed's held-out accuracy (%) and training seconds, or why it failed."""

    def __init__(self, side: str, label: str, epochs: int):
        self.side, self.label, self.epochs = side, label, epochs
        self.accuracy: dict[int, float] = {}
        self.seconds: dict[int, float] = {}
        self.failed: dict[int, str] = {}

    @property
    def mean_accuracy(self) -> float | None:
        return statistics.mean(self.accuracy.values()) if self.accuracy else None

    @property
    def mean_seconds(self) -> float | None:
        return statistics.mean(self.seconds.values()) if self.seconds else None

    @property
    def passed(self) -> bool:
        """GOAL_ACCURACY% or more on every seed (a failed seed is a miss)."""
        return bool(self.accuracy) and not self.failed and min(self.accuracy.values()) >= GOAL_ACCURACY


def cheapest_passing(results: list[Result], side: str) -> Result | None:
    """The side's setting of the fewest mean training seconds among those at GOAL_ACCURACY% on every seed."""
    passing = [result for result in results if result.side == side and result.passed]
    return min(passing, key=lambda result: result.mean_seconds, default=None)


def gpunet_run(backend, train_digits, val_digits, config: TrainConfig) -> tuple[float, float]:
    """(held-out accuracy %, training seconds) of ``gpunet train``'s training run: loop.train, the last epoch's
    weights (no early stopping), its epochs' recorded seconds added up."""
    result = loop.train(backend, train_digits, val_digits, config)
    return 100 * result.history[-1].val_accuracy, sum(epoch.seconds for epoch in result.history)


def batch_norm_twin(nn, layers) -> list:
    """bench.torch_modules' twins of gpunet's layers with batch normalization after each hidden convolution and
    dense layer (those a ReLU follows), before the ReLU; their bias off (BN's shift stands in for it). The output
    layer is left as it is."""
    modules = bench.torch_modules(nn, layers)
    twin = []
    for module, after in zip(modules, modules[1:] + [None]):
        if isinstance(after, nn.ReLU) and isinstance(module, nn.Conv2d):
            twin += [nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, padding=module.padding,
                               bias=False), nn.BatchNorm2d(module.out_channels)]
        elif isinstance(after, nn.ReLU) and isinstance(module, nn.Linear):
            twin += [nn.Linear(module.in_features, module.out_features, bias=False),
                     nn.BatchNorm1d(module.out_features)]
        else:
            twin.append(module)
    return twin


def torch_model(torch, config: TrainConfig, batch_norm: bool):
    layers = built_layers(config)
    modules = batch_norm_twin(torch.nn, layers) if batch_norm else bench.torch_modules(torch.nn, layers)
    return torch.nn.Sequential(*modules), layers[0].input_shape


def torch_run(torch, train_digits, val_digits, config: TrainConfig, batch_norm: bool,
              threads: int | None) -> tuple[float, float]:
    """(held-out accuracy %, training seconds) of PyTorch on the same layers (with BN where asked), AdamW's twin
    of gpunet's optimizer (bench.torch_optimizer: decay on the weights alone), gpunet's rate for each step
    (learning_rate), batches of a fresh shuffle each epoch, the held-out digits scored at each epoch's end (as
    gpunet's epochs do, in their seconds)."""
    if threads is not None:  # again before each run: numba's parallel loops reset OpenMP's count (bench.Torch.hold)
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model, shape = torch_model(torch, config, batch_norm)
    optimizer = bench.torch_optimizer(torch, model, config.optimizer, config.lr, config.weight_decay)
    loss = torch.nn.CrossEntropyLoss()
    X, y = (torch.from_numpy(train_digits.images.reshape(-1, *shape)).float() / 255,
            torch.from_numpy(train_digits.labels.astype(np.int64)))
    X_val, y_val = (torch.from_numpy(val_digits.images.reshape(-1, *shape)).float() / 255,
                    torch.from_numpy(val_digits.labels.astype(np.int64)))
    m, batch = len(y), config.batch_size if config.batch_size > 0 else len(y)
    steps = steps_per_epoch(m, config.batch_size)
    accuracy, seconds = 0.0, 0.0
    for epoch in range(config.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(m)
        for step, start in enumerate(range(0, m, batch)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps + step, steps)
            index = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss(model(X[index]), y[index]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(X_val[i : i + 1000]).argmax(1) == y_val[i : i + 1000]).sum())
                          for i in range(0, len(y_val), 1000))
        accuracy = 100 * correct / len(y_val)
        seconds += time.perf_counter() - started
    return accuracy, seconds


def frontier_results(settings: list[dict], seeds: list[int], digits, val_size: int, torch=None,
                     threads: int | None = None, report=print) -> list[Result]:
    """Each setting on each side, for each seed: the sides take turns run by run, so that load from other programs
    falls on all of them."""
    train_digits, val_digits = split_validation(digits, val_size, SPLIT_SEED)
    backend = bench.gpunet_backend("cpu")
    sides = SIDES if torch is not None else SIDES[:1]
    # Untimed first: gpunet's compiled code is compiled (or read from numba's cache) on its first use, and
    # PyTorch's thread pool started, in whichever run came first.
    warm = setting_config({**settings[0], "epochs": 1, "warmup": 0}, seeds[0], val_size)
    few = bench.Digits(train_digits.images[:WARM_DIGITS], train_digits.labels[:WARM_DIGITS])
    gpunet_run(backend, few, val_digits, warm)
    if torch is not None:
        torch_run(torch, few, val_digits, warm, True, threads)
        torch_run(torch, few, val_digits, warm, False, threads)
    results = []
    for changes in settings:
        configs = {seed: setting_config(changes, seed, val_size) for seed in seeds}
        label, epochs = setting_label(changes), configs[seeds[0]].epochs
        row = {side: Result(side, label, epochs) for side in sides}
        for seed, config in configs.items():
            for side, result in row.items():
                try:
                    if side == "gpunet":
                        accuracy, seconds = gpunet_run(backend, train_digits, val_digits, config)
                    else:
                        accuracy, seconds = torch_run(torch, train_digits, val_digits, config,
                                                      side == "pytorch + BN", threads)
                except Exception as exc:  # noqa: BLE001  (a diverged or refused run: the row says so, the others go on)
                    result.failed[seed] = f"{type(exc).__name__}: {exc}"[:60]
                    report(f"{side}: {label}, {epochs} epochs, seed {seed}: failed: {result.failed[seed]}")
                    continue
                result.accuracy[seed], result.seconds[seed] = accuracy, seconds
                report(f"{side}: {label}, {epochs} epochs, seed {seed}: {accuracy:.2f}% in {seconds:.1f} s")
        results += row.values()
    return results


def frontier_table(results: list[Result], seeds: list[int]) -> str:
    header = ("side", "setting", "epochs", *[f"seed {seed}" for seed in seeds], "mean", "training s (mean)",
              f"{GOAL_ACCURACY}% on every seed")
    rows = []
    for result in results:
        cells = [f"{result.accuracy[seed]:.2f}%" if seed in result.accuracy else
                 f"failed ({result.failed.get(seed, '-')})" for seed in seeds]
        rows.append((result.side, result.label, result.epochs, *cells,
                     "-" if result.mean_accuracy is None else f"{result.mean_accuracy:.2f}%",
                     "-" if result.mean_seconds is None else f"{result.mean_seconds:.1f}",
                     "yes" if result.passed else "no"))
    return markdown(header, rows)


def frontier_lines(results: list[Result], budget: float) -> list[str]:
    """Per side: its cheapest setting at GOAL_ACCURACY% on every seed, its training seconds against ``budget``."""
    lines = []
    for side in dict.fromkeys(result.side for result in results):
        best = cheapest_passing(results, side)
        if best is None:
            lines.append(f"{side}: no setting reached {GOAL_ACCURACY}% on every seed")
            continue
        verdict = "within it" if best.mean_seconds <= budget else f"{best.mean_seconds / budget:.1f}x it"
        lines.append(f"{side}: cheapest at {GOAL_ACCURACY}% on every seed: {best.label}, {best.epochs} epochs, "
                     f"{best.mean_seconds:.1f} s of training against the budget's {budget:.1f} s: {verdict}")
    return lines


def run_frontier(args) -> int:
    settings = []
    for text in args.settings:
        try:
            given = parse_settings(text)
            for changes in given:
                setting_config(changes, 0, args.val_size)  # SettingError for a value gpunet train refuses
        except (ValueError, SettingError) as exc:
            problem = f"{exc.name} {exc.value}: {exc.describe()}" if isinstance(exc, SettingError) else exc
            print(f"error: --settings {text}: {problem}", file=sys.stderr)
            return 2
        settings += given
    settings = settings or list(FRONTIER)
    pieces = [seed.strip() for seed in args.seeds.split(",") if seed.strip()]
    seeds = [int(seed) for seed in pieces if seed.isdigit()]
    if not seeds or len(seeds) < len(pieces):
        print(f"error: --seeds {args.seeds}: give whole numbers >= 0, comma-separated", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2
    torch = None
    if args.torch:
        try:
            import torch
        except ImportError:
            print("error: --torch: PyTorch is not installed", file=sys.stderr)
            return 2
    budget = args.budget if args.budget is not None else args.recipe_seconds / GOAL_SHARE - args.startup
    print(machine_lines(torch))
    if torch is not None:
        print(f"PyTorch threads: {args.threads if args.threads is not None else 'its default'}")
    digits = load_digits(args.data, labeled=True)
    try:
        split_validation(digits, args.val_size, SPLIT_SEED)
    except SettingError as exc:
        print(f"error: --val-size {args.val_size}: {exc.describe()}", file=sys.stderr)
        return 2
    print(f"Data: {digits.source}: {len(digits):,} digits, {args.val_size:,} held out (split seed {SPLIT_SEED}), "
          f"seeds {', '.join(map(str, seeds))}; each setting is --preset {BASE} ({command_line(BASE)}) with the "
          f"values named changed")
    print(f"Load average before (1, 5, 15 min): {bench.load_average()}", flush=True)
    results = frontier_results(settings, seeds, digits, args.val_size, torch, args.threads,
                               report=lambda line: print(line, flush=True))
    print(f"Load average after (1, 5, 15 min): {bench.load_average()}; other programs' load slows every run\n")
    print(frontier_table(results, seeds))
    print()
    if args.budget is None:
        print(f"Budget: {args.recipe_seconds:g} s (the recipe's wall time) / {GOAL_SHARE} - {args.startup:g} s "
              f"(start-up and CSV read) = {budget:.1f} s of training")
    else:
        print(f"Budget: {budget:.1f} s of training (--budget)")
    print("\n".join(frontier_lines(results, budget)))
    return 0 if not any(result.failed for result in results) else 1


# -- output ------------------------------------------------------------------------------------------------------
def machine_lines(torch=None) -> str:
    if torch is None:
        try:
            import torch
        except ImportError:
            torch = None
    import gpunet

    return "\n".join([*bench.describe_machine(torch), f"gpunet from {Path(gpunet.__file__).parent}"])


def markdown(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    recipe = commands.add_parser("recipe", help="wall time of the PyTorch recipe and gpunet's presets, fresh processes")
    recipe.add_argument("--data", type=Path, default=bench.DATA, help="Kaggle's train.csv(.gz), read by every run")
    recipe.add_argument("--val-size", type=int, default=1000)
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--preset", choices=list(PRESETS), default="fast", help="the preset the goal is about")
    recipe.add_argument("--also", choices=list(PRESETS), action="append", default=[],
                        help="another preset to time (repeatable)")
    recipe.add_argument("--rounds", type=int, default=1, help="times each command runs, taking turns")
    recipe.add_argument("--threads", type=int, help="the recipe's torch.set_num_threads (default: PyTorch's)")
    recipe.add_argument("--warm-cache", action="store_true", help="let gpunet use its parse cache as it is")
    recipe.add_argument("--verbose", action="store_true", help="print every run's output")
    epochs = commands.add_parser("epochs", help="each preset's epoch against PyTorch's of the same layers")
    epochs.add_argument("--presets", default=",".join(EPOCH_PRESETS), help="comma-separated")
    epochs.add_argument("--samples", type=int, default=bench.M, help="digits in an epoch")
    epochs.add_argument("--data", type=Path, default=bench.DATA, help="a train.csv.gz (synthetic digits where missing)")
    epochs.add_argument("--repeats", type=int, default=3, help="timed epochs per side")
    epochs.add_argument("--threads", type=int, help="PyTorch's and BLAS's threads (default: as the libraries set them)")
    epochs.add_argument("--device", choices=("all", "cpu", "cuda"), default="cpu")
    frontier = commands.add_parser("frontier", help="the cheapest of a list of settings reaching 99.0%% on every seed")
    frontier.add_argument("--data", type=Path, default=bench.DATA, help="Kaggle's train.csv(.gz), read once")
    frontier.add_argument("--val-size", type=int, default=5000, help=f"held-out digits (split seed {SPLIT_SEED})")
    frontier.add_argument("--seeds", default="0,1", help="each setting's seeds, comma-separated")
    frontier.add_argument("--settings", action="append", default=[],
                          help="settings instead of the built-in list: a JSON object or list of objects, or "
                               "key=value,... of --preset fast's changes (repeatable)")
    frontier.add_argument("--torch", action="store_true", help="the same settings in PyTorch, with and without BN")
    frontier.add_argument("--threads", type=int, help="PyTorch's threads (default: its own)")
    frontier.add_argument("--recipe-seconds", type=float, default=RECIPE_SECONDS,
                          help="the PyTorch recipe's wall time, seconds (BENCHMARKS.md)")
    frontier.add_argument("--startup", type=float, default=STARTUP_SECONDS,
                          help="gpunet train's start-up and CSV read, seconds")
    frontier.add_argument("--budget", type=float,
                          help="training seconds allowed (default: --recipe-seconds / 4 - --startup)")
    args = parser.parse_args(argv)
    for name in ("rounds", "repeats", "threads", "samples", "val_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: give 1 or more")
    for name in ("recipe_seconds", "startup", "budget"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            parser.error(f"--{name.replace('_', '-')} {value}: give a finite number >= 0")
    return {"recipe": run_recipe, "epochs": run_epochs, "frontier": run_frontier}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
