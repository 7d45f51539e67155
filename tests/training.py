"""Helpers that run the real pipeline on small volumes (shared by several test modules)."""

from __future__ import annotations

import numpy as np

from codec import pipeline
from codec.format import moecfile
from codec.io.volume import Volume
from codec.settings import TrainConfig


def train(volume: Volume, settings: pipeline.Settings, config: TrainConfig):
    """Plan and run a whole training (pipeline.Compression); returns (fitter, plan)."""
    compression = pipeline.Compression(volume, settings, config).train()
    return compression.fitter, compression.plan


def file_psnr(volume: Volume, data: bytes) -> float:
    return pipeline.evaluate(volume, moecfile.from_bytes(data)).quality.psnr


def mean_prediction_psnr(volume: Volume) -> float:
    peak = float(volume.data.max() - volume.data.min())
    return 10 * np.log10(peak**2 / float(volume.data.var()))
