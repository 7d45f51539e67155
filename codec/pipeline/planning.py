"""The plan of a file (settings -> network widths that meet the ratio) and the Fitter that trains it."""

from __future__ import annotations

import numpy as np

from codec.fit import sizing
from codec.fit.sampling import VoxelSampler
from codec.fit.sizing import Plan
from codec.fit.train import Fitter, TrainConfig, train_record
from codec.format.header import describe
from codec.io.volume import Volume
from codec.pipeline.rate import file_qsteps
from codec.settings import Settings


def make_plan(volume: Volume, settings: Settings, train: TrainConfig = TrainConfig(), *, roi: bool = False) -> Plan:
    """Network widths for `volume` at the settings' ratio (RatioError when it cannot be met); `roi`:
    the file will record a region of interest (a few header bytes). Settings that leave the number
    of experts open are planned as their first candidate (Settings.candidates)."""
    settings = settings.candidates(len(volume.shape))[0]
    arch = sizing.architecture(settings, len(volume.shape))
    quant = sizing.quantization(settings)
    sizing.check_architecture(arch, quant, len(volume.shape))
    # The largest grid description the header could hold (3 digits per axis).
    thick = arch.grid_spacing_power > 0 and sizing.thick_slices(volume.spacing[:3])
    holds = (arch.grid_levels - 1,) * len(volume.shape) if thick else ()
    example = sizing.config_for(sizing.MIN_WIDTH, arch, volume.shape, finest=(999,) * len(volume.shape), hold=holds)
    # A record with large counters: the header can only shrink once the real numbers are known.
    meta = describe(
        volume, example, quant, train_record(train, 10**6, [10**6] * 3, runs=9, roi_voxels=10**9 if roi else None)
    )
    header = sizing.header_bytes(meta.nifti, meta.to_json())
    return sizing.plan_model(
        volume.shape,
        volume.stored_dtype.itemsize,
        settings.ratio,
        arch=arch,
        quant=quant,
        header=header,
        spacing=volume.spacing,
    )


def new_fitter(
    volume: Volume,
    plan: Plan,
    config: TrainConfig,
    *,
    roi: np.ndarray | None = None,
    sampler: VoxelSampler | None = None,
) -> Fitter:
    """A Fitter for the plan, told the file's qsteps for its final stage; `roi` (a mask of the
    volume's shape) weights its voxels (codec.io.roi); `sampler`: another Fitter's voxel sampler of
    the same volume, configuration and region, to reuse."""
    return Fitter(
        volume,
        plan.model,
        plan.quant,
        config,
        file_qsteps=lambda fitter: file_qsteps(fitter, plan),
        roi=roi,
        sampler=sampler,
    )
