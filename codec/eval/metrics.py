"""The measures of docs/design.md ("Measures"), the same for the CLI, the plugin, the benchmarks and the tests.

PSNR uses the original's own range (max - min, real units) as its peak, over the whole volume. SSIM is
scikit-image's on the 3D volume with that range, computed in overlapping slabs so that its memory
stays bounded; the slab result equals the whole-volume result exactly, because SSIM's window only
reaches three voxels and the overlap drops every voxel whose window was cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.metrics import structural_similarity

SSIM_WINDOW = 7
_PAD = (SSIM_WINDOW - 1) // 2


def peak_of(original: np.ndarray) -> float:
    return float(original.max()) - float(original.min())


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error in float64, computed in slabs to avoid a full float64 copy."""
    total = 0.0
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    for start in range(0, flat_a.size, 1 << 22):
        d = flat_a[start : start + (1 << 22)].astype(np.float64) - flat_b[start : start + (1 << 22)]
        total += float(np.dot(d, d))
    return total / max(flat_a.size, 1)


def psnr(original: np.ndarray, recon: np.ndarray, peak: float | None = None) -> float:
    """10 log10(peak^2 / MSE); inf for an exact match, nan for a constant original (undefined)."""
    peak = peak_of(original) if peak is None else peak
    if peak <= 0:
        return math.nan
    err = mse(original, recon)
    return math.inf if err == 0 else 10.0 * math.log10(peak * peak / err)


def _ssim_sum_3d(a: np.ndarray, b: np.ndarray, peak: float, slab: int) -> tuple[float, int]:
    """Sum and count of the SSIM map over the voxels scikit-image averages (borders cropped)."""
    n0 = a.shape[0]
    total, count = 0.0, 0
    for start in range(_PAD, n0 - _PAD, slab):
        stop = min(start + slab, n0 - _PAD)
        lo, hi = start - _PAD, stop + _PAD
        _, smap = structural_similarity(a[lo:hi], b[lo:hi], win_size=SSIM_WINDOW, data_range=peak, full=True)
        inner = smap[_PAD : _PAD + (stop - start), _PAD:-_PAD, _PAD:-_PAD]
        total += float(inner.sum(dtype=np.float64))
        count += inner.size
    return total, count


def ssim(original: np.ndarray, recon: np.ndarray, peak: float | None = None, *, slab: int = 32) -> tuple[float, str]:
    """SSIM and how it was computed: 3D, mean of 3D over time frames, or 2D per slice."""
    peak = peak_of(original) if peak is None else peak
    if peak <= 0:
        return math.nan, "undefined (constant volume)"
    a = np.asarray(original, dtype=np.float32)
    b = np.asarray(recon, dtype=np.float32)
    frames = [(a, b)] if a.ndim == 3 else [(a[..., t], b[..., t]) for t in range(a.shape[3])]
    spatial = a.shape[:3]
    if min(spatial) >= SSIM_WINDOW:
        total, count = 0.0, 0
        for fa, fb in frames:
            s, c = _ssim_sum_3d(fa, fb, peak, slab)
            total, count = total + s, count + c
        return total / count, "3D" if a.ndim == 3 else "3D, mean over time frames"
    if min(spatial[:2]) >= SSIM_WINDOW:
        values = [
            structural_similarity(fa[:, :, k], fb[:, :, k], win_size=SSIM_WINDOW, data_range=peak)
            for fa, fb in frames
            for k in range(fa.shape[2])
        ]
        return float(np.mean(values)), "2D per slice (an axis is shorter than 7 voxels)"
    return math.nan, "not computed (the volume is thinner than SSIM's 7-voxel window)"


def foreground(original: np.ndarray) -> np.ndarray:
    """The body: its outline with every hole filled, dilated by two voxels.

    Voxels above Otsu's threshold (on a subsample) are tissue, not body: on a chest CT Otsu falls
    near -470 HU, between air and soft tissue, so the air inside the body (the lungs, bowel gas, the
    airways) falls below it, and a "PSNR in body" on that mask left out most of the lung, where
    compression errors matter as much as anywhere. So the mask keeps the largest connected part
    above the threshold (the body, not the table or a stray bright voxel) and fills its holes slice
    by slice along each axis (an enclosed hole in 3D may open to the outside through a slice's
    edge; in a slice it is enclosed), which counts air inside the body as body and air around it
    not. A 4D volume (time last) is masked frame by frame. The API is unchanged: a boolean array
    of the input's shape.
    """
    sample = original.reshape(-1)[:: max(1, original.size // 2_000_000)]
    if sample.min() == sample.max():
        return np.ones(original.shape, dtype=bool)
    mask = original > threshold_otsu(sample)
    if mask.ndim > 3:
        flat = mask.reshape(mask.shape[:3] + (-1,))
        body = np.stack([_body(flat[..., t]) for t in range(flat.shape[-1])], axis=-1).reshape(mask.shape)
    else:
        body = _body(mask)
    return ndimage.binary_dilation(body, iterations=2)


def _body(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a mask, its holes filled slice by slice on every axis."""
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.reshape(-1))
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    filled = mask.copy()
    for axis in range(mask.ndim):
        moved = np.moveaxis(filled, axis, 0)
        for index in range(moved.shape[0]):
            moved[index] = ndimage.binary_fill_holes(moved[index])
    return filled


@dataclass(frozen=True)
class Quality:
    """How close a reconstruction is to its original, in the measures of docs/design.md."""

    psnr: float
    ssim: float
    ssim_method: str
    peak: float
    max_error: float  # largest absolute error, real units
    p99_error: float  # 99th percentile of the absolute error, real units
    psnr_body: float  # PSNR inside the foreground mask (same peak)
    body_share: float
    worst_slice: int  # index along the last spatial axis with the lowest PSNR
    worst_slice_psnr: float
    psnr_dtype_peak: float | None  # PSNR with the dtype's maximum as peak, as SCI/TINC report it


def dtype_peak(dtype: np.dtype, slope: float = 1.0) -> float | None:
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return None
    return float(np.iinfo(dtype).max) * abs(slope)


def slice_psnr(original: np.ndarray, recon: np.ndarray, peak: float) -> np.ndarray:
    """PSNR of every slice along the third (spatial) axis."""
    err = np.empty(original.shape[2], dtype=np.float64)
    for k in range(original.shape[2]):
        d = original[:, :, k].astype(np.float64) - recon[:, :, k]
        err[k] = float(np.mean(d * d))
    with np.errstate(divide="ignore"):
        return np.where(err > 0, 10.0 * np.log10(peak * peak / np.maximum(err, 1e-300)), np.inf)


def quality(original: np.ndarray, recon: np.ndarray, *, dtype: np.dtype | None = None, slope: float = 1.0) -> Quality:
    """Every figure of docs/design.md ("Measures") for a reconstruction of `original` (both in real units)."""
    if original.shape != recon.shape:
        raise ValueError(f"shapes differ: {original.shape} and {recon.shape}")
    peak = peak_of(original)
    error = np.abs(recon.astype(np.float32) - original.astype(np.float32))
    sample = error.reshape(-1)[:: max(1, error.size // 4_000_000)]
    body = foreground(original)
    per_slice = slice_psnr(original, recon, peak) if peak > 0 else np.full(original.shape[2], math.nan)
    worst = int(np.nanargmin(per_slice)) if np.isfinite(per_slice).any() else 0
    s, method = ssim(original, recon, peak)
    dpeak = dtype_peak(dtype, slope) if dtype is not None else None
    return Quality(
        psnr=psnr(original, recon, peak),
        ssim=s,
        ssim_method=method,
        peak=peak,
        max_error=float(error.max()),
        p99_error=float(np.percentile(sample, 99)),
        psnr_body=psnr(original[body], recon[body], peak) if body.any() else math.nan,
        body_share=float(body.mean()),
        worst_slice=worst,
        worst_slice_psnr=float(per_slice[worst]),
        psnr_dtype_peak=psnr(original, recon, dpeak) if dpeak else None,
    )


@dataclass(frozen=True)
class ExpertStat:
    """One expert's row of the per-expert table: its region's size and fidelity."""

    expert: int  # 0-based; its label in the assignment volume is expert + 1
    share: float  # fraction of the voxels routed to it
    psnr: float  # inside its region, peak of the whole volume
    parameters: int
    latents: int = 0  # latent values whose node lies in its region (codec.eval.expert_rate)
    coded_bytes: float = math.nan  # its weights and those latents in the file (nan: not measured)


def expert_table(
    original: np.ndarray, recon: np.ndarray, labels: np.ndarray, *, experts: int, parameters_per_expert: int
) -> list[ExpertStat]:
    peak = peak_of(original)
    flat_labels = labels.reshape(-1)
    counts = np.bincount(flat_labels, minlength=experts + 1)
    sums = np.zeros(max(experts + 1, int(flat_labels.max()) + 1 if flat_labels.size else 1))
    flat_a, flat_b = original.reshape(-1), recon.reshape(-1)
    for start in range(0, flat_labels.size, 1 << 22):  # in chunks: no full-size float64 copy
        stop = start + (1 << 22)
        d = flat_a[start:stop].astype(np.float64) - flat_b[start:stop]
        sums += np.bincount(flat_labels[start:stop], weights=d * d, minlength=sums.size)
    table = []
    for k in range(experts):
        n = int(counts[k + 1])
        if n == 0 or peak <= 0:
            value = math.nan
        else:
            err = sums[k + 1] / n
            value = math.inf if err == 0 else 10.0 * math.log10(peak * peak / err)
        table.append(ExpertStat(k, n / flat_labels.size, value, parameters_per_expert))
    return table


@dataclass(frozen=True)
class RegionQuality:
    """Fidelity inside and outside a region of interest (PSNR with the whole volume's peak)."""

    voxels: int  # inside the region
    share: float  # of all voxels
    psnr_inside: float
    psnr_outside: float
    max_inside: float  # largest absolute error, real units
    max_outside: float


def region_quality(original: np.ndarray, recon: np.ndarray, mask: np.ndarray) -> RegionQuality:
    """PSNR and max error inside `mask` (bool, the volume's shape) and outside it."""
    if mask.shape != original.shape:
        raise ValueError(f"the region's shape {mask.shape} is not the volume's {original.shape}")
    peak = peak_of(original)
    inside, outside = (original[mask], recon[mask]), (original[~mask], recon[~mask])

    def figures(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        if not a.size:
            return math.nan, math.nan
        return psnr(a, b, peak), float(np.abs(b.astype(np.float32) - a.astype(np.float32)).max())

    (p_in, m_in), (p_out, m_out) = figures(*inside), figures(*outside)
    n = int(mask.sum())
    return RegionQuality(n, n / max(mask.size, 1), p_in, p_out, m_in, m_out)
