"""A worked example of bringing your own model, attack and aggregation rule to byzsgd.

Nothing here is part of the library: this module only has to be importable (its folder on
PYTHONPATH) and named in the config's ``plugins:`` list (see custom.yaml next to it). byzsgd
imports it in the driver and in every Ray actor and sweep process before anything is built,
so the names registered below work with both runtimes and in sweeps.

    PYTHONPATH=experiments/custom byzsgd run experiments/custom/custom.yaml
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import byzsgd
from byzsgd.attacks import AttackContext


# --- a model: any callable (input_shape, num_classes, **model.params) -> torch.nn.Module ----------
def make_net(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Module:
    """A small convolutional net: one 3x3 convolution of `width` channels, then a linear layer.
    Selected in YAML as ``model: {name: "my_plugin:make_net", params: {width: 32}}``."""
    channels, height, width_px = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * height * width_px, num_classes),
    )


# --- an attack: (honest vector, context, **attack.params) -> the vector sent instead, or None ------
@byzsgd.register_attack("noisy-flip")
def noisy_flip(honest: np.ndarray, context: AttackContext, scale: float = 3.0, noise: float = 0.1) -> np.ndarray:
    """Reverse and amplify the honest gradient, and hide it in a little noise (context.rng is
    seeded per node and round, so runs are reproducible)."""
    return -scale * honest + context.rng.normal(0.0, noise, size=honest.shape)


# --- a rule: (vectors: (n, d) tensor, f, **aggregator.params) -> (d,) tensor ----------------------
@byzsgd.register_aggregator("drop-largest", bound=(1, 1))
def drop_largest(vectors: torch.Tensor, f: int, keep_extra: int = 0) -> torch.Tensor:
    """Drop the f - keep_extra vectors with the largest norms and average the rest (a large
    norm is what a scaled attack needs). bound=(1, 1): it needs n >= f + 1 inputs.
    Rows holding NaN/Inf never reach it: byzsgd drops them first and counts them against f."""
    keep = vectors.shape[0] - max(f - keep_extra, 0)
    norms = vectors.norm(dim=1)
    return vectors[norms.argsort()[:keep]].mean(dim=0)
