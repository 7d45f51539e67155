"""The MoEC network: sparse dispatch against a separately written dense evaluation of the same weights."""

from __future__ import annotations

import math

import pytest
import torch

from codec.model import ModelConfig, MoEC
from codec.model.coords import coords_from_flat
from codec.model.partition import block_grid, block_index, block_local


def dense_reference(model: MoEC, coords: torch.Tensor) -> torch.Tensor:
    """Every expert on every coordinate, mixed by the gate weights (zero for unchosen experts)."""
    cfg = model.config
    omega = cfg.omega0
    n = cfg.experts
    if cfg.partition == "blocks":
        feats = block_local(coords, cfg.block_grid)
        gates = torch.nn.functional.one_hot(block_index(coords, cfg.block_grid), n).float()
    else:
        feats = coords
        for layer in range(cfg.encoder_layers):
            w, b = getattr(model.encoder, f"w{layer}")[0], getattr(model.encoder, f"b{layer}")[0]
            feats = torch.sin(omega * (feats @ w + b))
        if n == 1:
            gates = torch.ones(coords.shape[0], 1)
        else:
            r = model.router
            routed = torch.cat([coords, feats], dim=1)
            probs = torch.softmax(torch.relu(routed @ r.w0 + r.b0) @ r.w1 + r.b1, dim=-1)
            top, idx = probs.topk(cfg.top_k, dim=-1)
            weights = torch.ones_like(top) if cfg.top_k == 1 else top / top.sum(-1, keepdim=True)
            gates = torch.zeros_like(probs).scatter(1, idx, weights)
    mixed = 0.0
    for e in range(n):
        h = feats
        for layer in range(cfg.expert_layers):
            h = torch.sin(omega * (h @ getattr(model.experts, f"w{layer}")[e] + getattr(model.experts, f"b{layer}")[e]))
        mixed = mixed + gates[:, e : e + 1] * h
    return mixed @ model.decoder.w + model.decoder.b


def random_coords(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


CONFIGS = {
    "learned top-1": ModelConfig(experts=6, top_k=1, encoder_width=20, router_width=12, expert_width=16),
    "learned top-2": ModelConfig(experts=5, top_k=2, encoder_width=20, router_width=12, expert_width=16),
    "single SIREN": ModelConfig(experts=1, encoder_width=24, expert_width=24),
    "blocks": ModelConfig(experts=8, partition="blocks", encoder_layers=0, expert_width=16, block_grid=(2, 2, 2)),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_sparse_dispatch_equals_dense_evaluation(name):
    model = MoEC(CONFIGS[name], seed=3)
    coords = random_coords(3000)
    with torch.no_grad():
        sparse = model(coords).values
        dense = dense_reference(model, coords)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_training_and_decoding_forms_give_identical_values(name):
    """Decoding (no graph: in-place sines, rows placed without the gate multiply) must give bit for
    bit what the training form gives, or the PSNR measured while training would not be the file's."""
    model = MoEC(CONFIGS[name], seed=6)
    coords = random_coords(2500, seed=7)
    with_graph = model(coords).values
    assert with_graph.requires_grad
    with torch.no_grad():
        decoded = model(coords).values
    assert torch.equal(with_graph.detach(), decoded)


@pytest.mark.parametrize("name", CONFIGS)
def test_decoding_inference_gives_the_forward_values_experts_and_confidence(name):
    """`infer` (decoding's short way at top-1) against the forward pass of the same weights."""
    model = MoEC(CONFIGS[name], seed=8)
    coords = random_coords(4000, seed=9)
    with torch.no_grad():
        out = model(coords)
        values, choice, confidence = model.infer(coords, model.features(coords))
    torch.testing.assert_close(values, out.values[:, 0], rtol=1e-5, atol=1e-5)
    assert (choice == out.routing.choice[:, 0]).float().mean() > 0.999  # a near-tie may round either way
    expected = torch.ones(4000) if out.routing.probs is None else out.routing.probs.max(dim=-1).values
    torch.testing.assert_close(confidence, expected, rtol=1e-5, atol=1e-6)


def test_a_latent_grid_read_over_a_box_equals_its_pointwise_read():
    """Separable interpolation over a product grid (decoding's tiles) against grid_sample."""
    config = ModelConfig(
        experts=3,
        encoder="grid",
        encoder_layers=0,
        grid_channels=2,
        grid_levels=3,
        grid_finest=(9, 6, 4),
        expert_width=12,
        router_width=8,
    )
    model = MoEC(config, seed=1)
    with torch.no_grad():
        for level in range(3):
            grid = getattr(model.encoder, f"grid{level}")
            grid.copy_(torch.randn(grid.shape, generator=torch.Generator().manual_seed(level)))
    axes = [torch.tensor([-0.95, -0.3, 0.0, 0.41, 0.99]), torch.tensor([-1.0, 0.2, 1.0]), torch.tensor([0.07, 0.6])]
    points = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.box_features(axes), model.encoder(points), rtol=1e-5, atol=1e-5)


def test_an_expert_that_gets_no_coordinates_is_skipped_correctly():
    model = MoEC(CONFIGS["learned top-1"], seed=4)
    with torch.no_grad():
        model.router.b1[2] = -1e4  # expert 2 can never win
    coords = random_coords(2000, seed=1)
    with torch.no_grad():
        out = model(coords)
        assert torch.bincount(out.routing.choice.reshape(-1), minlength=6)[2] == 0
        torch.testing.assert_close(out.values, dense_reference(model, coords), rtol=1e-5, atol=1e-5)

    blocks = MoEC(CONFIGS["blocks"], seed=5)
    half = random_coords(1000, seed=2)
    half[:, 0] = -half[:, 0].abs()  # only the x < 0 blocks are used
    with torch.no_grad():
        out = blocks(half)
        counts = torch.bincount(out.routing.choice.reshape(-1), minlength=8)
        assert (counts == 0).sum() == 4
        torch.testing.assert_close(out.values, dense_reference(blocks, half), rtol=1e-5, atol=1e-5)


def test_top1_gate_passes_gradient_to_the_router_without_scaling_the_output():
    model = MoEC(CONFIGS["learned top-1"], seed=6)
    coords = random_coords(512)
    out = model(coords)
    torch.testing.assert_close(out.routing.weights, torch.ones_like(out.routing.weights))
    out.values.square().mean().backward()
    assert model.router.w1.grad is not None and model.router.w1.grad.abs().sum() > 0


def test_the_router_reads_the_encoder_features_without_training_them():
    model = MoEC(CONFIGS["learned top-1"], seed=6)
    coords = random_coords(512)
    feats = model.features(coords)
    model.router_logits(coords, feats).logsumexp(-1).mean().backward()
    assert model.router.w0.grad is not None and model.router.w0.grad[3:].abs().sum() > 0  # features read
    assert all(p.grad is None for p in model.encoder.parameters())  # and left alone
    model.zero_grad()
    model(coords).values.square().mean().backward()  # the experts' loss still trains the encoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


@pytest.mark.parametrize("name", CONFIGS)
def test_tensor_shapes_describe_the_parameters_in_storage_order(name):
    config = CONFIGS[name]
    model = MoEC(config)
    assert [(n, tuple(p.shape)) for n, p in model.named_tensors()] == config.tensor_shapes()
    assert sum(p.numel() for p in model.parameters()) == config.parameter_count()


def test_the_same_seed_builds_the_same_network():
    a, b = MoEC(CONFIGS["learned top-2"], seed=9), MoEC(CONFIGS["learned top-2"], seed=9)
    for (_, p), (_, q) in zip(a.named_tensors(), b.named_tensors()):
        assert torch.equal(p, q)


def test_block_grid_is_near_cubic_and_block_coordinates_are_local():
    assert block_grid((64, 64, 64), 8) == (2, 2, 2)
    assert sorted(block_grid((64, 64, 64), 4)) == [1, 2, 2]
    assert block_grid((200, 100, 50), 4) == (4, 1, 1)
    assert math.prod(block_grid((30, 20, 10), 12)) == 12
    assert block_grid((128, 64, 32), 8)[0] >= block_grid((128, 64, 32), 8)[2]
    coords = coords_from_flat(torch.arange(8 * 8 * 8), (8, 8, 8))
    local = block_local(coords, (2, 2, 2))
    assert local.min() > -1 and local.max() < 1
    # the 4 voxels of a block's axis map to the same local positions as a 4-voxel volume's
    torch.testing.assert_close(local[:4, 2], coords_from_flat(torch.arange(4), (1, 1, 4))[:, 2])


def test_coordinates_are_voxel_centres_and_a_single_voxel_axis_maps_to_zero():
    coords = coords_from_flat(torch.arange(4 * 1 * 2), (4, 1, 2))
    assert torch.all(coords[:, 1] == 0)
    torch.testing.assert_close(coords[::2, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError, match="top_k"):
        ModelConfig(experts=1, top_k=2)
    with pytest.raises(ValueError, match="block_grid"):
        ModelConfig(experts=8, partition="blocks", block_grid=(2, 2))
