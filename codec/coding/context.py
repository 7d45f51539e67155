"""The spatial context model of a latent grid's symbols: prediction, context bins and coding order.

Neighbouring latents of a trained grid are alike (docs/design.md, "The network" names a spatial context model as
the lever after the grid itself). Each symbol is predicted from its causal face neighbours, those
one step back along each axis (their mean, 0 outside the grid), and only the residual is coded,
with a model picked by how large those neighbours' residuals were (`BINS` bins: a large neighbour
residual means a busy region). Prediction and bins together save much more than either alone
(docs/benchmarks.md, "The latent grid and its coding").

The order makes decoding vectorised: a node on the wavefront plane i + j + k = s depends only on
nodes of plane s - 1, so the decoder takes one plane at a time, each in a few array operations.
Channels are coded one after another and independently. Everything here is integer arithmetic, so
the encoder's whole-array residuals and the decoder's plane-by-plane ones agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BINS = 6


@dataclass(frozen=True)
class Walk:
    """Where a grid's nodes sit in a zero-bordered flat copy of one channel, and in which order.

    The copy has one extra leading row along every spatial axis, filled with zeros, so a node's
    causal neighbour along an axis is always at `index - stride`: no bounds checks, and the border
    supplies the 0 that stands for "outside the grid"."""

    padded: tuple[int, ...]
    strides: tuple[int, ...]  # of the padded copy, in elements, one per spatial axis
    nodes: np.ndarray  # the padded indices of the real nodes, in the channel's row-major order
    planes: tuple[np.ndarray, ...]  # padded indices per wavefront plane, ascending within a plane


@lru_cache(maxsize=16)
def walk(spatial: tuple[int, ...]) -> Walk:
    padded = tuple(n + 1 for n in spatial)
    strides = tuple(math.prod(padded[a + 1 :]) for a in range(len(padded)))
    index = np.indices(spatial).reshape(len(spatial), -1)
    nodes = sum((index[a] + 1) * strides[a] for a in range(len(spatial))).astype(np.int64)
    plane = index.sum(axis=0)
    order = np.argsort(plane, kind="stable")  # stable: row-major, hence ascending, within a plane
    cuts = np.cumsum(np.bincount(plane))[:-1]
    return Walk(padded, strides, nodes, tuple(np.split(nodes[order], cuts)))


def predict(padded_q: np.ndarray, at: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
    """The rounded mean of the causal neighbours of the nodes `at` (last axis: padded index)."""
    total = padded_q[..., at - strides[0]].copy()  # the array's own integer type, as sum() kept it
    for s in strides[1:]:
        total += padded_q[..., at - s]
    return _rounded_mean(total, len(strides))


def context(padded_abs_r: np.ndarray, at: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
    """The bin of the nodes `at`: the sum of their causal neighbours' |residual|, capped."""
    return _bin(sum(padded_abs_r[..., at - s] for s in strides))


# The two rules the encoder's whole-grid `residuals` and the decoder's plane-by-plane `predict`
# and `context` share: kept in one place, so the two cannot drift apart.
# (Sums of arrays: `sum()` types them as possibly its int start.)
def _rounded_mean(total: np.ndarray | int, d: int) -> np.ndarray:
    return np.floor_divide(total + d // 2, d)  # floor division: the same integers on every machine


def _bin(busy: np.ndarray | int) -> np.ndarray:
    return np.minimum(busy, BINS - 1)


def residuals(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residual symbols and context bins of a (channels, *spatial) symbol grid, both shaped like it:
    `predict` and `context` over the whole grid at once. The zero-bordered copy is kept in its
    grid's shape and read by slices, not by `walk`'s indices: the rate search calls this many
    times per refresh of the latents' steps, and slices are much faster than gathers."""
    q = np.asarray(q, dtype=np.int64)
    spatial = q.ndim - 1
    body = (slice(None),) + (slice(1, None),) * spatial

    def behind(padded: np.ndarray, axis: int) -> np.ndarray:
        # The neighbour one step back along `axis` of every node (0 beyond the grid's start).
        return padded[
            tuple(slice(None) if a == 0 else slice(0, -1) if a == axis else slice(1, None) for a in range(q.ndim))
        ]

    qp = np.zeros(tuple(n + (a > 0) for a, n in enumerate(q.shape)), dtype=np.int64)
    qp[body] = q
    total = sum(behind(qp, a) for a in range(1, q.ndim))
    r = q - _rounded_mean(total, spatial)
    rp = np.zeros_like(qp)
    rp[body] = np.abs(r)
    bins = _bin(sum(behind(rp, a) for a in range(1, q.ndim)))
    return r, bins
