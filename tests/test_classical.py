"""The classical baselines: real encodes with imagecodecs and ffmpeg on small volumes, one class per
codec behind the `ClassicalCodec` seam.

Codecs whose tool is missing here are skipped with the reason `availability()` gives.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

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
    assert TARGET <= result.ratio <= 1.1 * TARGET
    assert result.ratio == pytest.approx(volume.raw_bytes / result.nbytes)
    # Reconstructions measured in real units: far better than the mean, and sensible outright.
    assert math.isfinite(result.psnr)
    assert result.psnr > mean_psnr(volume) + 10
    assert result.psnr > 20
    assert 0.5 < result.ssim <= 1
    assert result.setting
    assert result.note.startswith(("8-bit", "10-bit", "12-bit")), result.note


def test_the_command_line_names_every_class():
    from codec.cli.bench import CODEC_KEYS

    assert CODEC_KEYS == {c.key: c.name for c in classical.CLASSICAL}
    assert {type(c) for c in classical.CLASSICAL} == {classical.Jpeg2000Codec, classical.HevcCodec, classical.H264Codec}


@pytest.mark.parametrize("codec", classical.CODECS)
def test_one_encode_and_decode_at_a_setting(codec, gray8):
    """The seam below the search: bytes and seconds out of an encode, codes and seconds out of a decode."""
    usable(codec)
    coder = classical.codec_named(codec)
    codes = gray8.data.astype(np.uint8)
    fine, coarse = (coder.encode(codes, 8, setting) for setting in (coder.finest, coder.coarsest))
    (payload, seconds), (small, _) = fine, coarse
    assert isinstance(payload, bytes) and seconds >= 0 and len(small) < len(payload) < codes.nbytes
    decoded, seconds = coder.decode(payload, 8, codes.shape)
    assert decoded.shape == codes.shape and seconds >= 0
    assert np.abs(decoded.astype(np.int64) - codes).mean() < 2
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
    assert 10.0 <= result.ratio <= 11.0
    assert result.note.startswith("10-bit")
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
    classical._jpeg2k_reason.cache_clear()
    yield
    classical._video_tool.cache_clear()
    classical._jpeg2k_reason.cache_clear()


def test_missing_tools_are_reasons_not_errors(ct, monkeypatch, fresh_tool_cache):
    monkeypatch.setattr(classical.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # makes `import imagecodecs` fail
    table = classical.availability()
    assert table[classical.HEVC] == table[classical.H264] == "ffmpeg not found"
    assert "imagecodecs" in table[classical.JPEG2000]
    for coder in classical.CLASSICAL:
        assert coder.unavailable() == table[coder.name]
        result = coder.compress(ct, TARGET)
        assert not result.reached and result.note == table[coder.name] and result.setting == ""


def test_imports_no_optional_dependency():
    code = "import sys, codec.bench.classical; print('imagecodecs' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
