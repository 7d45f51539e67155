"""A decoded file measured against its original, on the bytes as written."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from codec.decode.reconstruct import Reconstruction, reconstruct
from codec.eval.expert_rate import expert_rates
from codec.eval.metrics import ExpertStat, Quality, RegionQuality, expert_table, quality, region_quality
from codec.format.moecfile import MoecFile
from codec.io.roi import check_roi
from codec.io.volume import Volume


@dataclass(frozen=True, eq=False)
class Evaluation:
    """A decoded file measured against its original."""

    moec: MoecFile
    reconstruction: Reconstruction
    quality: Quality
    experts: list[ExpertStat]
    ratio: float  # raw voxel bytes / file bytes
    file_ratio: float | None  # source file bytes / file bytes
    roi: RegionQuality | None = None  # inside and outside the region of interest, when one was given


def evaluate(
    original: Volume,
    moec: MoecFile,
    *,
    device: str = "cpu",
    roi: np.ndarray | None = None,
    reconstruction: Reconstruction | None = None,
) -> Evaluation:
    """Decode `moec` (unless its `reconstruction` with labels is given: a caller that showed the
    decoded voxels first) and measure it against `original` (same shape, file voxel order), and
    inside and outside `roi` (a mask of that shape) when given."""
    if original.shape != moec.meta.shape:
        raise ValueError(f"the .moec file holds a {moec.meta.shape} volume, the original is {original.shape}")
    recon = reconstruction if reconstruction is not None else reconstruct(moec, device=device)
    if recon.labels is None:
        raise ValueError("measuring a file needs its expert labels: decode it with labels")
    q = quality(original.data, recon.volume.data, dtype=original.stored_dtype, slope=original.slope)
    table = expert_table(
        original.data,
        recon.volume.data,
        recon.labels,
        experts=moec.meta.model.experts,
        parameters_per_expert=moec.meta.model.expert_parameter_count(),
    )
    if moec.payload:  # what each expert's region costs, from the coded weights as read
        rates = expert_rates(moec, recon.labels)
        table = [replace(e, latents=r.latents, coded_bytes=r.coded_bytes) for e, r in zip(table, rates)]
    file_ratio = original.source_bytes / moec.nbytes if original.source_bytes else None
    region = None if roi is None else region_quality(original.data, recon.volume.data, check_roi(roi, original.shape))
    return Evaluation(moec, recon, q, table, moec.ratio, file_ratio, region)
