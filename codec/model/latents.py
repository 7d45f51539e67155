"""The latent grid: multi-resolution dense 3D feature grids read by trilinear or cubic interpolation,
the shared encoder of 3D volumes (its latents hold most of a file's bytes)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from codec.model.layers import FakeQuantizable
from codec.settings import GRID_INTERPOLATIONS

#: How a grid is read between its nodes (codec.settings.GRID_INTERPOLATIONS): trilinear, or "cubic":
#: each level first refined to 2 r - 1 nodes per axis of r, each midpoint a symmetric 4-tap filter
#: of its neighbours (`refine`; the ends extended linearly), then read trilinearly. The filter's
#: outer tap is learned per level and axis (the tensor `taps`, stored with the grid), starting at
#: Catmull-Rom's -1 9 9 -1 over 16. Cubic draws smoother, sharper features from the same latents
#: and still reads as three small matrix products per level (box_features).
INTERPOLATIONS = GRID_INTERPOLATIONS

#: The outer tap of Catmull-Rom's midpoint filter (0 is linear interpolation).
CATMULL_ROM = 1.0 / 16.0


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


def refine_grid(grid: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """A (C, X, Y, Z) grid refined along its three axes (`refine`, axis k with outer tap outer[k]),
    as three matrix products: training refines every level every step, and BLAS does it in well
    under the time of `refine`'s slices (docs/benchmarks.md, "Cubic reading of the latent grid")."""
    for axis in (3, 2, 1):
        grid = _RefineAxis.apply(grid, outer[axis - 1], axis)
    return grid


class _RefineAxis(torch.autograd.Function):
    """`refine` along one axis (1, 2 or 3) of a (C, X, Y, Z) grid, by a matrix product, with a
    hand-written backward for the tap. The midpoints are linear in it, (b + c) / 2 + outer (b + c -
    a - d), so its gradient is the output's gradient at the midpoints dotted with b + c - a - d:
    a few elementwise passes, where autograd through the matrix adds a product as large as the
    forward's (docs/benchmarks.md, "Cubic reading of the latent grid")."""

    @staticmethod
    def forward(ctx: Any, grid: torch.Tensor, outer: torch.Tensor, axis: int) -> torch.Tensor:
        matrix = refinement_matrix(grid.shape[axis], outer.detach(), dtype=grid.dtype)
        ctx.save_for_backward(grid, matrix)
        ctx.axis = axis
        return _along(grid, matrix, axis)

    @staticmethod
    def backward(ctx: Any, out_grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        grid, matrix = ctx.saved_tensors
        axis = ctx.axis
        grid_grad = _along(out_grad, matrix.t(), axis) if ctx.needs_input_grad[0] else None
        outer_grad = None
        if ctx.needs_input_grad[1]:
            outer_grad = _tap_gradient(grid, out_grad, axis)
        return grid_grad, outer_grad, None


def _tap_gradient(grid: torch.Tensor, out_grad: torch.Tensor, axis: int) -> torch.Tensor:
    """The gradient of `refine`'s outer tap along `axis`: the sum over midpoints of the output's
    gradient there times b + c - a - d, the outer nodes beyond either end being the linear
    extensions 2 x0 - x1 and 2 x[n-1] - x[n-2]. Written as four sums over views, without padding
    the grid: the finest level's padded copy cost as much again."""
    n = grid.shape[axis]
    if n < 3:  # one midpoint, on a line: b + c - a - d is zero
        return torch.zeros((), dtype=grid.dtype, device=grid.device)

    def nodes(start: int, count: int) -> torch.Tensor:
        return grid.narrow(axis, start, count)

    # Rows 1, 3, ..., 2 n - 3 of the output are the midpoints.
    g = out_grad.narrow(axis, 1, 2 * n - 2).unflatten(axis, (n - 1, 2)).select(axis + 1, 0)
    total = torch.sum(g * (nodes(0, n - 1) + nodes(1, n - 1)))
    total -= torch.sum(g.narrow(axis, 1, n - 3) * (nodes(0, n - 3) + nodes(3, n - 3)))
    total -= torch.sum(g.narrow(axis, 0, 1) * (2 * nodes(0, 1) - nodes(1, 1) + nodes(2, 1)))
    total -= torch.sum(g.narrow(axis, n - 2, 1) * (nodes(n - 3, 1) + 2 * nodes(n - 1, 1) - nodes(n - 2, 1)))
    return total


def _along(grid: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """`matrix` (m, n) applied along `axis` (1, 2 or 3; n nodes) of a (C, X, Y, Z) grid, each
    axis by the product that needs no transposed copy."""
    if axis == 3:
        return grid @ matrix.t()
    if axis == 2:
        return matrix @ grid
    channels, _, y, z = grid.shape
    return (matrix @ grid.reshape(channels, grid.shape[1], -1)).reshape(channels, -1, y, z)


def refine(grid: torch.Tensor, axis: int, outer: float | torch.Tensor = CATMULL_ROM) -> torch.Tensor:
    """`grid` with 2 n - 1 nodes on `axis` of n: its own nodes, and between each two, b and c with a
    before and d after, the midpoint (1/2 + outer) (b + c) - outer (a + d) (Catmull-Rom's cubic for
    outer = 1/16, linear for 0); the nodes beyond either end extended linearly, so a linear ramp
    refines to itself whatever the taps."""
    n = grid.shape[axis]
    before = 2 * grid.narrow(axis, 0, 1) - grid.narrow(axis, 1, 1)
    after = 2 * grid.narrow(axis, n - 1, 1) - grid.narrow(axis, n - 2, 1)
    padded = torch.cat([before, grid, after], dim=axis)
    middle = (0.5 + outer) * (padded.narrow(axis, 1, n - 1) + padded.narrow(axis, 2, n - 1)) - outer * (
        padded.narrow(axis, 0, n - 1) + padded.narrow(axis, 3, n - 1)
    )
    pairs = torch.stack([grid.narrow(axis, 0, n - 1), middle], dim=axis + 1).flatten(axis, axis + 1)
    return torch.cat([pairs, grid.narrow(axis, n - 1, 1)], dim=axis)


def refinement_matrix(
    nodes: int,
    outer: float | torch.Tensor = CATMULL_ROM,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(2 nodes - 1, nodes): `refine` along one axis as a matrix (differentiable in `outer`)."""
    if isinstance(outer, torch.Tensor):
        device = outer.device
    return refine(torch.eye(nodes, device=device, dtype=dtype), 0, outer)
