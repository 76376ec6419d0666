"""Parameter updates. Each ``step`` changes the parameters in place and allocates nothing.

The notes' rule is plain gradient descent, W <- W - alpha.dW and b <- b - alpha.db;
momentum and Adam keep per-parameter state of the same shape.

Optional decoupled weight decay (as in AdamW) shrinks the weights, not the
biases, before each step: W <- W - alpha.lambda.W. It is what keeps the small
16-16 network from overfitting: about one point of validation accuracy.

``params`` alternate weights and biases. They may be the layers' arrays
[W1, b1, W2, b2, ...] or a network's ``groups``, [all weights, all biases] as
two flat arrays: the arithmetic is elementwise, so both give the same bits,
and the second takes a few whole-array operations per step instead of a few
per layer. Scratch arrays for the intermediate terms are made once.

Given a ``backend``, an optimizer first offers it the whole step
(``Backend.optimizer_update``): the CUDA backend does it as one kernel over
each (weights, biases) pair, the same operations per element in the same order
(kernels/optimizers.cu); the others decline, and the array operations below run.
"""

from __future__ import annotations

import numpy as np  # its ufuncs with out= work on CuPy arrays too (__array_ufunc__)

OPTIMIZERS = ("gd", "sgd", "momentum", "adam")

# Each optimizer's learning rate and weight decay when the user gives none. The decay's
# shrink per step, alpha.lambda, is what matters: ~1e-3 suits Adam, but SGD at Adam's
# lambda = 0.1 loses 1% of its weights every step and stalls near 80%. Chosen on
# train.csv.gz, 16-16 network, seeds 0-3, 5,000 validation digits (README's table).
DEFAULTS = {
    "gd": {"lr": 0.1, "weight_decay": 0.0},  # the notes: plain W <- W - alpha.dW
    "sgd": {"lr": 0.2, "weight_decay": 0.002},
    "momentum": {"lr": 0.05, "weight_decay": 0.01},
    "adam": {"lr": 0.01, "weight_decay": 0.1},
}


def flush_subnormals(x, scratch) -> None:
    """x <- 0 wherever |x| is below the dtype's smallest normal number (in place; NaN and inf stay).

    Why: a parameter whose gradient was not 0 and then is 0 for good (a rarely inked pixel's weight
    once no digit inks it, a hidden unit's weights once its ReLU never fires) has a moment that only
    decays, m <- 0.9 m; after ~750 steps it is a subnormal number, where it stays (0.9 times the
    smallest subnormal rounds back to it). x86 CPUs compute on subnormals about 100 times slower: a
    sixth of the 16-16 network's Adam mean was subnormal after 1,300 steps, and the compiled path's
    epochs took 2.7x as long (BENCHMARKS.md). A step of m/(sqrt(s) + eps) with m that small moves no
    weight that is not itself that small (for eps far above sqrt(tiny), as the default 1e-8 is). GPUs
    compute on subnormals at full speed, so only NumPy arrays are flushed. ``scratch``: an array like x,
    overwritten.
    """
    if not isinstance(x, np.ndarray):
        return
    normal = np.greater_equal(np.abs(x, out=scratch), np.finfo(x.dtype).tiny, out=scratch)  # 1, or 0 (NaN too)
    x *= normal  # NaN * 0 is NaN: a diverged run stays visible


class GradientDescent:
    """W <- W - alpha.dW. Full-batch (the notes) or mini-batch (SGD): the batch decides."""

    rule = "sgd"  # the name Backend.optimizer_update knows this update by
    state_lists = ()  # the per-parameter arrays a step reads and writes (velocity; mean, square)
    state_counts = ()  # the whole numbers a step reads and writes (Adam's t)

    def __init__(self, params, lr: float, weight_decay: float = 0.0, backend=None):
        self.params = params
        self.lr = lr
        self.weight_decay = weight_decay
        self.backend = backend  # offered each whole step first (optimizer_update); None: the array operations

    def state(self) -> dict:
        """What the next steps depend on besides the parameters and the rate, as host copies (a resumable run's
        checkpoint): {name: [NumPy arrays, one per parameter]} for ``state_lists``, {name: int} for
        ``state_counts``. The rate is not state: the schedule sets it before every step."""
        to_host = np.asarray if self.backend is None else self.backend.to_numpy
        return {**{name: [np.array(to_host(a)) for a in getattr(self, name)] for name in self.state_lists},
                **{name: int(getattr(self, name)) for name in self.state_counts}}

    def load_state(self, state: dict) -> None:
        """Put back what ``state()`` gave, in place (the backend's arrays stay the ones a fused step was given);
        ValueError saying what does not fit (another optimizer's state, other shapes or dtypes)."""
        expected = {*self.state_lists, *self.state_counts}
        if set(state) != expected:
            raise ValueError(f"the {type(self).__name__} optimizer's state holds {sorted(expected) or 'nothing'}, "
                             f"not {sorted(state) or 'nothing'}")
        for name in self.state_lists:
            arrays, new = getattr(self, name), state[name]
            if len(new) != len(arrays) or any(np.shape(n) != a.shape or np.asarray(n).dtype != a.dtype
                                              for a, n in zip(arrays, new)):
                raise ValueError(f"the optimizer's {name} does not match the parameters' shapes and dtype")
        for name in self.state_lists:
            for a, new in zip(getattr(self, name), state[name]):
                a[...] = new if self.backend is None else self.backend.asarray(new)
        for name in self.state_counts:
            setattr(self, name, int(state[name]))

    def decay(self):
        """The weights' factor per step, 1 - alpha.lambda, in the parameters' dtype (1 without decay)."""
        return self.params[0].dtype.type(1 - self.lr * self.weight_decay)

    def state_arrays(self) -> tuple:
        """The per-parameter lists of ``state_lists``, the arrays themselves: what the update reads and writes."""
        return tuple(getattr(self, name) for name in self.state_lists)

    def scalars(self) -> dict:
        """The numbers of the next update (after ``advance``): what ``Backend.optimizer_update`` is given."""
        return {"decay": self.decay(), "lr": self.lr}

    def advance(self) -> None:
        """Count one more step, before its update (Adam's bias corrections count them); nothing here."""

    def fused(self, grads) -> bool:
        """Whether the backend did the whole step (decay included) in its own way."""
        return self.backend is not None and self.backend.optimizer_update(
            self.rule, self.params, grads, self.state_arrays(), **self.scalars())

    def decay_weights(self) -> None:
        """W <- W - alpha.lambda.W for the weight matrices (params alternate W, b)."""
        if self.weight_decay:
            for W in self.params[0::2]:
                W *= W.dtype.type(1 - self.lr * self.weight_decay)

    def step(self, grads) -> None:
        """W <- W - alpha.dW for every parameter (after the weight decay); ``grads`` may be overwritten."""
        if self.fused(grads):
            return
        self.decay_weights()
        for p, g in zip(self.params, grads):
            g *= p.dtype.type(self.lr)
            p -= g


class Momentum(GradientDescent):
    """v <- beta.v + dW;  W <- W - alpha.v  (heavy ball, as PyTorch's SGD with momentum)."""

    rule = "momentum"
    state_lists = ("velocity",)

    def __init__(self, params, lr: float, weight_decay: float = 0.0, beta: float = 0.9, backend=None):
        super().__init__(params, lr, weight_decay, backend)
        self.beta = beta
        self.velocity = [p * 0 for p in params]
        self.scratch = [p * 0 for p in params]

    def scalars(self) -> dict:
        return {**super().scalars(), "beta": self.beta}

    def step(self, grads) -> None:
        """v <- beta.v + dW; W <- W - alpha.v (after the weight decay)."""
        if self.fused(grads):
            return
        self.decay_weights()
        for p, g, v, tmp in zip(self.params, grads, self.velocity, self.scratch):
            v *= p.dtype.type(self.beta)
            v += g
            flush_subnormals(v, tmp)
            tmp = np.multiply(v, p.dtype.type(self.lr), out=tmp)
            p -= tmp


class Adam(GradientDescent):
    """Adam (Kingma & Ba): step along the bias-corrected mean over the root mean square of dW.

    The two bias corrections are folded into the step size (the paper's
    efficient form), so eps is added to sqrt(s) rather than to its corrected value.
    """

    rule = "adam"
    state_lists = ("mean", "square")
    state_counts = ("t",)

    def __init__(self, params, lr: float, weight_decay: float = 0.0,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, backend=None):
        super().__init__(params, lr, weight_decay, backend)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.mean = [p * 0 for p in params]
        self.square = [p * 0 for p in params]
        self.scratch = [(p * 0, p * 0) for p in params]
        self.t = 0

    def advance(self) -> None:
        self.t += 1

    def scalars(self) -> dict:
        # Fold both bias corrections into one step size: alpha.sqrt(1-b2^t)/(1-b1^t).
        step_size = self.lr * (1 - self.beta2**self.t) ** 0.5 / (1 - self.beta1**self.t)
        return {**super().scalars(), "beta1": self.beta1, "beta2": self.beta2, "step_size": step_size,
                "eps": self.eps}

    def step(self, grads) -> None:
        """One Adam step on every parameter (after the weight decay); ``grads`` are not changed."""
        self.advance()
        if self.fused(grads):
            return
        step_size = self.scalars()["step_size"]
        self.decay_weights()
        for p, g, m, s, (tmp, root) in zip(self.params, grads, self.mean, self.square, self.scratch):
            t = p.dtype.type
            m *= t(self.beta1)
            m += np.multiply(g, t(1 - self.beta1), out=tmp)  # m <- b1.m + (1-b1).g
            s *= t(self.beta2)
            tmp = np.multiply(g, t(1 - self.beta2), out=tmp)
            tmp *= g
            s += tmp  # s <- b2.s + (1-b2).g.g
            flush_subnormals(m, tmp)
            flush_subnormals(s, tmp)
            root = np.sqrt(s, out=root)
            root += t(self.eps)
            tmp = np.multiply(m, t(step_size), out=tmp)
            tmp /= root
            p -= tmp  # W <- W - step.m / (sqrt(s) + eps)


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, backend=None):
    """The optimizer called ``name`` (one of OPTIMIZERS) over ``params``; ``backend``: offered each whole step."""
    if name in ("gd", "sgd"):
        return GradientDescent(params, lr, weight_decay, backend=backend)
    if name == "momentum":
        return Momentum(params, lr, weight_decay, backend=backend)
    if name == "adam":
        return Adam(params, lr, weight_decay, backend=backend)
    raise ValueError(f"unknown optimizer {name!r}")
