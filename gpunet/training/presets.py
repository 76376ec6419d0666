"""Named sets of training settings: ``gpunet train --preset notes|default|fast|mlp|cnn``.

Each preset is a plain mapping of ``gpunet train``'s option names (as Python spells them, which are also
``TrainConfig``'s fields) to values as the command line takes them. The command line fills every option the
user did not give from it (click's ``default_map``), so an option given always wins over the preset's value;
``--hidden`` or ``--arch`` given replaces the preset's network, whichever of the two the preset names.

Where the values come from (README, "Getting a top score", has what was measured with them and what was not):

* ``notes``: the design notes' recipe, 784-16-16-10, full-batch gradient descent W <- W - alpha.dW,
  uniform initial weights in [-0.5, 0.5), alpha 0.1, 500 steps.
* ``default``: what ``gpunet train`` does with no options (the optimizer's defaults of ``nn/optimizers.py``).
* ``fast``: the LeNet-like CNN with Adam at the default rate and decay: 3 epochs measured 98.98% on 5,000
  held-out digits, 0.02 points short of 99%; 4 measured 99.08%.
* ``cnn``: the same CNN longer, at AdamW's usual rate (2e-3, weight decay 0.01) with the cosine schedule (a
  warm-up, then a decay to 0: one-cycle's shape), the PyTorch reference recipe of issue 16; 30 epochs of about 10 s on 2 cores
  leave room in 15 minutes for augmentation's cost, which it turns on: over 10 epochs of this CNN, augmentation
  took 99.14% to 99.56% on 5,000 held-out digits at about 2% more time a step (BENCHMARKS.md, "Augmentation").
* ``mlp``: the dropout MLP of Srivastava et al. (2014), 3 x 1024 ReLU units with dropout 0.5 after each and
  0.2 on the inputs; an epoch of it took 41 CPU-seconds at batch 128, so 20 epochs come to about 7-14
  minutes on 2 cores, as well as the two cores share the products.
"""

from __future__ import annotations

LENET = "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5"
DROPOUT_MLP = "dropout0.2,dense1024,dropout0.5,dense1024,dropout0.5,dense1024,dropout0.5"

PRESETS: dict[str, dict] = {
    "notes": {"hidden": "16,16", "optimizer": "gd", "init": "seed", "lr": 0.1, "epochs": 500, "batch_size": 0,
              "schedule": "constant", "weight_decay": 0.0},
    "default": {"hidden": "16,16", "optimizer": "adam", "init": "he", "lr": 0.01, "epochs": 30, "batch_size": 64,
                "schedule": "cosine", "weight_decay": 0.1},
    "fast": {"arch": LENET, "optimizer": "adam", "init": "he", "lr": 0.01, "epochs": 4, "batch_size": 64,
             "schedule": "cosine", "weight_decay": 0.1},
    "mlp": {"arch": DROPOUT_MLP, "optimizer": "adam", "init": "he", "lr": 0.001, "epochs": 20, "batch_size": 128,
            "schedule": "cosine", "weight_decay": 0.01},
    "cnn": {"arch": LENET, "optimizer": "adam", "init": "he", "lr": 0.002, "epochs": 30, "batch_size": 64,
            "schedule": "cosine", "weight_decay": 0.01, "augment": True},
}


def command_line(name: str) -> str:
    """The preset as the options it stands for: "--hidden 16,16 --optimizer gd ...", a switch as --augment."""
    return " ".join(_option_text(option.replace("_", "-"), value) for option, value in PRESETS[name].items())


def _option_text(option: str, value) -> str:
    if isinstance(value, bool):  # an on/off switch: --augment, --no-augment
        return f"--{option}" if value else f"--no-{option}"
    return f"--{option} {value:g}" if isinstance(value, float) else f"--{option} {value}"
