"""The latent grid's layout on anisotropic voxels (codec.fit.sizing.grid_layout, ModelConfig.grid_hold, format 6)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from codec import pipeline
from codec.cli import main
from codec.decode.reconstruct import reconstruct
from codec.errors import MoecFormatError
from codec.fit.sizing import grid_layout
from codec.format import moecfile
from codec.format.container import unpack_container
from codec.io.load import save_volume
from codec.io.volume import from_array
from codec.model import ModelConfig
from codec.settings import TrainConfig

from .test_format import assemble

CT = (512, 512, 61)
CT_SPACING = (0.625, 0.625, 5.0)


def count(finest, hold, channels=1, levels=4):
    config = ModelConfig(
        experts=2,
        encoder="grid",
        encoder_layers=0,
        grid_channels=channels,
        grid_levels=levels,
        grid_finest=finest,
        grid_hold=hold,
    )
    return config.latent_count()


def test_equal_voxel_sizes_give_the_proportional_grid_whatever_the_power():
    proportional = grid_layout((197, 233, 189), 80_000, 1, 4)
    for power in (0.5, 1.0):
        assert grid_layout((197, 233, 189), 80_000, 1, 4, (1.0, 1.0, 1.0), power) == proportional
    finest, hold = proportional
    assert hold == () and 0.95 * 80_000 <= count(finest, hold) <= 80_000
    # Slices less than THICK_SLICES times the pixels (the phantom's 1.5 x 1.5 x 3 mm), or sizes a
    # broken header gives, keep the voxels' proportions too.
    for spacing in ((1.5, 1.5, 3.0), (0.7, 0.7, 1.25), (0.0, 1.0, 5.0), (float("nan"), 1.0, 1.0)):
        assert grid_layout((197, 233, 189), 80_000, 1, 4, spacing, 1.0) == proportional


@pytest.mark.parametrize("power", [0.5, 1.0])
def test_thick_slices_keep_their_nodes_and_hold_while_the_fine_axes_halve(power):
    latents = 150_000
    flat, _ = grid_layout(CT, latents, 1, 4, CT_SPACING, 0.0)
    finest, hold = grid_layout(CT, latents, 1, 4, CT_SPACING, power)
    assert 0.9 * latents <= count(finest, hold) <= latents
    # More of the 61 slices get their own nodes than with the voxels' proportions.
    assert finest[2] > flat[2] and finest[0] < flat[0] and finest[2] <= 61
    apart = [n * s / b for n, s, b in zip(CT, CT_SPACING, finest)]  # millimetres between nodes
    if power == 1.0:
        assert max(apart) / min(apart) < 1.5 and hold == ()
    else:
        # Slices 2^h times farther apart than the in-plane nodes hold h levels before they halve.
        assert hold[:2] == (0, 0) and hold[2] == round(math.log2(apart[2] / apart[0])) >= 1
        levels = ModelConfig(
            experts=2, encoder="grid", encoder_layers=0, grid_levels=4, grid_finest=finest, grid_hold=hold
        ).grid_resolutions()
        assert [r[2] for r in levels[: hold[2] + 1]] == [finest[2]] * (hold[2] + 1)
        assert levels[1][0] == math.ceil(finest[0] / 2)


def test_held_axes_are_checked():
    base = {"experts": 2, "encoder": "grid", "encoder_layers": 0, "grid_finest": (8, 8, 4), "grid_levels": 3}
    assert ModelConfig(**base, grid_hold=(0, 0, 2)).grid_resolutions() == [(8, 8, 4), (4, 4, 4), (2, 2, 4)]
    for hold in ((0, 0, 3), (0, 1), (0, 0, -1)):
        with pytest.raises(ValueError, match="grid_hold"):
            ModelConfig(**base, grid_hold=hold)
    with pytest.raises(ValueError, match="only for the grid encoder"):
        ModelConfig(experts=2, grid_hold=(0, 0, 1))


@pytest.fixture(scope="module")
def thick_slices(tmp_path_factory):
    """A small volume of 4 mm slices and 0.5 mm pixels, and its file made with held slices."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(12), np.arange(48), np.arange(48), indexing="ij")
    data = (100 * np.sin(x / 5.0) * np.cos(y / 7.0) + 40 * z + rng.normal(0, 2, z.shape)).transpose(2, 1, 0)
    volume = from_array(data.astype(np.float32), affine=np.diag([0.5, 0.5, 4.0, 1.0]), dtype=np.int16)
    path = tmp_path_factory.mktemp("thick") / "thick.nii.gz"
    save_volume(volume, path)
    compression = pipeline.Compression(
        volume, pipeline.Settings(ratio=12, grid_spacing_power=0.5), TrainConfig(steps=60, batch_size=2048)
    )
    return volume, path, compression.plan, compression.train().encode().data


def test_a_file_with_held_slices_round_trips_and_says_so(thick_slices, tmp_path, capsys):
    volume, path, plan, data = thick_slices
    assert plan.model.grid_hold[2] >= 1 and plan.model.grid_hold[:2] == (0, 0)
    moec = moecfile.from_bytes(data)
    # Read cubically from TrainConfig.cubic_from on: the only field training changes.
    assert moec.meta.model == dataclasses.replace(plan.model, grid_interpolation="cubic") and moec.meta.version == 7
    recon = reconstruct(moec)
    assert recon.volume.shape == volume.shape and np.isfinite(recon.volume.data).all()
    out = tmp_path / "thick.moec"
    moecfile.write(out, data)
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    levels = " > ".join("x".join(map(str, r)) for r in plan.model.grid_resolutions())
    assert f"latent grid {levels}" in printed


def test_the_cli_option_shapes_the_grid(thick_slices, tmp_path, capsys):
    _, path, _, _ = thick_slices
    made = {}
    for power in ("0", "1"):
        out = tmp_path / f"p{power}.moec"
        assert (
            main(
                [
                    "compress",
                    str(path),
                    "-o",
                    str(out),
                    "--ratio",
                    "12",
                    "--steps",
                    "5",
                    "--quiet",
                    "--grid-spacing",
                    power,
                ]
            )
            == 0
        )
        made[power] = moecfile.read(out).meta.model.grid_finest
    assert made["1"][2] > made["0"][2] and made["1"][0] < made["0"][0]
    with pytest.raises(SystemExit):
        main(["compress", str(path), "-o", str(tmp_path / "x.moec"), "--grid-spacing", "1.5"])
    assert "between 0 and 1" in capsys.readouterr().err


def test_older_versions_and_bad_values_cannot_hold_axes(thick_slices):
    _, _, _, data = thick_slices
    c = unpack_container(data)
    with pytest.raises(MoecFormatError, match="version-5 file cannot describe a grid whose axes hold"):
        moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, c.payload, version=5))
    for bad in ([0, 0, 9], [0, 0], "2", [0, 0, 1.5]):
        meta = json.loads(json.dumps(c.meta))
        meta["model"]["grid_hold"] = bad
        with pytest.raises(MoecFormatError):
            moecfile.from_bytes(assemble(json.dumps(meta).encode(), c.nifti, c.payload))
