"""ROI-weighted fidelity: a region whose squared error counts W times more comes out sharper at the
same file size; the file records it; eval measures inside and outside it; bad masks are refused."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from codec import pipeline
from codec.cli import main
from codec.errors import MoecFormatError, VolumeError
from codec.eval.metrics import region_quality
from codec.fit.train import Fitter, TrainConfig
from codec.format import moecfile
from codec.format.container import unpack_container
from codec.io.load import save_volume
from codec.io.phantom import make_phantom
from codec.io.roi import check_roi, load_roi
from codec.io.volume import from_array

SHAPE = (40, 36, 20)
STEPS = 600  # at 250 steps the region's gain swung from 0 to +4 dB with the seed


def lesion_volume():
    """The phantom with a small striped bright lesion (radius 3 voxels, +150..+450 HU in stripes two
    voxels apart) and its mask. Stripes, not noise: detail that more samples of the region teach the
    network, so the region's weight shows on every seed (seeds 0-2: +4.1 to +6.6 dB inside), where
    a random texture is out of reach at this ratio either way."""
    volume, _ = make_phantom(SHAPE)
    grid = np.indices(SHAPE).astype(np.float32)
    centre = np.array([24, 14, 10], dtype=np.float32).reshape(3, 1, 1, 1)
    mask = ((grid - centre) ** 2).sum(0) <= 3.0**2
    data = volume.data.copy()
    data[mask] += (300.0 + 150.0 * np.cos(np.pi * grid[0]))[mask]
    return from_array(np.round(data), affine=volume.affine, header=volume.header, dtype=np.int16, inter=-1024.0), mask


def _compress(volume, roi=None, weight=10.0) -> bytes:
    config = TrainConfig(steps=STEPS, batch_size=4096, roi_weight=weight)
    return pipeline.Compression(volume, pipeline.Settings(ratio=20), config, roi).train().encode().data


@pytest.fixture(scope="module")
def lesion():
    volume, mask = lesion_volume()
    plain, weighted = _compress(volume), _compress(volume, mask)
    return volume, mask, plain, weighted


def test_the_roi_comes_out_sharper_at_the_same_ratio(lesion):
    volume, mask, plain, weighted = lesion
    assert abs(len(plain) - len(weighted)) <= 0.05 * len(plain)  # the same size window
    without = pipeline.evaluate(volume, moecfile.from_bytes(plain), roi=mask).roi
    with_roi = pipeline.evaluate(volume, moecfile.from_bytes(weighted), roi=mask).roi
    assert with_roi.voxels == int(mask.sum()) == without.voxels
    gain = with_roi.psnr_inside - without.psnr_inside
    assert gain > 1.5, f"the ROI's PSNR rose by only {gain:.2f} dB"  # measured: +5.2 dB
    # The bytes it takes come from elsewhere, but the rest of the volume is not given up (seeds 0-2:
    # -0.2 to -0.4 dB outside).
    assert with_roi.psnr_outside > without.psnr_outside - 1.0


def test_the_file_records_the_region_and_a_plain_file_does_not(lesion):
    _, mask, plain, weighted = lesion
    assert moecfile.from_bytes(weighted).meta.train["roi"] == {"voxels": int(mask.sum()), "weight": 10.0}
    assert "roi" not in moecfile.from_bytes(plain).meta.train


@pytest.mark.parametrize(
    "bad",
    ["small", {"voxels": 0, "weight": 10}, {"voxels": 5, "weight": 0.5}, {"voxels": True, "weight": 10}, {"voxels": 5}],
)
def test_a_malformed_roi_record_is_refused_by_the_reader(lesion, bad):
    weighted = lesion[3]
    moec = moecfile.from_bytes(weighted)
    payload = unpack_container(weighted).payload
    meta = dataclasses.replace(moec.meta, train={**moec.meta.train, "roi": bad})
    with pytest.raises(MoecFormatError, match="'roi'"):
        moecfile.from_bytes(moecfile.assemble(meta, payload))


def test_the_sampler_draws_the_region_weight_times_as_often():
    volume, mask = lesion_volume()
    plan = pipeline.make_plan(volume, pipeline.Settings(ratio=20), TrainConfig(steps=1), roi=True)
    # Uniform draws otherwise (sample_activity 0), so the draws themselves carry the weight.
    fitter = Fitter(
        volume, plan.model, plan.quant, TrainConfig(steps=1, roi_weight=10.0, sample_activity=0.0), roi=mask
    )
    flat, _, _, weight = fitter.sample(200_000)
    assert weight is None
    inside = torch.from_numpy(mask.reshape(-1))[flat]
    per_voxel_in = inside.sum().item() / mask.sum()
    per_voxel_out = (~inside).sum().item() / (~mask).sum()
    assert per_voxel_in / per_voxel_out == pytest.approx(10.0, rel=0.05)


def test_region_quality_splits_the_error_inside_and_outside():
    original = np.zeros((4, 4, 4), np.float32)
    original[0, 0, 0] = 100.0
    recon = original.copy()
    recon[1, 1, 1] = 10.0  # outside
    recon[0, 0, 0] = 99.0  # inside
    mask = np.zeros_like(original, bool)
    mask[0, 0, 0] = True
    r = region_quality(original, recon, mask)
    assert r.voxels == 1 and r.share == 1 / 64
    assert r.psnr_inside == pytest.approx(40.0) and r.max_inside == 1.0
    assert r.max_outside == 10.0 and r.psnr_outside == pytest.approx(10 * np.log10(100**2 / (100 / 63)))


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros(SHAPE), "empty"),
        (np.ones(SHAPE), "whole volume"),
        (np.ones((4, 4, 4)), "volume's grid"),
        (np.full(SHAPE, np.nan), "NaN"),
    ],
)
def test_a_bad_mask_is_refused_in_words(mask, message):
    with pytest.raises(VolumeError, match=message):
        check_roi(mask, SHAPE)


def test_a_3d_mask_applies_to_every_time_point_of_a_4d_volume():
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = True
    full = check_roi(mask, (4, 4, 4, 3))
    assert full.shape == (4, 4, 4, 3) and full.sum() == 3


@pytest.fixture(scope="module")
def files(tmp_path_factory, lesion):
    folder = tmp_path_factory.mktemp("roi")
    volume, mask = lesion[:2]
    source, roi = folder / "lesion.nii.gz", folder / "roi.nii.gz"
    save_volume(volume, source)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), volume.affine), str(roi))
    return folder, source, roi


def test_compress_eval_and_info_with_an_roi_on_the_command_line(files, capsys):
    folder, source, roi = files
    out = folder / "roi.moec"
    assert (
        main(
            [
                "compress",
                str(source),
                "-o",
                str(out),
                "--ratio",
                "20",
                "--roi",
                str(roi),
                "--roi-weight",
                "8",
                "--steps",
                "60",
                "--batch",
                "2048",
                "--quiet",
            ]
        )
        == 0
    )
    said = capsys.readouterr()
    assert "ROI: roi.nii.gz, 123 voxels (0.43%) weighted 8x" in said.err
    assert "ROI       inside" in said.out and "outside" in said.out
    assert main(["eval", str(source), str(out), "--roi", str(roi)]) == 0
    printed = capsys.readouterr().out
    assert "ROI               inside" in printed and "trained with ROI  123 voxels weighted 8x" in printed
    assert main(["eval", str(source), str(out), "--json", "--roi", str(roi)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["roi"]["voxels"] == 123 and report["trained_roi"] == {"voxels": 123, "weight": 8.0}
    assert main(["info", str(out)]) == 0
    assert "region of interest of 123 voxels weighted 8x" in capsys.readouterr().out


def test_a_mask_off_the_volumes_grid_is_one_line_and_nothing_is_written(files, capsys, tmp_path):
    folder, source, roi = files
    image = nib.load(str(roi))
    moved = tmp_path / "moved.nii.gz"
    affine = image.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), str(moved))
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), image.affine), str(small))
    text = tmp_path / "roi.txt"
    text.write_text("not a mask")
    for mask, message in (
        (moved, "another affine"),
        (small, "volume's grid"),
        (text, "is a NIfTI file"),
        (tmp_path / "none.nii.gz", "no such file"),
    ):
        out = tmp_path / "never.moec"
        assert main(["compress", str(source), "-o", str(out), "--roi", str(mask), "--steps", "5", "--quiet"]) != 0
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err and "Traceback" not in err
        assert not out.exists()


def test_load_roi_reads_any_nonzero_label_as_inside(files):
    _, source, roi = files
    image = nib.load(str(source))
    mask = load_roi(roi, image.shape, image.affine)
    assert mask.dtype == bool and mask.sum() == 123
