"""Cubic reading of a latent grid: the refinement of a (C, X, Y, Z) grid to 2 n - 1 nodes per axis
of n (each midpoint a symmetric 4-tap filter of its neighbours, the outer tap learned), and two
ways to read the refined grid at points that give the same values and gradients: refine the whole
grid and read it trilinearly (`refine_grid`, then grid_sample), or read each point from the 4 x 4 x 4
coarse nodes its value depends on (`read_refined`). The first costs in proportion to the grid, the
second to the points; `refined_read_pays` says which is cheaper.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: The outer tap of Catmull-Rom's midpoint filter (0 is linear interpolation).
CATMULL_ROM = 1.0 / 16.0


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


#: A refined grid read whole costs about this many times a point read from its 64 coarse nodes, per
#: refined node against per point (both with their backward pass, 2 CPU threads): refining costs in
#: proportion to the grid, reading points in proportion to the batch.
_NODES_PER_POINT = 64


def refined_read_pays(grid_shape: tuple[int, ...], points: int) -> bool:
    """Whether reading `points` points of a (C, X, Y, Z) grid's refinement straight from its coarse
    nodes (`read_refined`) is cheaper than refining the whole grid and reading that."""
    channels, *nodes = grid_shape
    refined = channels
    for n in nodes:
        refined *= 2 * n - 1
    return refined > _NODES_PER_POINT * points


def read_refined(grid: torch.Tensor, outer: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(C, B): `refine_grid(grid, outer)` read trilinearly at `coords` (B, 3) in [-1, 1] (C order,
    align_corners=True), without refining the grid: along each axis a point lies between two refined
    nodes, each a node or a midpoint of at most 4 coarse ones, so it reads a 4 x 4 x 4 box of
    coarse nodes with weights affine in the outer taps. Same values and gradients (grid and taps) as
    the whole refinement up to float rounding, at a cost in proportion to the points."""
    return _ReadRefined.apply(grid, outer, coords)


class _ReadRefined(torch.autograd.Function):
    """`read_refined`, with a backward that scatters each point's gradient into its 64 nodes (one
    index_add) and sums the taps' gradients from the forward's partial sums."""

    @staticmethod
    def forward(ctx: Any, grid: torch.Tensor, outer: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        channels, *nodes = grid.shape
        _, ny, nz = nodes
        starts, weights, slopes = zip(*(_axis_window(coords[:, k], n) for k, n in enumerate(nodes)))
        o = outer.detach()
        wx, wy, wz = (a + o[k] * b for k, (a, b) in enumerate(zip(weights, slopes)))
        points = coords.shape[0]
        bx, by, bz = wx.shape[1], wy.shape[1], wz.shape[1]  # window widths: 4, or the axis' nodes if fewer
        base = (starts[0] * ny + starts[1]) * nz + starts[2]
        box = (torch.arange(bx, device=grid.device)[:, None] * ny + torch.arange(by, device=grid.device)) * nz
        index = base[:, None] + (box.reshape(-1, 1) + torch.arange(bz, device=grid.device)).reshape(-1)
        values = grid.reshape(channels, -1).index_select(1, index.reshape(-1)).reshape(channels, points, bx * by, bz)
        wxy = (wx[:, :, None] * wy[:, None, :]).reshape(points, bx * by)
        along_z = (values * wz[:, None, :]).sum(-1)  # (C, B, bx by): each row of 4 along z read
        ctx.save_for_backward(index, values, along_z, wx, wy, wz, wxy, *slopes)
        ctx.grid_shape = grid.shape
        return (along_z * wxy).sum(-1)

    @staticmethod
    def backward(ctx: Any, out_grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        index, values, along_z, wx, wy, wz, wxy, sx, sy, sz = ctx.saved_tensors
        channels, points = out_grad.shape
        grid_grad = outer_grad = None
        if ctx.needs_input_grad[0]:
            spread = ((out_grad[:, :, None] * wxy)[..., None] * wz[:, None, :]).reshape(channels, -1)
            grid_grad = out_grad.new_zeros(channels, math.prod(ctx.grid_shape[1:]))
            grid_grad = grid_grad.index_add_(1, index.reshape(-1), spread).reshape(ctx.grid_shape)
        if ctx.needs_input_grad[1]:
            # Each axis' weights are a + outer * slope: its tap's gradient is the output's gradient
            # times the read with that axis' weights replaced by their slopes.
            box_z = (out_grad[:, :, None] * along_z).sum(0).reshape(points, wx.shape[1], wy.shape[1])
            x_grad = (box_z * wy[:, None, :]).sum(2)
            y_grad = (box_z * wx[:, :, None]).sum(1)
            z_grad = (out_grad[:, :, None] * (values * wxy[:, :, None]).sum(2)).sum(0)
            outer_grad = torch.stack([(x_grad * sx).sum(), (y_grad * sy).sum(), (z_grad * sz).sum()])
        return grid_grad, outer_grad, None


def _axis_window(positions: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Along an axis of n coarse nodes: each position's first coarse node of its window of min(4, n)
    (B,), and its weights over the window as a + outer * slope ((B, w) each), read from the rows of
    the refinement matrix (so the ends' linear extension is in them) on either side of it."""
    refined = 2 * n - 1
    at = (positions + 1.0) * (n - 1)  # in refined nodes
    row = torch.floor(at).clamp(0, refined - 2)
    frac = (at - row)[:, None]
    row = row.long()
    width = min(4, n)
    start = (torch.div(row, 2, rounding_mode="floor") - 1).clamp(0, n - width)
    cells = (row * n + start)[:, None] + torch.arange(width, device=positions.device)
    plain = refinement_matrix(n, 0.0, device=positions.device, dtype=positions.dtype).reshape(-1)
    slope = refinement_matrix(n, 1.0, device=positions.device, dtype=positions.dtype).reshape(-1) - plain
    weights = torch.lerp(plain.take(cells), plain.take(cells + n), frac)
    slopes = torch.lerp(slope.take(cells), slope.take(cells + n), frac)
    return start, weights, slopes
