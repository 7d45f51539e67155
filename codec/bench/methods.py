"""What `moec bench` measures: the MoEC configurations (the claim's rows, the control, the context
rows and the ablations), each spelling out the settings it measured, so that a cached cell keeps
meaning what it measured when a default changes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Method:
    """One MoEC configuration benchmarked (the baselines are options of the same code)."""

    name: str
    settings: dict = field(default_factory=dict)  # pipeline.Settings fields besides the ratio
    train: dict = field(default_factory=dict)  # TrainConfig fields besides the budget


# Every method spells out the settings it measured, so a cached cell keeps meaning what it
# measured when a default changes.
_DEFAULT = {"encoder": "grid", "experts": 4, "grid_channels": 1, "latent_bits": 1.5}
_RATE = {"latent_l1": 3e-3, "latent_tv": 1e-2}  # the default: sparse, smooth latents
_SPARSE = {"latent_l1": 3e-3, "latent_tv": 0.0}  # an earlier default: sparse, no smoothness penalty
# An earlier default still (2 bits per latent, no rate penalty at all), a context row of the bench.
_TWO_BITS = {**_DEFAULT, "latent_bits": 2.0}
_DENSE = {"latent_l1": 0.0, "latent_tv": 0.0}
CLAIM = (
    Method("MoEC, learned partition (latent grid, 4 experts, 1 channel)", _DEFAULT, _RATE),
    Method("single SIREN", {"experts": 1, "encoder": "siren"}),
    Method("blocks (8, fixed)", {"partition": "blocks", "encoder": "siren", "experts": 8}),
    # The control that isolates the partition: the default's encoder with one MLP and no router.
    Method("control: one MLP on the grid, no partition", {**_DEFAULT, "experts": 1}, _RATE),
    # What `moec compress` does by default: a short trial of the learned partition and the control,
    # and the better trained on (codec.settings.AUTO_EXPERTS).
    Method("MoEC default (4 experts or one MLP, kept after a trial)", {**_DEFAULT, "experts": None}, _RATE),
    Method("MoEC, SIREN encoder, 8 experts", {"encoder": "siren", "experts": 8}),
    Method("MoEC, learned partition, router on the coordinates", {**_DEFAULT, "router_features": False}, _RATE),
    Method("MoEC, sparse latents without the smoothness penalty", _DEFAULT, _SPARSE),
    Method("MoEC, 2 bits per latent, no rate penalty", _TWO_BITS, _DENSE),
)
#: MoEC's claim (arXiv 2312.01361): at equal size and time, this order from best down.
CLAIM_ORDER = (CLAIM[0].name, CLAIM[2].name, CLAIM[1].name)
CLAIM_SHORT = {CLAIM[0].name: "learned", CLAIM[2].name: "blocks", CLAIM[1].name: "single SIREN"}
CONTROL = CLAIM[3].name
#: What `moec compress` does by default; the classical codecs are measured against it.
DEFAULT = CLAIM[4].name
#: The rows `--seeds` repeats: those the verdicts read. The others are context, one seed each.
SEEDED = (*CLAIM_ORDER, CONTROL, DEFAULT)
# Around the learned partition, at one ratio (one expert and the router on the coordinates are rows above).
ABLATIONS = (
    Method("grid: experts 2", {**_DEFAULT, "experts": 2}, _RATE),
    Method("grid: experts 8", {**_DEFAULT, "experts": 8}, _RATE),
    Method("grid: experts 16", {**_DEFAULT, "experts": 16}, _RATE),
    Method("grid: top-2", {**_DEFAULT, "top_k": 2}, _RATE),
    Method("grid: balancing off", _DEFAULT, train={**_RATE, "balance_weight": 0.0}),
    Method("grid: router pretraining off", _DEFAULT, train={**_RATE, "router_pretraining": False}),
    Method("grid: pretraining on blocks", _DEFAULT, train={**_RATE, "pretrain_target": "blocks"}),
)
