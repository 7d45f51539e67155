"""The network: its configuration, the latent grid, the router, the expert SIRENs and the decoder.

The names a caller needs are here; each lives in the module named for its job.
"""

from codec.model.config import ENCODERS, PARTITIONS, ModelConfig, grid_levels, is_latent
from codec.model.latents import LatentGrid, interpolation_matrix
from codec.model.network import MoEC, Output, Routing

__all__ = [
    "ENCODERS",
    "PARTITIONS",
    "LatentGrid",
    "ModelConfig",
    "MoEC",
    "Output",
    "Routing",
    "grid_levels",
    "interpolation_matrix",
    "is_latent",
]
