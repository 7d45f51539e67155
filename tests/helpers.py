"""Small measuring helpers for tests (kept here so no test needs scikit-learn)."""

from __future__ import annotations

import numpy as np


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """NMI with the arithmetic mean of the two entropies (scikit-learn's default)."""
    a = np.unique(a.reshape(-1), return_inverse=True)[1]
    b = np.unique(b.reshape(-1), return_inverse=True)[1]
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    return mi / max((ha + hb) / 2, 1e-12)
