"""Hostile and damaged volume files: bombs, bit flips, truncation, impossible shapes and headers.

Every file here is real, written with nibabel, gzip or numpy and patched byte by byte where a writer
would refuse; load_volume must refuse each in one line (a MoecError) before holding more memory than
its limit, or load it exactly.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.errors import MoecError, ResourceLimitError, VolumeError
from codec.io.limits import MemoryLimit, compress_bytes
from codec.io.load import load_volume

from .conftest import write_nifti
from .hostile import (
    BITPIX,
    DATATYPE,
    DIM,
    MIB,
    PIXDIM,
    QFORM_CODE,
    SCL_INTER,
    SCL_SLOPE,
    SFORM_CODE,
    VOX_OFFSET,
    patched,
    write_gzip_bomb,
    write_small_gz,
    write_small_nii,
)

ROOT = Path(__file__).resolve().parents[1]
#: The side of the bomb's cube: 1 GiB of uint8 zeros.
BOMB_SIDE = 1024


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.nii.gz"
    write_gzip_bomb(path, (BOMB_SIDE,) * 3, BOMB_SIDE)
    assert path.stat().st_size < 2 * MIB
    return path


def test_a_gzip_bomb_is_refused_from_its_header_when_compressing(bomb):
    needed = compress_bytes(BOMB_SIDE**3, 1)
    if needed <= MemoryLimit.default().bytes:
        pytest.skip("this machine has the memory to compress the bomb's declared volume")
    start = time.perf_counter()
    with pytest.raises(ResourceLimitError, match=r"loading .*bomb\.nii\.gz \(1024 x 1024 x 1024 uint8\).*--max-memory"):
        load_volume(bomb, compressing=True)
    assert time.perf_counter() - start < 5


def test_a_gzip_bomb_is_refused_under_a_small_limit_when_loading(bomb):
    with pytest.raises(ResourceLimitError, match="above the limit of 256 MiB"):
        load_volume(bomb, limit=MemoryLimit(256 * MIB))


def peak_rss_of_loading(path: Path, limit_bytes: int) -> tuple[str, int]:
    """(the refusal's class name or "loaded", the child's peak resident memory in bytes) of loading
    `path` in a fresh interpreter under `limit_bytes`."""
    script = (
        "import resource, sys\n"
        "from codec.io.limits import MemoryLimit\n"
        "from codec.io.load import load_volume\n"
        "try:\n"
        f"    load_volume(sys.argv[1], limit=MemoryLimit({limit_bytes}))\n"
        "    outcome = 'loaded'\n"
        "except Exception as exc:\n"
        "    outcome = type(exc).__name__\n"
        "print(outcome, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    outcome, kib = done.stdout.split()
    return outcome, int(kib) * 1024  # Linux reports ru_maxrss in KiB


def baseline_rss() -> int:
    script = "import resource, codec.io.load; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return int(done.stdout) * 1024


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_loading_a_bomb_keeps_the_process_small(bomb, tmp_path):
    base = baseline_rss()
    outcome, peak = peak_rss_of_loading(bomb, 256 * MIB)
    assert outcome == "ResourceLimitError"
    assert peak < base + 64 * MIB
    # A small header in front of the same gigabyte: refused as damaged once it inflates past the
    # voxels it declares, not read to the end.
    long = tmp_path / "long.nii.gz"
    write_gzip_bomb(long, (8, 8, 8), BOMB_SIDE)
    start = time.perf_counter()
    outcome, peak = peak_rss_of_loading(long, 0)
    assert outcome == "VolumeError"
    assert peak < base + 64 * MIB
    assert time.perf_counter() - start < 30


def test_a_stream_longer_than_its_header_declares_is_refused_as_damaged(tmp_path):
    path = tmp_path / "long.nii.gz"
    write_gzip_bomb(path, (8, 8, 8), 64)
    with pytest.raises(VolumeError, match=r"long\.nii\.gz is damaged: it inflates to more than the 864 bytes"):
        load_volume(path)


@pytest.fixture
def small_gz(tmp_path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "small.nii.gz"
    return path, write_small_gz(path)


def test_bit_flips_in_the_deflate_data_are_refused_as_damage(small_gz, tmp_path):
    path, raw = small_gz
    good = path.read_bytes()
    # The gzip member's own header is 10 bytes (no name: nibabel writes none) and its trailer 8.
    assert good[3] == 0, "expected a gzip header without optional fields"
    positions = np.linspace(10, len(good) - 9, 60).astype(int)
    refused = 0
    for n, position in enumerate(positions):
        flipped = bytearray(good)
        flipped[position] ^= 1 << (n % 8)
        damaged = tmp_path / f"flip{n}.nii.gz"
        damaged.write_bytes(bytes(flipped))
        try:
            volume = load_volume(damaged)
        except VolumeError as exc:
            assert "damaged" in str(exc) and "\n" not in str(exc), str(exc)
            refused += 1
        else:
            np.testing.assert_array_equal(volume.data, raw.astype(np.float32))
    print(f"{refused} of {len(positions)} flips refused")
    assert refused >= len(positions) - 2


def test_flips_in_the_gzip_trailer_are_refused(small_gz, tmp_path):
    path, _ = small_gz
    good = path.read_bytes()
    for name, position in (("crc", len(good) - 8), ("length", len(good) - 2)):
        flipped = bytearray(good)
        flipped[position] ^= 0x10
        damaged = tmp_path / f"{name}.nii.gz"
        damaged.write_bytes(bytes(flipped))
        with pytest.raises(VolumeError, match=r"is damaged: .*(CRC|length)"):
            load_volume(damaged)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_truncated_nii_gz_is_refused_as_damaged(small_gz, tmp_path, keep):
    path, _ = small_gz
    good = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good[: int(len(good) * keep)])
    with pytest.raises(VolumeError, match=r"cut\.nii\.gz is damaged: .*truncated"):
        load_volume(cut)


def test_a_plain_nifti_named_gz_is_refused_in_words(tmp_path):
    path = tmp_path / "plain.nii"
    write_nifti(path, np.ones((4, 4, 4), dtype=np.int16), np.eye(4))
    named = tmp_path / "plain.nii.gz"
    named.write_bytes(path.read_bytes())
    with pytest.raises(VolumeError, match="not gzip-compressed"):
        load_volume(named)


@pytest.mark.parametrize(
    "shape,message",
    [
        ((1, 1, 1), r"is a single voxel \(shape \(1, 1, 1\)\)"),
        ((1, 40, 40), r"has one voxel along axis 0 .*at least 2 voxels per axis"),
        ((40, 1, 1), r"has one voxel along axes 1 and 2 .*so it is 1D"),
        ((6, 1, 5, 3), r"has one voxel along axis 1"),
    ],
)
def test_volumes_flat_along_an_axis_are_refused_in_words(tmp_path, shape, message):
    path = tmp_path / "flat.nii.gz"
    write_nifti(path, np.ones(shape, dtype=np.int16), np.eye(4))
    with pytest.raises(VolumeError, match=message):
        load_volume(path)


@pytest.mark.parametrize("shape", [(2, 40, 40), (2, 2, 2), (6, 5, 4, 1), (6, 5, 4, 2)])
def test_thin_but_3d_volumes_and_trailing_singletons_load(tmp_path, shape):
    raw = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    path = tmp_path / "thin.nii.gz"
    write_nifti(path, raw, np.eye(4))
    volume = load_volume(path)
    expected = raw[..., 0] if shape[-1] == 1 and len(shape) == 4 else raw
    np.testing.assert_array_equal(volume.data, expected.astype(np.float32))


@pytest.fixture
def small_nii(tmp_path) -> Path:
    return write_small_nii(tmp_path / "small.nii")


@pytest.mark.parametrize(
    "dim,message",
    [
        ([3, -8, 7, 6, 1, 1, 1, 1], r"negative size \(-8\) along axis 0"),
        ([3, 8, 7, -32768, 1, 1, 1, 1], r"negative size \(-32768\) along axis 2"),
        ([9, 8, 7, 6, 1, 1, 1, 1], r"declares 9 dimensions"),
        ([-1, 8, 7, 6, 1, 1, 1, 1], r"declares -1 dimensions"),
    ],
)
def test_impossible_dims_are_refused_from_the_header(small_nii, tmp_path, dim, message):
    bad = patched(small_nii, tmp_path / "dims.nii", dim=(DIM, "8h", dim))
    with pytest.raises(VolumeError, match=message):
        load_volume(bad)


def test_absurd_dims_are_refused_from_the_header(small_nii, tmp_path):
    absurd = [4, 32767, 32767, 32767, 32767, 1, 1, 1]
    bad = patched(small_nii, tmp_path / "huge.nii", dim=(DIM, "8h", absurd))
    for limit in (MemoryLimit(MIB), MemoryLimit(0)):
        with pytest.raises(VolumeError, match=r"huge\.nii is truncated: its header declares 2305561547121623042 bytes"):
            load_volume(bad, limit=limit)
    gz = tmp_path / "huge.nii.gz"
    gz.write_bytes(gzip.compress(bad.read_bytes()))
    with pytest.raises(ResourceLimitError, match=r"32767 x 32767 x 32767 x 32767 int16"):
        load_volume(gz, limit=MemoryLimit(MIB))
    with pytest.raises(MoecError, match="(more than this machine can allocate|its data end before them)"):
        load_volume(gz, limit=MemoryLimit(0))


def test_a_complete_gzip_stream_shorter_than_its_header_declares_is_refused(small_nii, tmp_path):
    bad = patched(small_nii, tmp_path / "long.nii", dim=(DIM, "8h", [3, 8, 7, 600, 1, 1, 1, 1]))
    gz = tmp_path / "long.nii.gz"
    gz.write_bytes(gzip.compress(bad.read_bytes()))
    with pytest.raises(VolumeError, match=r"long\.nii\.gz is damaged: its header declares 67200 bytes of voxels"):
        load_volume(gz)


@pytest.mark.parametrize("slope", [1e-40, 1e-45, 1e-39, -1e-40])
def test_a_tiny_or_denormal_slope_is_refused_when_loaded(small_nii, tmp_path, slope):
    bad = patched(small_nii, tmp_path / "slope.nii", slope=(SCL_SLOPE, "f", slope))
    with pytest.raises(VolumeError, match=r"slope .* is beyond what MoEC computes in \(float32"):
        load_volume(bad)


def test_a_slope_that_collapses_the_values_in_stored_units_is_refused(small_nii, tmp_path):
    # A normal slope too small to move the intercept: every voxel becomes 1000 in float32.
    bad = patched(small_nii, tmp_path / "inter.nii", slope=(SCL_SLOPE, "f", 2e-38), inter=(SCL_INTER, "f", 1e3))
    with pytest.raises(VolumeError, match=r"scaling \(slope 2e-38, intercept 1000\) makes all its distinct"):
        load_volume(bad)
    # Finite, distinct real values whose ends in stored units ((value - inter) / slope, what a .moec
    # header must hold) overflow float32: 1e8 and 1e8 + 8 are one float32 step apart.
    raw = np.zeros((4, 4, 4), dtype=np.float32)
    raw[0] = 3.4e38
    source = tmp_path / "float.nii"
    write_nifti(source, raw, np.eye(4))
    bad = patched(source, tmp_path / "ends.nii", slope=(SCL_SLOPE, "f", 2e-38), inter=(SCL_INTER, "f", 1e8))
    with pytest.raises(VolumeError, match=r"scaling \(slope 2e-38, intercept 1e\+08\) takes its values beyond"):
        load_volume(bad)


def test_an_unknown_datatype_and_a_nan_offset_are_refused(small_nii, tmp_path):
    bad = patched(small_nii, tmp_path / "type.nii", datatype=(DATATYPE, "h", 999))
    with pytest.raises(VolumeError, match="unknown datatype code 999"):
        load_volume(bad)
    bad = patched(small_nii, tmp_path / "offset.nii", offset=(VOX_OFFSET, "f", float("nan")))
    with pytest.raises(VolumeError, match=r"places the voxels at byte nan"):
        load_volume(bad)


def test_an_npy_bomb_header_is_refused_before_its_data_are_read(tmp_path):
    path = tmp_path / "bomb.npy"
    header = {"descr": "<f4", "fortran_order": False, "shape": (4096, 4096, 4096)}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(bytes(4096))
    with pytest.raises(ResourceLimitError, match=r"loading .*bomb\.npy \(4096 x 4096 x 4096 float32\)"):
        load_volume(path, limit=MemoryLimit(MIB))
    with pytest.raises(VolumeError, match=r"bomb\.npy is truncated"):
        load_volume(path, limit=MemoryLimit(0))


# --- fuzzing the NIfTI-1 header --------------------------------------------------------------------------

FUZZ = settings(
    deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
FUZZ_LIMIT = MemoryLimit(64 * MIB)

floats32 = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, -1.0, 1e-40, 1e-38, 3e38, 352.0, 353.0, 1e9]),
)
#: name -> (offset, struct format, strategy of values)
HEADER_FIELDS = {
    "dim": (DIM, "8h", st.lists(st.one_of(st.integers(-3, 9), st.integers(-32768, 32767)), min_size=8, max_size=8)),
    "datatype": (
        DATATYPE,
        "h",
        st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 999, -1]),
    ),
    "bitpix": (BITPIX, "h", st.integers(-32768, 32767)),
    "pixdim": (PIXDIM, "8f", st.lists(floats32, min_size=8, max_size=8)),
    "vox_offset": (VOX_OFFSET, "f", floats32),
    "scl_slope": (SCL_SLOPE, "f", floats32),
    "scl_inter": (SCL_INTER, "f", floats32),
    "qform_code": (QFORM_CODE, "h", st.integers(-2, 5)),
    "sform_code": (SFORM_CODE, "h", st.integers(-2, 5)),
}


@st.composite
def header_patches(draw) -> dict[str, tuple[int, str, object]]:
    names = draw(st.lists(st.sampled_from(sorted(HEADER_FIELDS)), min_size=1, max_size=4, unique=True))
    return {name: (HEADER_FIELDS[name][0], HEADER_FIELDS[name][1], draw(HEADER_FIELDS[name][2])) for name in names}


@FUZZ
@given(patches=header_patches(), compress=st.booleans())
def test_fuzzed_nifti_headers_load_or_are_refused_in_words(tmp_path_factory, patches, compress):
    folder = tmp_path_factory.mktemp("fuzz")
    source = folder / "source.nii"
    write_nifti(source, np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4) - 30, np.diag([0.9, 1.1, 2.0, 1.0]))
    path = patched(source, folder / "fuzzed.nii", **patches)
    if compress:
        gz = folder / "fuzzed.nii.gz"
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    start = time.perf_counter()
    try:
        volume = load_volume(path, limit=FUZZ_LIMIT)
    except MoecError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
    else:
        assert volume.data.dtype == np.float32 and volume.data.ndim in (3, 4)
        assert np.isfinite(volume.data).all() and np.isfinite(volume.affine).all()
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti2_and_big_endian_files_still_load_exactly(tmp_path, suffix):
    raw = np.arange(7 * 6 * 5, dtype=np.int16).reshape(7, 6, 5) - 100
    two = tmp_path / f"two{suffix}"
    nib.save(nib.Nifti2Image(raw, np.eye(4)), two)
    big = tmp_path / f"big{suffix}"
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    image = nib.Nifti1Image(raw, np.eye(4), header)
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, big)
    assert load_volume(two).data.tolist() == raw.astype(np.float32).tolist()
    np.testing.assert_array_equal(load_volume(big).data, raw.astype(np.float32) * 0.5 + 10)
