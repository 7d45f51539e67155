"""The latent-grid encoder: interpolation, rate-set quantization, planning and a whole round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codec import pipeline
from codec.coding import entropy
from codec.coding.quantize import (
    WARM_HALVINGS,
    WARM_RADIUS,
    dequantize,
    latent_qsteps,
    latent_qsteps_near,
    quantize,
    rate_qstep,
)
from codec.errors import MoecError
from codec.fit.train import latent_rate_penalty
from codec.format import moecfile
from codec.format.payload import stored_qsteps
from codec.model import LatentGrid, ModelConfig, MoEC
from codec.model.coords import coords_from_flat
from codec.settings import TrainConfig

from .training import file_psnr, mean_prediction_psnr, train


def test_grid_reads_its_nodes_exactly_and_is_trilinear_between_them():
    grid = LatentGrid(2, [(5, 4, 3)])
    with torch.no_grad():
        grid.grid0.copy_(torch.rand(grid.grid0.shape, generator=torch.Generator().manual_seed(0)))
    nodes = [torch.linspace(-1, 1, n) for n in (5, 4, 3)]
    mesh = torch.stack([m.reshape(-1) for m in torch.meshgrid(*nodes, indexing="ij")], 1)
    np.testing.assert_allclose(grid(mesh).detach().numpy(), grid.grid0.detach().reshape(2, -1).t().numpy(), atol=1e-6)
    # A field linear in each axis is reproduced exactly anywhere in the box.
    with torch.no_grad():
        linear = 3 * mesh[:, 0] - 2 * mesh[:, 1] + 0.5 * mesh[:, 2] + 1
        grid.grid0.copy_(linear.reshape(1, 5, 4, 3).repeat(2, 1, 1, 1))
    points = torch.rand(100, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = 3 * points[:, 0] - 2 * points[:, 1] + 0.5 * points[:, 2] + 1
    np.testing.assert_allclose(grid(points)[:, 0].detach().numpy(), expected.numpy(), atol=1e-5)


def test_latent_grids_start_at_zero_and_their_first_step_rounds_small_updates_away():
    """Measured choices (codec.model.LatentGrid, codec.coding.quantize.rate_qstep): no random starting
    latents, and a zero grid's step is 1 so the experts first fit a flat field."""
    model = MoEC(
        ModelConfig(experts=4, encoder="grid", encoder_layers=0, grid_channels=1, grid_levels=2, grid_finest=(6, 5, 4)),
        seed=3,
    )
    grids = [p for name, p in model.named_parameters() if name.startswith("encoder.grid")]
    assert len(grids) == 2 and all(not p.detach().any() for p in grids)
    assert float(rate_qstep(grids[0].detach().numpy(), 2.0)) == 1.0
    assert not quantize(np.full((1, 6, 5, 4), 0.3, np.float32), rate_qstep(grids[0].detach().numpy(), 2.0)).any()


def test_grid_levels_halve_and_feed_every_expert():
    config = ModelConfig(
        experts=4, encoder="grid", encoder_layers=0, grid_channels=3, grid_levels=3, grid_finest=(20, 9, 2)
    )
    assert config.grid_resolutions() == [(20, 9, 2), (10, 5, 2), (5, 3, 2)]
    assert config.feature_width == 9
    assert config.latent_count() == 3 * (20 * 9 * 2 + 10 * 5 * 2 + 5 * 3 * 2)
    model = MoEC(config)
    out = model(coords_from_flat(torch.arange(500), (20, 9, 4)))
    assert out.values.shape == (500, 1)
    assert dict(model.named_tensors())["experts.w0"].shape == (4, 9, config.expert_width)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"dims": 4, "grid_finest": (4, 4, 4, 4)}, "3D coordinates only"),
        ({"grid_finest": (4, 4)}, "grid_finest"),
        ({"encoder_layers": 1}, "encoder_layers must be 0"),
        ({"grid_channels": 0}, "grid_channels"),
    ],
)
def test_invalid_grid_configurations_are_refused(change, message):
    base = {"experts": 2, "encoder": "grid", "encoder_layers": 0, "grid_finest": (4, 4, 4)}
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**base, **change})


@pytest.mark.parametrize("target", [0.8, 1.6, 3.0])
def test_rate_step_lands_on_the_asked_rate(target):
    latents = np.random.default_rng(0).laplace(0.0, 0.3, size=(2, 30, 20, 10)).astype(np.float32)
    step = rate_qstep(latents, target)
    symbols = quantize(latents, step)
    bits = entropy.coded_bits(symbols, spatial=True) / latents.size
    assert step.shape == () and step > 0
    assert abs(bits - target) < 0.05 * target


def test_a_latent_stack_shares_one_rate_with_finer_steps_on_coarser_levels():
    """A coarser node is read by more voxels: its step is finer by the square root of the node
    ratio (one multiplier for the stack), and all levels together land on the asked rate."""
    rng = np.random.default_rng(1)
    stack = [
        rng.laplace(0.0, 0.3, size=(1, 40, 40, 12)).astype(np.float32),
        rng.laplace(0.0, 0.3, size=(1, 20, 20, 12)).astype(np.float32),
        rng.laplace(0.0, 0.3, size=(1, 10, 10, 6)).astype(np.float32),
    ]
    qsteps = latent_qsteps(stack, 1.5)
    np.testing.assert_allclose(
        [float(qsteps[1] / qsteps[0]), float(qsteps[2] / qsteps[0])], [0.5, np.sqrt(600 / 19200)], rtol=2e-3
    )
    bits = sum(entropy.coded_bits(quantize(w, s), spatial=True) for w, s in zip(stack, qsteps))
    assert abs(bits / sum(w.size for w in stack) - 1.5) < 0.05 * 1.5
    assert [float(s) for s in latent_qsteps([np.zeros_like(w) for w in stack], 1.5)] == [1.0, 1.0, 1.0]


def test_a_warm_rate_search_lands_where_the_cold_one_does_and_a_bad_guess_falls_back():
    rng = np.random.default_rng(2)
    stack = [
        rng.laplace(0.0, 0.3, size=(1, 40, 40, 12)).astype(np.float32),
        rng.laplace(0.0, 0.3, size=(1, 20, 20, 12)).astype(np.float32),
    ]
    cold, scale = latent_qsteps_near(stack, 1.5)
    assert [float(s) for s in cold] == [float(s) for s in latent_qsteps(stack, 1.5)]
    # The grids trained on a little: the warm search from the last multiplier lands within its
    # precision of where a cold search would.
    moved = [w * 1.03 for w in stack]
    warm, warm_scale = latent_qsteps_near(moved, 1.5, scale)
    again, again_scale = latent_qsteps_near(moved, 1.5)
    assert abs(warm_scale - again_scale) <= WARM_RADIUS / 2**WARM_HALVINGS
    bits = sum(entropy.coded_bits(quantize(w, s), spatial=True) for w, s in zip(moved, warm))
    assert abs(bits / sum(w.size for w in moved) - 1.5) < 0.05 * 1.5
    # A guess far off does not bracket the rate: the cold search, to the last bit.
    far, far_scale = latent_qsteps_near(moved, 1.5, scale + 3.0)
    assert far_scale == again_scale and [float(s) for s in far] == [float(s) for s in again]
    assert latent_qsteps_near([np.zeros_like(w) for w in stack], 1.5, scale)[1] is None


def test_choices_that_do_not_fit_the_grid_are_refused_in_words(phantom):
    volume, _ = phantom
    for settings, message in [
        (pipeline.Settings(encoder="grid", bits=16), "stored quantized only"),
        (pipeline.Settings(encoder="grid", partition="blocks"), "block partition"),
    ]:
        with pytest.raises(MoecError, match=message):
            pipeline.make_plan(volume, settings)
    assert pipeline.Settings(encoder="auto").encoder_for(4) == "siren"
    assert pipeline.Settings(encoder="auto", bits=16).encoder_for(3) == "siren"
    assert pipeline.Settings(encoder="auto").encoder_for(3) == "grid"


def test_a_grid_file_meets_its_ratio_learns_and_decodes_its_stored_latents(phantom):
    volume, _ = phantom
    settings = pipeline.Settings(ratio=20, experts=4, encoder="grid")
    fitter, plan = train(volume, settings, TrainConfig(steps=400, batch_size=2048))
    assert plan.model.encoder == "grid" and plan.model.latent_count() > 0
    data = pipeline.file_bytes(fitter, plan)
    raw = math.prod(volume.shape) * volume.stored_dtype.itemsize
    assert 20 <= raw / len(data) <= 20 * 1.05
    assert file_psnr(volume, data) > mean_prediction_psnr(volume) + 6
    # The latents frozen in the final stage are exactly the ones stored.
    stored = moecfile.from_bytes(data).model
    for level in range(plan.model.grid_levels):
        name = f"grid{level}"
        np.testing.assert_array_equal(
            getattr(stored.encoder, name).detach().numpy(), getattr(fitter.model.encoder, name).detach().cpu().numpy()
        )
    # And the stack costs about the planned rate, its coarser levels at finer steps.
    qsteps = stored_qsteps(data)
    grids = [
        (getattr(fitter.model.encoder, f"grid{level}").detach().cpu().numpy(), qsteps[f"encoder.grid{level}"])
        for level in range(plan.model.grid_levels)
    ]
    bits = sum(entropy.coded_bits(quantize(grid, step), spatial=True) for grid, step in grids)
    assert abs(bits / plan.model.latent_count() - settings.latent_bits) < 0.2
    assert all(later < earlier for (_, later), (_, earlier) in zip(grids[1:], grids))


def _written_grids(volume, config: TrainConfig) -> tuple[dict[str, np.ndarray], float]:
    """Train a 4-expert grid model of `volume` at 20x, write it, and return its grids as stored
    (dequantized, by name) and the file's PSNR, checking that the file meets its ratio."""
    fitter, plan = train(volume, pipeline.Settings(ratio=20, experts=4, encoder="grid"), config)
    data = pipeline.file_bytes(fitter, plan)
    assert 20 <= math.prod(volume.shape) * volume.stored_dtype.itemsize / len(data) <= 20 * 1.05
    qsteps = stored_qsteps(data)
    grids = {
        name: dequantize(quantize(p.detach().cpu().numpy(), qsteps[name]), qsteps[name])
        for name, p in fitter.model.named_tensors()
        if name.startswith("encoder.grid")
    }
    return grids, file_psnr(volume, data)


def test_the_rate_penalty_is_the_mean_l1_and_neighbour_difference_with_their_gradients():
    # Its backward is written by hand (a step's largest cost after the reading on a large grid):
    # the value and the gradients equal autograd's through abs and diff, zeros (subgradient 0) and
    # axes of one node included, and a grid that needs no gradient gets none.
    generator = torch.Generator().manual_seed(5)
    config = TrainConfig(latent_l1=3e-3, latent_tv=2e-2)
    shapes = [(1, 6, 5, 4), (2, 3, 1, 2), (1, 2, 2, 2)]
    grids = [torch.randn(s, dtype=torch.float64, generator=generator) for s in shapes]
    grids[0][0, :2, :2, :2] = 0.0
    grids[1][:, 1:, :, 1:] = grids[1][:, :1, :, :1]  # equal neighbours: differences of exactly 0
    leaves = [g.clone().requires_grad_(True) for g in grids]
    expected = config.latent_l1 * sum(g.abs().sum() for g in leaves) / sum(g.numel() for g in leaves)
    diffs = [g.diff(dim=a) for g in leaves for a in range(1, 4) if g.shape[a] > 1]
    expected = expected + config.latent_tv * sum(d.abs().sum() for d in diffs) / sum(d.numel() for d in diffs)
    (3 * expected).backward()
    by_hand = [g.clone().requires_grad_(True) for g in grids]
    by_hand[2].requires_grad_(False)
    penalty = latent_rate_penalty(by_hand, config)
    (3 * penalty).backward()
    torch.testing.assert_close(penalty, expected.detach())
    for mine, theirs in zip(by_hand[:2], leaves[:2]):
        torch.testing.assert_close(mine.grad, theirs.grad)
    assert by_hand[2].grad is None
    assert latent_rate_penalty(grids, TrainConfig(latent_l1=0.0, latent_tv=0.0)).item() == 0.0
    assert latent_rate_penalty([], config).item() == 0.0


def test_the_sparsity_penalty_stores_more_zero_latents_at_the_same_ratio(phantom):
    """TrainConfig.latent_l1 against none, same seed and plan: the written grids hold more exact
    zeros, and the file still meets its ratio and learns the volume. (The default weight is set on
    the brain, where it takes the zeros from 10% to 70%; this phantom's 300 steps need a stronger
    one to show the effect.)"""
    volume, _ = phantom
    zeros, psnrs = {}, {}
    strong = 0.05
    for weight in (0.0, strong):
        grids, psnrs[weight] = _written_grids(volume, TrainConfig(steps=300, batch_size=2048, latent_l1=weight))
        zeros[weight] = float(np.mean(np.concatenate([g.reshape(-1) for g in grids.values()]) == 0))
    assert TrainConfig().latent_l1 > 0 and zeros[strong] > zeros[0.0] + 0.1, zeros
    assert psnrs[strong] > mean_prediction_psnr(volume) + 6, psnrs
    with pytest.raises(ValueError, match="latent_l1"):
        TrainConfig(latent_l1=-1.0)


def test_the_smoothness_penalty_stores_smoother_latents_at_the_same_ratio(phantom):
    """TrainConfig.latent_tv against none, same seed and plan: neighbouring latents of the written
    grids differ less (relative to the latents' size), which is what the spatial context model
    codes cheaply, and the file still meets its ratio and learns the volume."""
    volume, _ = phantom
    roughness, psnrs = {}, {}
    strong = 0.1
    for weight in (0.0, strong):
        grids, psnrs[weight] = _written_grids(volume, TrainConfig(steps=300, batch_size=2048, latent_tv=weight))
        differences = sum(float(np.abs(np.diff(g, axis=a)).sum()) for g in grids.values() for a in range(1, g.ndim))
        size = sum(float(np.abs(g).sum()) * (g.ndim - 1) for g in grids.values())
        roughness[weight] = differences / size
    assert TrainConfig().latent_tv > 0 and roughness[strong] < 0.85 * roughness[0.0], roughness
    assert psnrs[strong] > mean_prediction_psnr(volume) + 6, psnrs
    with pytest.raises(ValueError, match="latent_tv"):
        TrainConfig(latent_tv=-1.0)


def test_a_router_on_coordinates_alone_keeps_the_partition_when_latents_are_rounded():
    config = ModelConfig(experts=4, encoder="grid", encoder_layers=0, grid_finest=(9, 8, 7), router_features=False)
    model = MoEC(config, seed=3)
    assert dict(config.tensor_shapes())["router.w0"] == (3, config.router_width)
    coords = coords_from_flat(torch.arange(2000), (20, 10, 10))
    with torch.no_grad():
        before = model(coords).routing.choice
        for level in range(config.grid_levels):
            getattr(model.encoder, f"grid{level}").add_(0.3)
        after = model(coords)
    assert torch.equal(before, after.routing.choice)
