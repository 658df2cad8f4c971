"""The experts' nonlinearities with their backward, and one expert's MLP written out.

:data:`ACTIVATION_FUNCTIONS` maps each ``ModelConfig.activation`` to (function, backward): the
kernels with a hand-written backward (:mod:`moelab.nn.moe.experts`, :mod:`moelab.nn.moe.grouped`)
call the backward themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from moelab.config.model import ACTIVATIONS


def relu2(x: Tensor) -> Tensor:
    """ReLU squared, relu(x)² (So et al. 2021, Primer; modded-nanogpt's and nanochat's MLPs)."""
    return F.relu(x).square()


def relu2_backward(grad: Tensor, pre: Tensor) -> Tensor:
    """The gradient through :func:`relu2` at pre-activation ``pre``: grad · 2 relu(pre)."""
    return grad * 2 * F.relu(pre)


# the nonlinearities by ModelConfig.activation name (moelab.config.model.ACTIVATIONS, in its order):
# (function, backward(grad, pre-activation)), the backward for the kernels with a hand-written
# backward (loop, grouped)
ACTIVATION_FUNCTIONS = {
    "gelu": (F.gelu, torch.ops.aten.gelu_backward),
    "relu2": (relu2, relu2_backward),
}
assert tuple(ACTIVATION_FUNCTIONS) == ACTIVATIONS, "every configurable activation needs its function here"


def affine(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x @ w + b with w stored (in, out)."""
    return x @ w if b is None else torch.addmm(b, x, w)


def mlp(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, activation: str) -> Tensor:
    """The feed-forward of one expert: act(x w1 + b1) w2 + b2, with w1 (d, h), w2 (h, d), act by name."""
    act = ACTIVATION_FUNCTIONS[activation][0]
    return affine(act(affine(x, w1, b1)), w2, b2)
