"""The classical baselines: real encodes with imagecodecs and ffmpeg on small volumes, one class per
codec behind the `ClassicalCodec` seam.

Codecs whose tool is missing here are skipped with the reason `availability()` gives.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from codec.bench import classical
from codec.eval.metrics import psnr
from codec.io.phantom import make_phantom
from codec.io.volume import from_array

SMALL = (48, 40, 16)  # frames narrower than x265's 64-pixel CTU, so the padding is exercised
TARGET = 20.0


@pytest.fixture(scope="module")
def ct():
    """A 12-bit range CT phantom (int16, intercept -1024, Hounsfield units)."""
    return make_phantom(SMALL)[0]


@pytest.fixture(scope="module")
def gray8(ct):
    """The phantom rescaled to 0..255 and stored as uint8."""
    lo, hi = ct.value_range
    return from_array(np.rint((ct.data - lo) * (255.0 / (hi - lo))), dtype=np.uint8)


def usable(codec: str) -> None:
    reason = classical.availability()[codec]
    if reason is not None:
        pytest.skip(f"{codec}: {reason}")


def mean_psnr(volume) -> float:
    """PSNR of the laziest reconstruction: every voxel set to the mean."""
    return psnr(volume.data, np.full_like(volume.data, volume.data.mean()))


def on_target(result: classical.ClassicalResult, target: float) -> bool:
    """Just inside the ratio: within 10% above it, or 25% for an integer knob (libaom's CRF), whose
    neighbouring settings are further apart; that the kept integer is the finest inside the ratio
    is test_av1_keeps_the_finest_crf_inside_the_ratio's."""
    slack = 1.25 if classical.codec_named(result.codec).integral else 1.1
    return result.ratio is not None and target <= result.ratio <= slack * target


def depth_note(codec: str) -> tuple[str, ...]:
    """How a result's note starts: the gray depth, or SPERR's floats."""
    return ("float64 values",) if codec == classical.SPERR else ("8-bit", "10-bit", "12-bit")


def test_availability_names_every_codec():
    table = classical.availability()
    assert tuple(table) == classical.CODECS == tuple(c.name for c in classical.CLASSICAL)
    for reason in table.values():
        assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)


@pytest.mark.parametrize("codec", classical.CODECS)
@pytest.mark.parametrize("which", ["ct", "gray8"])
def test_reaches_a_modest_ratio(codec, which, request):
    usable(codec)
    volume = request.getfixturevalue(which)
    result = classical.codec_named(codec).compress(volume, TARGET)
    assert result.reached, result.note
    assert result.codec == codec and result.target == TARGET
    assert on_target(result, TARGET), result
    assert result.ratio == pytest.approx(volume.raw_bytes / result.nbytes)
    # Reconstructions measured in real units: far better than the mean, and sensible outright.
    assert math.isfinite(result.psnr)
    assert result.psnr > mean_psnr(volume) + 10
    assert result.psnr > 20
    assert 0.5 < result.ssim <= 1
    assert result.setting
    assert result.note.startswith(depth_note(codec)), result.note
    assert result.encode_seconds > 0 and result.decode_seconds > 0


def test_the_command_line_names_every_class():
    from codec.cli.bench import CODEC_KEYS

    assert CODEC_KEYS == {c.key: c.name for c in classical.CLASSICAL}
    assert {type(c) for c in classical.CLASSICAL} == {
        classical.Jpeg2000Codec,
        classical.HevcCodec,
        classical.H264Codec,
        classical.Av1Codec,
        classical.SperrCodec,
    }


@pytest.mark.parametrize("codec", classical.CODECS)
def test_one_encode_and_decode_at_a_setting(codec, gray8):
    """The seam below the search: bytes and seconds out of an encode, codes and seconds out of a decode."""
    usable(codec)
    coder = classical.codec_named(codec)
    codes = gray8.data.astype(np.uint8)
    # Most of the way to the finest end: fine for every knob, yet smaller than the raw codes for all
    # (SPERR's finest, 32 bits per voxel, is not).
    fine = coder.coarsest + 0.85 * (coder.finest - coder.coarsest)
    fine, coarse = (coder.encode(codes, 8, setting) for setting in (fine, coder.coarsest))
    (payload, seconds), (small, _) = fine, coarse
    assert isinstance(payload, bytes) and seconds >= 0 and len(small) < len(payload) < codes.nbytes
    decoded, seconds = coder.decode(payload, 8, codes.shape)
    assert decoded.shape == codes.shape and seconds >= 0
    assert np.abs(np.rint(decoded) - codes).mean() < 2  # SPERR decodes floats
    assert coder.describe(coder.finest)


def test_gray_depth_follows_the_range(ct, gray8):
    usable(classical.JPEG2000)
    assert classical.compress(ct, classical.JPEG2000, TARGET).note.startswith("12-bit gray")
    assert classical.compress(gray8, classical.JPEG2000, TARGET).note.startswith("8-bit gray")


@pytest.mark.parametrize("codec", classical.CODECS)
def test_impossible_ratio_is_reported_not_raised(codec, ct):
    usable(codec)
    result = classical.compress(ct, codec, 1e6)
    assert not result.reached
    assert result.ratio is None and result.nbytes is None and result.psnr is None and result.ssim is None
    assert result.setting  # the coarsest setting that was tried
    best = re.search(r"\(([\d,]+)x\)", result.note)
    assert "cannot reach" in result.note and best is not None, result.note
    assert 1 < float(best.group(1).replace(",", "")) < 1e6


@pytest.mark.parametrize("codec", classical.CODECS)
def test_4d_and_odd_sizes(codec):
    """Time frames are more slices; odd frame sizes are padded for the video codecs and cropped back."""
    usable(codec)
    rng = np.random.default_rng(1)
    x, y, z, t = np.meshgrid(*(np.linspace(0, 1, n) for n in (33, 35, 5, 3)), indexing="ij")
    values = 400 * np.sin(3 * x + 2 * y + z + t) + 500 + rng.normal(0, 5, x.shape)
    volume = from_array(np.clip(np.rint(values), 0, 1000), dtype=np.uint16)
    result = classical.compress(volume, codec, 10.0)
    assert result.reached, result.note
    assert on_target(result, 10.0), result
    assert result.note.startswith("float64" if codec == classical.SPERR else "10-bit")
    assert result.psnr > mean_psnr(volume) + 10


def test_wide_ranges_are_rescaled_to_12_bits():
    stored = np.array([[[0, 20000], [5, 7]], [[1, 2], [3, 4]]], dtype=np.int32)
    gray = classical._gray_map(stored, 12, "test")
    assert gray.bits == 12 and "rescaled to 12 bits" in gray.note
    back = gray.decode(gray.encode(stored))
    assert np.abs(back - stored).max() <= gray.step / 2 + 1e-9
    # An exact fit of 12 bits into an encoder that stops at 10 is rescaled, and says why.
    gray = classical._gray_map(np.array([0, 4000], dtype=np.int16), 10, "libx264")
    assert gray.bits == 10 and "libx264" in gray.note
    # Ranges that fit are coded exactly, offset by the minimum.
    stored = np.array([-1024, -24, 2000], dtype=np.int16)
    gray = classical._gray_map(stored, 12, "test")
    assert (gray.bits, gray.step) == (12, 1.0)
    assert np.array_equal(gray.decode(gray.encode(stored)), stored)


def test_bad_arguments_raise(ct):
    with pytest.raises(ValueError, match="unknown codec"):
        classical.compress(ct, "JPEG XL", TARGET)
    with pytest.raises(ValueError, match="unknown codec"):
        classical.codec_named("JPEG XL")
    for ratio in (0, -5.0, math.nan, math.inf, "many"):
        with pytest.raises(ValueError, match="ratio"):
            classical.compress(ct, classical.JPEG2000, ratio)


@pytest.fixture
def fresh_tool_cache():
    """Tool look-ups are cached; clear them around a test that fakes a missing tool."""
    classical._video_tool.cache_clear()
    classical._imagecodecs_reason.cache_clear()
    yield
    classical._video_tool.cache_clear()
    classical._imagecodecs_reason.cache_clear()


def test_missing_tools_are_reasons_not_errors(ct, monkeypatch, fresh_tool_cache):
    monkeypatch.setattr(classical.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # makes `import imagecodecs` fail
    table = classical.availability()
    assert table[classical.HEVC] == table[classical.H264] == table[classical.AV1] == "ffmpeg not found"
    assert "imagecodecs" in table[classical.JPEG2000] and "imagecodecs" in table[classical.SPERR]
    for coder in classical.CLASSICAL:
        assert coder.unavailable() == table[coder.name]
        result = coder.compress(ct, TARGET)
        assert not result.reached and result.note == table[coder.name] and result.setting == ""


def test_imports_no_optional_dependency():
    code = "import sys, codec.bench.classical; print('imagecodecs' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------
# AV1 (libaom) and SPERR.


def fake_ffmpeg(tmp_path, unknown: dict[str, str]) -> str:
    """An ffmpeg that knows no `unknown` encoder= / decoder= (as a build without them would answer
    `-h`), and is the real one for everything else."""
    real = shutil.which("ffmpeg")
    if real is None:
        pytest.skip("ffmpeg not found")
    cases = "".join(
        f"  *{kind}={name}*) echo \"Codec '{name}' is not recognized by FFmpeg.\" ;;\n"
        for name, kind in unknown.items()
    )
    script = tmp_path / "ffmpeg"
    script.write_text(f'#!/bin/sh\ncase "$*" in\n{cases}  *) exec {real} "$@" ;;\nesac\n')
    script.chmod(0o755)
    return str(script)


def test_av1_without_libaom_or_ffmpeg_is_a_reason(ct, tmp_path, monkeypatch, fresh_tool_cache):
    """The ffmpeg looked up is `classical.FFMPEG`: missing, or built without libaom, AV1 says why."""
    monkeypatch.setattr(classical, "FFMPEG", str(tmp_path / "no-ffmpeg"))
    assert classical.availability()[classical.AV1] == f"{tmp_path / 'no-ffmpeg'} not found"
    result = classical.compress(ct, classical.AV1, TARGET)
    assert not result.reached and "not found" in result.note

    monkeypatch.setattr(classical, "FFMPEG", fake_ffmpeg(tmp_path, {"libaom-av1": "encoder"}))
    table = classical.availability()
    assert table[classical.AV1] == "ffmpeg has no libaom-av1 encoder"
    assert table[classical.HEVC] == classical._video_tool("ffmpeg", "libx265", ("hevc",))[0]  # as they are
    assert not classical.compress(ct, classical.AV1, TARGET).reached


def test_av1_decodes_with_libaom_where_ffmpeg_has_no_dav1d(ct, tmp_path, monkeypatch, fresh_tool_cache):
    usable(classical.AV1)
    monkeypatch.setattr(classical, "FFMPEG", fake_ffmpeg(tmp_path, {"libdav1d": "decoder"}))
    assert classical.Av1Codec()._tool()[2] == "libaom-av1"
    result = classical.compress(ct, classical.AV1, TARGET)
    assert result.reached and result.psnr > mean_psnr(ct) + 10


def test_sperr_without_sperr_in_imagecodecs_is_a_reason(ct, monkeypatch, fresh_tool_cache):
    """An imagecodecs built without SPERR (its SPERR.available is False) is a reason, not an error."""
    built = types.SimpleNamespace(__version__="2024.1.1", SPERR=types.SimpleNamespace(available=False))
    monkeypatch.setitem(sys.modules, "imagecodecs", built)
    assert classical.availability()[classical.SPERR] == "imagecodecs 2024.1.1 was built without SPERR"
    result = classical.compress(ct, classical.SPERR, TARGET)
    assert not result.reached and result.note == "imagecodecs 2024.1.1 was built without SPERR"


def test_av1_payload_is_the_obu_stream_without_temporal_delimiters(ct):
    """What is counted is libaom's OBU stream less its 2-byte temporal delimiters, one per frame;
    the decoder puts them back exactly."""
    usable(classical.AV1)
    coder = classical.Av1Codec()
    gray, codes = coder.prepare(ct)
    stream = coder.elementary_stream(codes, gray.bits, 40.0)
    kinds = [kind for kind, _, _ in classical._obus(stream)]
    assert kinds.count(classical._OBU_TEMPORAL_DELIMITER) == codes.shape[2]  # one temporal unit a slice
    assert kinds[:2] == [classical._OBU_TEMPORAL_DELIMITER, classical._OBU_SEQUENCE_HEADER]
    payload, seconds = coder.encode(codes, gray.bits, 40.0)
    assert len(payload) == len(stream) - 2 * codes.shape[2] and seconds > 0
    assert classical._OBU_TEMPORAL_DELIMITER not in [kind for kind, _, _ in classical._obus(payload)]
    assert classical._with_temporal_delimiters(payload) == stream
    decoded, _ = coder.decode(payload, gray.bits, codes.shape)
    assert decoded.shape == codes.shape and decoded.dtype == np.dtype("<u2") and gray.bits == 12
    with pytest.raises(ValueError, match="cut short"):
        classical._with_temporal_delimiters(payload[:-1])


def test_av1_keeps_the_finest_crf_inside_the_ratio(ct):
    """libaom's CRF is an integer: the search stops at neighbours, the kept CRF inside the ratio and
    the next finer one outside it."""
    usable(classical.AV1)
    coder = classical.Av1Codec()
    result = coder.compress(ct, TARGET)
    assert result.reached and re.fullmatch(r"crf=\d+", result.setting), result.setting
    crf = int(result.setting.split("=")[1])
    gray, codes = coder.prepare(ct)
    max_bytes = math.floor(ct.raw_bytes / TARGET)
    assert len(coder.encode(codes, gray.bits, crf)[0]) == result.nbytes <= max_bytes
    assert crf == 0 or len(coder.encode(codes, gray.bits, crf - 1)[0]) > max_bytes


@pytest.mark.parametrize("codec", [classical.AV1, classical.SPERR])
def test_the_reconstruction_is_rounded_through_the_stored_dtype(codec, ct):
    """As our decoder's: the codec's output (SPERR's floats, AV1's codes) mapped back, then stored in
    the file's dtype (int16 here, intercept -1024) and scaled back to real units."""
    usable(codec)
    coder = classical.codec_named(codec)
    gray, codes = coder.prepare(ct)
    setting = coder.coarsest + 0.75 * (coder.finest - coder.coarsest)
    recon, seconds = coder.reconstruct(ct, gray, coder.encode(codes, gray.bits, setting)[0])
    assert recon.shape == ct.shape and seconds > 0
    stored = (recon - ct.inter) / ct.slope
    assert np.array_equal(stored, np.rint(stored)) and stored.min() >= -32768 and stored.max() <= 32767
    assert math.isfinite(psnr(ct.data, recon)) and psnr(ct.data, recon) > mean_psnr(ct) + 10


def test_sperr_codes_floats_not_a_12_bit_gray(ct):
    """On a range beyond 12 bits SPERR, given the stored values as floats, beats the ceiling that a
    12-bit gray (what the other codecs are given) would put on any codec."""
    usable(classical.SPERR)
    lo, hi = ct.value_range
    wide = from_array(np.rint((ct.data - lo) * (60000 / (hi - lo))), dtype=np.uint16)
    stored = np.asarray(wide.data)
    gray = classical._gray_map(stored, 12, "test")
    assert gray.bits == 12 and gray.step > 1
    ceiling = psnr(wide.data, gray.decode(gray.encode(stored)))
    result = classical.compress(wide, classical.SPERR, 2.0)
    assert result.reached and result.note.startswith("float64 values, no gray mapping")
    assert result.psnr > ceiling


def test_sperr_codes_a_fortran_ordered_volume_in_place(ct):
    """nibabel loads volumes in Fortran order; SPERR must code the voxels, not the buffer's order."""
    usable(classical.SPERR)
    flipped = dataclasses.replace(ct, data=np.asfortranarray(ct.data))
    assert not flipped.data.flags.c_contiguous
    result = classical.compress(flipped, classical.SPERR, TARGET)
    assert result.reached and result.psnr > mean_psnr(ct) + 10
