"""A mini-batch epoch whose steps are one CUDA graph launch each (``gpunet train --cuda-graph``).

A captured graph replays its kernels with the arguments they were captured with: the same arrays,
the same scalars. So the graph's step reads everything that changes from step to step from device
memory, in arrays made once for the run:

* the step's number k within the epoch: ``step`` (1,) int64, advanced on the device by the step's
  last kernel (``batch_end``, kernels/step.cu);
* its batch: ``batch_begin`` copies k's slice of the epoch's shuffled ``order`` into ``index``, and
  those digits' labels into ``batch_labels`` (the host writes ``order`` once an epoch);
* the optimizer's numbers (the schedule's learning rate, Adam's bias corrections): row k of
  ``table``, which the host fills once an epoch, each row what the eager step's kernel would be given
  (``kernels.update_scalars``), read by the ``*_update_at`` kernels (kernels/optimizers.cu);
* its losses: written into ``batch_losses``, copied to the epoch's at k's place by ``batch_end``;
  the correct count added to one ``counter`` for the epoch;
* the augmentation's transforms: copied once an epoch into ``transforms``;
* dropout's step number: ``first_step`` (the epoch's first, set once an epoch) + k, read by
  ``dropout_mask_at`` (kernels/dropout.cu), which the backend launches while ``device_step`` is set.

The first step of a run runs these same kernels eagerly (it makes the workspace, compiles the
kernels and loads cuBLAS, none of which may happen while capturing), then the step is captured
once (``Backend.capture_graph``) and every later full step of the run is one graph launch. A
partial last batch runs eagerly (its workspace has another size). The eager and the replayed step
run the same kernels in the same order on the same numbers, so the run's parameters are the eager
run's, bit for bit. CuPy refuses cuBLAS while capturing, so a --cuda-graph run (``cuda_graph`` on the
backend) does its small products in kernels/matmul.cu, its eager steps included (CupyBackend.matmul).

Not captured (the epoch runs eagerly, saying why once): a step split between cores, an optimizer the
backend does not run as one kernel (neither happens on the CUDA backend, which is the one that captures).
Where capture itself fails, its one-line notice says why, and the run goes on eagerly.
"""

from __future__ import annotations

import sys

import numpy as np

from gpunet.backends import kernels


def notify(line: str) -> None:
    """Say something once to the user (the CLI's stderr); tests replace it."""
    print(line, file=sys.stderr)


def graph_refusal(network, optimizer, data, batch_size: int, parts: int) -> str | None:
    """Why this epoch's steps cannot be one captured graph, or None where they can."""
    if len(data) < batch_size:  # train_epoch takes such a batch as the full batch: one step, nothing to replay
        return "no whole batch in an epoch"
    if parts > 1:
        return "the step is split between cores"
    if optimizer.rule not in kernels.UPDATE_SCALARS or optimizer.backend is not network.backend:
        return f"the {optimizer.rule} update is not one kernel on this backend"
    return None


class GraphStep:
    """The run's fixed arrays for graph steps of ``batch_size`` samples, and the captured graph."""

    def __init__(self, network, optimizer, data, batch_size: int, augmented: bool):
        xp, dtype = network.backend.xp, network.dtype
        m = len(data)
        self.batch_size, self.augmented = batch_size, augmented
        # Held, so that the arrays the graph reads stay alive, and so that no other optimizer or data set made
        # after these were freed could be taken for them (``serves``).
        self.optimizer, self.data, self.images, self.labels = optimizer, data, data.images, data.labels
        self.full_steps = m // batch_size
        self.order = xp.empty(m, dtype=np.int64)
        self.step = xp.zeros(1, dtype=np.int64)
        self.first_step = xp.zeros(1, dtype=np.int64)
        self.index = xp.empty(batch_size, dtype=np.int64)
        self.batch_labels = xp.empty(batch_size, dtype=np.int32)
        self.batch_losses = xp.empty(batch_size, dtype=dtype)
        self.losses = xp.empty(m, dtype=dtype)
        self.counter = xp.zeros(1, dtype=np.int32)
        self.table = xp.empty((self.full_steps, len(kernels.UPDATE_SCALARS[optimizer.rule])), dtype=dtype)
        self.transforms = xp.empty((m, 6), dtype=dtype) if augmented else None
        self.graph = None
        self.tried = False  # whether capture was tried (once a run)

    def serves(self, optimizer, data, batch_size: int, augmented: bool) -> bool:
        """Whether these steps are made for this optimizer and data set (the very objects: an id of a freed object
        is given to the next one made), batch size and augmentation; a train_epoch called with others gets arrays
        and a graph of its own."""
        return (self.optimizer is optimizer and self.data is data and self.images is data.images
                and self.labels is data.labels and (self.batch_size, self.augmented) == (batch_size, augmented))

    def run(self, network, optimizer, step_gradients) -> None:
        """One step on the fixed arrays, launched eagerly; what the graph holds once captured."""
        ops = network.backend
        kernels.batch_begin(self.order, self.data.labels, self.step, self.index, self.batch_labels, network.dtype)
        ops.device_step = (self.first_step, self.step)
        try:
            grads, _ = step_gradients(network, self.data.images, self.index, self.batch_labels, self.batch_losses,
                                      self.counter, self.transforms)
        finally:
            ops.device_step = None
        kernels.optimizer_update_at(optimizer.rule, optimizer.params, grads, optimizer.state_arrays(), self.table,
                                    self.step)
        kernels.batch_end(self.batch_losses, self.losses, self.step)


def minibatch_epoch(network, optimizer, data, batch_size, rng, losses, progress, rate, first_step, transforms,
                    step_gradients, parts: int = 1):
    """``loop._minibatch_epoch`` with each whole step one graph launch: the correct count (on the device), or
    None, having drawn nothing from ``rng``, where the epoch runs eagerly instead (said once a run)."""
    holder = network.__dict__
    refusal = graph_refusal(network, optimizer, data, batch_size, parts)
    if refusal is not None:
        if holder.get("_graph_refusal") != refusal:
            notify(f"CUDA graph: not used ({refusal}); the steps run eagerly")
            holder["_graph_refusal"] = refusal
        return None
    state = holder.get("_graph_step")
    if state is None or not state.serves(optimizer, data, batch_size, transforms is not None):
        state = holder["_graph_step"] = GraphStep(network, optimizer, data, batch_size, transforms is not None)
    ops = network.backend
    m = len(data)
    state.order.set(rng.permutation(m).astype(np.int64))  # the shuffle, drawn as the eager epoch draws it
    rows = []
    for k in range(state.full_steps):  # each step's numbers, as the eager steps would set them
        if rate is not None:
            optimizer.lr = rate(k)
        optimizer.advance()
        rows.append(kernels.update_scalars(optimizer.rule, network.dtype, **optimizer.scalars()))
    state.table.set(np.stack(rows))
    state.step.set(np.zeros(1, np.int64))
    state.first_step.set(np.array([first_step], np.int64))
    state.counter.set(np.zeros(1, np.int32))
    if transforms is not None:
        state.transforms[...] = transforms
    for k in range(state.full_steps):
        network.step = first_step + k
        if state.graph is not None:
            state.graph.launch()
        else:
            state.run(network, optimizer, step_gradients)
            if not state.tried:
                state.tried = True
                state.graph = _captured(ops, lambda: state.run(network, optimizer, step_gradients))
        if progress is not None:
            progress(batch_size)
    start = state.full_steps * batch_size
    if start < m:  # the partial last batch, eagerly (a workspace of its own size)
        if rate is not None:
            optimizer.lr = rate(state.full_steps)
        network.step = first_step + state.full_steps
        index = state.order[start:]
        grads, _ = step_gradients(network, data.images, index, data.labels[index], state.losses[start:], state.counter,
                                  transforms)
        optimizer.step(grads)
        if progress is not None:
            progress(m - start)
    losses[...] = state.losses
    return state.counter[0]


def _captured(ops, step):
    """The step captured as a graph, or None, said in one line, where capture fails."""
    try:
        return ops.capture_graph(step)
    except Exception as exc:  # any refusal by CUDA, cuBLAS or CuPy: the run goes on eagerly
        notify(f"CUDA graph: capture failed ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
               "the steps run eagerly")
        return None
