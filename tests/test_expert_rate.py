"""What each expert's region costs in a file (codec.eval.expert_rate): per-symbol code lengths that
add up to the coded stream, latents owned by the expert of their nearest voxel."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from codec import pipeline
from codec.coding import entropy
from codec.decode.reconstruct import reconstruct
from codec.eval.expert_rate import _nearest_voxels, _tensor_bits, expert_rates
from codec.format import moecfile
from codec.format.payload import read_table
from codec.io.phantom import make_phantom
from codec.settings import TrainConfig

from .training import train


@pytest.fixture(scope="module")
def trained():
    """A 4-expert latent-grid file whose latents were smoothed, so its grids take the context model."""
    volume, _ = make_phantom((32, 24, 16))
    settings = pipeline.Settings(ratio=6, experts=4, encoder="grid")
    fitter, plan = train(volume, settings, TrainConfig(steps=60, batch_size=1024))
    with torch.no_grad():
        for level in range(plan.model.grid_levels):
            grid = getattr(fitter.model.encoder, f"grid{level}")
            grid.copy_(torch.from_numpy(np.stack([gaussian_filter(g, 1.0) for g in grid.detach().cpu().numpy()])))
    data = pipeline.file_bytes(fitter, plan)
    moec = moecfile.from_bytes(data)
    return volume, data, moec, reconstruct(moec).labels


def test_each_symbols_code_length_adds_up_to_the_models_and_the_stream(trained):
    _, data, moec, _ = trained
    models, _, at = read_table(moec.meta, moec.payload)
    assert any(m.family == entropy.CONTEXT for m in models)  # the grids' context model is exercised
    shapes = moec.meta.model.tensor_shapes()
    symbols = entropy.decode(moec.payload[at:], models, [s for _, s in shapes])
    for (_, shape), sym, model in zip(shapes, symbols, models):
        sym = np.asarray(sym).reshape(shape)
        assert entropy.symbol_bits(sym, model).sum() == pytest.approx(
            entropy.ideal_bits(sym, model), rel=1e-9, abs=1e-9
        )
    # The code lengths are read from the weights over their qsteps: the decoded symbols' exactly.
    for (_, _, bits), (_, shape), sym, model in zip(_tensor_bits(moec), shapes, symbols, models):
        np.testing.assert_array_equal(bits, entropy.symbol_bits(np.asarray(sym).reshape(shape), model))
    coded = sum(bits.sum() for _, _, bits in _tensor_bits(moec)) / 8
    # The range coder spends what the models say, within a few words; the tables come on top.
    assert coded <= len(moec.payload) - at + 16 and len(moec.payload) - at <= coded * 1.01 + 16
    assert moec.payload and len(data) > len(moec.payload)


def test_every_latent_belongs_to_the_expert_of_its_nearest_voxel_and_the_bytes_add_up(trained):
    _, _, moec, labels = trained
    config = moec.meta.model
    rates = expert_rates(moec, labels)
    assert len(rates) == config.experts == 4
    latent_values = sum(math.prod(s) for name, s in config.tensor_shapes() if name.startswith("encoder.grid"))
    assert sum(r.latents for r in rates) == latent_values  # every label is an expert's: all latents owned
    bits = {name: b for name, _, b in _tensor_bits(moec)}
    owned = sum(b.sum() for name, b in bits.items() if name.startswith(("encoder.grid", "experts.")))
    assert sum(r.coded_bytes for r in rates) == pytest.approx(owned / 8, rel=1e-9)
    # One expert's region holding every voxel owns every latent; the others keep their own weights.
    own = [bits[name].sum() / 8 for name in bits if name.startswith("experts.")]
    alone = expert_rates(moec, np.full_like(labels, 2))
    assert [r.latents for r in alone] == [0, latent_values, 0, 0]
    weights = [sum(bits[n][k].sum() for n in bits if n.startswith("experts.")) / 8 for k in range(4)]
    assert sum(weights) == pytest.approx(sum(own))
    assert alone[0].coded_bytes == pytest.approx(weights[0]) and alone[1].coded_bytes > weights[1]
    with pytest.raises(ValueError, match="shape"):
        expert_rates(moec, labels[:-1])


def test_a_node_maps_to_its_nearest_voxel_centre():
    # Nodes at -1, 0, 1 over 4 voxels at -0.75, -0.25, 0.25, 0.75: the ends, and the middle rounded.
    assert list(_nearest_voxels(3, 4)) == [0, 2, 3]
    assert list(_nearest_voxels(1, 5)) == [2] and list(_nearest_voxels(5, 5)) == [0, 1, 2, 3, 4]


def test_evaluate_gives_each_expert_its_latents_and_bytes(trained):
    volume, _, moec, _ = trained
    table = pipeline.evaluate(volume, moec).experts
    assert all(e.latents >= 0 and e.coded_bytes > 0 for e in table)
    assert sum(e.latents for e in table) > 0
    # A MoecFile built without its coded weights leaves the bytes unmeasured, never guessed.
    bare = dataclasses.replace(moec, payload=b"")
    assert all(math.isnan(e.coded_bytes) for e in pipeline.evaluate(volume, bare).experts)
