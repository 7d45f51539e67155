"""Classical codecs (JPEG 2000, HEVC/x265, H.264/x264) driven to a target ratio, measured like ours.

The benchmark sets these beside the neural codec, so everything is measured the same way: the ratio
is the raw voxel bytes (stored dtype) over the bytes the codec itself produced (a J2K codestream, a
raw Annex-B elementary stream: no container), and PSNR / SSIM come from `codec.eval.metrics` on the
reconstruction in real units, passed through the stored dtype as our decoder does.

Each codec is driven by its own continuous quality knob (OpenJPEG's fixed-quality level, a
fractional CRF) until the file is just inside the size the ratio allows. A ratio the coarsest setting cannot
reach is reported as not reached, never extrapolated.

Only the standard library, numpy and codec modules are imported here; imagecodecs (an optional
"bench" dependency) and ffmpeg are looked up when used, and their absence is a reason, not an error.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.eval.metrics import psnr, ssim
from codec.io.volume import Volume, through_stored, to_stored

JPEG2000 = "JPEG 2000"
HEVC = "HEVC (x265)"
H264 = "H.264 (x264)"
CODECS = (JPEG2000, HEVC, H264)

#: The deepest gray the brief allows; wider ranges are rescaled to it.
MAX_BITS = 12
#: Encodes allowed per search, the coarsest included.
SEARCH_STEPS = 16
#: A result counts as on target when its ratio is within this fraction above the target.
TOLERANCE = 0.02
#: OpenJPEG fixed-quality levels (a PSNR target in dB; imagecodecs treats level < 1 as lossless).
J2K_COARSEST, J2K_FINEST = 1.0, 120.0
#: The CRF range of x264 and x265 (higher is coarser).
CRF_FINEST, CRF_COARSEST = 0.0, 51.0

_GRAY_FORMATS = {"gray": 8, "gray10le": 10, "gray12le": 12}


@dataclass(frozen=True)
class ClassicalResult:
    """A classical codec's cell: the setting that reached the ratio, and its fidelity."""

    codec: str  # one of CODECS
    target: float  # the ratio asked for
    reached: bool  # False when even the coarsest setting gives too many bytes (or the tool is missing)
    ratio: float | None  # raw voxel bytes / bytes produced; None when not reached
    nbytes: int | None
    psnr: float | None  # dB, peak = max - min of the original
    ssim: float | None
    setting: str  # the quality parameter used, e.g. "crf=31.25"
    note: str  # gray depth and rescaling, or why the ratio was not reached


# ---------------------------------------------------------------------------------------------------
# Gray mapping: stored values -> unsigned codes of 8, 10 or 12 bits, and back.


@dataclass(frozen=True)
class _GrayMap:
    bits: int
    offset: float  # stored value of code 0
    step: float  # stored units per code (1 unless the range was rescaled)
    note: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.bits <= 8 else "<u2")

    @property
    def top(self) -> int:
        return (1 << self.bits) - 1

    def encode(self, stored: np.ndarray) -> np.ndarray:
        codes = (np.asarray(stored, dtype=np.float64) - self.offset) / self.step
        return np.clip(np.rint(codes), 0, self.top).astype(self.dtype)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes.astype(np.float64) * self.step + self.offset


def _gray_map(stored: np.ndarray, max_bits: int, who: str) -> _GrayMap:
    """The shallowest gray depth that holds the range exactly, else a linear rescale to `max_bits`."""
    lo, hi = float(stored.min()), float(stored.max())
    span = hi - lo
    integral = stored.dtype.kind in "iu" or bool(np.all(stored == np.rint(stored)))
    exact = next((b for b in (8, 10, 12) if integral and span <= (1 << b) - 1), None)
    if exact is not None and exact <= max_bits:
        return _GrayMap(exact, lo, 1.0, f"{exact}-bit gray")
    bits = min(MAX_BITS, max_bits)
    step = span / ((1 << bits) - 1) if span > 0 else 1.0
    if exact is not None:  # it fitted 12 bits, but this encoder stops short of that
        why = f"{exact}-bit range rescaled to {bits} bits ({who} has no deeper gray)"
    elif integral:
        why = f"range {span:g} rescaled to {bits} bits"
    else:
        why = f"non-integer values (range {span:g}) rescaled to {bits} bits"
    return _GrayMap(bits, lo, step, f"{bits}-bit gray, {why}")


# ---------------------------------------------------------------------------------------------------
# The search: the coarsest setting first, then a bracketed search on log(bytes).


@dataclass(frozen=True)
class _Trial:
    setting: float
    payload: bytes

    @property
    def nbytes(self) -> int:
        return len(self.payload)


def _search(encode: Callable[[float], bytes], coarse: float, fine: float,
            max_bytes: int) -> tuple[_Trial | None, _Trial]:
    """(the largest trial within `max_bytes` bytes, or None; the coarsest trial).

    The knob runs from `coarse` (u = 0) to `fine` (u = 1) and the size grows with u. Log(bytes) is
    close to linear in CRF and in the J2K level, so interpolating on it lands near `max_bytes` in a
    few encodes; keeping each guess 10% inside the bracket makes every step shrink it.
    """

    def at(u: float) -> _Trial:
        setting = coarse + u * (fine - coarse)
        return _Trial(setting, encode(setting))

    coarsest = at(0.0)
    if coarsest.nbytes > max_bytes:
        return None, coarsest
    best = coarsest
    lo, lo_size = 0.0, coarsest.nbytes
    hi, hi_size = 1.0, None  # the finest end is never encoded unless the search goes there
    # Aim a little below `max_bytes`, so that a slightly-off guess still lands on the feasible side.
    aim = math.log(max_bytes) - math.log1p(TOLERANCE / 2)
    for _ in range(SEARCH_STEPS - 1):
        if best.nbytes * (1 + TOLERANCE) >= max_bytes or hi - lo < 1e-4:
            break
        width = hi - lo
        if hi_size is None and lo == 0.0:
            u = 0.5
        elif hi_size is None:
            # Nothing was too big yet: extrapolate the line through the coarsest and the last
            # feasible trial (rather than jump to the finest end, the slowest encode of all).
            slope = (math.log(lo_size) - math.log(coarsest.nbytes)) / lo
            u = 1.0 if slope <= 0 else lo + (aim - math.log(lo_size)) / slope
            u = min(max(u, lo + 0.1 * width), 1.0)
        elif hi_size <= lo_size:
            u = lo + width / 2
        else:
            u = lo + width * (aim - math.log(lo_size)) / (math.log(hi_size) - math.log(lo_size))
            u = min(max(u, lo + 0.1 * width), hi - 0.1 * width)
        trial = at(u)
        if trial.nbytes <= max_bytes:
            lo, lo_size = u, trial.nbytes
            # Sizes are not strictly monotone in the knob; keep the largest feasible one seen.
            if trial.nbytes > best.nbytes:
                best = trial
        else:
            hi, hi_size = u, trial.nbytes
    return best, coarsest


# ---------------------------------------------------------------------------------------------------
# Tools: what is installed, and the encoders' gray formats.


@functools.lru_cache(maxsize=1)
def _jpeg2k_reason() -> str | None:
    try:
        import imagecodecs
    except ImportError:
        return "imagecodecs is not installed (pip install imagecodecs, or the project's 'bench' extra)"
    if not getattr(getattr(imagecodecs, "JPEG2K", None), "available", True):
        return "imagecodecs was built without JPEG 2000 (OpenJPEG)"
    return None


def _ffmpeg_help(ffmpeg: str, topic: str) -> str:
    done = subprocess.run([ffmpeg, "-hide_banner", "-h", topic], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@functools.cache
def _video_tool(encoder: str, decoder: str) -> tuple[str | None, int]:
    """(reason the encoder cannot be used, or None; the deepest gray it takes)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "ffmpeg not found", 0
    try:
        text = _ffmpeg_help(ffmpeg, f"encoder={encoder}")
        decoding = _ffmpeg_help(ffmpeg, f"decoder={decoder}")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ffmpeg does not run: {exc}", 0
    formats = next((line.split(":", 1)[1].split() for line in text.splitlines() if "pixel formats" in line), None)
    if formats is None:
        return f"ffmpeg has no {encoder} encoder", 0
    if "not recognized" in decoding:
        return f"ffmpeg has no {decoder} decoder", 0
    depths = [_GRAY_FORMATS[f] for f in formats if f in _GRAY_FORMATS]
    if not depths:
        return f"{encoder} takes no gray pixel format here", 0
    return None, max(depths)


def availability() -> dict[str, str | None]:
    """Codec name -> None if usable here, else a one-line reason."""
    return {
        JPEG2000: _jpeg2k_reason(),
        HEVC: _video_tool(_VIDEO[HEVC].encoder, _VIDEO[HEVC].stream)[0],
        H264: _video_tool(_VIDEO[H264].encoder, _VIDEO[H264].stream)[0],
    }


# ---------------------------------------------------------------------------------------------------
# JPEG 2000: every slice tiled into one image, one codestream.


def _tile(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """(X, Y, Z) -> one near-square grid of Z tiles of X x Y (unused tiles zero), and its columns."""
    nx, ny, nz = codes.shape
    cols = math.ceil(math.sqrt(nz))
    rows = math.ceil(nz / cols)
    image = np.zeros((rows * nx, cols * ny), dtype=codes.dtype)
    for k in range(nz):
        r, c = divmod(k, cols)
        image[r * nx:(r + 1) * nx, c * ny:(c + 1) * ny] = codes[:, :, k]
    return image, cols


def _untile(image: np.ndarray, shape: tuple[int, int, int], cols: int) -> np.ndarray:
    nx, ny, nz = shape
    out = np.empty(shape, dtype=image.dtype)
    for k in range(nz):
        r, c = divmod(k, cols)
        out[:, :, k] = image[r * nx:(r + 1) * nx, c * ny:(c + 1) * ny]
    return out


def _jpeg2k(codes: np.ndarray, gray: _GrayMap, max_bytes: int) -> tuple[_Trial | None, _Trial, np.ndarray | None]:
    import imagecodecs

    image, cols = _tile(codes)

    def encode(level: float) -> bytes:
        # In this imagecodecs `level` is OpenJPEG's fixed-quality target (a PSNR in dB against the
        # declared bit depth), so declaring the true depth keeps the knob's scale meaningful.
        return bytes(imagecodecs.jpeg2k_encode(image, level=level, codecformat="J2K", bitspersample=gray.bits,
                                               numthreads=1))

    best, coarsest = _search(encode, J2K_COARSEST, J2K_FINEST, max_bytes)
    if best is None:
        return None, coarsest, None
    decoded = np.asarray(imagecodecs.jpeg2k_decode(best.payload))
    if decoded.shape != image.shape:
        raise RuntimeError(f"JPEG 2000 decoded a {decoded.shape} image, {image.shape} was encoded")
    return best, coarsest, _untile(decoded, codes.shape, cols)


# ---------------------------------------------------------------------------------------------------
# HEVC / H.264: the slices are the frames of a video.


@dataclass(frozen=True)
class _Video:
    encoder: str
    stream: str  # ffmpeg's name for the raw Annex-B elementary stream (muxer and decoder)
    options: tuple[str, ...]
    min_side: int  # frames are padded up to at least this many pixels per side


# Both encoders write an SEI message holding their version and full settings string (about 2.3 kB
# for x265, 0.7 kB for x264); no decoder needs it, and at high ratios it would be a sizeable part of
# the file, so x265 is told not to write it and x264's SEI units are filtered out of the stream.
_VIDEO = {
    # x265 3.5 corrupts its heap on frames narrower than one 64-pixel CTU when single-threaded.
    HEVC: _Video("libx265", "hevc", ("-x265-params", "log-level=error:info=0:pools=1:frame-threads=1"), 64),
    H264: _Video("libx264", "h264", ("-threads", "1", "-bsf:v", "filter_units=remove_types=6"), 2),
}


def _gray_format(bits: int) -> str:
    return next(name for name, depth in _GRAY_FORMATS.items() if depth == bits)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"ffmpeg failed to {what} (exit {done.returncode}): {tail}")


def _padded(frames: np.ndarray, min_side: int) -> np.ndarray:
    """Pad (N, H, W) frames to even sides of at least `min_side`, repeating the edge (cheap to code)."""
    _, h, w = frames.shape
    ph = max(h + h % 2, min_side + min_side % 2)
    pw = max(w + w % 2, min_side + min_side % 2)
    if (ph, pw) == (h, w):
        return frames
    return np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w)), mode="edge")


def _video(codes: np.ndarray, gray: _GrayMap, max_bytes: int, spec: _Video) -> tuple[_Trial | None, _Trial,
                                                                                  np.ndarray | None]:
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg is not None  # availability() was checked by the caller
    nx, ny, nz = codes.shape
    frames = _padded(np.ascontiguousarray(np.moveaxis(codes, 2, 0)), spec.min_side)
    height, width = frames.shape[1:]
    pix_fmt = _gray_format(gray.bits)
    base = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    with tempfile.TemporaryDirectory(prefix="moec-classical-") as tmp:
        raw_in, stream, raw_out = Path(tmp) / "in.raw", Path(tmp) / f"out.{spec.stream}", Path(tmp) / "out.raw"
        raw_in.write_bytes(frames.tobytes())

        def encode(crf: float) -> bytes:
            _run(base + ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{width}x{height}", "-framerate", "25",
                         "-i", str(raw_in), "-c:v", spec.encoder, "-preset", "medium", "-crf", f"{crf:.4f}",
                         *spec.options, "-pix_fmt", pix_fmt, "-f", spec.stream, str(stream)], f"encode {spec.encoder}")
            return stream.read_bytes()

        best, coarsest = _search(encode, CRF_COARSEST, CRF_FINEST, max_bytes)
        if best is None:
            return None, coarsest, None
        stream.write_bytes(best.payload)
        # The H.264 decoder returns monochrome as YUV 4:2:0 and a format conversion to gray would
        # rescale it as limited range; taking the luma plane as it is keeps the values exact.
        _run(base + ["-f", spec.stream, "-i", str(stream), "-vf", "extractplanes=y", "-f", "rawvideo",
                     "-pix_fmt", pix_fmt, str(raw_out)], f"decode {spec.stream}")
        decoded = np.frombuffer(raw_out.read_bytes(), dtype=gray.dtype)
    if decoded.size != frames.size:
        got = decoded.size / (height * width)
        raise RuntimeError(f"{spec.stream} decoded {got:g} frames of {width}x{height}, {nz} were encoded")
    recon = decoded.reshape(frames.shape)[:, :nx, :ny]
    return best, coarsest, np.moveaxis(recon, 0, 2)


# ---------------------------------------------------------------------------------------------------
# The entry point.


def _describe(codec: str, setting: float) -> str:
    if codec == JPEG2000:
        return f"level={setting:.2f} (OpenJPEG PSNR target, dB)"
    return f"crf={setting:.2f}"


def _missing(codec: str, ratio: float, reason: str) -> ClassicalResult:
    return ClassicalResult(codec, ratio, False, None, None, None, None, "", reason)


def compress(volume: Volume, codec: str, ratio: float) -> ClassicalResult:
    """Compress `volume` with one classical codec at the target ratio (raw bytes / produced bytes)."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    try:
        target = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"the target ratio must be a positive number, not {ratio!r}") from None
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"the target ratio must be a positive number, not {ratio!r}")
    ratio = target
    reason = availability()[codec]
    if reason is not None:
        return _missing(codec, ratio, reason)

    shape = volume.shape
    stored = to_stored(volume.data, volume.stored_dtype, volume.slope, volume.inter)
    # Time frames become more slices (frame k = z * T + t), so both codecs see a 3D stack.
    stored = stored.reshape(shape[0], shape[1], -1)
    raw = volume.raw_bytes
    max_bytes = math.floor(raw / ratio)

    if codec == JPEG2000:
        gray = _gray_map(stored, MAX_BITS, "JPEG 2000")
        best, coarsest, codes = _jpeg2k(gray.encode(stored), gray, max_bytes)
    else:
        spec = _VIDEO[codec]
        gray = _gray_map(stored, _video_tool(spec.encoder, spec.stream)[1], spec.encoder)
        best, coarsest, codes = _video(gray.encode(stored), gray, max_bytes, spec)

    if best is None or codes is None:
        note = (f"cannot reach {ratio:g}x: the coarsest setting gives {coarsest.nbytes:,} bytes "
                f"({raw / coarsest.nbytes:.0f}x); {gray.note}")
        return ClassicalResult(codec, ratio, False, None, None, None, None, _describe(codec, coarsest.setting), note)

    note = gray.note
    reached = raw / best.nbytes
    if best.setting == (J2K_FINEST if codec == JPEG2000 else CRF_FINEST):
        note += f"; the finest setting already gives {reached:.3g}x"
    elif reached > ratio * (1 + TOLERANCE):
        # Sizes jump between neighbouring settings (small volumes, the coarse end); say so, not hide it.
        note += f"; {100 * (reached / ratio - 1):.1f}% above the target, no setting tried landed closer"
    real = gray.decode(codes).reshape(shape) * volume.slope + volume.inter
    # Our decoder writes the file's dtype, so the classical reconstruction is rounded the same way.
    recon = through_stored(real, volume.stored_dtype, volume.slope, volume.inter)
    return ClassicalResult(
        codec=codec,
        target=ratio,
        reached=True,
        ratio=reached,
        nbytes=best.nbytes,
        psnr=psnr(volume.data, recon),
        ssim=ssim(volume.data, recon)[0],
        setting=_describe(codec, best.setting),
        note=note,
    )
