"""How the plugin's layers look: CT window presets, the starting contrast of a volume, and the
colormaps of the error map and of the expert assignment."""

from __future__ import annotations

import numpy as np
from napari.utils.colormaps import Colormap, DirectLabelColormap

#: Window presets for CT (level, width) in Hounsfield units.
CT_WINDOWS = {"Brain": (40.0, 80.0), "Soft tissue": (40.0, 400.0), "Lung": (-600.0, 1500.0), "Bone": (400.0, 1800.0)}

ERROR_COLORMAP = Colormap(
    colors=[[0.13, 0.4, 0.67, 1.0], [1.0, 1.0, 1.0, 1.0], [0.7, 0.09, 0.17, 1.0]],
    name="moec error (blue - white - red)",
    interpolation="linear",
)

#: A fixed colour per expert, so the assignment keeps its colours across updates and sessions: one
#: for each of the most experts a model may have (codec.settings.RANGES["experts"]), none repeated
#: (Tableau's 20, then hues a golden angle apart at alternating saturation and brightness, each kept
#: only if it stands clear of those before it).
_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
    "#455d99",
    "#a7f23d",
    "#730b66",
    "#62d9c5",
    "#4f18f2",
    "#367334",
    "#d9366d",
    "#16d977",
    "#3d4cf2",
    "#f2bb18",
    "#503473",
    "#36d951",
    "#990f21",
    "#6da5f2",
    "#d816d9",
    "#459980",
    "#f2883d",
    "#180b73",
    "#76d962",
    "#99265b",
    "#a236d9",
    "#f2786d",
    "#78d916",
    "#994588",
    "#3df2e2",
    "#734c0b",
    "#f21850",
    "#870f99",
    "#1617d9",
    "#5e9945",
    "#f23da8",
    "#0b6773",
    "#733437",
    "#66990f",
    "#959926",
    "#0b7317",
    "#36d9a1",
    "#776df2",
    "#f2e13d",
    "#0f9986",
    "#18d916",
    "#3da9f2",
    "#f24c18",
    "#6de9f2",
]


def expert_colormap(experts: int) -> DirectLabelColormap:
    """Expert k is label k + 1 (0 is "no expert", transparent), each in its own palette colour."""
    colors = {None: "transparent", 0: "transparent"}
    for k in range(experts):
        colors[k + 1] = _PALETTE[k % len(_PALETTE)]
    return DirectLabelColormap(color_dict=colors)


def is_ct(vmin: float, vmax: float) -> bool:
    """Values that look like Hounsfield units: air near -1000 and tissue or bone above 0."""
    return vmin <= -900.0 and vmax >= 100.0


def window_limits(level: float, width: float) -> tuple[float, float]:
    return level - width / 2.0, level + width / 2.0


#: Percentiles of the starting contrast of a volume that is not CT (an MR's few bright voxels would
#: leave the min-max window dim).
PERCENTILES = (0.5, 99.5)
#: Voxels looked at for those percentiles (a strided subsample of bigger volumes).
PERCENTILE_SAMPLE = 2_000_000


def percentile_limits(array: np.ndarray) -> tuple[float, float]:
    """The 0.5-99.5 percentile window of a numpy array's finite values (min-max where that is flat)."""
    flat = np.asarray(array).reshape(-1)
    sample = flat[:: max(1, flat.size // PERCENTILE_SAMPLE)]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, PERCENTILES))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return lo, max(hi, lo + 1e-6)


def starting_limits(vmin: float, vmax: float, array: np.ndarray | None = None) -> tuple[float, float]:
    """The window a volume opens in: CT in the soft-tissue window; anything else at its
    0.5-99.5 percentiles when its voxels are at hand (`array`), else at its range (a lazy file's
    header has the range, and measuring more would decode every voxel)."""
    if is_ct(vmin, vmax):
        return window_limits(*CT_WINDOWS["Soft tissue"])
    if array is not None:
        return percentile_limits(array)
    return vmin, max(vmax, vmin + 1e-6)


def value_unit(vmin: float, vmax: float) -> str:
    """The unit of a volume's values where it is known: Hounsfield units for CT, else ""."""
    return "HU" if is_ct(vmin, vmax) else ""
