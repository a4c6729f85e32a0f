"""Autograd in five minutes: train a small network on 2-D spirals, then check a hand-written gradient.

    python examples/01_autograd.py

What happens:
1. We generate three interleaved spirals of 2-D points; the task is to say which spiral a point is on.
   No straight line separates them, so the network has to learn a curved decision boundary.
2. A 3-layer MLP built from ``tinyllm.nn`` (Linear → GELU → Linear → GELU → Linear) turns each point into
   3 logits; ``tinyllm.functional.cross_entropy`` turns logits and labels into one loss number.
3. ``loss.backward()`` walks the graph from the loss back to every parameter and leaves dL/dparam in
   ``param.grad``; ``AdamW.step()`` nudges each parameter against its gradient. Repeat.
4. Finally we define our own op with a hand-derived backward and let ``gradcheck`` compare it with
   finite differences — the same test every fused op in tinyllm passes.
Runs in a couple of seconds on a laptop CPU.
"""

import argparse
import math

import numpy as np

import tinyllm
import tinyllm.functional as F
from tinyllm import Tensor
from tinyllm.nn import GELU, Linear, Module
from tinyllm.optim import AdamW
from tinyllm.testing import gradcheck


def make_spirals(points_per_class=100, classes=3, noise=0.2, seed=0):
    """Points (N, 2) and labels (N,): class k's points lie on an arm rotated by 2πk/classes."""
    rng = np.random.default_rng(seed)
    radius = np.tile(np.linspace(0.05, 1.0, points_per_class), classes)
    labels = np.repeat(np.arange(classes), points_per_class)
    angle = labels * (2 * math.pi / classes) + radius * 6.0 + rng.normal(0, noise, radius.size)
    points = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    return points.astype(np.float32), labels


class SpiralNet(Module):
    """Attributes that are Modules (or lists of them) are found automatically by ``parameters()``."""

    def __init__(self, hidden=64, classes=3):
        generator = tinyllm.backend.rng(0)                    # seeded init: the same run every time
        self.layers = [Linear(2, hidden, generator=generator), GELU(),
                       Linear(hidden, hidden, generator=generator), GELU(),
                       Linear(hidden, classes, generator=generator)]

    def forward(self, x):                                     # (N, 2)
        for layer in self.layers:
            x = layer(x)
        return x                                              # (N, classes) logits


def train():
    points, labels = make_spirals()
    x = Tensor(points)                                        # inputs need no gradient: requires_grad=False
    model = SpiralNet()
    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    print(f"model: {model.num_parameters()} parameters; data: {len(points)} points in 3 spirals")

    for step in range(401):
        logits = model(x)                                     # forward: builds a small graph of fused ops
        loss = F.cross_entropy(logits, labels)                # mean of -log p(correct class)
        model.zero_grad()                                     # gradients accumulate, so clear last step's
        loss.backward()                                       # fills p.grad for every parameter
        optimizer.step()                                      # p ← p - lr · (Adam-normalised gradient)
        if step % 50 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    with tinyllm.no_grad():                                   # evaluation: no graph, no saved activations
        predictions = model(x).numpy().argmax(axis=1)
    accuracy = (predictions == labels).mean()
    # Chance is 33%; a network that can only draw straight lines stays far below 100%.
    print(f"final training accuracy: {accuracy:.1%}")
    return accuracy


def softplus(x: Tensor) -> Tensor:
    """A user-defined fused op: y = log(1 + eˣ), with dy/dx = sigmoid(x) = 1 / (1 + e⁻ˣ).

    ``Tensor._make(output, parents, backward)`` records the op; ``backward`` maps dL/dy to (dL/dx,).
    """
    xp = tinyllm.backend.xp
    y = xp.logaddexp(0.0, x.data)                             # log(1 + eˣ) without overflow
    return Tensor._make(y, (x,), lambda dy: (dy / (1.0 + xp.exp(-x.data)),))


def check_softplus():
    # The three lines: float64 (finite differences need the precision), an input that requires grad, gradcheck.
    with tinyllm.default_dtype("float64"):
        x = Tensor(np.random.default_rng(1).standard_normal((4, 5)), requires_grad=True)
        error = gradcheck(softplus, [x])
    print(f"gradcheck of softplus: largest relative error {error:.1e} (a wrong backward gives ~1)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="It takes no options: read and change the code instead.")
    parser.parse_args()
    train()
    check_softplus()
