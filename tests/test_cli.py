"""`moec` on the command line: real files, one-line errors, nothing overwritten."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from codec.cli import main
from codec.format import moecfile
from codec.format.container import unpack_container
from codec.io.load import save_volume
from codec.io.phantom import make_phantom
from codec.settings import TrainConfig

FAST = ["--steps", "150", "--batch", "2048", "--quiet"]


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    volume, _ = make_phantom((32, 28, 16))
    path = folder / "phantom.nii.gz"
    save_volume(volume, path)
    return path


@pytest.fixture(scope="module")
def compressed(phantom_file):
    out = phantom_file.with_name("phantom.moec")
    assert main(["compress", str(phantom_file), "-o", str(out), "--ratio", "12", "--experts", "4", *FAST]) == 0
    return out


def test_compress_reports_ratio_psnr_and_ssim(phantom_file, capsys):
    out = phantom_file.with_name("report.moec")
    assert main(["compress", str(phantom_file), "-o", str(out), "--ratio", "12", "--experts", "4", *FAST]) == 0
    said = capsys.readouterr()
    printed = said.out
    assert "ratio" in printed and "PSNR" in printed and "SSIM" in printed and "decoded from the written file" in printed
    # The plan names the device that trains (auto resolved), not the option's value.
    assert f"; device {'cuda' if torch.cuda.is_available() else 'cpu'}" in said.err
    raw = 32 * 28 * 16 * 2
    assert 12 <= raw / out.stat().st_size <= 12 * 1.05


def test_decompress_restores_shape_dtype_affine_and_writes_labels(phantom_file, compressed, tmp_path):
    out, labels = tmp_path / "recon.nii.gz", tmp_path / "experts.nii.gz"
    assert main(["decompress", str(compressed), "-o", str(out), "--labels", str(labels)]) == 0
    original, recon, lab = (nib.load(str(p)) for p in (phantom_file, out, labels))
    assert recon.shape == original.shape and recon.get_data_dtype() == np.int16
    np.testing.assert_allclose(recon.affine, original.affine)
    assert b"MoEC" in recon.header["descrip"].tobytes()
    assert lab.get_data_dtype() == np.uint8 and lab.shape == original.shape
    np.testing.assert_allclose(lab.affine, original.affine)
    assert set(np.unique(np.asarray(lab.dataobj))) <= {1, 2, 3, 4}


def test_info_and_eval_describe_the_file(phantom_file, compressed, capsys):
    assert main(["info", str(compressed)]) == 0
    info = capsys.readouterr().out
    assert "32 x 28 x 16 int16" in info and "4 experts" in info and "steps" in info and "torch" in info
    assert f"{TrainConfig().sample_activity:.0%} of each batch drawn by activity" in info
    assert main(["eval", str(phantom_file), str(compressed), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 12 <= report["ratio"] <= 12.6
    assert report["quality"]["psnr"] > 15
    assert len(report["experts"]) == 4
    assert abs(sum(e["share"] for e in report["experts"]) - 1) < 1e-6
    # What each expert's region costs: its latents and bytes, within the file's.
    assert all(e["latents"] >= 0 and e["coded_bytes"] > 0 for e in report["experts"])
    assert sum(e["coded_bytes"] for e in report["experts"]) < compressed.stat().st_size
    assert main(["eval", str(phantom_file), str(compressed)]) == 0
    table = capsys.readouterr().out
    assert "worst slice" in table and "PSNR inside body" in table and "99th pct error" in table
    assert "latents   bytes" in table and "the router, decoder and tables are shared" in table


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moec: error:"), err
    return err[0]


def test_errors_are_one_line_and_a_nonzero_exit(phantom_file, compressed, tmp_path, capsys):
    assert main(["compress", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x.moec")]) != 0
    assert "no such file" in _one_line_error(capsys)

    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((16, 16), dtype=np.float32))
    assert main(["compress", str(flat), "-o", str(tmp_path / "x.moec"), *FAST]) != 0
    assert "2D" in _one_line_error(capsys)

    assert main(["compress", str(phantom_file), "-o", str(tmp_path / "x.moec"), "--ratio", "100000", *FAST]) != 0
    assert "highest reachable ratio" in _one_line_error(capsys)

    junk = tmp_path / "junk.moec"
    junk.write_bytes(b"MOEC" + bytes(40))
    assert main(["info", str(junk)]) != 0
    _one_line_error(capsys)
    assert main(["decompress", str(phantom_file), "-o", str(tmp_path / "y.nii.gz")]) != 0
    assert "not a .moec file" in _one_line_error(capsys)
    (tmp_path / "folder.moec").mkdir()
    assert main(["info", str(tmp_path / "folder.moec")]) != 0
    assert "is a folder, not a .moec file" in _one_line_error(capsys)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(phantom_file.read_bytes()[:700])
    assert main(["compress", str(cut), "-o", str(tmp_path / "cut.moec")]) != 0
    assert "is damaged" in _one_line_error(capsys)


def test_no_command_overwrites_its_input_or_an_existing_file(phantom_file, compressed, capsys):
    before = phantom_file.read_bytes()
    assert main(["decompress", str(compressed), "-o", str(compressed)]) != 0
    assert "overwrite the input" in _one_line_error(capsys)
    assert main(["compress", str(phantom_file), "-o", str(phantom_file), *FAST]) != 0
    assert "overwrite the input" in _one_line_error(capsys)
    assert phantom_file.read_bytes() == before
    kept = compressed.read_bytes()
    assert main(["compress", str(phantom_file), "-o", str(compressed), *FAST]) != 0
    assert "--force" in _one_line_error(capsys)
    assert compressed.read_bytes() == kept


def test_sample_writes_the_phantom_and_its_labels(tmp_path):
    assert (
        main(
            [
                "sample",
                "-o",
                str(tmp_path / "p.nii.gz"),
                "--labels",
                str(tmp_path / "t.nii.gz"),
                "--shape",
                "24",
                "20",
                "12",
            ]
        )
        == 0
    )
    img = nib.load(str(tmp_path / "p.nii.gz"))
    assert img.shape == (24, 20, 12) and img.get_data_dtype() == np.int16
    assert img.get_fdata().min() < -900  # air in Hounsfield units
    assert nib.load(str(tmp_path / "t.nii.gz")).get_data_dtype() == np.uint8


def test_a_4d_volume_round_trips_with_time_as_a_fourth_coordinate(tmp_path, capsys):
    t = np.linspace(0, 1, 5, dtype=np.float32)
    x = np.linspace(-1, 1, 16, dtype=np.float32)
    field = np.sin(3 * x[:, None, None, None] + 2 * t) * np.cos(2 * x[None, :, None, None]) + x[None, None, :, None]
    raw = np.round(field * 300).astype(np.int16)
    source = tmp_path / "dynamic.nii.gz"
    nib.save(nib.Nifti1Image(raw, np.diag([2.0, 2.0, 2.0, 1.0])), str(source))
    out, back = tmp_path / "dynamic.moec", tmp_path / "dynamic_back.nii.gz"
    assert main(["compress", str(source), "-o", str(out), "--ratio", "8", "--experts", "2", *FAST]) == 0
    assert main(["info", str(out)]) == 0
    assert "16 x 16 x 16 x 5" in capsys.readouterr().out
    assert main(["decompress", str(out), "-o", str(back)]) == 0
    img = nib.load(str(back))
    assert img.shape == raw.shape and img.get_data_dtype() == np.int16
    capsys.readouterr()
    assert main(["eval", str(source), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["quality"]["psnr"] > 20 and "time frames" in report["quality"]["ssim_method"]


def test_a_constant_volume_compresses_and_its_psnr_is_reported_undefined(tmp_path, capsys):
    source = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((12, 12, 12), 7, dtype=np.uint8), np.eye(4)), str(source))
    out = tmp_path / "flat.moec"
    assert (
        main(["compress", str(source), "-o", str(out), "--ratio", "2", "--experts", "1", "--steps", "20", "--quiet"])
        == 0
    )
    assert "undefined" in capsys.readouterr().out
    back = tmp_path / "flat_back.nii.gz"
    assert main(["decompress", str(out), "-o", str(back)]) == 0
    assert np.all(np.asarray(nib.load(str(back)).dataobj) == 7)


def test_asking_for_cuda_without_it_is_a_clear_error(phantom_file, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["compress", str(phantom_file), "-o", str(tmp_path / "c.moec"), "--device", "cuda", *FAST]) != 0
    assert "CUDA" in _one_line_error(capsys)


def test_the_grid_encoder_from_the_command_line(phantom_file, tmp_path, capsys):
    out = tmp_path / "grid.moec"
    assert (
        main(
            [
                "compress",
                str(phantom_file),
                "-o",
                str(out),
                "--ratio",
                "12",
                "--experts",
                "4",
                "--encoder",
                "grid",
                "--router-input",
                "coordinates",
                "--grid-channels",
                "1",
                *FAST,
            ]
        )
        == 0
    )
    assert "levels x 1 channel (" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "format version 7" in printed and "latent grid" in printed and "rate-set" in printed
    size, payload = out.stat().st_size, len(unpack_container(out.read_bytes()).payload)
    assert f"({size:,} bytes: weights {payload:,}, header and container {size - payload:,};" in printed
    assert "grids through the spatial context model" in printed
    assert "on the coordinates alone" in printed
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["encoder"] == "grid" and len(info["model"]["grid_finest"]) == 3
    assert info["model"]["router_features"] is False and info["model"]["grid_channels"] == 1
    assert main(["decompress", str(out), "-o", str(tmp_path / "grid.nii.gz")]) == 0
    assert nib.load(str(tmp_path / "grid.nii.gz")).shape == (32, 28, 16)


def test_the_latent_rate_from_the_command_line(phantom_file, tmp_path, capsys):
    """--latent-bits B plans the grid at B coded bits per latent (fewer: a finer grid in the same
    bytes); auto: a compression that tries its experts tries the rates too, and says so."""
    finest = {}
    for bits in ("1.5", "0.75"):
        out = tmp_path / f"rate{bits}.moec"
        assert (
            main(
                [
                    "compress",
                    str(phantom_file),
                    "-o",
                    str(out),
                    "--ratio",
                    "12",
                    "--experts",
                    "1",
                    "--encoder",
                    "grid",
                    "--latent-bits",
                    bits,
                    *FAST,
                ]
            )
            == 0
        )
        assert "trying" not in capsys.readouterr().err
        assert main(["info", str(out), "--json"]) == 0
        finest[bits] = math.prod(json.loads(capsys.readouterr().out)["model"]["grid_finest"])
    assert finest["0.75"] > 1.5 * finest["1.5"]
    assert (
        main(
            [
                "compress",
                str(phantom_file),
                "-o",
                str(tmp_path / "auto.moec"),
                "--ratio",
                "12",
                "--latent-bits",
                "auto",
                "--steps",
                "40",
                "--batch",
                "1024",
                "--quiet",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "trying 4 experts and one network at 1.5 bits per latent, then the kept number at 0.75" in err
    assert "model (one network at 0.75 bits per latent):" in err
    for bad in ("0.1", "many"):
        with pytest.raises(SystemExit):
            main(["compress", str(phantom_file), "-o", str(tmp_path / "x.moec"), "--latent-bits", bad, *FAST])
        assert "--latent-bits" in capsys.readouterr().err


def test_a_run_stopped_before_the_grid_learns_writes_a_smaller_file_and_says_why(phantom_file, tmp_path, capsys):
    """A budget so short that training ends after the router's first step leaves the latent grid at
    zero, which codes to almost nothing: the file lands below the size window, the command says so
    and why, and the file is still a valid, decodable .moec of the ratio's size or smaller."""
    out = tmp_path / "short.moec"
    assert (
        main(
            [
                "compress",
                str(phantom_file),
                "-o",
                str(out),
                "--ratio",
                "12",
                "--experts",
                "4",
                "--encoder",
                "grid",
                "--minutes",
                "0.00001",
                "--quiet",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "note: the file is smaller than asked" in err and "the latent grid is still empty" in err
    assert 32 * 28 * 16 * 2 / out.stat().st_size > 12 * 1.05
    assert main(["decompress", str(out), "-o", str(tmp_path / "short.nii.gz")]) == 0
    assert nib.load(str(tmp_path / "short.nii.gz")).shape == (32, 28, 16)


def test_the_grid_encoder_refuses_float16_in_one_line(phantom_file, tmp_path, capsys):
    code = main(
        ["compress", str(phantom_file), "-o", str(tmp_path / "x.moec"), "--encoder", "grid", "--bits", "16", *FAST]
    )
    err = capsys.readouterr().err
    assert code != 0 and "stored quantized only" in err and "Traceback" not in err
    assert not (tmp_path / "x.moec").exists()
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error
        main(
            [
                "compress",
                str(phantom_file),
                "-o",
                str(tmp_path / "x.moec"),
                "--encoder",
                "grid",
                "--grid-channels",
                "0",
                *FAST,
            ]
        )
    assert exit_.value.code != 0 and "--grid-channels" in capsys.readouterr().err
    assert not (tmp_path / "x.moec").exists()


def test_the_command_lines_defaults_are_the_librarys():
    """`moec compress` with no options builds the same Settings and TrainConfig as the plugin's
    defaults (pipeline.Settings(), TrainConfig()); the parser keeps its own literals so that
    `moec --help` does not import torch."""
    from codec import pipeline
    from codec.cli import build_parser

    args = build_parser().parse_args(["compress", "volume.nii.gz"])
    settings, train = pipeline.Settings(), TrainConfig()
    assert (args.ratio, args.experts, args.top_k, args.partition, args.bits, args.granularity) == (
        settings.ratio,
        settings.experts,
        settings.top_k,
        settings.partition,
        settings.bits,
        settings.granularity,
    )
    assert (args.encoder, args.grid_channels, args.router_input == "features", args.latent_bits) == (
        settings.encoder,
        settings.grid_channels,
        settings.router_features,
        settings.latent_bits,
    )
    assert (args.minutes, args.lr, args.batch, args.balance, args.seed, args.sample_activity) == (
        train.minutes,
        train.lr,
        train.batch_size,
        train.balance_weight,
        train.seed,
        train.sample_activity,
    )
    # The default is the latent grid under a learned router, and the baselines stay SIRENs.
    assert settings.encoder_for(3) == "grid"
    assert pipeline.Settings(experts=1).encoder_for(3) == "siren"
    assert pipeline.Settings(partition="blocks").encoder_for(3) == "siren"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_outputs_keep_their_names_case_and_get_the_usual_permissions(compressed, tmp_path):
    upper, lower = tmp_path / "R.NPY", tmp_path / "r.npy"
    assert main(["decompress", str(compressed), "-o", str(upper)]) == 0
    assert main(["decompress", str(compressed), "-o", str(lower)]) == 0
    # np.save given a name not ending in lower-case ".npy" writes elsewhere: the file must hold the data.
    assert np.array_equal(np.load(upper), np.load(lower))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.NPY", "r.npy"]  # no temporary file left
    # mkstemp makes private files; the written one has what the umask gives any new file.
    assert (upper.stat().st_mode & 0o777) == 0o666 & ~_umask()


def test_bad_outputs_are_refused_before_any_work_and_nothing_is_written(phantom_file, compressed, tmp_path, capsys):
    cases = [
        (
            [
                "decompress",
                str(compressed),
                "-o",
                str(tmp_path / "r.nii.gz"),
                "--labels",
                str(tmp_path / "x.nii.gz"),
                "--confidence",
                str(tmp_path / "x.nii.gz"),
            ],
            "name the same file",
        ),
        (
            ["decompress", str(compressed), "-o", str(tmp_path / "r.nii.gz"), "--labels", str(tmp_path / "l.npy")],
            "must end in .nii or .nii.gz",
        ),
        (["decompress", str(compressed), "-o", str(tmp_path / "r.txt")], "must end in .nii, .nii.gz or .npy"),
        (["sample", "-o", str(tmp_path / "s.nii.gz"), "--labels", str(tmp_path / "s.nii.gz")], "name the same file"),
        (["sample", "-o", str(tmp_path / "s.nii.gz"), "--labels", str(phantom_file)], "exists; use --force"),
        # compress checks where it will write before it trains (a budget of steps it would not finish here)
        (
            ["compress", str(phantom_file), "-o", str(tmp_path / "no" / "x.moec"), "--steps", "10000000"],
            "folder .* does not exist",
        ),
        (["compress", str(phantom_file), "-o", str(tmp_path), "--force", "--steps", "10000000"], "is a folder"),
        (
            ["compress", str(phantom_file), "-o", str(tmp_path / "x.nii.gz"), "--steps", "10000000"],
            "a .moec file under a volume's name",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert re.search(message, _one_line_error(capsys)), argv
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_compress_refuses_a_read_only_folder_before_training(phantom_file, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    assert main(["compress", str(phantom_file), "-o", str(locked / "x.moec"), "--steps", "10000000"]) == 1
    assert "permission denied" in _one_line_error(capsys)


def test_a_diverging_run_and_impossible_settings_are_refused_in_words(phantom_file, tmp_path, capsys):
    out = tmp_path / "x.moec"
    assert (
        main(
            [
                "compress",
                str(phantom_file),
                "-o",
                str(out),
                "--ratio",
                "12",
                "--lr",
                "1e30",
                "--steps",
                "3",
                "--experts",
                "4",
                "--quiet",
            ]
        )
        == 1
    )
    said = capsys.readouterr().err.strip().splitlines()  # the plan's two lines, then the error
    assert said[-1].startswith("moec: error: training diverged after 3 steps") and "Traceback" not in said
    assert not out.exists() and list(tmp_path.iterdir()) == []
    for option, value, message in (("--balance", "inf", "finite"), ("--seed", str(10**20), "seed must be")):
        assert main(["compress", str(phantom_file), "-o", str(out), option, value, "--steps", "3"]) == 1
        assert message in _one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_decompress_on_a_missing_cuda_device_says_so_before_decoding(compressed, tmp_path, capsys):
    assert main(["decompress", str(compressed), "-o", str(tmp_path / "r.nii.gz"), "--device", "cuda"]) == 1
    assert "no CUDA device" in _one_line_error(capsys)


def test_json_reports_are_strict_json_when_a_figure_is_undefined(tmp_path, capsys):
    """A constant volume has no PSNR (R = 0): the report says null, not NaN, which JSON lacks."""
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((16, 16, 8), 7, dtype=np.int16), np.eye(4)), flat)
    out = tmp_path / "flat.moec"
    assert main(["compress", str(flat), "-o", str(out), "--ratio", "4", "--json", *FAST]) == 0

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))

    assert strict(capsys.readouterr().out)["psnr"] is None
    assert main(["eval", str(flat), str(out), "--json"]) == 0
    quality = strict(capsys.readouterr().out)["quality"]
    assert quality["psnr"] is None and quality["max_error"] == 0


def test_a_reader_that_leaves_ends_the_command_quietly(compressed):
    """`moec info F | head -1`: the output's pipe closed early is not an error to report."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command writes, so every write finds the pipe broken
    try:
        done = subprocess.run(
            [sys.executable, "-m", "codec.cli", "info", str(compressed)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 128 + 13  # SIGPIPE's, as a shell reports a tool the pipe stopped


def test_the_sampling_switch_reaches_the_training_and_its_record(phantom_file, compressed, tmp_path):
    """`--sample-activity 0` trains on uniform draws; the file's training record says which, and the
    default draws busy voxels more often."""
    out = tmp_path / "uniform.moec"
    assert (
        main(
            [
                "compress",
                str(phantom_file),
                "-o",
                str(out),
                "--ratio",
                "12",
                "--experts",
                "1",
                "--sample-activity",
                "0",
                *FAST,
            ]
        )
        == 0
    )
    assert moecfile.read(out).meta.train["sample_activity"] == 0.0
    assert moecfile.read(compressed).meta.train["sample_activity"] == TrainConfig().sample_activity > 0
    with pytest.raises(SystemExit):
        main(["compress", str(phantom_file), "-o", str(tmp_path / "bad.moec"), "--sample-activity", "1.5", *FAST])
    assert not (tmp_path / "bad.moec").exists()
