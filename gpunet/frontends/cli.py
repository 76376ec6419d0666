"""The ``gpunet`` command line: train, predict, evaluate, plot, serve, info.

Every failure a user can cause ends as one line on stderr and a non-zero exit:
GpunetError and click's usage errors are caught here, never shown as tracebacks.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import click
import numpy as np

from gpunet import __version__
from gpunet.backends.devices import DEVICES, follow_cost_model, get_backend
from gpunet.errors import DeviceError, GpunetError
from gpunet.nn.augment import DEFAULT_RANGES
from gpunet.nn.model import ARCH_HELP, INITS, arch_text, check_arch, dense_sizes, parse_arch_text, parse_hidden_text
from gpunet.nn.optimizers import OPTIMIZERS
from gpunet.files.outputs import (CHECKPOINT, MODEL, PROBABILITIES, SUBMISSION, SaveError, check_out_path, identity,
                                  probabilities_header, save_replacing_only, save_without_replacing)
from gpunet.training.loop import DTYPES, SCHEDULES, steps_per_epoch, warm_up_steps
from gpunet.training.presets import PRESETS, command_line

EXIT_ERROR, EXIT_USAGE, EXIT_TRAINING_FAILED, EXIT_INTERRUPTED = 1, 2, 3, 130
# `gpunet plot --kind`: gpunet.frontends.plots.KINDS as the command line spells them (imported there with matplotlib)
PLOT_KINDS = ("learning-curves", "confusion-matrix", "misclassified", "weights")


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM ask a command to stop; the exit code is then 128 + the signal's number (130, 143).

    The handler only notes the signal, never raises (an exception raised from a handler is lost where it lands in
    a finalizer, and can land after a file was replaced). The command reads the note where stopping loses
    nothing (``stop_if_asked``): the training loop between steps, ``train`` once more just before it saves,
    ``predict`` and ``plot`` before they write, ``serve`` between requests. From ``commit()`` on, a command
    replaces its output and finishes: a signal then is only reported (``late``) and the exit code is 0. So exit
    130 or 143 always means that ``--out`` was not replaced. A signal the parent process ignores stays ignored.

    Where there is nothing to protect (``stop_at_once``: ``evaluate``, ``info``, ``predict --image``, and ``predict``
    and ``plot`` while they read), the handler notes the signal and raises KeyboardInterrupt too, so that the
    command stops at once; where that lands in a finalizer and is lost, the note still ends the command as asked."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.received = None  # the signal that asked to stop, before the commit
        self.late = None  # a signal that came after the commit: reported, changes nothing
        self.committed, self.restoring, self.forward = False, False, None
        self.at_once = False  # nothing to protect: stop where the signal lands

    def handle(self, signum, frame) -> None:
        if self.restoring:  # the command is over: the signal is the previous handler's, once it is back
            self.forward = self.forward or signum
        elif self.committed:
            self.late = self.late or signum
        else:
            self.received = self.received or signum
            if self.at_once:
                raise KeyboardInterrupt

    def stop_at_once(self) -> None:
        """Until ``commit()``, the command has written nothing and has nothing to protect: a signal stops it where
        it lands (a long read, a long evaluation), exit 128 + the signal's number."""
        self.at_once = True
        if self.received is not None:
            raise KeyboardInterrupt

    def asked(self) -> bool:
        """Whether a signal has asked the command to stop (before its commit)."""
        return self.received is not None

    def stop_if_asked(self) -> None:
        """Stop here (KeyboardInterrupt, raised by the command, not by the handler) where a signal asked to."""
        if self.received is not None:
            raise KeyboardInterrupt

    def done_with_signal(self) -> None:
        """The command ended as the signal asked and that is its normal end (``serve``): exit 0."""
        self.received, self.committed = None, True

    def commit(self) -> bool:
        """The command is about to replace its output: False where a signal asked to stop before now (the caller
        then replaces nothing); else True, and from now on signals only are reported."""
        self.committed, self.at_once = True, False  # a signal handled from here on is late; before, ``received``
        return self.received is None

    def exit_code(self) -> int:
        return 128 + int(self.received or signal.SIGINT)  # a KeyboardInterrupt Python raised itself is Ctrl-C's

    def exit_code_after(self, failure_code: int) -> int:
        """A failing command's exit code: 128 + the signal's number where one asked it to stop."""
        return self.exit_code() if self.received is not None else failure_code

    def late_note(self) -> str | None:
        """The line saying a signal came once the output was being replaced, if one did."""
        if self.late is None:
            return None
        return f"Note: {signal.Signals(self.late).name} came while the result was being saved; it is saved, exit 0"

    @contextlib.contextmanager
    def installed(self, restore: bool = True):
        """Handle the signals while the command runs (in the main thread, the only one that may); then, where
        ``restore``, as before (the ``gpunet`` process keeps them to its end: a signal after the work is done
        must not kill it with 130 or 143 after it saved).

        Left alone: a signal ignored (SIG_IGN: ``cmd &`` in a script, ``trap '' TERM``), and one whose handler
        was set from C (``getsignal`` gives None), which could not be put back."""
        self.reset()
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}
        try:
            for number in self.SIGNALS:
                if signal.getsignal(number) not in (signal.SIG_IGN, None):
                    previous[number] = signal.signal(number, self.handle)
            yield
        finally:
            if restore:
                self.restore(previous)

    def restore(self, previous: dict) -> None:
        """Put the previous handlers back; a signal that comes meanwhile goes to its previous handler after."""
        self.restoring, self.forward = True, None
        for number, handler in previous.items():
            signal.signal(number, handler)
        self.restoring = False
        if self.forward is not None:
            signal.raise_signal(self.forward)


STOP_SIGNALS = StopSignals()


def parse_hidden(ctx, param, value: str) -> tuple[int, ...]:
    """Click callback for --hidden (click names the option in the error)."""
    try:
        return parse_hidden_text(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def parse_arch(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """Click callback for --arch: the spec's parts, each checked, and checked to fit a 28 x 28 digit."""
    if value is None:
        return None
    try:
        arch = parse_arch_text(value)
        check_arch(arch)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return arch


class TrainingFailed(GpunetError):
    """Training ran but gave no usable model (diverged, or no better than chance): exit code 3."""


def backend_for(device: str):
    """The backend for --device. The --device auto fallback's notice (CuPy installed, no usable GPU) is said by
    train's banner alone: a CPU-only machine with CuPy (the tests' set-up) would hear it at every command."""
    return get_backend(device)[0]


def plural(n: int, word: str) -> str:
    """'1 digit', '2 digits', with thousands separators."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def path_type():
    """click.Path with no checks of its own: the command reports a missing or unreadable path in its own words."""
    return click.Path(path_type=Path, readable=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpunet")
def cli():
    """Train the digit network of the design notes and use it.

    \b
    gpunet train                      # on the bundled sample of real digits
    gpunet train --data train.csv.gz  # on Kaggle's Digit Recognizer data
    gpunet predict --data test.csv.gz --out submission.csv
    """


device_option = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                             help="auto: a usable CUDA GPU, else the CPU; to train, the GPU only where the cost "
                                  "model (BENCHMARKS.md) predicts its step faster than the CPU's.")


def use_preset(ctx, param, name: str | None) -> str | None:
    """Click callback for --preset (eager: before the other options): the preset's settings become the defaults
    of the options not given (click's default_map), so an option given wins."""
    if name is not None:
        ctx.default_map = {**(ctx.default_map or {}), **PRESETS[name]}
    return name


def presets_help() -> str:
    """--help's list of the presets, each as the options it stands for."""
    return "\b\n--preset NAME: the options each stands for (any option given replaces its value):\n" + \
        "\n".join(f"  {name}: {command_line(name)}" for name in PRESETS)


@cli.command(epilog="\b\n--arch SPEC: " + ARCH_HELP + "\n\n" + presets_help())
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None, is_eager=True, callback=use_preset,
              help="Settings for a purpose (listed below): notes: the notes' recipe; default: the defaults; fast: the "
                   "fastest road to 99%; mlp, cnn: an MLP and a CNN sized to about 15 minutes. Options given override it.")
@click.option("--data", type=path_type(), default=None,
              help="Labeled digits: Kaggle train.csv[.gz], MNIST IDX file or folder, or .npz. Default: the bundled sample.")
@device_option
@click.option("--hidden", default="16,16", show_default=True, callback=parse_hidden,
              help="Hidden layer sizes, comma-separated; 'none' for no hidden layer. "
                   "The same as --arch dense16,dense16.")
@click.option("--arch", default=None, callback=parse_arch, metavar="SPEC",
              help="Instead of --hidden, any layers, e.g. conv32k5,pool2,dense128,dropout0.5 (grammar below).")
@click.option("--epochs", type=int, default=None,
              help="Passes over the training data. [default: 30; 500 with --optimizer gd]")
@click.option("--batch-size", type=int, default=None,
              help="Samples per step; 0 = all of them (full-batch gradient descent). [default: 64; 0 with --optimizer gd]")
@click.option("--lr", type=float, default=None,
              help="Learning rate alpha. [default: 0.01 for adam, 0.05 for momentum, 0.2 for sgd, 0.1 for gd]")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adam", show_default=True,
              help="gd: the notes' full-batch W <- W - alpha.dW; sgd: the same on mini-batches.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
              help="Learning-rate schedule. [default: cosine; constant with --optimizer gd]")
@click.option("--warmup", type=float, default=1.0, metavar="EPOCHS",
              help="Epochs of linear warm-up at the start of the cosine schedule: a fraction (0.25) too, or 0 for "
                   "none (the first step at the full rate); at most --epochs. Counted in whole steps, the nearest "
                   "(a half up): the rate climbs lr/W, 2lr/W, ..., lr over W steps, so a W of 0 or 1 is no "
                   "warm-up (with a full batch, one step an epoch, give whole epochs). constant ignores it. "
                   "[default: 1]")
@click.option("--weight-decay", type=float, default=None,
              help="Decoupled weight decay lambda: W <- W - alpha.lambda.W each step. "
                   "[default: 0.1 for adam, 0.01 for momentum, 0.002 for sgd, 0 for gd]")
@click.option("--init", type=click.Choice(INITS), default="he", show_default=True,
              help="he: Normal(0, 2/fan_in); seed: uniform [-0.5, 0.5) as in the notes.")
@click.option("--val-size", type=int, default=1000, show_default=True,
              help="Digits held out for validation before training.")
@click.option("--patience", type=int, default=None,
              help="Stop after N epochs without a better validation loss and keep the best weights.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the split, the initial weights and the shuffle.")
@click.option("--split-seed", type=int, default=None,
              help="Seed for the split alone (which digits are held out): give an ensemble's models one --split-seed "
                   "and each its own --seed, so that gpunet evaluate can score them together. [default: --seed]")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--augment/--no-augment", default=False, show_default=True,
              help=f"Each epoch, draw every training digit through a fresh random affine transform, bilinear: "
                   f"{DEFAULT_RANGES.describe()}, uniform in each range; reproducible from --seed. Validation digits "
                   f"are never augmented.")
@click.option("--cuda-graph/--no-cuda-graph", default=False, show_default=True,
              help="On a CUDA GPU, capture one training step as a CUDA graph and replay it for every whole batch: "
                   "one launch a step instead of about 16 (the same results, bit for bit). Off by default until "
                   "measured on a GPU; the CPU ignores it.")
@click.option("--out", type=path_type(), default=Path("model.npz"), show_default=True,
              help="Where to write the model (.npz).")
@click.option("--plot", "plot_dir", type=path_type(), default=None,
              help="Also write the plots of `gpunet plot` into this folder at the end (needs gpunet[plot]).")
@click.option("--resume", type=path_type(), default=None, metavar="CHECKPOINT",
              help="Go on with a run that Ctrl-C or SIGTERM stopped, from the checkpoint it saved beside --out "
                   "(model.checkpoint.npz), to the run's planned end: the model is the uninterrupted run's (same "
                   "machine, same settings). The epoch it stopped in is done again from its start. The settings are "
                   "the run's; --data (else the file it recorded), --out (else its own), --device, --cuda-graph and "
                   "--plot may be given.")
@click.pass_context
def train(ctx, preset, data, device, hidden, arch, epochs, batch_size, lr, optimizer, schedule, warmup, weight_decay,
          init, val_size, patience, seed, split_seed, dtype, augment, cuda_graph, out, plot_dir, resume):
    """Train the network and save it, reporting loss and accuracy each epoch."""
    from gpunet.files.data import load_digits, load_sample, split_validation
    from gpunet.training.metrics import (better_than_chance, chance_accuracy, divergence_hint, scored_on,
                                         unlearned_hint)
    from gpunet.backends.cost_model import network_layers, training_step
    from gpunet.training.loop import SettingError, TrainingDiverged, TrainingInterrupted, train as run_training
    from gpunet.training.run_state import ResumeMismatch

    resumed = None
    if resume is not None:
        resumed = resumed_run(ctx, resume)
        config = resumed.config
        hidden, arch = config.hidden, config.arch
        if data is None:  # the file the run read, unless --data names another copy
            data = recorded_path(resumed.extra.get("data"))
            if data is not None and not data.exists():
                raise GpunetError(f"{resume}: its recorded data {data} is not there; give --data with the same "
                                  "digits")
        out = out if given_by_user(ctx, "out") else recorded_path(resumed.extra.get("out")) or out
    else:
        if arch is not None and given_by_user(ctx, "hidden"):
            if given_by_user(ctx, "arch"):
                raise click.UsageError("give --hidden or --arch, not both (--hidden 16,16 is --arch dense16,dense16)")
            arch = None  # --hidden given replaces the preset's layers
        hidden, arch = network_shape(hidden, arch)
        config = train_config(ctx, optimizer, hidden=hidden, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                              schedule=schedule, warmup=warmup, weight_decay=weight_decay, init=init,
                              val_size=val_size, patience=patience, seed=seed, split_seed=split_seed, dtype=dtype,
                              augment=augment)
    recorded_out = resumed is not None and not given_by_user(ctx, "out")
    out = check_out_path(f"{resume}: its recorded --out" if recorded_out else "--out", out, MODEL, data=data,
                         resume=resume)
    found_at_start = identity(out)  # a model another run writes at --out meanwhile is not replaced
    if plot_dir is not None and Path(plot_dir).absolute() == out.absolute():
        raise click.UsageError("--plot is a folder for the plots and --out the model file: give them different names")
    if plot_dir is not None:  # fail now, not after training
        from gpunet.frontends.plots import prepare_out_dir, require_matplotlib

        require_matplotlib()
        prepare_out_dir(plot_dir, "--plot")
    backend, notice = get_backend(device)
    digits = load_digits(data, labeled=True) if data is not None else load_sample()
    try:
        train_digits, val_digits = split_validation(digits, config.val_size, config.split_seed)
    except SettingError as error:  # too many held out for this data
        if resumed is not None:
            raise GpunetError(f"{resume}: the run held out {config.val_size:,} digits; {digits.source} has "
                              f"{len(digits):,}, not the data it trained on") from None
        raise usage_error(ctx, error) from None
    if resumed is not None:
        check_resumable(resume, resumed, config, train_digits, val_digits, digits.source)
    # The model weighs a replayed step only where one can be captured: CuPy refuses cuBLAS while capturing, so
    # the step's products must be small enough for gpunet's own product kernel (the notes' network's are).
    step = training_step(config, len(train_digits))
    graph_refused = (cuda_graph and backend.name == "cuda" and not backend.captures_products()
                     and not backend.takes_products(network_layers(config.hidden, config.arch), step.batch))
    backend, device_choice = follow_cost_model(device, backend, step, cuda_graph and not graph_refused)
    if backend.name == "cuda":
        backend.cuda_graph = cuda_graph and not graph_refused
    sizes = "-".join(str(s) for s in (784, *(hidden if arch is None else arch.split(",")), 10))
    if preset is not None:
        changed = [cli_option(p.name) for p in ctx.command.params
                   if (p.name in PRESETS[preset] or p.name in ("hidden", "arch")) and given_by_user(ctx, p.name)]
        click.echo(f"Preset {preset}" + (f", with {', '.join(changed)} as given" if changed else ""))
    click.echo(f"Data: {digits.source}: {len(digits):,} digits -> {len(train_digits):,} training, "
               f"{len(val_digits):,} validation" + (f" (split seed {config.split_seed})"
                                                    if config.split_seed != config.seed else ""))
    batch_text = "full batch" if config.batch_size == 0 else f"batch {config.batch_size}"
    schedule_said = schedule_text(config, steps_per_epoch(len(train_digits), config.batch_size))
    click.echo(f"Network {sizes}, {config.optimizer} lr {config.lr:g} ({schedule_said}), {batch_text}, "
               f"{plural(config.epochs, 'epoch')}, weight decay {config.weight_decay:g}, "
               f"{config.dtype} on {device_text(backend, arch)}" + (f"; {notice}" if notice else ""))
    if device_choice:
        click.echo(f"Device: {device_choice}")
    if getattr(backend, "cuda_graph", False):
        click.echo("CUDA graph: each whole batch's step captured once, then replayed as one launch")
    elif graph_refused:
        click.echo("CUDA graph: not used (this CuPy refuses cuBLAS products while a stream is captured, and this "
                   "network's are too large for gpunet's product kernel); the steps run eagerly")
    if config.augment:
        click.echo(f"Augmentation: {DEFAULT_RANGES.describe()}, drawn afresh each epoch")

    if resumed is not None:
        click.echo(f"Resuming {resume}: {plural(resumed.epochs_done, 'epoch')} of {config.epochs} done")
    report = EpochReporter(config.epochs, full_batch=config.batch_size == 0)
    try:
        result = run_training(backend, train_digits, val_digits, config, on_epoch=report,
                              progress_factory=report.progress_bar if config.batch_size else None,
                              stop=STOP_SIGNALS.asked, resume_from=resumed)
    except TrainingDiverged as exc:
        report.close()
        saved = save_failed_run(out, "diverged", exc.result, config, digits, backend) if exc.result.history else None
        kept = f"; kept the weights of epoch {exc.result.best_epoch} in {saved}" if saved else ""
        raise TrainingFailed(f"training diverged: the loss became {exc.value} in epoch {exc.epoch}; "
                             f"{divergence_hint(config, cli_option)}{kept}") from None
    except ResumeMismatch as exc:  # a checkpoint whose arrays do not fit the run's network or optimizer
        report.close()
        raise GpunetError(f"{resume}: cannot go on with this run: {exc}") from None
    except TrainingInterrupted as exc:
        report.close()
        if exc.run_state is not None:  # what --resume reads: the run's data and --out, recorded for it
            exc.run_state.extra = {"data": None if data is None else str(Path(data).absolute()),
                                   "out": str(out.absolute())}
        stop_interrupted(out, exc.epoch, exc.result, config, digits, backend, exc.run_state)
    report.close()
    final = result.final
    # Judged on the validation digits, or on the training digits where those are too few to tell.
    which, accuracy, labels = scored_on(final.val_accuracy, val_digits.labels, final.train_accuracy,
                                        train_digits.labels)
    if not better_than_chance(accuracy, labels):
        saved = save_failed_run(out, "unlearned", result, config, digits, backend)
        raise TrainingFailed(f"{which} accuracy {100 * accuracy:.2f}% is no better than chance "
                             f"({100 * chance_accuracy(labels):.2f}% by always guessing the most common "
                             f"digit): the network learned nothing; "
                             f"{unlearned_hint(result.history, train_digits.labels, which, config, cli_option)}; "
                             f"saved it as {saved}")
    if not STOP_SIGNALS.commit():  # a signal after the last step: the run stops before its save begins
        stop_interrupted(out, len(result.history), result, config, digits, backend)
    out = save_completed_run(out, found_at_start, result, config, digits, backend)
    if result.stop_reason == "early_stopping":
        click.echo(f"Early stopping: no better validation loss for {plural(config.patience, 'epoch')}; "
                   f"kept epoch {result.best_epoch}")
    if final.val_accuracy is not None:
        click.echo(f"Validation accuracy {100 * final.val_accuracy:.2f}% (epoch {result.best_epoch}); saved {out}")
    else:
        click.echo(f"No validation accuracy: trained on every digit (--val-size 0), so nothing estimates the "
                   f"accuracy on new digits; training accuracy {100 * final.train_accuracy:.2f}% while training "
                   f"(epoch {result.best_epoch}); saved {out}")
    if plot_dir is not None:
        from gpunet.frontends.plots import write_plots

        if not len(val_digits):
            click.echo("Plots: no validation digits (--val-size 0): the confusion matrix and misclassified "
                       "digits are of the training digits")
        report_plots(write_plots(out, plot_dir, val_digits if len(val_digits) else train_digits))


def schedule_text(config, epoch_steps: int) -> str:
    """The schedule in the banner: "cosine", "constant"; the warm-up too where it is not the default epoch, and
    "no warm-up" where it comes to at most one step (its one rate is lr: ``learning_rate``)."""
    if config.schedule != "cosine" or config.warmup == 1:
        return config.schedule
    if warm_up_steps(config.warmup, epoch_steps) <= 1:
        return "cosine, no warm-up"
    return f"cosine, warm-up {config.warmup:g} epoch{'s' if config.warmup > 1 else ''}"


def given_by_user(ctx, name: str) -> bool:
    """Whether the user gave option ``name`` (on the command line or through the environment), rather than its
    default or a --preset's value."""
    source = ctx.get_parameter_source(name)
    return source not in (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def train_config(ctx, optimizer: str, **options):
    """The run's TrainConfig; a setting it refuses is a usage error naming the option (exit code 2)."""
    from gpunet.training.loop import SettingError, TrainConfig

    try:
        return TrainConfig.for_optimizer(optimizer, **options)
    except SettingError as error:
        preset = ctx.params.get("preset")
        if error.name == "warmup" and preset is not None and given_by_user(ctx, "epochs") and \
                not given_by_user(ctx, "warmup"):
            # the preset's warm-up, longer than the --epochs the user gave: name what they typed
            raise click.BadParameter(f"{options['epochs']} is shorter than --preset {preset}'s warm-up of "
                                     f"{options['warmup']:g} epochs; give --warmup at most {options['epochs']} too",
                                     ctx=ctx, param_hint="'--epochs'") from None
        raise usage_error(ctx, error) from None


def usage_error(ctx, error) -> click.BadParameter:
    """A SettingError as a usage error naming the option (exit code 2)."""
    return click.BadParameter(f"{error.describe(cli_option)} (got {error.value})", ctx=ctx,
                              param_hint=f"'{cli_option(error.name)}'")


def network_shape(hidden: tuple[int, ...], arch: tuple[str, ...] | None) -> tuple[tuple[int, ...], str | None]:
    """(hidden sizes, spec or None) for the training settings: a spec of dense layers alone is the notes'
    network, as --hidden gives it (the compiled CPU path, version 1 model files)."""
    if arch is None:
        return hidden, None
    sizes = dense_sizes(arch)
    return (sizes, None) if sizes is not None else ((), arch_text(arch))


def device_text(backend, arch: str | None) -> str:
    """The backend in the banner. On the CPU a layer stack (``arch``) takes other paths than the notes' network:
    the layers' passes compiled with numba, or NumPy's array calls, as ``CpuBackend.layers_path`` says."""
    if arch is not None and backend.name == "cpu":
        return f"CPU (NumPy {np.__version__}; {backend.layers_path()})"
    return backend.describe()


def cli_option(name: str) -> str:
    """A training setting as the command line spells it: lr -> --lr, val_size -> --val-size."""
    return "--" + name.replace("_", "-")


def report_plots(paths) -> None:
    """One line listing the plot files written."""
    click.echo("Plots: " + ", ".join(str(p) for p in paths))


class EpochReporter:
    """Prints one line per epoch (thinned out for long runs) and owns the progress bars.

    Mini-batch epochs get a bar over their digits; full-batch runs (one step an
    epoch, often hundreds of epochs) get one bar over the epochs instead.
    """

    def __init__(self, epochs: int, full_batch: bool):
        from tqdm import tqdm

        self.epochs = epochs
        self.every = max(1, epochs // 25)
        self.epoch_bar = (tqdm(total=epochs, unit="epoch", leave=False, disable=None, mininterval=0.5)
                          if full_batch else None)

    def __call__(self, m) -> None:
        if self.epoch_bar is not None:
            self.epoch_bar.update(1)
        if m.epoch % self.every == 0 or m.epoch in (1, self.epochs):
            from tqdm import tqdm

            tqdm.write(m.describe(self.epochs))

    def progress_bar(self, total: int):
        """A bar over one mini-batch epoch's digits (tqdm; hidden when not on a terminal)."""
        from tqdm import tqdm

        bar = tqdm(total=total, unit="digit", unit_scale=True, leave=False, disable=None, mininterval=0.5)
        return ProgressBar(bar)

    def close(self) -> None:
        """Close the epochs bar of a full-batch run."""
        if self.epoch_bar is not None:
            self.epoch_bar.close()


class ProgressBar:
    """The training loop's progress callable over a tqdm bar: advanced by the digits of each step."""
    def __init__(self, bar):
        self.bar = bar

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        """Close the bar at the end of the epoch."""
        self.bar.close()


def stop_interrupted(out: Path, epoch: int, result, config, digits, backend, run_state=None):
    """End an interrupted run: its best model so far goes to ``out`` only where nothing is there, else beside it,
    and ``run_state`` (what --resume goes on from) to model.checkpoint.npz; exit 128 + the signal's number."""
    model_failed = None
    if result.history:
        try:
            saved = save_failed_run(out, "interrupted", result, config, digits, backend)
            click.echo(f"Interrupted in epoch {epoch}: saved the best model so far "
                       f"(epoch {result.best_epoch}) to {saved}", err=True)
        except GpunetError as error:  # no name left beside --out, a full disk: the checkpoint may still go
            model_failed = error
    else:
        click.echo(f"Interrupted in epoch {epoch}, before any epoch finished: nothing saved", err=True)
    if run_state is not None:
        try:
            checkpoint = save_checkpoint(out, run_state)
        except SaveError as error:
            first = "" if model_failed is None else f"{model_failed}; "
            raise GpunetError(f"interrupted in epoch {epoch}; {first}{error}") from None
        click.echo(f"Saved the run as it was after epoch {run_state.epochs_done} to {checkpoint}; to go on from the "
                   f"start of epoch {run_state.epochs_done + 1} of {config.epochs}: "
                   f"gpunet train --resume {shlex.quote(str(checkpoint))}", err=True)
    if model_failed is not None:
        raise GpunetError(f"interrupted in epoch {epoch}; {model_failed}") from None
    sys.exit(STOP_SIGNALS.exit_code())


def checkpoint_path(out: Path) -> Path:
    """Where an interrupted run's checkpoint goes: model.checkpoint.npz beside model.npz."""
    return out.with_name(f"{out.stem}.checkpoint.npz")


def save_checkpoint(out: Path, run_state) -> Path:
    """Save a stopped run's state beside ``out``, replacing only a checkpoint of the same run (another file there,
    another run's checkpoint among them, is kept and the checkpoint goes beside it, model.checkpoint.new.npz,
    saying why). Returns where it went."""
    from gpunet.files.resume_file import is_checkpoint, is_of_run, save_run_state

    path = checkpoint_path(out)
    if is_checkpoint(path) and not is_of_run(path, run_state):  # that run may still be gone on with
        beside = save_without_replacing(path, "new", lambda p: save_run_state(p, run_state), noun="the checkpoint")
        click.echo(f"Note: {path} holds another run's checkpoint; saved the checkpoint as {beside}", err=True)
        return beside
    saved = save_replacing_only(path, CHECKPOINT, "new", lambda p: save_run_state(p, run_state),
                                noun="the checkpoint")
    if saved.beside_because:
        click.echo(f"Note: {path} holds a file gpunet does not replace; saved the checkpoint as {saved.path}",
                   err=True)
    return saved.path


# The options a resumed run may be given: where it reads and writes, and on what it runs. The others would make
# it another run.
RESUME_MAY_CHANGE = ("data", "device", "cuda_graph", "out", "plot_dir", "resume")


def resumed_run(ctx, resume: Path):
    """The run state in the --resume checkpoint (one line naming the file where it cannot be read); a usage
    error naming an option given with it that would change the run."""
    from gpunet.files.resume_file import load_run_state

    for param in ctx.command.params:
        if param.name not in RESUME_MAY_CHANGE and given_by_user(ctx, param.name):
            raise click.UsageError(f"{param.opts[0]} with --resume: a resumed run keeps the settings it was started "
                                   f"with; give only --data, --out, --device, --cuda-graph or --plot with it (or start "
                                   f"a new run without --resume)")
    return load_run_state(resume)


def recorded_path(text: str | None) -> Path | None:
    """A path a checkpoint recorded (--data, --out), or None."""
    return None if text is None else Path(text)


def check_resumable(resume: Path, resumed, config, train_digits, val_digits, source: str) -> None:
    """One line naming the checkpoint where it does not continue a run on these digits (other data)."""
    from gpunet.training.run_state import ResumeMismatch

    try:
        resumed.check_fits(config, train_digits, val_digits)
    except ResumeMismatch as error:
        recorded = resumed.extra.get("data", "")
        hint = f"; its data was {recorded or 'the bundled sample'}" if recorded != "" else ""
        raise GpunetError(f"{resume}: cannot go on with {source}: {error}{hint}") from None


def save_completed_run(out: Path, found_at_start, result, config, digits, backend) -> Path:
    """Save a completed run at ``out``, keeping the model it replaces as model.previous.npz and saying which it
    was; beside it (model.completed.npz), saying why, where a file it may not replace appeared at ``out`` or
    another run wrote ``out`` after this one started (``found_at_start``). Returns where it went."""
    saved = save_replacing_only(out, MODEL, "completed", lambda path: save_result(path, result, config, digits, backend),
                                found_at_start=found_at_start, keep_previous=True)
    if saved.beside_because:
        click.echo(f"Note: {saved.beside_because}; left it as it is and saved the model as {saved.path}", err=True)
    elif saved.replaced:
        click.echo(f"Replaced {saved.replaced}; kept it as {saved.previous}")
    if note := STOP_SIGNALS.late_note():
        click.echo(note, err=True)
    return saved.path


def save_failed_run(out: Path, tag: str, result, config, digits, backend) -> Path:
    """Save a run that did not finish well at ``out`` if nothing is there, else beside it (model.TAG.npz).

    ``tag`` (interrupted, diverged, unlearned) is recorded as the model's stop_reason: commands that load
    it say so."""
    result.stop_reason = tag
    return save_without_replacing(out, tag, lambda path: save_result(path, result, config, digits, backend))


def save_result(out: Path, result, config, digits, backend) -> Path:
    """Write the trained network and its metadata (settings, data fingerprint, history) to ``out``."""
    from gpunet.files.checkpoint import save_model
    from gpunet.files.data import fingerprint

    final = result.final
    save_model(out, result.network.host_params(), {
        **result.network.architecture(),
        "classes": list(range(10)),
        "normalization": {"scale": 1 / 255, "offset": 0.0},
        "feature_names": None if digits.feature_names is None else list(digits.feature_names),  # gpunet.load's
        "training": {**config.as_dict(), "hidden": list(config.hidden), "data": digits.source,
                     "data_sha256": fingerprint(digits.images, digits.labels), "device": backend.name},
        "history": [vars(m) for m in result.history],
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "final_metrics": vars(final) if final else None,
    })
    return out


def load_network(model_path: Path, backend, digit_classes: bool = True):
    """(Network or LayerStack, metadata) from a model file, refused in one line unless it takes 784-pixel digits.

    ``digit_classes``: the command reads the outputs as the digits 0-9 (evaluate, plot, serve, --image), so
    a model fitted from Python on other classes is refused; ``predict --data`` writes any model's labels.
    """
    from gpunet.files.checkpoint import input_scale, load_model, network_from_file, stack_architecture
    from gpunet.nn.model import INPUTS

    params, meta = load_model(model_path)
    stack = stack_architecture(meta, str(model_path))
    inputs = params[0].shape[1] if stack is None else math.prod(stack[1])
    if inputs != INPUTS:
        raise GpunetError(f"{model_path}: model expects {inputs} inputs per digit, but digits have {INPUTS} pixels")
    scale = input_scale(meta)
    if scale is None or not math.isclose(scale, 1 / 255):
        raise GpunetError(f"{model_path}: was fitted on features scaled by {scale!r}, not on pixels 0-255 "
                          "(scale 1/255): use it from Python (gpunet.load)")
    classes = meta.get("classes")
    if digit_classes and classes is not None and classes != list(range(10)):
        shown = ", ".join(map(repr, classes[:5])) + (", ..." if len(classes) > 5 else "") \
            if isinstance(classes, list) else repr(classes)
        raise GpunetError(f"{model_path}: its classes are {shown}, not the digits 0-9: this command needs a "
                          "digit model (gpunet predict --data writes any model's labels)")
    failure = {"diverged": "diverged", "unlearned": "learned nothing"}.get(meta.get("stop_reason"))
    if failure:
        click.echo(f"Note: {model_path} is from a run that {failure}; its predictions are not to be trusted", err=True)
    return network_from_file(params, meta, backend, str(model_path)), meta


@cli.command()
@click.option("--model", "models", type=path_type(), multiple=True, default=[Path("model.npz")], show_default=True,
              help="A model file; give it more than once (--model a.npz --model b.npz) to label by the mean of "
                   "the models' probabilities (an ensemble; their architectures may differ).")
@click.option("--data", type=path_type(), default=None,
              help="Digits to label: Kaggle test.csv[.gz] (a train.csv also works; its labels are ignored), IDX or .npz.")
@click.option("--image", "images", type=path_type(), multiple=True,
              help="Instead of --data: your own images of one digit each, any size (--image a.png b.jpg ...).")
@click.option("--json", "as_json", is_flag=True, help="With --image: print a JSON list of {file, label, probabilities}.")
@click.option("--out", type=path_type(), default=Path("submission.csv"), show_default=True,
              help="Kaggle submission file: ImageId,Label with ImageId counting from 1.")
@click.option("--probabilities", type=path_type(), default=None, metavar="FILE",
              help="With --data: also write each digit's ten class probabilities, a CSV of ImageId,p0,...,p9 "
                   "(replacing only such a file).")
@device_option
@click.argument("more_images", nargs=-1, type=path_type(), metavar="")
@click.pass_context
def predict(ctx, models, data, images, as_json, out, probabilities, device, more_images):
    """Label digits and write a Kaggle 'Digit Recognizer' submission, or label your own images (--image).

    With several --model files each digit gets the mean of the models' probabilities (soft voting)."""
    from gpunet.files.data import load_digits

    if more_images and not images:
        raise click.UsageError(f"unexpected argument {more_images[0]}; for image files use --image {more_images[0]} ...")
    if images and data is not None:
        raise click.UsageError("give --data (a digits file) or --image (image files), not both")
    if images:
        if ctx.get_parameter_source("out") is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--out goes with --data; with --image the labels are printed (--json for JSON)")
        if probabilities is not None:
            raise click.UsageError("--probabilities goes with --data; with --image, --json prints the probabilities")
        STOP_SIGNALS.stop_at_once()  # it only prints
        return predict_images(models, images + more_images, as_json, device)
    if data is None:
        raise click.UsageError("give --data FILE (digits to label) or --image FILE... (your own images)")
    if as_json:
        raise click.UsageError("--json goes with --image")
    if probabilities is not None and same_path(out, probabilities):
        raise click.UsageError("--out is the submission and --probabilities the probabilities: give them different names")
    out = check_out_path("--out", out, SUBMISSION, data=data, model=models)
    if probabilities is not None:
        check_out_path("--probabilities", probabilities, PROBABILITIES, data=data, model=models)
    STOP_SIGNALS.stop_at_once()  # reading and labelling write nothing: stop at once, until the commit
    backend = backend_for(device)
    # p0..p9 name the digits: the probabilities of models of other classes have no column names here
    ensemble, classes = load_ensemble(models, backend, digit_classes=probabilities is not None)
    digits = load_digits(data, labeled=False)
    probs = ensemble.probabilities(digits.images)
    labels = classes[probs.argmax(axis=1)]
    if not STOP_SIGNALS.commit():  # a signal while predicting: neither --out nor --probabilities is replaced
        raise KeyboardInterrupt
    saved_before = None
    if probabilities is not None:
        saved = write_result(probabilities, PROBABILITIES, probabilities_csv(probs), "the probabilities")
        click.echo(f"Wrote the probabilities of {plural(len(probs), 'digit')} to {saved}")
        saved_before = f"the probabilities, to {saved}"
    try:
        saved = write_result(out, SUBMISSION, submission_csv(labels), "the submission")
    except SaveError as error:
        raise (error if saved_before is None else error.after(saved_before)) from None
    mean = f" (the mean of {len(models)} models' probabilities)" if len(models) > 1 else ""
    click.echo(f"Wrote {plural(len(labels), 'prediction')} to {saved}{mean}")
    if note := STOP_SIGNALS.late_note():
        click.echo(note, err=True)


def write_result(out: Path, kind: str, text: str, noun: str) -> Path:
    """Write ``text`` at ``out``, checked again just before the rename: where a file other than one of ``kind``
    appeared there meanwhile, it is kept and the new file goes beside it (submission.new.csv), saying so."""
    from gpunet.files.atomic_file import write_atomically

    saved = save_replacing_only(out, kind, "new", lambda path: write_atomically(path, lambda f: f.write(text.encode())),
                                noun=noun)
    if saved.beside_because:
        click.echo(f"Note: {saved.beside_because}; left it as it is and wrote {noun} to {saved.path}", err=True)
    return saved.path


def same_path(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same name, through links, or two hard links)."""
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def load_ensemble(models, backend, digit_classes: bool = True):
    """(Ensemble of the --model files, the class labels they share), each file loaded by ``load_network``;
    one line naming a file whose classes are not those of the first."""
    from gpunet.nn.ensemble import Ensemble

    networks, classes = [], None
    for model in models:
        network, meta = load_network(model, backend, digit_classes)
        labels = class_labels(meta, network)
        if classes is not None and labels.tolist() != classes.tolist():
            raise GpunetError(f"{model}: its classes ({classes_text(labels)}) are not those of {models[0]} "
                              f"({classes_text(classes)}); the models of an ensemble must score the same classes")
        networks.append(network)
        classes = labels
    return Ensemble(networks), classes


def classes_text(classes) -> str:
    """A model's classes in a line: the first five, then '...'."""
    values = classes.tolist()
    return ", ".join(map(repr, values[:5])) + (", ..." if len(values) > 5 else "")


def probabilities_csv(probs) -> str:
    """ImageId,p0,...,p9 rows, ImageId from 1; each probability as the shortest text that reads back the same
    float64 (Python's repr)."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    text.write(probabilities_header(probs.shape[1]) + "\n")
    writer.writerows([image_id, *row] for image_id, row in enumerate(probs.tolist(), start=1))
    return text.getvalue()


def submission_csv(labels) -> str:
    """Kaggle's ImageId,Label rows, ImageId from 1; labels quoted by the csv module where they need it."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["ImageId", "Label"])
    writer.writerows(enumerate(labels.tolist(), start=1))
    return text.getvalue()


def predict_images(models, paths, as_json: bool, device: str) -> None:
    """One line per image (digit, then the top three probabilities: the mean of the models'), or a JSON list.

    An image that cannot be used gets one error line and the rest are still
    labeled; the exit status is 1 if any failed.
    """
    import json

    from gpunet.frontends.images import ImageError, load_digit

    backend = backend_for(device)
    network, _ = load_ensemble(models, backend)
    answers, failed = [], 0
    for path in paths:
        try:
            pixels = load_digit(path)
        except ImageError as error:
            click.echo(f"Error: {error}", err=True)
            failed += 1
            continue
        probs = network.probabilities(pixels[None, :])[0]
        label = int(probs.argmax())
        answers.append({"file": str(path), "label": label, "probabilities": [round(float(p), 6) for p in probs]})
        if not as_json:
            top = ", ".join(f"{d} {probs[d]:.2f}" for d in np.argsort(-probs, kind="stable")[:3])
            click.echo(f"{path}: {label}  ({top})")
    if as_json:
        click.echo(json.dumps(answers, indent=2))
    if failed:
        sys.exit(EXIT_ERROR)


@cli.command()
@click.option("--model", type=path_type(), default=Path("model.npz"), show_default=True)
@click.option("--data", type=path_type(), default=None,
              help="Labeled digits for the confusion matrix and the misclassified digits. "
                   "[default: the validation digits the model was trained beside]")
@click.option("--out", "out_dir", type=path_type(), default=Path("plots"), show_default=True,
              help="Folder for the PNG files (created if missing).")
@click.option("--kind", "kinds", type=click.Choice(PLOT_KINDS), multiple=True,
              help="Draw only this plot (repeat for several). [default: all four]")
def plot(model, data, out_dir, kinds):
    """Plot learning curves, confusion matrix, misclassified digits and first-layer weights."""
    from gpunet.backends.cpu import CpuBackend
    from gpunet.files.data import load_digits
    from gpunet.frontends.plots import KINDS, NEED_DIGITS, plot_network, prepare_out_dir, require_matplotlib

    kinds = [kind.replace("-", "_") for kind in kinds] or KINDS
    require_matplotlib()
    network, meta = load_network(model, CpuBackend())  # read once; a model of other inputs is one line, here
    prepare_out_dir(out_dir, kinds=kinds)
    STOP_SIGNALS.stop_at_once()  # reading the digits writes nothing: stop at once, until the commit
    needs_digits = any(kind in NEED_DIGITS for kind in kinds)
    digits = load_digits(data, labeled=True) if data is not None and needs_digits else None
    if not STOP_SIGNALS.commit():  # a signal while reading: no plot is replaced
        raise KeyboardInterrupt
    report_plots(plot_network(network, meta, model, out_dir, digits, kinds))


@cli.command()
@click.option("--model", type=path_type(), default=Path("model.npz"), show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 lets other machines reach the page.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
def serve(model, host, port):
    """Serve a page to draw a digit on, showing the network's probabilities as you draw."""
    from gpunet.backends.cpu import CpuBackend
    from gpunet.frontends.server import make_server

    # One digit per request: the CPU answers fastest, with NumPy's array calls (numba's compiled path
    # would add ~160 MB to the server and 2.6 s to its first answer, and gains nothing on one digit).
    network, _ = load_network(model, CpuBackend(compiled=False))
    server = make_server(network, host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"Note: listening on {host}: other machines on the network can reach the page", err=True)
    click.echo(f"Serving {model} at {server.url}  (Ctrl-C to stop)")
    between_requests = server.service_actions

    def stop_between_requests():  # serve_forever calls it at least every half second
        between_requests()
        STOP_SIGNALS.stop_if_asked()

    server.service_actions = stop_between_requests
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        STOP_SIGNALS.done_with_signal()  # stopping is how serve ends: exit 0
        click.echo("Stopped.")
    finally:
        server.server_close()


@cli.command()
@click.option("--model", "models", type=path_type(), multiple=True, default=[Path("model.npz")], show_default=True,
              help="A model file; give it more than once to score the mean of the models' probabilities (an "
                   "ensemble, as gpunet predict labels with it).")
@click.option("--data", type=path_type(), required=True, help="Labeled digits (same formats as train).")
@device_option
def evaluate(models, data, device):
    """Score a model on labeled digits: accuracy, per-class accuracy, confusion matrix.

    On the very data the model was trained on, the digits it learned from are
    scored apart from the validation digits it held out, which alone estimate
    its accuracy on new digits. An ensemble (several --model) is scored so on
    its training data only where every model held out the same digits (one
    --split-seed and --val-size); otherwise it is refused.
    """
    from gpunet.files.checkpoint import load_metadata
    from gpunet.files.data import load_digits

    STOP_SIGNALS.stop_at_once()  # it only prints
    backend = backend_for(device)
    ensemble, _ = load_ensemble(models, backend)
    network = ensemble if len(models) > 1 else ensemble.networks[0]  # one model: scored as it always was
    metas = [load_metadata(model) for model in models]
    digits = load_digits(data, labeled=True)
    held_out, learned_from = split_as_in_training(digits, metas, models)
    if len(models) > 1:
        click.echo(f"Ensemble of {len(models)} models (the mean of their probabilities)")
    if learned_from is None:
        score_digits(network, digits, f"{digits.source}: {plural(len(digits), 'digit')}")
        return
    these = "this model was" if len(models) == 1 else f"these {len(models)} models were"
    click.echo(f"{digits.source} is the data {these} trained on.")
    accuracy = 100 * np.mean(predict_labels(network, learned_from) == learned_from.labels)
    click.echo(f"Training digits (it learned from these; no estimate for new digits): "
               f"{plural(len(learned_from), 'digit')}, accuracy {accuracy:.2f}%")
    if not len(held_out):
        click.echo("No validation digits were held out (--val-size 0): score it on other digits.")
        return
    score_digits(network, held_out, f"Validation digits (held out in training): {plural(len(held_out), 'digit')}")


def training_split(meta: dict) -> tuple:
    """(data SHA-256, split seed, val_size) of a model's training run: models that share these held out the same
    digits of the same data."""
    from gpunet.files.model_schema import split_seed

    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    return training.get("data_sha256"), split_seed(training), training.get("val_size")


def split_as_in_training(digits, metas, models):
    """(validation, training) as the models' training runs split these digits, or (digits, None) for data none
    of them was trained on. GpunetError (one line) where some were trained on these digits and the models do not
    share one split: no digits are then held out by all, and a score would count digits some learned from."""
    from gpunet.files.data import fingerprint, split_validation

    data_sha256 = fingerprint(digits.images, digits.labels)
    splits = [training_split(meta) for meta in metas]
    if all(split[0] != data_sha256 for split in splits):
        return digits, None
    for model, split in zip(models[1:], splits[1:]):
        if split != splits[0]:
            raise GpunetError(f"{models[0]} ({split_text(splits[0], data_sha256)}) and {model} "
                              f"({split_text(split, data_sha256)}) did not hold out the same digits of "
                              f"{digits.source}, so no digit is new to every model: train an ensemble's models on "
                              "one data file with one --split-seed and --val-size, or evaluate it on other digits")
    _, seed, val_size = splits[0]
    if not isinstance(seed, int) or not isinstance(val_size, int) or not 0 <= val_size < len(digits):
        return digits, None
    learned_from, held_out = split_validation(digits, val_size, seed)
    return held_out, learned_from


def split_text(split: tuple, data_sha256: str) -> str:
    """How a model's training run split these digits, in a few words."""
    trained_on, seed, val_size = split
    if trained_on != data_sha256:
        return "trained on other data"
    return f"held out {plural(val_size, 'digit')} with split seed {seed}"


def predict_labels(network, digits) -> np.ndarray:
    """The index of each digit's most probable class."""
    return network.probabilities(digits.images).argmax(axis=1)


def class_labels(meta: dict, network) -> np.ndarray:
    """What each output means: the model's ``classes`` (digits 0-9 for ``gpunet train``; any labels from Python)."""
    classes = meta.get("classes")
    count = network.classes
    if not (isinstance(classes, list) and len(classes) == count
            and all(isinstance(c, (bool, int, float, str)) for c in classes)):
        return np.arange(count)
    return np.asarray(classes)


def score_digits(network, digits, title: str) -> None:
    """Accuracy, per-class accuracy and the confusion matrix, under ``title``."""
    from gpunet.training.metrics import confusion_counts

    predicted = predict_labels(network, digits)
    truth = digits.labels.astype(np.int64)
    confusion = confusion_counts(truth, predicted)
    click.echo(f"{title}, accuracy {100 * np.mean(predicted == truth):.2f}%")
    click.echo("\nPer class:")
    for digit in range(10):
        total = confusion[digit].sum()
        accuracy = f"{100 * confusion[digit, digit] / total:6.2f}%" if total else "     -"
        click.echo(f"  {digit}: {accuracy}  ({plural(total, 'digit')})")
    click.echo("\nConfusion matrix (rows: true digit, columns: predicted):")
    width = max(5, len(str(confusion.max())) + 1)
    click.echo("     " + "".join(f"{d:>{width}}" for d in range(10)))
    for digit in range(10):
        click.echo(f"  {digit}: " + "".join(f"{n:>{width}}" for n in confusion[digit]))


@cli.command()
@click.option("--kernels", "compile_kernels", is_flag=True,
              help="Compile the CUDA kernels with NVRTC for every claimed architecture (tens of seconds; no GPU "
                   "needed). Done anyway where a GPU is usable.")
def info(compile_kernels):
    """Versions, the backends found, and CUDA devices."""
    from importlib.metadata import version

    from gpunet.backends import cuda as backend_cuda
    from gpunet.backends.cpu import CpuBackend

    STOP_SIGNALS.stop_at_once()  # it only prints
    click.echo(f"gpunet {__version__}")
    click.echo(f"Python {sys.version.split()[0]}, NumPy {np.__version__}, click {version('click')}")
    click.echo("Backends:")
    click.echo(f"  cpu: NumPy (always available); {CpuBackend().cpu_path()}")
    reason = backend_cuda.unavailable_reason()
    click.echo(f"  cuda: {'available' if reason is None else 'not usable: ' + reason}")
    # Without a usable GPU the compile is a developer's check, not an answer to "what is here": asked for alone.
    for line in backend_cuda.device_report(compile_kernels=compile_kernels or reason is None):
        click.echo(f"  {line}")


def main(argv=None, restore_signals: bool = True) -> None:
    """Entry point: run the CLI and turn every expected failure into one line and an exit code.

    ``restore_signals``: put the previous signal handlers back at the end (False for the ``gpunet`` process
    itself, which keeps its own to the last instruction)."""
    try:
        with STOP_SIGNALS.installed(restore=restore_signals):
            cli.main(args=argv, prog_name="gpunet", standalone_mode=False)
            STOP_SIGNALS.stop_if_asked()  # a signal no step of the command read (evaluate, info): stop as asked
    except click.exceptions.NoArgsIsHelpError as exc:  # `gpunet` alone: show help, as click does
        click.echo(exc.ctx.get_help())
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "gpunet"
        click.echo(f"Error: {command}: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except DeviceError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except TrainingFailed as exc:  # the line says where the model went, even when a signal came during its save
        click.echo(f"Error: {exc}", err=True)
        sys.exit(STOP_SIGNALS.exit_code_after(EXIT_TRAINING_FAILED))
    except GpunetError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(STOP_SIGNALS.exit_code_after(EXIT_ERROR))
    except OSError as exc:  # a path the system refuses (permissions, a name too long, a full disk)
        where = f"{exc.filename}: " if exc.filename is not None else ""
        click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
        sys.exit(STOP_SIGNALS.exit_code_after(EXIT_ERROR))
    except MemoryError as exc:
        click.echo(f"Error: not enough memory ({exc or 'MemoryError'})", err=True)
        sys.exit(EXIT_ERROR)
    except (click.Abort, KeyboardInterrupt):
        click.echo("Aborted.", err=True)
        sys.exit(STOP_SIGNALS.exit_code())
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
