"""The manifest: valid, discovered by napari's plugin manager, and shipped inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_npe2_discovers_the_plugin():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("moec-napari")
    contributions = manifest.contributions
    assert {r.command for r in contributions.readers} == {"moec-napari.get_reader", "moec-napari.get_dicom_reader"}
    assert "*.moec" in contributions.readers[0].filename_patterns
    dicom = next(r for r in contributions.readers if r.command == "moec-napari.get_dicom_reader")
    assert dicom.accepts_directories and not dicom.filename_patterns  # folders only: never offered for a file
    assert {w.command for w in contributions.writers} >= {"moec-napari.write_image", "moec-napari.write_moec"}
    assert contributions.sample_data[0].key == "phantom"
    assert contributions.widgets[0].command == "moec-napari.widget"


def test_the_package_manifest_is_a_relative_symlink_to_the_root_one():
    link = ROOT / "moec_napari" / "napari.yaml"
    assert link.is_symlink() and os.readlink(link) == "../napari.yaml"
    assert link.read_text() == (ROOT / "napari.yaml").read_text()


def test_npe2_validates_the_installed_plugin():
    npe2 = Path(sys.executable).with_name("npe2")
    run = subprocess.run([str(npe2), "validate", "moec-napari"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "valid" in run.stdout


def test_the_wheel_ships_the_manifest_and_its_entry_point(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("moec_napari-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "moec_napari/napari.yaml" in names
        shipped = archive.read("moec_napari/napari.yaml").decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert shipped == (ROOT / "napari.yaml").read_text()
    assert "moec-napari = moec_napari:napari.yaml" in entry_points
    assert "moec = codec.cli:main" in entry_points
    extracted = tmp_path / "napari.yaml"
    extracted.write_text(shipped)
    npe2 = Path(sys.executable).with_name("npe2")
    run = subprocess.run([str(npe2), "validate", str(extracted)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
