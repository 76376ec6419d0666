"""Named sets of training settings: ``gpunet train --preset notes|default|fast|mlp|cnn``.

Each preset is a plain mapping of ``gpunet train``'s option names (as Python spells them, which are also
``TrainConfig``'s fields) to values as the command line takes them. The command line fills every option the
user did not give from it (click's ``default_map``), so an option given always wins over the preset's value;
``--hidden`` or ``--arch`` given replaces the preset's network, whichever of the two the preset names.

Where the values come from (README, "Getting a top score", has what was measured with them and what was not):

* ``notes``: the design notes' recipe, 784-16-16-10, full-batch gradient descent W <- W - alpha.dW,
  uniform initial weights in [-0.5, 0.5), alpha 0.1, 500 steps.
* ``default``: what ``gpunet train`` does with no options (the optimizer's defaults of ``nn/optimizers.py``).
* ``fast``: a quarter of the LeNet-like CNN's products (16 and 32 filters, dense128, no dropout: a few epochs do
  not overfit), Adam at the default rate and decay, batch 128, 4 epochs. On 5,000 held-out digits (split 0) it
  measured 99.00% for seeds 0 and 1 (seeds 2-4: 99.12, 99.06, 98.92%), in 33 CPU-seconds from a cold start (on a
  loaded machine). Against it, same split: batch 64, 4 epochs 99.10/98.96% (36 CPU-s); 3 epochs 98.92/98.96%
  (27); dense256, 4 epochs 99.04/98.96% (36), 3 epochs 98.98% (27); conv32 first, 3 epochs 98.92% (46); with
  dropout0.5, 3 epochs 98.80%; lr 0.003, decay 0.01, 3 epochs 98.58%. The LeNet-like CNN (the former ``fast``)
  took 4 epochs, 86 CPU-s, for 99.08%. Run as a user runs it on the idle machine (``gpunet train --preset fast
  --data train.csv.gz``, 1,000 held out): 99.30% in 20.6 s wall, against 33.6 s for the PyTorch recipe of issue
  16 (98.80%) in the same run (BENCHMARKS.md, "Presets against PyTorch").
* ``cnn``: the LeNet-like CNN, longer, at AdamW's usual rate (2e-3, weight decay 0.01) with the cosine schedule (a
  warm-up, then a decay to 0: one-cycle's shape), the PyTorch reference recipe of issue 16, with augmentation
  (over 10 epochs of this CNN it took 99.14% to 99.56% on 5,000 held-out digits: BENCHMARKS.md, "Augmentation"),
  30 epochs: 99.60% on 1,000 held-out digits run as a user runs it (10.3-10.8 s an epoch idle; 10 min 13 s wall
  with other work starting beside it halfway); on 5,000 held out (split 0), seeds 0-4 gave 99.48, 99.52, 99.44,
  99.46 and 99.60%, and the five together (``gpunet evaluate`` with five ``--model``) 99.64%.
* ``mlp``: two layers of 1024 ReLU units, dropout 0.2 after each, with augmentation, Adam at 1e-3, decay 0.01,
  batch 128, 120 epochs: 99.32% on 5,000 held-out digits (split 0) in 11 min 48 s wall on the idle machine
  (37,000 training digits); run as a user runs it (41,000, 1,000 held out), 99.50% in 12 min 4 s wall. On the
  same split, 15 epochs gave 98.64% and 30 gave 98.86% (a loaded machine); 50 epochs, run as a user runs it,
  99.20% in 5 min 21 s. Srivastava et al.'s (2014) dropout MLP, 3 x 1024 with dropout 0.5 after each and 0.2 on the
  inputs (the former ``mlp``), learns too slowly for 15 minutes here: with augmentation, 20 epochs gave 97.82%;
  without, 97.06% after 6 of 20 epochs (stopped for time), where this one had 97.20% after 6.
"""

from __future__ import annotations

LENET = "conv32k5,pool2,conv64k5,pool2,dense256,dropout0.5"
SMALL_CNN = "conv16k5,pool2,conv32k5,pool2,dense128"
MLP = "dense1024,dropout0.2,dense1024,dropout0.2"

PRESETS: dict[str, dict] = {
    "notes": {"hidden": "16,16", "optimizer": "gd", "init": "seed", "lr": 0.1, "epochs": 500, "batch_size": 0,
              "schedule": "constant", "weight_decay": 0.0},
    "default": {"hidden": "16,16", "optimizer": "adam", "init": "he", "lr": 0.01, "epochs": 30, "batch_size": 64,
                "schedule": "cosine", "weight_decay": 0.1},
    "fast": {"arch": SMALL_CNN, "optimizer": "adam", "init": "he", "lr": 0.01, "epochs": 4, "batch_size": 128,
             "schedule": "cosine", "weight_decay": 0.1},
    "mlp": {"arch": MLP, "optimizer": "adam", "init": "he", "lr": 0.001, "epochs": 120, "batch_size": 128,
            "schedule": "cosine", "weight_decay": 0.01, "augment": True},
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
