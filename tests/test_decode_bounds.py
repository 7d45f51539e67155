"""Decoding is bounded before it starts: a file whose decode would need more memory or time than the
limits allow is refused in one line, from its header, before anything of the grid's size is
allocated; what is decoded holds the stored dtype and only the outputs asked for, and is written
slab by slab to exactly the file `save_volume` writes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from codec.cli import main
from codec.decode import cost
from codec.decode.reconstruct import decode_stored, reconstruct
from codec.errors import MoecFormatError, ResourceLimitError
from codec.format import moecfile
from codec.format.container import pack_container, unpack_container
from codec.format.header import read_meta
from codec.io import streaming
from codec.io.limits import MemoryLimit
from codec.io.load import save_volume
from codec.io.nifti import save_labels, save_nifti
from codec.io.phantom import make_phantom
from codec.io.volume import from_array

from .hostile import forged_moec, wide_network

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "40", "--batch", "1024", "--quiet"]
#: The shape the bomb declares: 2^31 voxels, the most a header may.
BOMB_SHAPE = (2048, 1024, 1024)


def _compress(source: Path, out: Path, *extra: str, ratio: int = 10) -> Path:
    assert main(["compress", str(source), "-o", str(out), "--ratio", str(ratio), *FAST, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A phantom CT (int16 with a slope and intercept) and its .moec; a 4D float32 volume and its .moec."""
    folder = tmp_path_factory.mktemp("bounds")
    volume, _ = make_phantom((32, 28, 16))
    source = folder / "ct.nii.gz"
    save_volume(volume, source)
    moec = _compress(source, folder / "ct.moec", "--experts", "4")
    rng = np.random.default_rng(3)
    four = from_array(rng.normal(size=(16, 14, 8, 3)).astype(np.float32) * 50, dtype=np.float32)
    source4 = folder / "four.nii"
    save_volume(four, source4)
    return {"ct": moec, "four": _compress(source4, folder / "four.moec", ratio=4)}


@pytest.fixture(scope="module")
def bomb(files, tmp_path_factory):
    return forged_moec(files["ct"], tmp_path_factory.mktemp("bomb") / "bomb.moec", shape=BOMB_SHAPE)


@pytest.fixture(scope="module")
def time_bomb(files, tmp_path_factory):
    """A decodable file whose network takes hours over its declared 512^3 grid."""
    return forged_moec(
        files["ct"], tmp_path_factory.mktemp("slow") / "slow.moec", shape=(512, 512, 512), model=wide_network()
    )


def _run_measured(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m codec.cli ARGS` and its peak resident set size in bytes, measured in a fresh parent
    process so that no other child of this one counts."""
    probe = (
        "import resource, subprocess, sys, json\n"
        "run = subprocess.run([sys.executable, '-m', 'codec.cli', *sys.argv[1:]],"
        " capture_output=True, text=True)\n"
        "print(json.dumps([run.returncode, run.stdout, run.stderr,"
        " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    rc, out, err, peak_kib = json.loads(done.stdout)
    return subprocess.CompletedProcess(args, rc, out, err), peak_kib * 1024


# --- refusals before anything is allocated --------------------------------------------------------


def test_a_bomb_is_refused_in_one_line_before_its_grid_is_allocated(bomb, tmp_path):
    out = tmp_path / "out.nii.gz"
    run, peak = _run_measured(
        "decompress", str(bomb), "-o", str(out), "--labels", str(tmp_path / "l.nii.gz"), "--max-memory", "4G"
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "2048 x 1024 x 1024" in lines[0] and "GiB of memory" in lines[0] and "--max-memory" in lines[0]
    declared = np.prod(BOMB_SHAPE) * 3  # int16 values and uint8 labels
    assert peak < declared / 8, f"peak RSS {peak / 2**20:.0f} MiB"
    assert not out.exists() and not list(tmp_path.iterdir())


def test_the_refusal_names_the_estimate_and_the_override(bomb):
    meta = read_meta(bomb.read_bytes())
    estimate = cost.decode_cost(meta, values=meta.dtype, labels=True, confidence=True)
    assert estimate.voxels == 2**31 and estimate.memory > 7 * 2**31
    refusal = r"^decoding it .* about 1\d(\.\d+)? GiB of memory.*--max-memory 1\dG\)$"
    with pytest.raises(ResourceLimitError, match=refusal):
        cost.check(estimate, MemoryLimit(2**30), None, what="decoding it")
    cost.check(estimate, MemoryLimit(0), None)  # no limit: accepted
    with pytest.raises(dataclasses.FrozenInstanceError):
        estimate.memory = 0  # type: ignore[misc]


def test_scale_8_is_refused_under_a_small_limit_and_decoded_under_a_large_one(files, tmp_path, capsys):
    meta = read_meta(files["ct"].read_bytes())
    estimate = cost.decode_cost(meta, (256, 224, 128), values=meta.dtype, labels=False, confidence=False)
    out = tmp_path / "x8.nii.gz"
    small = str(estimate.memory // 2)
    assert main(["decompress", str(files["ct"]), "-o", str(out), "--scale", "8", "--max-memory", small]) == 1
    said = capsys.readouterr().err
    assert "256 x 224 x 128" in said and "--max-memory" in said and not out.exists()
    assert main(["decompress", str(files["ct"]), "-o", str(out), "--scale", "8", "--max-memory", "8G"]) == 0
    assert nib.load(str(out)).shape == (256, 224, 128)


def test_a_network_that_takes_hours_is_refused_by_the_time_limit(time_bomb, tmp_path, capsys):
    meta = read_meta(time_bomb.read_bytes())
    estimate = cost.decode_cost(meta, values=meta.dtype, labels=False, confidence=False)
    assert estimate.seconds > 3 * 3600 and estimate.macs / estimate.voxels > 1e6
    assert time_bomb.stat().st_size < 3 << 20
    out = tmp_path / "slow.nii.gz"
    assert main(["decompress", str(time_bomb), "-o", str(out), "--max-memory", "0"]) == 1
    said = capsys.readouterr().err.strip()
    assert len(said.splitlines()) == 1
    assert "would take about" in said and " h on this machine" in said and "--max-decode-minutes" in said
    assert main(["decompress", str(time_bomb), "-o", str(out), "--max-memory", "0", "--max-decode-minutes", "5"]) == 1
    assert "above the limit of 5 min" in capsys.readouterr().err
    cost.check(estimate, MemoryLimit(0), cost.max_seconds(0))  # 0 minutes: no limit
    assert not out.exists()


def test_the_header_is_checked_before_the_weights_are_decoded(files, tmp_path, capsys):
    """A header that declares a huge network over a payload that cannot hold it: the limit speaks
    first (the weights are never decoded); without a limit, the payload is refused as malformed."""
    container = unpack_container(files["ct"].read_bytes())
    meta = json.loads(json.dumps(container.meta))
    meta["model"].update(experts=1, top_k=1, expert_width=512, expert_layers=5, router_width=8)
    forged = tmp_path / "forged.moec"
    forged.write_bytes(pack_container(meta, container.nifti, container.payload))
    assert main(["decompress", str(forged), "-o", str(tmp_path / "f.nii"), "--max-decode-minutes", "0.001"]) == 1
    assert "--max-decode-minutes" in capsys.readouterr().err
    with pytest.raises(MoecFormatError):
        moecfile.read(forged, admit=lambda meta: None)


def test_eval_checks_the_same_estimate(files, tmp_path, capsys):
    original = files["ct"].with_name("ct.nii.gz")
    assert main(["eval", str(original), str(files["ct"]), "--max-memory", "1M"]) == 1
    said = capsys.readouterr().err
    assert "measuring ct.moec" in said and "--max-memory" in said


# --- what a decode holds ----------------------------------------------------------------------------


def test_labels_and_confidence_are_held_only_when_asked(files):
    moec = moecfile.read(files["ct"])
    plain = reconstruct(moec, labels=False, confidence=False)
    assert plain.labels is None and plain.confidence is None
    stored = decode_stored(moec)
    assert stored.labels is None and stored.confidence is None
    assert stored.values.dtype == np.int16 and stored.values.shape == moec.meta.shape
    full = reconstruct(moec)
    np.testing.assert_array_equal(plain.volume.data, full.volume.data)
    both = decode_stored(moec, labels=True, confidence=True)
    np.testing.assert_array_equal(both.labels, full.labels)
    np.testing.assert_array_equal(both.confidence, full.confidence)
    meta = moec.meta
    asked = cost.decode_cost(meta, values=meta.dtype, labels=True, confidence=True)
    bare = cost.decode_cost(meta, values=meta.dtype, labels=False, confidence=False)
    assert asked.memory - bare.memory == 5 * bare.voxels
    assert cost.decode_cost(meta).memory - asked.memory == 2 * bare.voxels  # float32 values against int16


def test_the_memory_estimate_bounds_what_decompress_holds(files, tmp_path):
    """Peak resident memory of a decompress at 4x the file's grid, less what the interpreter and its
    libraries hold before decoding, stays below the estimate."""
    meta = read_meta(files["ct"].read_bytes())
    shape = (128, 112, 64)
    estimate = cost.decode_cost(
        meta, shape, values=meta.dtype, labels=True, confidence=True, fixed=streaming.WRITE_BYTES
    )
    run, peak = _run_measured(
        "decompress",
        str(files["ct"]),
        "-o",
        str(tmp_path / "x4.nii.gz"),
        "--scale",
        "4",
        "--labels",
        str(tmp_path / "l.nii.gz"),
        "--confidence",
        str(tmp_path / "c.nii.gz"),
    )
    assert run.returncode == 0, run.stderr
    imports = (
        "import resource, torch, nibabel, codec.cli.compress, codec.decode.cost, codec.io.dicom; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    base = 1024 * int(
        subprocess.run([sys.executable, "-c", imports], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    )
    held = peak - base
    assert held < estimate.memory, f"held {held / 2**20:.0f} MiB, estimated {estimate.memory / 2**20:.0f}"


# --- the streamed output ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which,name,scale,write_voxels",
    [
        ("ct", "out.nii.gz", None, None),
        ("ct", "out.nii", ["1", "1", "2"], 2000),  # several slices a slab
        ("ct", "out.nii.gz", None, 100),  # a slice in rows
        ("ct", "out.npy", None, 1000),
        ("four", "out.nii.gz", None, 500),
    ],
)
def test_the_streamed_output_is_the_file_save_volume_writes(
    files, tmp_path, monkeypatch, which, name, scale, write_voxels
):
    if write_voxels is not None:
        monkeypatch.setattr(streaming, "WRITE_VOXELS", write_voxels)
    moec = moecfile.read(files[which])
    out, labels, confidence = tmp_path / name, tmp_path / "labels.nii.gz", tmp_path / "confidence.nii"
    extra = ["--scale", *scale] if scale else []
    args = ["decompress", str(files[which]), "-o", str(out), *extra]
    if not name.endswith(".npy"):
        args += ["--labels", str(labels), "--confidence", str(confidence)]
    assert main(args) == 0
    shape = None if scale is None else tuple(int(round(n * float(s))) for n, s in zip(moec.meta.shape, scale))
    recon = reconstruct(moec, shape=shape)
    tag = f"MoEC lossy {moec.ratio:.0f}x" + ("" if shape is None else f", resampled to {'x'.join(map(str, shape))}")
    reference = tmp_path / f"reference{name[3:]}"
    save_volume(recon.volume, reference, descrip=tag)
    if name.endswith(".npy"):
        a, b = np.load(out), np.load(reference)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        return
    pairs = [(out, reference)]
    save_labels(
        recon.volume, recon.labels, tmp_path / "ref_labels.nii.gz", f"MoEC experts (label k+1 = expert k), {tag}"
    )
    save_nifti(recon.volume, recon.confidence, tmp_path / "ref_confidence.nii", f"MoEC gate confidence, {tag}")
    pairs += [(labels, tmp_path / "ref_labels.nii.gz"), (confidence, tmp_path / "ref_confidence.nii")]
    for ours, theirs in pairs:
        a, b = nib.load(str(ours)), nib.load(str(theirs))
        assert a.header.binaryblock == b.header.binaryblock
        assert a.get_data_dtype() == b.get_data_dtype() and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled()))
        np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())


# --- what moec info says --------------------------------------------------------------------------------


def test_info_prints_the_estimate_and_json_holds_it(files, bomb, capsys):
    assert main(["info", str(files["ct"])]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("decode ")]
    assert len(lines) == 1
    assert "of memory and" in lines[0] and "on this machine (" in lines[0] and "core" in lines[0]
    assert "refused" not in lines[0]
    assert main(["info", "--json", str(files["ct"])]) == 0
    decode = json.loads(capsys.readouterr().out)["decode"]
    meta = read_meta(files["ct"].read_bytes())
    expected = cost.decode_cost(meta, values=meta.dtype, labels=False, confidence=False)
    assert decode["memory_bytes"] == expected.memory and decode["seconds"] == pytest.approx(expected.seconds)
    assert decode["within_limits"] is True and decode["shape"] == list(meta.shape)
    assert main(["info", str(bomb), "--max-memory", "1G"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("decode "))
    assert "GiB of memory" in line and "refused as it stands" in line and "--max-memory" in line


# --- the napari reader's lazy path -------------------------------------------------------------------


def test_the_lazy_path_refuses_above_the_limits_before_decoding(bomb, time_bomb):
    from moec_napari.lazy import lazy_decode

    moec = moecfile.read(bomb)
    # Its outputs are a bounded cache, so a huge grid is viewable within memory...
    volume, _, _, cache = lazy_decode(moec, memory=MemoryLimit(0))
    assert volume.shape == BOMB_SHAPE and not cache.decoded
    # ...unless the limit is below even that, or the whole grid would take too long.
    with pytest.raises(ResourceLimitError, match="of memory.*moec decompress --max-memory"):
        lazy_decode(moec, memory=MemoryLimit(64 << 20))
    with pytest.raises(ResourceLimitError, match="would take about.*moec decompress --max-decode-minutes"):
        lazy_decode(moec, memory=MemoryLimit(0), max_seconds=60.0)
    slow = moecfile.read(time_bomb)
    with pytest.raises(ResourceLimitError, match="would take about .* h on this machine"):
        lazy_decode(slow, memory=MemoryLimit(0))


def test_the_napari_reader_refuses_such_a_file_in_words(time_bomb):
    """The error reaches napari, which shows it as a notification, as it does a malformed file's."""
    reader = pytest.importorskip("moec_napari.reader")
    with pytest.raises(ResourceLimitError, match="viewing this file .*moec decompress --max-"):
        reader.get_reader(str(time_bomb))(str(time_bomb))
