"""Cubic reading of the latent grid (codec.model.latents: refine, refine_grid, the learned taps;
ModelConfig.grid_interpolation, TrainConfig.cubic_from, format 7): the refinement, the switch during
training, the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codec import pipeline
from codec.cli import main
from codec.coding.quantize import QuantConfig
from codec.decode.reconstruct import reconstruct, unfloored_values
from codec.errors import MoecFormatError
from codec.fit.train import Fitter
from codec.format import moecfile
from codec.format.container import unpack_container
from codec.io.load import save_volume
from codec.io.volume import from_array
from codec.model import LatentGrid, ModelConfig, MoEC
from codec.model.refinement import (
    CATMULL_ROM,
    read_refined,
    refine,
    refine_grid,
    refined_read_pays,
    refinement_matrix,
)
from codec.settings import TrainConfig

from .test_format import assemble
from .training import mean_prediction_psnr


def test_refinement_keeps_the_nodes_and_is_exact_on_ramps_and_inner_cubics():
    x = torch.linspace(-1, 1, 7)
    ramp = refine((3 * x - 1).reshape(1, 7), 1)
    fine = torch.linspace(-1, 1, 13)
    torch.testing.assert_close(ramp[0], 3 * fine - 1)
    cubic = refine((x**3 - x**2).reshape(1, 7), 1)[0]
    torch.testing.assert_close(cubic[::2], x**3 - x**2)
    # A midpoint with two nodes on each side is the cubic through them: exact for a cubic.
    torch.testing.assert_close(cubic[3:-3:2], (fine**3 - fine**2)[3:-3:2], rtol=0, atol=1e-6)
    # Two nodes refine to their mean between them; the matrix form is the same map.
    torch.testing.assert_close(refine(torch.tensor([[2.0, 4.0]]), 1), torch.tensor([[2.0, 3.0, 4.0]]))
    g = torch.randn(9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(refinement_matrix(9) @ g, refine(g.reshape(9, 1), 0)[:, 0])
    # The outer tap sets the filter: 0 is the plain mean of the two nodes around a midpoint.
    torch.testing.assert_close(refine((x**2).reshape(1, 7), 1, 0.0)[0, 1::2], (x[:-1] ** 2 + x[1:] ** 2) / 2)
    # Training refines a whole level by three matrix products, each axis with its own taps.
    level = torch.randn(2, 5, 4, 3, generator=torch.Generator().manual_seed(1))
    taps = torch.tensor([0.02, 1 / 16, 0.1])
    torch.testing.assert_close(refine_grid(level, taps), refine(refine(refine(level, 1, 0.02), 2, 1 / 16), 3, 0.1))
    # Its matrix is differentiable in the tap: the taps learn.
    outer = torch.tensor(1 / 16, requires_grad=True)
    (refinement_matrix(6, outer) @ torch.arange(6.0) ** 2).sum().backward()
    assert outer.grad is not None and outer.grad.abs() > 0


def test_refine_grid_gradients_match_the_numerical_ones_for_grid_and_taps():
    # refine_grid's backward is written by hand (the taps' gradient from the midpoints alone);
    # checked against finite differences in float64, with axes of 2 and 3 nodes (the ends' cases).
    generator = torch.Generator().manual_seed(2)
    for shape in [(2, 5, 6, 4), (1, 2, 3, 7), (1, 3, 3, 3)]:
        level = torch.randn(*shape, dtype=torch.float64, generator=generator, requires_grad=True)
        taps = torch.tensor([0.02, 1 / 16, 0.15], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(refine_grid, (level, taps))
        # and the same values and gradients as autograd through `refine`'s slices
        refine_grid(level, taps).square().sum().backward()
        by_hand = level.grad.clone(), taps.grad.clone()
        level.grad = taps.grad = None
        refine(refine(refine(level, 1, taps[0]), 2, taps[1]), 3, taps[2]).square().sum().backward()
        torch.testing.assert_close(by_hand, (level.grad, taps.grad))


def _refined_then_sampled(level: torch.Tensor, taps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    where = points.flip(1).reshape(1, 1, 1, -1, 3)
    sampled = F.grid_sample(refine_grid(level, taps).unsqueeze(0), where, mode="bilinear", align_corners=True)
    return sampled.reshape(level.shape[0], -1)


def test_points_read_from_the_coarse_nodes_equal_the_whole_refinement_read_trilinearly():
    # read_refined gathers each point's 4 x 4 x 4 coarse nodes instead of refining the grid: the
    # same values and the same gradients for the grid and the taps, the ends and 2- and 3-node
    # axes (whose windows are narrower) included; its backward is written by hand.
    generator = torch.Generator().manual_seed(3)
    for shape in [(1, 9, 7, 5), (2, 6, 2, 3), (1, 2, 3, 4)]:
        level = torch.randn(*shape, dtype=torch.float64, generator=generator, requires_grad=True)
        taps = torch.tensor([0.02, 1 / 16, 0.15], dtype=torch.float64, requires_grad=True)
        points = torch.rand(300, 3, dtype=torch.float64, generator=generator) * 2 - 1
        points[:8] = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=torch.float64)
        weights = torch.randn(shape[0], 300, dtype=torch.float64, generator=generator)
        read = read_refined(level, taps, points)
        (read * weights).sum().backward()
        by_points = read.detach(), level.grad.clone(), taps.grad.clone()
        level.grad = taps.grad = None
        whole = _refined_then_sampled(level, taps, points)
        (whole * weights).sum().backward()
        torch.testing.assert_close(by_points, (whole.detach(), level.grad, taps.grad))
    small = torch.randn(1, 3, 4, 2, dtype=torch.float64, generator=generator, requires_grad=True)
    taps = torch.tensor([0.05, 0.0, 0.1], dtype=torch.float64, requires_grad=True)
    points = torch.rand(20, 3, dtype=torch.float64, generator=generator) * 2 - 1
    assert torch.autograd.gradcheck(lambda g, t: read_refined(g, t, points), (small, taps))


def test_a_large_level_is_read_by_points_and_the_grid_reads_the_same_either_way():
    # Refining costs in proportion to the grid, reading by points in proportion to the batch: a
    # training batch reads a large level by points, a small level and a large batch by refining.
    assert refined_read_pays((1, 113, 113, 38), 16384)
    assert not refined_read_pays((1, 29, 29, 19), 16384)
    assert not refined_read_pays((1, 113, 113, 38), 1 << 20)
    grid = LatentGrid(1, [(40, 36, 30), (5, 4, 3)], interpolation="cubic")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for level in range(2):
            p = getattr(grid, f"grid{level}")
            p.copy_(torch.randn(p.shape, generator=generator))
        grid.taps.copy_(torch.rand(2, 3, generator=generator) * 0.1)
    points = torch.rand(2000, 3, generator=generator) * 2 - 1
    assert refined_read_pays(tuple(grid.grid0.shape), 2000) and not refined_read_pays(tuple(grid.grid1.shape), 2000)
    features = grid(points)
    features.square().sum().backward()
    read = features.detach(), grid.grid0.grad.clone(), grid.taps.grad.clone()
    grid.zero_grad()
    levels = [_refined_then_sampled(getattr(grid, f"grid{k}"), grid.taps[k], points) for k in range(2)]
    whole = torch.cat(levels).t()
    whole.square().sum().backward()
    torch.testing.assert_close(read, (whole.detach(), grid.grid0.grad, grid.taps.grad), rtol=1e-4, atol=1e-4)


def test_a_cubically_read_grid_passes_through_its_nodes_and_reads_boxes_as_points():
    grid = LatentGrid(2, [(6, 5, 4), (3, 3, 2)], interpolation="cubic")
    with torch.no_grad():
        for level in range(2):
            p = getattr(grid, f"grid{level}")
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(level)))
        grid.grid1.zero_()  # only the finest level: its nodes are read exactly
    nodes = [torch.linspace(-1, 1, n) for n in (6, 5, 4)]
    mesh = torch.stack([m.reshape(-1) for m in torch.meshgrid(*nodes, indexing="ij")], 1)
    with torch.no_grad():
        torch.testing.assert_close(grid(mesh)[:, :2], grid.grid0.reshape(2, -1).t(), rtol=0, atol=1e-5)
        axes = [torch.tensor([-0.9, -0.31, 0.0, 0.77]), torch.tensor([-1.0, 0.13, 1.0]), torch.tensor([0.5, -0.2])]
        points = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], dim=1)
        torch.testing.assert_close(grid.box_features(axes), grid(points), rtol=1e-5, atol=1e-5)
        # Between nodes it differs from trilinear (else the switch would buy nothing).
        cubic = grid(points)
        grid.interpolation = "linear"
        assert (cubic - grid(points)).abs().max() > 1e-2


def test_only_a_latent_grid_is_read_cubically():
    with pytest.raises(ValueError, match="grid_interpolation"):
        ModelConfig(experts=2, grid_interpolation="cubic")
    with pytest.raises(ValueError, match="grid_interpolation must be one of"):
        ModelConfig(experts=1, encoder="grid", encoder_layers=0, grid_finest=(4, 4, 4), grid_interpolation="spline")
    with pytest.raises(ValueError, match="cubic_from"):
        TrainConfig(cubic_from=1.5)
    with pytest.raises(ValueError, match="only a latent grid"):
        MoEC(ModelConfig(experts=2)).read_latents("cubic")


def _volume():
    z, y, x = np.meshgrid(np.arange(24), np.arange(28), np.arange(20), indexing="ij")
    data = 500 * np.tanh((x - 10) / 2.0) + 300 * np.sin(y / 3.0) * np.cos(z / 4.0)
    return from_array(data.astype(np.float32), dtype=np.int16)


def test_training_switches_to_cubic_at_its_share_of_the_budget_and_a_stop_before_stays_linear():
    volume = _volume()
    model = ModelConfig(experts=1, encoder="grid", encoder_layers=0, grid_levels=3, grid_finest=(8, 10, 6))
    fitter = Fitter(volume, model, QuantConfig(), TrainConfig(steps=40, batch_size=512, cubic_from=0.5))
    run = fitter.fit()
    for progress in run:
        if progress.step == 15:
            break
    run.close()
    assert fitter.model.config.grid_interpolation == "linear" and fitter.model.encoder.interpolation == "linear"
    for _ in fitter.fit():  # a second run: the switch is at its own half
        pass
    assert fitter.model.config.grid_interpolation == "cubic" and fitter.model.encoder.interpolation == "cubic"
    never = Fitter(volume, model, QuantConfig(), TrainConfig(steps=10, batch_size=512, cubic_from=1.0))
    for _ in never.fit():
        pass
    assert never.model.config.grid_interpolation == "linear"


@pytest.fixture(scope="module")
def cubic_file():
    volume = _volume()
    compression = pipeline.Compression(
        volume, pipeline.Settings(ratio=10, experts=1, encoder="grid"), TrainConfig(steps=60, batch_size=2048)
    )
    data = compression.train().encode().data
    return volume, compression, data


def test_a_cubic_file_says_so_and_decodes_as_its_model_reads(cubic_file, tmp_path, capsys):
    volume, compression, data = cubic_file
    assert compression.plan.model.grid_interpolation == "linear"  # planned linear, read cubically from 40%
    moec = moecfile.from_bytes(data)
    assert moec.meta.model.grid_interpolation == "cubic" and moec.meta.version == 7
    # The taps learned away from Catmull-Rom's, and the file holds them (8-bit, per axis).
    trained = compression.fitter.model.encoder.taps.detach()
    assert (trained - CATMULL_ROM).abs().max() > 1e-4
    torch.testing.assert_close(moec.model.encoder.taps.detach(), trained, rtol=0, atol=2e-3)
    assert "encoder.taps" in dict(moec.model.config.tensor_shapes())
    assert unpack_container(data).meta["model"]["grid_interpolation"] == "cubic"
    # Decoding reads boxes by matrices, the encoder's floor search points one by one: the same values.
    decoded = reconstruct(moec).volume.data.reshape(-1)
    flat = torch.arange(0, volume.data.size, 7)
    points = unfloored_values(moec, flat)
    above = moec.meta.floor is None or points > moec.meta.floor
    np.testing.assert_allclose(decoded[flat.numpy()][above], points[above], atol=1.0)
    assert pipeline.evaluate(volume, moec).quality.psnr > mean_prediction_psnr(volume) + 5  # it learned the volume
    out = tmp_path / "c.moec"
    moecfile.write(out, data)
    assert main(["info", str(out)]) == 0
    assert "read cubically" in capsys.readouterr().out


def test_older_versions_and_bad_values_cannot_read_cubically(cubic_file):
    _, _, data = cubic_file
    c = unpack_container(data)
    with pytest.raises(MoecFormatError, match="version-6 file cannot describe a grid read by cubic"):
        moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, c.payload, version=6))
    for bad in ("quintic", 3, None):
        meta = json.loads(json.dumps(c.meta))
        meta["model"]["grid_interpolation"] = bad
        with pytest.raises(MoecFormatError, match="grid_interpolation"):
            moecfile.from_bytes(assemble(json.dumps(meta).encode(), c.nifti, c.payload))


def test_the_command_line_chooses_when_the_grid_turns_cubic(tmp_path, capsys):
    path = tmp_path / "v.nii.gz"
    save_volume(_volume(), path)
    read = {}
    for share in ("1", "0.5"):
        out = tmp_path / f"{share}.moec"
        assert (
            main(
                [
                    "compress",
                    str(path),
                    "-o",
                    str(out),
                    "--ratio",
                    "10",
                    "--experts",
                    "1",
                    "--encoder",
                    "grid",
                    "--steps",
                    "12",
                    "--batch",
                    "1024",
                    "--quiet",
                    "--cubic-from",
                    share,
                ]
            )
            == 0
        )
        read[share] = moecfile.read(out).meta.model.grid_interpolation
    assert read == {"1": "linear", "0.5": "cubic"}
    with pytest.raises(SystemExit):
        main(["compress", str(path), "-o", str(tmp_path / "x.moec"), "--cubic-from", "2"])
    assert "between 0 and 1" in capsys.readouterr().err
