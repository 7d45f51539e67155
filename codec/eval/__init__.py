"""Measures of a reconstruction against its original (the same in the CLI, the plugin and the benchmarks).

`db_text` lives here, not in metrics.py, so that printing a figure never loads scipy and scikit-image
(`moec --help` imports the console that uses it)."""

from __future__ import annotations

import math


def db_text(value: float | None) -> str:
    """A PSNR as people read it, in the CLI and the plugin alike: two decimals, "exact" for an exact
    match (inf), "undefined" for a constant original (nan) or a missing figure."""
    if value is None or math.isnan(value):
        return "undefined"
    return "exact" if math.isinf(value) else f"{value:.2f} dB"
