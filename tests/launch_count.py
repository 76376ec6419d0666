"""What a training step costs a GPU, counted without one: launches, allocations, transfers, bytes and FLOPs.

The real ``CupyBackend`` and the real training loop (``training.loop.train``) run on the CuPy stand-in
(tests/cupy_stand_in.py), which records every launch, allocation and transfer CuPy would make
(``HostCupy.events``); the kernels are walked on the CPU as in the other stand-in tests. Markers put
around the loop's gradient pass (``step_gradients``, or ``full_batch_gradients`` for a full batch) and
the optimizer's ``step`` cut the record into steps; ``loop.evaluate`` is marked too. So for each case:

* a steady-state step: the steps of the second epoch after its first (the workspaces exist by then),
  which must all count the same;
* per epoch, everything of the second epoch outside its steps and its evaluation (the shuffle, the
  epoch's sums, the loop's snapshot of the parameters, ...);
* per evaluation of 1,000 digits (the validation set, scored after each epoch).

With ``--cuda-graph`` (``GRAPH_CASES``) a steady-state step is one graph launch (``cupy.cuda.Graph.launch``,
marked as the step), and the graph's nodes, what that launch replays, are counted as a step's launches are.
The stand-in refuses cuBLAS while capturing, as CuPy does: the dense network's graph holds its products as
gpunet's matmul kernel (kernels/matmul.cu, which a --cuda-graph run uses for products up to
kernels.SMALL_PRODUCT). The CNN's convolutions stay cuBLAS, so on CuPy its run falls back to eager steps;
its graph case counts what the graph would hold were its cuBLAS products captured (``cublas_in_capture``).

``scripts/bench.py --launches`` prints these; tests/test_launch_budget.py holds them to their budgets.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from gpunet.files.data import Digits, load_sample
from gpunet.training import loop
from tests import cupy_stand_in
from tests.cupy_stand_in import ALLOCATION, D2H, H2D, LAUNCHES, stand_in_backend

EVAL_DIGITS = 1000
DENSE = "784-16-16-10"
CNN = "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5"


@dataclasses.dataclass(frozen=True)
class Case:
    """One training setup: the network (``hidden`` or ``arch``), optimizer, batch, digits per epoch."""

    label: str
    optimizer: str
    batch_size: int
    train_digits: int
    hidden: tuple = (16, 16)
    arch: str | None = None
    cuda_graph: bool = False  # --cuda-graph: each whole step one graph launch
    cublas_in_capture: bool = False  # the stand-in captures cuBLAS products (CuPy does not)

    def config(self) -> loop.TrainConfig:
        return loop.TrainConfig.for_optimizer(self.optimizer, hidden=self.hidden, arch=self.arch, epochs=2,
                                              batch_size=self.batch_size, val_size=EVAL_DIGITS, seed=0)


# Epochs of whole batches only: a last, smaller batch would have a workspace of its own.
CASES = (
    Case(f"{DENSE}, adam, batch 64", "adam", 64, 4 * 64),
    Case(f"{DENSE}, sgd, batch 64", "sgd", 64, 4 * 64),
    Case(f"{DENSE}, momentum, batch 64", "momentum", 64, 4 * 64),
    Case(f"{DENSE}, gd, full batch of 256", "gd", 0, 256),
    Case(f"{CNN}, adam, batch 128", "adam", 128, 3 * 128, hidden=(), arch=CNN),
)
# The same steps captured once and replayed as one CUDA graph launch each (the full batch is one step an epoch).
GRAPH_CASES = tuple(
    dataclasses.replace(case, label=f"{case.label}, CUDA graph", cuda_graph=True,
                        cublas_in_capture=case.arch is not None)
    for case in CASES if case.batch_size
)


@dataclasses.dataclass
class Tally:
    """Launches by kind, allocations, transfers each way, the launches' bytes and the products' FLOPs."""

    launches: Counter = dataclasses.field(default_factory=Counter)
    allocations: int = 0
    allocated_bytes: int = 0
    d2h: int = 0
    h2d: int = 0
    moved_bytes: int = 0
    flops: int = 0

    @classmethod
    def of(cls, events) -> Tally:
        tally = cls()
        for event in events:
            if event.kind in LAUNCHES:
                tally.launches[event.kind] += 1
                tally.moved_bytes += event.nbytes
                tally.flops += event.flops
            elif event.kind == ALLOCATION:
                tally.allocations += 1
                tally.allocated_bytes += event.nbytes
            elif event.kind == D2H:
                tally.d2h += 1
            elif event.kind == H2D:
                tally.h2d += 1
        return tally

    @property
    def total(self) -> int:
        """Launches of every kind."""
        return sum(self.launches.values())

    def key(self) -> tuple:
        """What two steps must share to count as the same."""
        return (tuple(self.launches[kind] for kind in LAUNCHES), self.allocations, self.d2h, self.h2d,
                self.moved_bytes, self.flops)


@dataclasses.dataclass
class Counts:
    """One case's record: its steady-state step, its epoch outside the steps, its evaluation."""

    case: Case
    step: Tally
    outside: Tally
    evaluation: Tally
    steps: int  # per epoch
    inside_events: list  # allocations and transfers of the second epoch after its first step
    graph_nodes: Tally | None = None  # what one graph launch replays (cuda_graph cases)


def count(case: Case, walk, digits: Digits | None = None) -> Counts:
    """Train ``case`` for two epochs on the stand-in (kernels sent to ``walk``) and count its second epoch."""
    digits = digits or load_sample()
    m = case.train_digits
    train_digits = Digits(digits.images[:m], digits.labels[:m], "train")
    val_digits = Digits(digits.images[m:m + EVAL_DIGITS], digits.labels[m:m + EVAL_DIGITS], "validation")
    with pytest.MonkeyPatch.context() as monkeypatch:
        backend = stand_in_backend(monkeypatch, walk)
        backend.cuda_graph = case.cuda_graph
        backend.xp.cublas_in_capture = case.cublas_in_capture  # the CNN's graph, were its cuBLAS products captured
        events = backend.xp.events
        marks = []  # (position in events, what, start or end)
        graphs = []

        def mark(fn, label):
            def marked(*args, **kwargs):
                marks.append((len(events), label, "start"))
                try:
                    return fn(*args, **kwargs)
                finally:
                    marks.append((len(events), label, "end"))

            return marked

        new_network, make_optimizer = loop.new_network, loop.make_optimizer

        def network_marked(*args, **kwargs):
            network = new_network(*args, **kwargs)
            network.full_batch_gradients = mark(network.full_batch_gradients, "gradients")
            return network

        def optimizer_marked(*args, **kwargs):
            optimizer = make_optimizer(*args, **kwargs)
            optimizer.step = mark(optimizer.step, "update")
            return optimizer

        monkeypatch.setattr(loop, "new_network", network_marked)
        monkeypatch.setattr(loop, "make_optimizer", optimizer_marked)
        monkeypatch.setattr(loop, "step_gradients", mark(loop.step_gradients, "gradients"))
        monkeypatch.setattr(loop, "evaluate", mark(loop.evaluate, "evaluate"))
        launch = cupy_stand_in.Graph.launch

        def graph_step(graph, stream=None):  # a step, as gradients and update are
            graphs.append(graph)
            marks.append((len(events), "gradients", "start"))
            launch(graph, stream)
            marks.append((len(events), "update", "end"))

        monkeypatch.setattr(cupy_stand_in.Graph, "launch", graph_step)
        epoch_starts = []
        monkeypatch.setattr(loop, "train_epoch", _at_start(loop.train_epoch, lambda: epoch_starts.append(len(events))))
        with np.errstate(all="ignore"):
            loop.train(backend, train_digits, val_digits, case.config())
        end = len(events)
    counts = _split(case, events, marks, epoch_starts[1], end)
    if graphs:
        counts.graph_nodes = Tally.of(graphs[-1].nodes)
    return counts


def _at_start(fn, call):
    def wrapped(*args, **kwargs):
        call()
        return fn(*args, **kwargs)

    return wrapped


def _split(case: Case, events, marks, epoch_start: int, end: int) -> Counts:
    """The second epoch's events (from ``epoch_start`` to ``end``) cut into steps, evaluation, the rest."""
    marks = [mark for mark in marks if mark[0] >= epoch_start]
    steps, evaluations, start = [], [], None
    for position, label, what in marks:
        if label == "gradients" and what == "start":
            start = position
        elif label == "update" and what == "end":
            steps.append((start, position))
        elif label == "evaluate":
            if what == "start":
                eval_start = position
            else:
                evaluations.append((eval_start, position))
    assert steps and len(evaluations) == 1, (steps, evaluations)
    tallies = [Tally.of(events[a:b]) for a, b in steps]
    steady = tallies[1:] or tallies
    assert all(t.key() == steady[0].key() for t in steady), [t.key() for t in steady]
    inside = set()
    for a, b in [*steps, *evaluations]:
        inside.update(range(a, b))
    outside = [event for i, event in enumerate(events[epoch_start:end], epoch_start) if i not in inside]
    after_first = [event for event in events[steps[0][1]:steps[-1][1]] if event.kind in (ALLOCATION, D2H, H2D)]
    a, b = evaluations[0]
    return Counts(case, steady[0], Tally.of(outside), Tally.of(events[a:b]), len(steps), after_first)


# -- the tables -------------------------------------------------------------------------------------
HEADER = ("", "RawKernel", "CuPy elementwise", "reductions", "cuBLAS", "CUDA graphs", "launches", "allocations", "D2H", "H2D",
          "bytes moved", "FLOPs")


def _size(n: int, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n} {unit}"


def row(label: str, tally: Tally) -> tuple:
    allocations = str(tally.allocations)
    if tally.allocations:
        allocations += f" ({_size(tally.allocated_bytes, 'B')})"
    return (label, *(str(tally.launches[kind]) for kind in LAUNCHES), str(tally.total), allocations,
            str(tally.d2h), str(tally.h2d), _size(tally.moved_bytes, "B"), _size(tally.flops, "FLOP"))


def table(title: str, rows) -> str:
    rows = [HEADER, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [title, "| " + " | ".join(h.ljust(w) for h, w in zip(HEADER, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows[1:]]
    return "\n".join(lines)


def report(all_counts) -> str:
    """The three tables: a steady-state step, an epoch outside its steps, an evaluation of 1,000 digits; and
    where a case runs as a CUDA graph, a fourth: what its graph launch replays."""
    graphs = [c for c in all_counts if c.graph_nodes is not None]
    return "\n\n".join([
        table("Per steady-state training step (RawKernel: gpunet's kernels/*.cu):",
              [row(c.case.label, c.step) for c in all_counts]),
        table("Per epoch, outside its steps and its evaluation:",
              [row(f"{c.case.label} ({c.steps} step{'s' if c.steps > 1 else ''})", c.outside) for c in all_counts]),
        table(f"Per evaluation of {EVAL_DIGITS:,} digits:", [row(c.case.label, c.evaluation) for c in all_counts]),
        *([table("What a step's CUDA graph launch replays (its nodes, launched by the GPU, not by Python):",
                 [row(c.case.label, c.graph_nodes) for c in graphs])] if graphs else []),
        *[captured_cublas_note(c.case.label) for c in graphs if c.case.cublas_in_capture],
    ])


def captured_cublas_note(label: str) -> str:
    """What a graph row counted on a stand-in that captures cuBLAS is: not what CuPy runs (it refuses cuBLAS while
    capturing, so that run falls back to eager steps, the row without ", CUDA graph")."""
    return (f"Note: \"{label}\" is counted on a stand-in that captures cuBLAS products; CuPy refuses them while "
            "capturing, so on CuPy this run falls back to eager steps (its row without \", CUDA graph\").")
