"""`moec bench`: cells saved as they finish, a rerun skips them, tables and plot from the cells."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from codec.bench import classical
from codec.cli import main
from codec.format.container import VERSION
from codec.io.load import save_volume
from codec.io.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    volume, _ = make_phantom((40, 32, 16))
    path = tmp_path_factory.mktemp("bench") / "phantom.nii.gz"
    save_volume(volume, path)
    return path


@pytest.mark.slow  # trains every MoEC row of a run
def test_bench_writes_cells_tables_and_plot_and_resumes(phantom_file, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", str(phantom_file), "--ratios", "8", "40", "--steps", "60", "--codecs", "j2k", "--out", str(out)]
    assert main(args) == 0
    first = capsys.readouterr()
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    methods = {
        "jpeg-2000",
        "moec-learned-partition-latent-grid-4-experts-1-channel",
        "single-siren",
        "blocks-8-fixed",
        "moec-default-4-experts-or-one-mlp-kept-after-a-trial",
        "moec-siren-encoder-8-experts",
        "moec-learned-partition-router-on-the-coordinates",
        "moec-sparse-latents-without-the-smoothness-penalty",
        "moec-2-bits-per-latent-no-rate-penalty",
        "control-one-mlp-on-the-grid-no-partition",
    }
    assert {c.split("@")[0] for c in cells} == methods and len(cells) == 20
    results = json.loads((out / "results.json").read_text())
    by = {(c["method"], c["target"]): c for c in results["cells"]}
    moec = by[("MoEC, learned partition (latent grid, 4 experts, 1 channel)", 8.0)]
    assert moec["reached"] and 8 <= moec["ratio"] <= 8.4 and moec["psnr"] > 10
    if classical.availability()["JPEG 2000"] is None:
        j2k = by[("JPEG 2000", 8.0)]
        assert j2k["reached"] and j2k["ratio"] >= 8
    assert (out / "rd.png").stat().st_size > 1000
    table = (out / "results.md").read_text()
    assert "| single SIREN |" in table and "8x" in table and "40x" in table
    ssim_table = table.split("SSIM (3D, same cells):")[1].split("Ablations")[0]
    assert f"| MoEC, learned partition (latent grid, 4 experts, 1 channel) | {moec['ssim']:.3f} |" in ssim_table
    assert "| method |" in first.out
    _check_verdicts(table, results["cells"], ratios=(8.0, 40.0))

    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert main(args) == 0  # a rerun finds every cell done
    assert "done before, skipped" in capsys.readouterr().err
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}

    # A cell cached before format version 5 has no "format" field; its row is named as measured
    # with the older, larger header.
    assert moec["format"] == VERSION and "(a larger header)" not in table
    old = out / "cells" / "single-siren@8.json"
    row = json.loads(old.read_text())
    del row["format"]
    old.write_text(json.dumps(row))
    assert main(args) == 0
    note = (out / "results.md").read_text().split("(a larger header)")[1]
    assert "single SIREN" in note and "MoEC default" not in note


def test_an_unreachable_ratio_is_reported_not_extrapolated(phantom_file, tmp_path, capsys):
    out = tmp_path / "far"
    assert (
        main(["bench", str(phantom_file), "--ratios", "20000", "--steps", "20", "--codecs", "j2k", "--out", str(out)])
        == 0
    )
    rows = json.loads((out / "results.json").read_text())["cells"]
    assert rows and all(not r["reached"] for r in rows)
    assert "cannot reach" in (out / "results.md").read_text()


def test_a_classical_only_run_names_no_training_budget(phantom_file, tmp_path):
    out = tmp_path / "classical"
    assert (
        main(["bench", str(phantom_file), "--ratios", "8", "--classical-only", "--codecs", "j2k", "--out", str(out)])
        == 0
    )
    text = (out / "results.md").read_text()
    assert "| JPEG 2000 |" in text and "MoEC" not in text.splitlines()[0]
    if classical.availability()["JPEG 2000"] is None:
        # The kept setting's encode and decode seconds, in the cell and in their own table.
        cell = json.loads((out / "cells" / "jpeg-2000@8.json").read_text())
        assert cell["encode_seconds"] > 0 and cell["decode_seconds"] > 0
        seconds = text.split("seconds to encode / decode")[1]
        assert f"| JPEG 2000 | {cell['encode_seconds']:.2f} / {cell['decode_seconds']:.2f} |" in seconds


def test_the_seconds_table_names_each_classical_codec_and_skips_old_cells():
    from codec.bench.report import seconds_lines

    def cell(method, target, **seconds):
        return {"method": method, "target": target, "kind": "classical", "reached": True, **seconds}

    rows = [
        cell("AV1 (libaom)", 256.0, encode_seconds=12.345, decode_seconds=0.5),
        cell("AV1 (libaom)", 1024.0, encode_seconds=8.0, decode_seconds=0.25),
        cell("SPERR", 256.0, encode_seconds=0.61, decode_seconds=0.48),
        cell("JPEG 2000", 256.0),  # cached before seconds were recorded
        {"method": "AV1 (libaom)", "target": 4096.0, "kind": "classical", "reached": False, "note": "cannot reach"},
    ]
    lines = seconds_lines(rows, [256.0, 1024.0, 4096.0])
    assert "| AV1 (libaom) | 12.35 / 0.50 | 8.00 / 0.25 |  |" in lines
    assert "| SPERR | 0.61 / 0.48 |  |  |" in lines
    assert not any("JPEG 2000" in line for line in lines)
    assert seconds_lines(rows[3:], [256.0]) == []


@pytest.mark.slow  # trains every MoEC row of a run
def test_the_ablations_run_around_the_default_and_are_tabled(phantom_file, tmp_path):
    """`--ablations` trains every variant at the ablation ratio, each with what it says it changes
    (experts in use, top-2) and the default's row beside them in the table."""
    out = tmp_path / "ablations"
    assert (
        main(
            [
                "bench",
                str(phantom_file),
                "--ratios",
                "16",
                "--steps",
                "20",
                "--codecs",
                "--ablations",
                "--ablation-ratio",
                "16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {c["method"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    ablations = {name: row for name, row in rows.items() if row["kind"] == "ablation"}
    assert len(ablations) == 7 and all(r["reached"] and 16 <= r["ratio"] <= 16.8 for r in ablations.values())
    assert rows["control: one MLP on the grid, no partition"]["experts_used"] == 1
    assert ablations["grid: experts 16"]["parameters"] != ablations["grid: experts 2"]["parameters"]
    table = (out / "results.md").read_text().split("Ablations at 16x")[1]
    learned = "MoEC, learned partition (latent grid, 4 experts, 1 channel)"
    default = rows[learned]
    first = table.split("|---|\n")[1].split("\n")[0]
    assert first.startswith(f"| {learned} |") and first.endswith("|  |")
    assert "| control: one MLP on the grid, no partition |" in table
    for name, row in ablations.items():
        line = next(line for line in table.split("\n") if line.startswith(f"| {name} |"))
        assert line.endswith(f"| {row['psnr'] - default['psnr']:+.2f} |")  # one seed: no seed count


@pytest.mark.slow  # trains every MoEC row of a run
def test_seeds_repeat_the_ablations_and_their_table_compares_paired_seeds(phantom_file, tmp_path, capsys):
    """With `--seeds 2` every ablation gets a cell per seed, run seed by seed; its row shows the mean
    and, against the default's mean, the difference and on how many seeds (paired) it is ahead."""
    from codec.bench.methods import ABLATIONS, CLAIM

    out = tmp_path / "ablation-seeds"
    assert (
        main(
            [
                "bench",
                str(phantom_file),
                "--ratios",
                "16",
                "--steps",
                "20",
                "--codecs",
                "--ablations",
                "--ablation-ratio",
                "16",
                "--seeds",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cells = [c for c in json.loads((out / "results.json").read_text())["cells"] if c["kind"] == "ablation"]
    assert sorted((c["method"], c["seed"]) for c in cells) == sorted((m.name, s) for m in ABLATIONS for s in (0, 1))
    started = [line.split("] ")[1] for line in capsys.readouterr().err.splitlines() if line.endswith(" ...")]
    assert started[-2 * len(ABLATIONS) :] == [f"{m.name} @ 16x, seed {s} ..." for s in (0, 1) for m in ABLATIONS]
    by = {(c["method"], c["seed"]): c["psnr"] for c in json.loads((out / "results.json").read_text())["cells"]}
    default = [by[(CLAIM[0].name, s)] for s in (0, 1)]
    table = (out / "results.md").read_text().split("Ablations at 16x")[1]
    listed = [line.split(" | ")[0][2:] for line in table.split("\n") if line.startswith("| grid: ")]
    assert listed == [m.name for m in ABLATIONS]  # in the order they run, not alphabetical
    for method in ABLATIONS:
        ours = [by[(method.name, s)] for s in (0, 1)]
        line = next(line for line in table.split("\n") if line.startswith(f"| {method.name} |"))
        difference = sum(ours) / 2 - sum(default) / 2
        ahead = sum(a > b for a, b in zip(ours, default))
        assert f"| {sum(ours) / 2:.2f} (2) |" in line
        assert line.endswith(f"| {difference:+.2f} (ahead on {ahead} of 2 seeds) |")


@pytest.mark.slow  # trains every MoEC row of a run
def test_seeds_repeat_the_verdicts_rows_and_the_tables_show_their_means(phantom_file, tmp_path, capsys):
    """`--seeds 2`: the claim's rows and the control get a cell per seed, the context rows one; the
    tables show the means, the seeds table every seed, and the verdict whether the order holds on
    every seed. A rerun with another `--seed` is new cells, never seed 0's reused."""
    from codec.bench.methods import CLAIM_ORDER, CONTROL, DEFAULT, SEEDED

    out = tmp_path / "seeds"
    args = ["bench", str(phantom_file), "--ratios", "12", "--steps", "20", "--codecs", "--out", str(out)]
    assert main([*args, "--seeds", "2"]) == 0
    cells = json.loads((out / "results.json").read_text())["cells"]
    seeds: dict[str, list[int]] = {}
    for c in cells:
        seeds.setdefault(c["method"], []).append(c["seed"])
    assert set(SEEDED) == {CONTROL, DEFAULT, *CLAIM_ORDER} and len(SEEDED) == 5
    assert all(sorted(seeds[m]) == [0, 1] for m in SEEDED)
    assert all(s == [0] for m, s in seeds.items() if m not in SEEDED) and len(seeds) == 9
    by = {(c["method"], c["seed"]): c for c in cells}
    assert by[(CLAIM_ORDER[0], 0)]["psnr"] != by[(CLAIM_ORDER[0], 1)]["psnr"]  # the seed reached training
    table = (out / "results.md").read_text()
    learned = [by[(CLAIM_ORDER[0], s)]["psnr"] for s in (0, 1)]
    assert f"| {CLAIM_ORDER[0]} | {sum(learned) / 2:.2f} (2) |" in table
    assert f"| {CLAIM_ORDER[0]} | 12x | 0, 1 | {learned[0]:.2f} / {learned[1]:.2f} |" in table.split("Seeds (")[1]
    trio = [[by[(m, s)]["psnr"] for s in (0, 1)] for m in CLAIM_ORDER]
    every = min(trio[0]) > max(trio[1]) and min(trio[0]) > max(trio[2])
    control = [by[(CONTROL, s)]["psnr"] for s in (0, 1)]
    ahead = sum(a > b for a, b in zip(trio[0], control))
    row = next(line for line in table.split("\n") if line.startswith("| 12x |") and "learned " in line)
    assert f"| {'yes' if every else 'no'} |" in row and f"(ahead on {ahead} of 2 seeds) |" in row
    means = {r["method"]: r for r in json.loads((out / "results.json").read_text())["means"]}
    assert means[CONTROL]["psnrs"] == control and means[CONTROL]["seeds"] == [0, 1]

    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert main([*args, "--seed", "1"]) == 0  # seed 1's cells exist for the seeded rows only
    err = capsys.readouterr().err
    assert "single SIREN @ 12x, seed 1: done before, skipped" in err
    assert "MoEC, SIREN encoder, 8 experts @ 12x, seed 1 ..." in err
    assert all(stamp[name] == p.stat().st_mtime_ns for name in stamp for p in [out / "cells" / name])
    assert (out / "cells" / "moec-siren-encoder-8-experts@12@seed1.json").exists()


def _check_verdicts(table: str, cells: list[dict], ratios: tuple[float, ...]) -> None:
    """The claim and classical-codec verdicts say what the cells' PSNRs say, ratio by ratio."""
    from codec.bench.methods import CLAIM_ORDER, CONTROL, DEFAULT

    by = {(c["method"], c["target"]): c for c in cells}
    claim_rows = [line for line in table.split("\n") if line.startswith("| ") and "learned " in line]
    checked = 0
    for ratio in ratios:
        trio = [by[(m, ratio)] for m in CLAIM_ORDER]
        if not all(c["reached"] for c in trio):
            assert not any(row.startswith(f"| {ratio:g}x |") for row in claim_rows)
            continue
        holds = trio[0]["psnr"] > trio[1]["psnr"] > trio[2]["psnr"]
        first = trio[0]["psnr"] > max(trio[1]["psnr"], trio[2]["psnr"])
        row = next(row for row in claim_rows if row.startswith(f"| {ratio:g}x |"))
        control = by[(CONTROL, ratio)]
        partition = f"{trio[0]['psnr'] - control['psnr']:+.2f}" if control["reached"] else ""
        assert row.endswith(f"| {'yes' if first else 'no'} | one seed | {'yes' if holds else 'no'} | {partition} |")
        best_first = max(trio, key=lambda c: c["psnr"])
        assert row.split("|")[2].strip().split(" > ")[0].endswith(f"{best_first['psnr']:.2f}")
        checked += 1
    assert checked, "no ratio had all three of the claim's methods"
    j2k = by.get(("JPEG 2000", 8.0))
    if j2k and j2k["reached"]:
        default = by[(DEFAULT, 8.0)]
        gap = default["psnr"] - j2k["psnr"]
        assert f"| 8x | {default['psnr']:.2f} | JPEG 2000 {j2k['psnr']:.2f} | {gap:+.2f} |" in table


@pytest.mark.slow  # trains every MoEC row of a run
def test_several_volumes_get_a_folder_and_a_section_each(tmp_path, capsys):
    """`moec bench A B`: each volume benchmarked in its own folder (cells, results.json, rd.png) and
    one results.md with a section per volume, its voxel size and its own tables; `--rows verdict`
    runs only the rows the verdicts read; a rerun skips every cell of both."""
    from codec.bench.methods import SEEDED

    paths = []
    for name, shape, spacing in (("body", (40, 32, 16), (1.0, 1.0, 1.0)), ("thick", (48, 48, 12), (0.8, 0.8, 5.0))):
        volume, _ = make_phantom(shape)
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(volume.data.astype(np.int16), np.diag([*spacing, 1.0])), paths[-1])
    out = tmp_path / "volumes"
    args = [
        "bench",
        *map(str, paths),
        "--ratios",
        "16",
        "--steps",
        "20",
        "--codecs",
        "j2k",
        "--rows",
        "verdict",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr()
    report = (out / "results.md").read_text()
    assert printed.out.startswith(report)
    sections = report.split("\n## ")[1:]
    assert [s.split("\n")[0] for s in sections] == ["body", "thick"]
    for section, name, voxel in zip(sections, ("body", "thick"), ("1 x 1 x 1", "0.8 x 0.8 x 5")):
        cells = json.loads((out / name / "results.json").read_text())["cells"]
        moec = {c["method"] for c in cells if c["kind"] == "moec"}
        assert moec == set(SEEDED) and all(c["reached"] for c in cells if c["kind"] == "moec")
        assert f"{name}.nii.gz: voxels of {voxel} mm." in section
        table = (out / name / "results.md").read_text().rstrip()
        assert table in section
        learned = next(c for c in cells if c["method"] == SEEDED[0])
        assert f"| {SEEDED[0]} | {learned['psnr']:.2f} |" in section
    shapes = [json.loads((out / n / "results.json").read_text())["volume"]["shape"] for n in ("body", "thick")]
    assert shapes == [[40, 32, 16], [48, 48, 12]]

    assert main(args) == 0
    err = capsys.readouterr().err
    assert "volume 2/2: thick" in err and err.count("done before, skipped") == 2 * (
        len(SEEDED) + (1 if classical.availability()["JPEG 2000"] is None else 0)
    )


def test_several_volumes_are_checked_before_any_work(phantom_file, tmp_path, capsys):
    out = tmp_path / "none"
    assert main(["bench", str(phantom_file), str(tmp_path / "missing.nii.gz"), "--out", str(out)]) != 0
    assert "missing.nii.gz: no such file or folder" in capsys.readouterr().err and not out.exists()
    assert main(["bench", str(phantom_file), str(phantom_file), "--series", "1.2.3", "--out", str(out)]) != 0
    assert "--series" in capsys.readouterr().err and not out.exists()


def test_two_volumes_of_one_name_get_numbered_folders(tmp_path):
    from codec.cli.bench import volume_names

    paths = [tmp_path / "a" / "ct.nii.gz", tmp_path / "b" / "ct.nii", tmp_path / "mr.npy", tmp_path / "dicom"]
    assert volume_names(paths) == ["ct-1", "ct-2", "mr", "dicom"]
