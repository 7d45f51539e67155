"""The layers the network is built of: stacks of SIRENs (the experts, and the encoder's sine
layer), the shared linear decoder, and the fake quantization they train through."""

from __future__ import annotations

import math

import torch
from torch import nn

from codec.coding.quantize import add_quantization_noise, fake_quantize


def uniform_parameter(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> nn.Parameter:
    return nn.Parameter((torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound)


class FakeQuantizable(nn.Module):
    """A module whose parameters can be read through fake quantization (quantization-aware training)."""

    fake_qsteps: dict[str, torch.Tensor] | None = None
    #: Where set, a training step reads the tensors of fake_qsteps with uniform noise over their
    #: qstep, drawn from this generator (quantize.add_quantization_noise), instead of rounded. A
    #: forward pass without gradient (a preview of the model as it trains) reads them rounded: the
    #: values a file written now would hold, and the training's random numbers left alone.
    noise: torch.Generator | None = None

    def _param(self, name: str) -> torch.Tensor:
        p = getattr(self, name)
        if self.fake_qsteps is not None and name in self.fake_qsteps:
            if self.noise is not None and torch.is_grad_enabled():
                return add_quantization_noise(p, self.fake_qsteps[name], self.noise)
            return fake_quantize(p, self.fake_qsteps[name])
        return p


class SirenStack(FakeQuantizable):
    """`groups` independent SIRENs of identical shape, with weights stacked as (groups, in, out).

    `first_omega` marks a stack that reads raw coordinates: its first layer gets SIREN's first-layer
    initialisation; a stack that reads encoder features uses the hidden-layer one throughout.
    """

    def __init__(
        self,
        groups: int,
        width_in: int,
        width: int,
        layers: int,
        omega0: float,
        first_omega: bool,
        generator: torch.Generator,
    ):
        super().__init__()
        self.omega0 = omega0
        self.layers = layers
        for layer in range(layers):
            n_in = width_in if layer == 0 else width
            bound = 1.0 / n_in if (layer == 0 and first_omega) else math.sqrt(6.0 / n_in) / omega0
            setattr(self, f"w{layer}", uniform_parameter((groups, n_in, width), bound, generator))
            setattr(self, f"b{layer}", uniform_parameter((groups, width), 1.0 / math.sqrt(n_in), generator))

    def run(self, group: int, x: torch.Tensor) -> torch.Tensor:
        # omega0 scales the small weight matrices, not the (batch x width) activations: the same
        # sin(omega0 (x W + b)), with two fewer passes over the activations per layer.
        for layer in range(self.layers):
            w, b = self._param(f"w{layer}"), self._param(f"b{layer}")
            x = torch.addmm(self.omega0 * b[group], x, self.omega0 * w[group])
            # Decoding has no graph to keep: the sine overwrites its input (one allocation less).
            x = torch.sin(x) if torch.is_grad_enabled() else x.sin_()
        return x

    def run_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every group on every row: (B, in) -> (groups, B, out). The dense reference form."""
        x = x.unsqueeze(0)
        for layer in range(self.layers):
            w, b = self._param(f"w{layer}"), self._param(f"b{layer}")
            x = torch.sin(self.omega0 * (torch.matmul(x, w) + b.unsqueeze(1)))
        return x


class Decoder(FakeQuantizable):
    """The shared linear layer from expert features to intensities (SIREN's last-layer init)."""

    def __init__(self, width_in: int, channels: int, omega0: float, generator: torch.Generator):
        super().__init__()
        bound = math.sqrt(6.0 / width_in) / omega0
        self.w = uniform_parameter((width_in, channels), bound, generator)
        self.b = uniform_parameter((channels,), bound, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self._param("b"), h, self._param("w"))
