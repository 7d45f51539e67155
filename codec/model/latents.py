"""The latent grid: multi-resolution dense 3D feature grids read by trilinear or cubic interpolation,
the shared encoder of 3D volumes (its latents hold most of a file's bytes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.model.layers import FakeQuantizable
from codec.model.refinement import CATMULL_ROM, read_refined, refine_grid, refined_read_pays, refinement_matrix
from codec.settings import GRID_INTERPOLATIONS

#: How a grid is read between its nodes (codec.settings.GRID_INTERPOLATIONS): trilinear, or "cubic":
#: each level first refined to 2 r - 1 nodes per axis of r, each midpoint a symmetric 4-tap filter
#: of its neighbours (`refine`; the ends extended linearly), then read trilinearly. The filter's
#: outer tap is learned per level and axis (the tensor `taps`, stored with the grid), starting at
#: Catmull-Rom's -1 9 9 -1 over 16. Cubic draws smoother, sharper features from the same latents
#: and still reads as three small matrix products per level (box_features).
INTERPOLATIONS = GRID_INTERPOLATIONS


class LatentGrid(FakeQuantizable):
    """Multi-resolution dense 3D feature grids, read by trilinear or cubic interpolation.

    Node j of an axis with r nodes sits at -1 + 2 j / (r - 1) (grid_sample's align_corners=True),
    so the grid spans the volume's coordinate box and every voxel centre falls inside it.
    """

    def __init__(self, channels: int, resolutions: list[tuple[int, ...]], interpolation: str = "linear"):
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {interpolation!r}")
        #: Set by MoEC.read_latents (the Fitter switches to cubic part way through a run).
        self.interpolation = interpolation
        self.levels = len(resolutions)
        # Latents start at zero: the grids grow only where the volume needs detail. Random starting
        # latents are noise that the rate-set step then spends bits on, and their draw alone swung
        # the result from seed to seed (docs/benchmarks.md, "The latent grid and its coding").
        for level, res in enumerate(resolutions):
            setattr(self, f"grid{level}", nn.Parameter(torch.zeros((channels, *res))))
        # Always there, so that the optimizer made before the switch to cubic holds it (it gets no
        # gradient until then); stored only with a cubic grid (ModelConfig.tensor_shapes).
        self.taps = nn.Parameter(torch.full((self.levels, 3), CATMULL_ROM))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        # grid_sample wants (x, y, z) = (last axis, ..., first axis) of the (C, D, H, W) grid.
        where = coords.flip(1).reshape(1, 1, 1, -1, 3)
        parts = []
        taps = self._param("taps")
        for level in range(self.levels):
            grid = self._param(f"grid{level}")
            if self.interpolation == "cubic":
                if refined_read_pays(tuple(grid.shape), coords.shape[0]):
                    parts.append(read_refined(grid, taps[level], coords))
                    continue
                grid = refine_grid(grid, taps[level])
            sampled = F.grid_sample(grid.unsqueeze(0), where, mode="bilinear", align_corners=True)
            parts.append(sampled.reshape(grid.shape[0], -1))
        # Rows contiguous: dispatch gathers whole rows, which saves more of a decode than the copy
        # costs (docs/history.md, "Figures behind the code's constants").
        return torch.cat(parts, dim=0).t().contiguous()

    @torch.no_grad()
    def box_features(self, axes: list[torch.Tensor]) -> torch.Tensor:
        """`forward` at every point of the product grid `axes` (one 1D tensor of positions per axis,
        C order): both readings are separable, so a box is three small matrix products per level
        instead of a gather of eight nodes per point (a decoded tile's features in a sixth of
        grid_sample's time). Equal to `forward` up to float rounding."""
        width = sum(getattr(self, f"grid{level}").shape[0] for level in range(self.levels))
        out = torch.empty(*(len(a) for a in axes), width, device=axes[0].device)
        at = 0
        taps = self._param("taps")
        for level in range(self.levels):
            part = self._param(f"grid{level}")
            channels = part.shape[0]
            weights = [self._reading_matrix(a, n, taps[level, k]) for k, (a, n) in enumerate(zip(axes, part.shape[1:]))]
            # The axis that shrinks most first (a tile is often one slice thick): the intermediate
            # products stay small.
            for axis in sorted(range(3), key=lambda k: weights[k].shape[0] / weights[k].shape[1]):
                part = torch.einsum(_CONTRACT[axis], part, weights[axis])
            out[..., at : at + channels] = part.permute(1, 2, 3, 0)
            at += channels
        return out.reshape(-1, width)

    def _reading_matrix(self, positions: torch.Tensor, nodes: int, outer: torch.Tensor) -> torch.Tensor:
        if self.interpolation == "cubic":
            return interpolation_matrix(positions, 2 * nodes - 1) @ refinement_matrix(nodes, outer)
        return interpolation_matrix(positions, nodes)


#: Interpolating axis k of a (C, nodes, nodes, nodes) grid, the layout kept.
_CONTRACT = ("cijk,ni->cnjk", "cijk,nj->cink", "cijk,nk->cijn")


def interpolation_matrix(positions: torch.Tensor, nodes: int) -> torch.Tensor:
    """(len(positions), nodes) linear-interpolation weights of positions in [-1, 1] over `nodes`
    evenly spaced nodes spanning it (grid_sample's bilinear weights with align_corners=True)."""
    x = (positions + 1.0) * (0.5 * (nodes - 1))
    low = torch.floor(x).clamp(0, nodes - 1)
    frac = x - low
    low_i = low.long()
    high_i = (low_i + 1).clamp(max=nodes - 1)
    rows = torch.arange(len(positions), device=positions.device)
    weights = torch.zeros(len(positions), nodes, device=positions.device)
    weights.index_put_((rows, low_i), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, high_i), frac, accumulate=True)
    return weights
