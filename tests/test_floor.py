"""The decoder's floor (codec.decode.floor, format version 4): chosen by the encoder, applied by the decoder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from codec import pipeline
from codec.decode.floor import FLOOR_SHARE, apply_floor, choose_floor
from codec.decode.reconstruct import reconstruct
from codec.errors import MoecFormatError
from codec.eval.metrics import psnr, ssim
from codec.format import moecfile
from codec.format.container import unpack_container
from codec.io.phantom import phantom_affine, phantom_arrays
from codec.io.volume import from_array
from codec.settings import TrainConfig

from .test_format import assemble
from .training import train


def background_and_noise(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8-like volume, 70% exactly 0, and a reconstruction with a small rounded noise."""
    rng = np.random.default_rng(seed)
    original = np.where(rng.random(20_000) < 0.7, 0.0, rng.uniform(40, 255, 20_000)).round()
    recon = np.clip(np.round(original + rng.normal(0.6, 1.2, original.size)), 0, 255)
    return original, recon


def best_floor_by_trying_every_value(original: np.ndarray, recon: np.ndarray, vmin: float, vmax: float):
    best, best_error = None, float(np.sum((recon - original) ** 2))
    for floor in np.unique(recon[(recon > vmin) & (recon <= vmin + FLOOR_SHARE * (vmax - vmin))]):
        error = float(np.sum((np.where(recon <= floor, vmin, recon) - original) ** 2))
        if error < best_error:
            best, best_error = float(floor), error
    return best


def test_the_chosen_floor_is_the_best_one_and_cleans_the_background():
    original, recon = background_and_noise()
    floor = choose_floor(original, recon, 0.0, 255.0)
    assert floor == best_floor_by_trying_every_value(original, recon, 0.0, 255.0)
    assert floor is not None and 1 <= floor < 40  # above the noise, below every tissue value
    cleaned = apply_floor(recon.astype(np.float32), floor, 0.0)
    assert np.all(cleaned[original == 0] <= np.max(recon[original == 0]))
    assert np.mean(cleaned[original == 0] == 0) > np.mean(recon[original == 0] == 0) + 0.3
    assert np.mean((cleaned - original) ** 2) < np.mean((recon - original) ** 2)
    np.testing.assert_array_equal(cleaned[original >= 40], recon[original >= 40])


def test_the_floor_restores_the_ssim_that_background_noise_costs():
    rng = np.random.default_rng(1)
    original = np.zeros((24, 28, 32))
    original[6:18, 6:22, 8:24] = rng.uniform(60, 255, (12, 16, 16)).round()  # a head in empty air
    recon = np.clip(np.round(original + rng.normal(0.6, 1.2, original.shape)), 0, 255)
    cleaned = apply_floor(recon.astype(np.float32), choose_floor(original, recon, 0.0, 255.0), 0.0)
    assert ssim(original, recon, 255.0)[0] < 0.99 and ssim(original, cleaned, 255.0)[0] > 0.999  # 0.982, 0.99994


def test_no_floor_where_none_helps_and_never_above_the_cap():
    original, _ = background_and_noise()
    assert choose_floor(original, original.copy(), 0.0, 255.0) is None  # a perfect reconstruction
    assert choose_floor(original, np.zeros_like(original), 0.0, 255.0) is None  # nothing above vmin
    # Dark tissue everywhere: snapping the whole low range to vmin would help, the cap stops it.
    dark = np.full(1000, 100.0)
    floor = choose_floor(dark, dark + 1, -1000.0, 1000.0)
    assert floor is None or floor <= -1000.0 + FLOOR_SHARE * 2000.0
    assert apply_floor(np.array([1.0, 2.0], np.float32), None, 0.0).tolist() == [1.0, 2.0]


@pytest.fixture(scope="module")
def air_file():
    """A small CT phantom whose air is one exact value (as a scanner's padding is), compressed."""
    hu, labels = phantom_arrays((32, 24, 16))
    hu = np.where(labels == 0, hu.min(), hu)
    volume = from_array(hu, affine=phantom_affine(hu.shape), dtype=np.int16, inter=-1024.0)
    # Read trilinearly throughout: a test rewrites it as a version-3 file.
    fitter, plan = train(
        volume, pipeline.Settings(ratio=6, experts=2), TrainConfig(steps=150, batch_size=1024, cubic_from=1.0)
    )
    return volume, plan, pipeline.file_bytes(fitter, plan)


def test_a_compressed_file_carries_its_floor_and_the_decoder_applies_it(air_file):
    volume, plan, data = air_file
    assert plan.lower_bytes <= len(data) <= plan.upper_bytes
    moec = moecfile.from_bytes(data)
    assert moec.meta.version >= 4 and moec.meta.floor is not None
    assert unpack_container(data).meta["floor"] == moec.meta.floor
    vmin = moec.meta.vmin
    with_floor = reconstruct(moec).volume.data
    unfloored = moecfile.MoecFile(dataclasses.replace(moec.meta, floor=None), moec.model, moec.nbytes)
    without = reconstruct(unfloored).volume.data
    assert not np.any((with_floor > vmin) & (with_floor <= moec.meta.floor))
    np.testing.assert_array_equal(with_floor[without > moec.meta.floor], without[without > moec.meta.floor])
    # Every voxel of this small volume took part in the choice, on the weights the file holds.
    assert psnr(volume.data, with_floor) > psnr(volume.data, without)


def test_a_floor_is_read_only_from_version_4_and_only_inside_the_range(air_file):
    _, _, data = air_file
    c = unpack_container(data)
    vmin, vmax = c.meta["range"]
    for bad, message in [
        (vmax + 1, "outside the intensity range"),
        (vmin - 1, "outside the intensity range"),
        ("0", "must be a finite number"),
        (None, "must be a finite number"),
    ]:
        meta = dict(c.meta, floor=bad)
        with pytest.raises(MoecFormatError, match=message):
            moecfile.from_bytes(assemble(json.dumps(meta).encode(), c.nifti, c.payload))
    with pytest.raises(MoecFormatError, match="version-3 file cannot hold a floor"):
        moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, c.payload, version=3))
    no_floor = {k: v for k, v in c.meta.items() if k != "floor"}
    old = assemble(json.dumps(no_floor).encode(), c.nifti, c.payload, version=3)
    assert moecfile.from_bytes(old).meta.floor is None


def test_moec_info_says_what_the_floor_does(air_file, tmp_path, capsys):
    from codec.cli import main

    _, _, data = air_file
    moecfile.write(tmp_path / "air.moec", data)
    assert main(["info", str(tmp_path / "air.moec")]) == 0
    floor = moecfile.from_bytes(data).meta.floor
    assert f"floor     decoded values at or below {floor:g} become " in capsys.readouterr().out
