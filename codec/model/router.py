"""The router (gating network): which expert draws each coordinate."""

from __future__ import annotations

import math

import torch
from torch import nn

from codec.model.layers import uniform_parameter


class Router(nn.Module):
    """Gating MLP: Linear, ReLU, Linear, softmax over the experts (softmax applied by the caller)."""

    def __init__(self, width_in: int, width: int, experts: int, generator: torch.Generator):
        super().__init__()
        self.w0 = uniform_parameter((width_in, width), 1.0 / math.sqrt(width_in), generator)
        self.b0 = uniform_parameter((width,), 1.0 / math.sqrt(width_in), generator)
        self.w1 = uniform_parameter((width, experts), 1.0 / math.sqrt(width), generator)
        self.b1 = uniform_parameter((experts,), 1.0 / math.sqrt(width), generator)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b1, torch.relu(torch.addmm(self.b0, e, self.w0)), self.w1)
