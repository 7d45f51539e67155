"""Classical codecs (JPEG 2000, HEVC/x265, H.264/x264, AV1/libaom, SPERR) driven to a target ratio,
measured like ours.

The benchmark sets these beside the neural codec, so everything is measured the same way: the ratio
is the raw voxel bytes (stored dtype) over the bytes the codec itself produced (a J2K codestream, a
raw Annex-B elementary stream, an AV1 OBU stream, a SPERR bitstream: no container), and PSNR / SSIM
come from `codec.eval.metrics` on the reconstruction in real units, passed through the stored dtype
as our decoder does. The seconds of the kept setting's encode and of its decode are recorded beside.

Each codec is driven by its own quality knob (OpenJPEG's fixed-quality level, a fractional CRF,
libaom's integer CRF, SPERR's bits per voxel) until the file is just inside the size the ratio
allows. A ratio the coarsest setting cannot reach is reported as not reached, never extrapolated.

Each codec is one class (the seam of compressai's utils/bench/codecs.py): `ClassicalCodec` holds the
search, the measures and the notes, and a subclass (`Jpeg2000Codec`, `SperrCodec`, and `HevcCodec`,
`H264Codec` and `Av1Codec` on `VideoCodec`) says whether it runs here and how to encode and decode.
`CLASSICAL` lists them, `compress(volume, name, ratio)` and `availability()` are the entry points the
benchmark uses.

Only the standard library, numpy and codec modules are imported here; imagecodecs (an optional
"bench" dependency) and ffmpeg are looked up when used, and their absence is a reason, not an error.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from codec.eval.metrics import psnr, ssim
from codec.io.limits import cpu_cores
from codec.io.volume import Volume, through_stored, to_stored

JPEG2000 = "JPEG 2000"
HEVC = "HEVC (x265)"
H264 = "H.264 (x264)"
AV1 = "AV1 (libaom)"
SPERR = "SPERR"
CODECS = (JPEG2000, HEVC, H264, AV1, SPERR)

#: The ffmpeg that runs the video codecs: a name looked up on PATH, or a path.
FFMPEG = "ffmpeg"

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
#: libaom's CRF range: integers only, so its search stops at neighbouring integers.
AV1_CRF_FINEST, AV1_CRF_COARSEST = 0.0, 63.0
#: libaom's speed (0 slowest .. 8): 4 is the usual trade for offline encodes, within a few percent
#: of the slowest settings' size at a fraction of their time.
AV1_CPU_USED = 4
#: SPERR's knob is log2 of its bits per voxel: the size is proportional to the bits, so log(bytes) is
#: linear in it and the search lands in a few encodes. 2^-16 bits per voxel leaves little more than
#: SPERR's 45-byte header on the volumes benchmarked (SperrCodec.encode keeps the budget at a byte or
#: more); 2^5 is above any lossy need of 12-bit data.
SPERR_LOG2_BPP_COARSEST, SPERR_LOG2_BPP_FINEST = -16.0, 5.0

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
    # The kept setting's encode and its decode (the search's other encodes are not counted); None
    # when not reached.
    encode_seconds: float | None = None
    decode_seconds: float | None = None


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


@dataclass(frozen=True)
class _FloatMap(_GrayMap):
    """The stored values as float64, offset by the minimum and never rescaled: for a codec of real
    numbers (SPERR), which a gray of at most 12 bits could only cap (on ranges beyond 12 bits)."""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    def encode(self, stored: np.ndarray) -> np.ndarray:
        return np.asarray(stored, dtype=np.float64) - self.offset

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes, dtype=np.float64) + self.offset


def _float_map(stored: np.ndarray) -> _FloatMap:
    return _FloatMap(64, float(stored.min()), 1.0, "float64 values, no gray mapping")


# ---------------------------------------------------------------------------------------------------
# The search: the coarsest setting first, then a bracketed search on log(bytes).


@dataclass(frozen=True)
class _Trial:
    setting: float
    payload: bytes
    seconds: float  # the encode's

    @property
    def nbytes(self) -> int:
        return len(self.payload)


def _search(
    encode: Callable[[float], tuple[bytes, float]],
    coarse: float,
    fine: float,
    max_bytes: int,
    *,
    integral: bool = False,
) -> tuple[_Trial | None, _Trial]:
    """(the largest trial within `max_bytes` bytes, or None; the coarsest trial).

    The knob runs from `coarse` (u = 0) to `fine` (u = 1) and the size grows with u. Log(bytes) is
    close to linear in CRF and in the J2K level, so interpolating on it lands near `max_bytes` in a
    few encodes; keeping each guess 10% inside the bracket makes every step shrink it. An `integral`
    knob (libaom's CRF) takes integer settings only: each guess is the nearest integer not yet
    tried inside the bracket, and the search ends when the bracket's ends are neighbours.
    """
    # With an integral knob u moves in steps of 1/n, one per integer setting.
    n = round(abs(fine - coarse)) if integral else 0

    def at(u: float) -> _Trial:
        setting = coarse + u * (fine - coarse)
        if n:
            setting = float(round(setting))
        payload, seconds = encode(setting)
        return _Trial(setting, payload, seconds)

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
        # The finest end counts as untried (one more integer to go) until it has been encoded.
        if n and round(hi * n) - round(lo * n) <= (1 if hi_size is not None else 0):
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
        if n:
            top = round(hi * n) - (1 if hi_size is not None else 0)
            u = min(max(round(u * n), round(lo * n) + 1), top) / n
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


@functools.cache
def _imagecodecs_reason(codec: str, what: str) -> str | None:
    """Why imagecodecs cannot code `codec` (its attribute, e.g. "JPEG2K") here, or None."""
    try:
        import imagecodecs
    except ImportError:
        return "imagecodecs is not installed (pip install imagecodecs, or the project's 'bench' extra)"
    # Each codec's module object says whether this build has it; an older imagecodecs lacks the name.
    found = getattr(imagecodecs, codec, None)
    if found is None or not getattr(found, "available", True):
        return f"imagecodecs {getattr(imagecodecs, '__version__', '?')} was built without {what}"
    return None


def _ffmpeg_help(ffmpeg: str, topic: str) -> str:
    done = subprocess.run([ffmpeg, "-hide_banner", "-h", topic], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@functools.cache
def _video_tool(ffmpeg_name: str, encoder: str, decoders: tuple[str, ...]) -> tuple[str | None, int, str]:
    """(reason `ffmpeg_name`'s encoder cannot be used, or None; the deepest gray it takes; the first
    of `decoders` this ffmpeg has)."""
    ffmpeg = shutil.which(ffmpeg_name)
    if ffmpeg is None:
        return f"{ffmpeg_name} not found", 0, ""
    try:
        text = _ffmpeg_help(ffmpeg, f"encoder={encoder}")
        decoder = next((d for d in decoders if "not recognized" not in _ffmpeg_help(ffmpeg, f"decoder={d}")), None)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ffmpeg does not run: {exc}", 0, ""
    formats = next((line.split(":", 1)[1].split() for line in text.splitlines() if "pixel formats" in line), None)
    if formats is None:
        return f"ffmpeg has no {encoder} encoder", 0, ""
    if decoder is None:
        return f"ffmpeg has no {' or '.join(decoders)} decoder", 0, ""
    depths = [_GRAY_FORMATS[f] for f in formats if f in _GRAY_FORMATS]
    if not depths:
        return f"{encoder} takes no gray pixel format here", 0, ""
    return None, max(depths), decoder


# ---------------------------------------------------------------------------------------------------
# The seam: one class per codec (after compressai's utils/bench/codecs.py), the search and the
# result in the base class.


def _target(ratio: float) -> float:
    """The target ratio as a positive finite float, or ValueError (callers pass what users typed)."""
    try:
        target = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"the target ratio must be a positive number, not {ratio!r}") from None
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"the target ratio must be a positive number, not {ratio!r}")
    return target


class ClassicalCodec(ABC):
    """One classical codec: its names, whether it runs here (and why not), one encode and one decode
    of a stack of gray codes at one setting of its quality knob, and (`compress`) the search for the
    setting that reaches a target ratio, with "not reached, and why" as a result rather than an error.

    A subclass says how to encode and decode; the gray mapping, the search, the measures and the
    notes are the same for every codec, so that the table compares like with like.
    """

    #: The name in tables, cells and logs (one of CODECS).
    name: ClassVar[str]
    #: The command line's name (codec.cli.bench.CODEC_KEYS, written there so `moec --help` stays light).
    key: ClassVar[str]
    #: The quality knob's ends: the coarsest setting (smallest output) and the finest.
    coarsest: ClassVar[float]
    finest: ClassVar[float]
    #: Whether the knob takes integers only (the search then tries each integer at most once).
    integral: ClassVar[bool] = False

    @abstractmethod
    def unavailable(self) -> str | None:
        """None if the codec can be used here, else a one-line reason."""

    def max_bits(self) -> int:
        """The deepest gray the encoder takes (at most MAX_BITS); call only when available."""
        return MAX_BITS

    @property
    def tool(self) -> str:
        """Who is named when a range is rescaled for want of deeper gray."""
        return self.name

    def samples(self, stored: np.ndarray) -> _GrayMap:
        """What the encoder is given for the stored values, and how its output maps back: the
        shallowest gray that holds them, unless the codec codes something else."""
        return _gray_map(stored, self.max_bits(), self.tool)

    @abstractmethod
    def encode(self, codes: np.ndarray, bits: int, setting: float) -> tuple[bytes, float]:
        """(the bytes the codec produces for (X, Y, Z) unsigned gray `codes` of `bits` bits at `setting`,
        the seconds the encode took)."""

    @abstractmethod
    def decode(self, payload: bytes, bits: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
        """(the (X, Y, Z) gray codes `payload` holds, the seconds the decode took)."""

    @abstractmethod
    def describe(self, setting: float) -> str:
        """The setting as the table shows it, e.g. "crf=31.25"."""

    def not_reached(self, ratio: float, note: str, setting: str = "") -> ClassicalResult:
        """The cell of a ratio the codec does not reach here, with the reason."""
        return ClassicalResult(
            codec=self.name,
            target=ratio,
            reached=False,
            ratio=None,
            nbytes=None,
            psnr=None,
            ssim=None,
            setting=setting,
            note=note,
        )

    def prepare(self, volume: Volume) -> tuple[_GrayMap, np.ndarray]:
        """(the mapping of `volume`'s stored values, the (X, Y, Z) codes the encoder is given)."""
        stored = to_stored(volume.data, volume.stored_dtype, volume.slope, volume.inter)
        # Time frames become more slices (frame k = z * T + t), so every codec sees a 3D stack.
        stored = stored.reshape(volume.shape[0], volume.shape[1], -1)
        gray = self.samples(stored)
        return gray, gray.encode(stored)

    def reconstruct(self, volume: Volume, gray: _GrayMap, payload: bytes) -> tuple[np.ndarray, float]:
        """(`volume` as `payload` decodes it, in real units; the decode's seconds)."""
        shape = volume.shape
        decoded, seconds = self.decode(payload, gray.bits, (shape[0], shape[1], math.prod(shape[2:])))
        real = gray.decode(decoded).reshape(shape) * volume.slope + volume.inter
        # Our decoder writes the file's dtype, so the classical reconstruction is rounded the same way.
        return through_stored(real, volume.stored_dtype, volume.slope, volume.inter), seconds

    def compress(self, volume: Volume, ratio: float) -> ClassicalResult:
        """Compress `volume` at the target ratio (raw bytes / produced bytes): the finest setting
        whose output is within the bytes the ratio allows, measured in real units."""
        ratio = _target(ratio)
        reason = self.unavailable()
        if reason is not None:
            return self.not_reached(ratio, reason)

        raw = volume.raw_bytes
        max_bytes = math.floor(raw / ratio)
        gray, codes = self.prepare(volume)
        best, coarsest = _search(
            lambda setting: self.encode(codes, gray.bits, setting),
            self.coarsest,
            self.finest,
            max_bytes,
            integral=self.integral,
        )
        if best is None:
            note = (
                f"cannot reach {ratio:g}x: the coarsest setting gives {coarsest.nbytes:,} bytes "
                f"({raw / coarsest.nbytes:.0f}x); {gray.note}"
            )
            return self.not_reached(ratio, note, self.describe(coarsest.setting))
        recon, decode_seconds = self.reconstruct(volume, gray, best.payload)

        note = gray.note
        reached = raw / best.nbytes
        if best.setting == self.finest:
            note += f"; the finest setting already gives {reached:.3g}x"
        elif reached > ratio * (1 + TOLERANCE):
            # Sizes jump between neighbouring settings (small volumes, the coarse end); say so, not hide it.
            note += f"; {100 * (reached / ratio - 1):.1f}% above the target, no setting tried landed closer"
        return ClassicalResult(
            codec=self.name,
            target=ratio,
            reached=True,
            ratio=reached,
            nbytes=best.nbytes,
            psnr=psnr(volume.data, recon),
            ssim=ssim(volume.data, recon)[0],
            setting=self.describe(best.setting),
            note=note,
            encode_seconds=best.seconds,
            decode_seconds=decode_seconds,
        )


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
        image[r * nx : (r + 1) * nx, c * ny : (c + 1) * ny] = codes[:, :, k]
    return image, cols


def _untile(image: np.ndarray, shape: tuple[int, int, int], cols: int) -> np.ndarray:
    nx, ny, nz = shape
    out = np.empty(shape, dtype=image.dtype)
    for k in range(nz):
        r, c = divmod(k, cols)
        out[:, :, k] = image[r * nx : (r + 1) * nx, c * ny : (c + 1) * ny]
    return out


class Jpeg2000Codec(ClassicalCodec):
    """JPEG 2000 (OpenJPEG through imagecodecs): the slices tiled into one image, one J2K codestream,
    driven by OpenJPEG's fixed-quality level."""

    name = JPEG2000
    key = "j2k"
    coarsest, finest = J2K_COARSEST, J2K_FINEST

    def unavailable(self) -> str | None:
        return _imagecodecs_reason("JPEG2K", "JPEG 2000 (OpenJPEG)")

    def max_bits(self) -> int:
        return MAX_BITS

    @property
    def tool(self) -> str:
        return "JPEG 2000"

    def encode(self, codes: np.ndarray, bits: int, setting: float) -> tuple[bytes, float]:
        import imagecodecs

        start = time.perf_counter()
        image, _ = _tile(codes)
        # In this imagecodecs `level` is OpenJPEG's fixed-quality target (a PSNR in dB against the
        # declared bit depth), so declaring the true depth keeps the knob's scale meaningful.
        payload = bytes(
            imagecodecs.jpeg2k_encode(image, level=setting, codecformat="J2K", bitspersample=bits, numthreads=1)
        )
        return payload, time.perf_counter() - start

    def decode(self, payload: bytes, bits: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
        import imagecodecs

        start = time.perf_counter()
        nx, ny, nz = shape
        cols = math.ceil(math.sqrt(nz))
        expected = (math.ceil(nz / cols) * nx, cols * ny)
        decoded = np.asarray(imagecodecs.jpeg2k_decode(payload))
        if decoded.shape != expected:
            raise RuntimeError(f"JPEG 2000 decoded a {decoded.shape} image, {expected} was encoded")
        return _untile(decoded, shape, cols), time.perf_counter() - start

    def describe(self, setting: float) -> str:
        return f"level={setting:.2f} (OpenJPEG PSNR target, dB)"


# ---------------------------------------------------------------------------------------------------
# SPERR: the whole volume, one 3D wavelet bitstream.


class SperrCodec(ClassicalCodec):
    """SPERR (through imagecodecs): the whole volume in one call, as one chunk, in its fixed bits per
    voxel mode, searched on log2 of the bits.

    SPERR codes real numbers, so it is given the stored values as float64 (offset by the minimum)
    rather than the gray codes: where the range fits 12 bits the two are the same numbers and
    measure the same (as on the development volumes), and where it does not the floats keep the
    precision a 12-bit rescale would take away.
    """

    name = SPERR
    key = "sperr"
    coarsest, finest = SPERR_LOG2_BPP_COARSEST, SPERR_LOG2_BPP_FINEST

    def unavailable(self) -> str | None:
        return _imagecodecs_reason("SPERR", "SPERR")

    def samples(self, stored: np.ndarray) -> _GrayMap:
        return _float_map(stored)

    def encode(self, codes: np.ndarray, bits: int, setting: float) -> tuple[bytes, float]:
        import imagecodecs

        start = time.perf_counter()
        # imagecodecs hands SPERR the buffer as C-ordered whatever the strides say, so a Fortran-ordered
        # volume (as nibabel loads them) would be coded scrambled; a C-contiguous copy codes the volume.
        values = np.ascontiguousarray(codes, dtype=np.float64)
        # SPERR reads a budget under one bit as no budget (it then codes to its own precision, a file
        # larger than the raw voxels), so the coarsest settings on a small volume give it one byte.
        bpp = max(2.0**setting, 8.0 / max(values.size, 1))
        payload = bytes(imagecodecs.sperr_encode(values, bpp, "bpp", chunks=values.shape, numthreads=cpu_cores()))
        return payload, time.perf_counter() - start

    def decode(self, payload: bytes, bits: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
        import imagecodecs

        start = time.perf_counter()
        decoded = np.asarray(imagecodecs.sperr_decode(payload, numthreads=cpu_cores()))
        if decoded.shape != shape:
            raise RuntimeError(f"SPERR decoded a {decoded.shape} volume, {shape} was encoded")
        return decoded, time.perf_counter() - start

    def describe(self, setting: float) -> str:
        return f"bpp={2.0**setting:.4g} (SPERR bits per voxel)"


# ---------------------------------------------------------------------------------------------------
# HEVC / H.264 / AV1: the slices are the frames of a video.


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
    ph, pw = _padded_side(h, min_side), _padded_side(w, min_side)
    if (ph, pw) == (h, w):
        return frames
    return np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w)), mode="edge")


def _padded_side(side: int, min_side: int) -> int:
    return max(side + side % 2, min_side + min_side % 2)


class VideoCodec(ClassicalCodec):
    """A video encoder of ffmpeg's (the model's BinaryCodec): the slices are the frames, the output the
    codec's elementary stream with no container, driven by a CRF (fractional unless `integral`)."""

    encoder: ClassVar[str]
    stream: ClassVar[str]  # ffmpeg's muxer and demuxer of the elementary stream
    decoders: ClassVar[tuple[str, ...]]  # ffmpeg's decoders for it, the first present is used
    options: ClassVar[tuple[str, ...]] = ()
    min_side: ClassVar[int]  # frames are padded up to at least this many pixels per side
    coarsest, finest = CRF_COARSEST, CRF_FINEST

    def unavailable(self) -> str | None:
        return self._tool()[0]

    def max_bits(self) -> int:
        return self._tool()[1]

    def _tool(self) -> tuple[str | None, int, str]:
        return _video_tool(FFMPEG, self.encoder, self.decoders)

    @property
    def tool(self) -> str:
        return self.encoder

    def quality(self, setting: float) -> list[str]:
        """The encoder's options for `setting` (x264 and x265: their preset and a fractional CRF)."""
        return ["-preset", "medium", "-crf", f"{setting:.4f}"]

    def pack(self, stream: bytes) -> bytes:
        """The payload kept of what ffmpeg wrote (what the ratio counts); `unpack` gives it back."""
        return stream

    def unpack(self, payload: bytes) -> bytes:
        return payload

    @staticmethod
    def _ffmpeg() -> list[str]:
        ffmpeg = shutil.which(FFMPEG)
        if ffmpeg is None:  # unavailable() says so before any encode
            raise RuntimeError(f"{FFMPEG} not found")
        return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]

    def encode(self, codes: np.ndarray, bits: int, setting: float) -> tuple[bytes, float]:
        start = time.perf_counter()
        payload = self.pack(self.elementary_stream(codes, bits, setting))
        return payload, time.perf_counter() - start

    def elementary_stream(self, codes: np.ndarray, bits: int, setting: float) -> bytes:
        """The stream ffmpeg writes for `codes` at `setting`, before `pack`."""
        frames = _padded(np.ascontiguousarray(np.moveaxis(codes, 2, 0)), self.min_side)
        height, width = frames.shape[1:]
        pix_fmt = _gray_format(bits)
        with tempfile.TemporaryDirectory(prefix="moec-classical-") as tmp:
            raw_in, stream = Path(tmp) / "in.raw", Path(tmp) / f"out.{self.stream}"
            raw_in.write_bytes(frames.tobytes())
            _run(
                self._ffmpeg()
                + [
                    "-f",
                    "rawvideo",
                    "-pix_fmt",
                    pix_fmt,
                    "-s",
                    f"{width}x{height}",
                    "-framerate",
                    "25",
                    "-i",
                    str(raw_in),
                    "-c:v",
                    self.encoder,
                    *self.quality(setting),
                    *self.options,
                    "-pix_fmt",
                    pix_fmt,
                    "-f",
                    self.stream,
                    str(stream),
                ],
                f"encode {self.encoder}",
            )
            return stream.read_bytes()

    def decode(self, payload: bytes, bits: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        nx, ny, nz = shape
        height, width = _padded_side(nx, self.min_side), _padded_side(ny, self.min_side)
        pix_fmt = _gray_format(bits)
        with tempfile.TemporaryDirectory(prefix="moec-classical-") as tmp:
            stream, raw_out = Path(tmp) / f"out.{self.stream}", Path(tmp) / "out.raw"
            stream.write_bytes(self.unpack(payload))
            # The H.264 decoder returns monochrome as YUV 4:2:0 and a format conversion to gray would
            # rescale it as limited range; taking the luma plane as it is keeps the values exact.
            _run(
                self._ffmpeg()
                + [
                    "-c:v",
                    self._tool()[2],
                    "-f",
                    self.stream,
                    "-i",
                    str(stream),
                    "-vf",
                    "extractplanes=y",
                    "-f",
                    "rawvideo",
                    "-pix_fmt",
                    pix_fmt,
                    str(raw_out),
                ],
                f"decode {self.stream}",
            )
            decoded = np.frombuffer(raw_out.read_bytes(), dtype=np.dtype(np.uint8 if bits <= 8 else "<u2"))
        if decoded.size != nz * height * width:
            got = decoded.size / (height * width)
            raise RuntimeError(f"{self.stream} decoded {got:g} frames of {width}x{height}, {nz} were encoded")
        recon = decoded.reshape(nz, height, width)[:, :nx, :ny]
        return np.moveaxis(recon, 0, 2), time.perf_counter() - start

    def describe(self, setting: float) -> str:
        return f"crf={setting:.2f}"


# Both encoders write an SEI message holding their version and full settings string (about 2.3 kB
# for x265, 0.7 kB for x264); no decoder needs it, and at high ratios it would be a sizeable part of
# the file, so x265 is told not to write it and x264's SEI units are filtered out of the stream.


class HevcCodec(VideoCodec):
    """HEVC with x265."""

    name = HEVC
    key = "hevc"
    encoder = "libx265"
    stream = "hevc"
    decoders = ("hevc",)
    options = ("-x265-params", "log-level=error:info=0:pools=1:frame-threads=1")
    # x265 3.5 corrupts its heap on frames narrower than one 64-pixel CTU when single-threaded.
    min_side = 64


class H264Codec(VideoCodec):
    """H.264 with x264."""

    name = H264
    key = "h264"
    encoder = "libx264"
    stream = "h264"
    decoders = ("h264",)
    options = ("-threads", "1", "-bsf:v", "filter_units=remove_types=6")
    min_side = 2


# AV1's low-overhead OBU stream starts every temporal unit (one shown frame, with the hidden frames
# it needs) with a 2-byte temporal delimiter OBU. It carries nothing, yet at 4096x on a volume of
# 190 slices it would be a sixth of the file; the payload leaves it out and the decoder puts it back,
# which needs only the first bit or two of each frame header.

_OBU_SEQUENCE_HEADER, _OBU_TEMPORAL_DELIMITER, _OBU_FRAME_HEADER, _OBU_FRAME = 1, 2, 3, 6
#: OBUs that continue a frame, or are padding: never the start of a temporal unit.
_OBU_WITHIN_FRAME = frozenset((4, 7, 8, 15))  # tile group, redundant frame header, tile list, padding
_TEMPORAL_DELIMITER = bytes((_OBU_TEMPORAL_DELIMITER << 3 | 0b010, 0))  # with its size field: 0


def _obus(stream: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(type, the whole OBU, its payload) of each OBU of a low-overhead stream (each has its size)."""
    at = 0
    while at < len(stream):
        header = stream[at]
        if not header & 0b010:
            raise ValueError(f"AV1 OBU at byte {at} has no size field")
        start = at + 1 + (header >> 2 & 1)  # after the extension byte, if any
        size = shift = 0
        while True:  # leb128
            if start >= len(stream):
                raise ValueError(f"AV1 OBU at byte {at} is cut short")
            byte = stream[start]
            start += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        end = start + size
        if end > len(stream):
            raise ValueError(f"AV1 OBU at byte {at} is cut short")
        yield header >> 3 & 0xF, stream[at:end], stream[start:end]
        at = end


def _without_temporal_delimiters(stream: bytes) -> bytes:
    return b"".join(obu for kind, obu, _ in _obus(stream) if kind != _OBU_TEMPORAL_DELIMITER)


def _with_temporal_delimiters(payload: bytes) -> bytes:
    """A temporal delimiter before the first OBU and before the first OBU after each shown frame."""
    out = []
    shown, reduced = True, False
    for kind, obu, body in _obus(payload):
        if shown and kind not in _OBU_WITHIN_FRAME:
            out.append(_TEMPORAL_DELIMITER)
            shown = False
        if kind == _OBU_SEQUENCE_HEADER and body:
            reduced = bool(body[0] >> 3 & 1)  # seq_profile (3 bits), still_picture, reduced_still_picture_header
        elif kind in (_OBU_FRAME_HEADER, _OBU_FRAME) and body:
            # The uncompressed header opens with show_existing_frame, then frame_type (2 bits), show_frame;
            # a reduced still-picture header shows every frame.
            shown = reduced or bool(body[0] >> 7) or bool(body[0] >> 4 & 1)
        out.append(obu)
    return b"".join(out)


class Av1Codec(VideoCodec):
    """AV1 with libaom: slices as frames, monochrome (4:0:0) gray of up to 12 bits, constant quality
    (`-crf` with `-b:v 0`, libaom's integer CRF 0..63), `-cpu-used 4`, row multithreading on every
    core, decoded by dav1d (else libaom). The payload is the low-overhead OBU stream (`-f obu`) without
    its temporal delimiters: the codec's own bytes, with no container or per-frame framing."""

    name = AV1
    key = "av1"
    encoder = "libaom-av1"
    stream = "obu"
    decoders = ("libdav1d", "libaom-av1")
    min_side = 2
    coarsest, finest = AV1_CRF_COARSEST, AV1_CRF_FINEST
    integral = True

    def quality(self, setting: float) -> list[str]:
        return [
            "-crf",
            str(round(setting)),
            "-b:v",
            "0",
            "-cpu-used",
            str(AV1_CPU_USED),
            "-row-mt",
            "1",
            "-threads",
            str(cpu_cores()),
        ]

    def pack(self, stream: bytes) -> bytes:
        return _without_temporal_delimiters(stream)

    def unpack(self, payload: bytes) -> bytes:
        return _with_temporal_delimiters(payload)

    def describe(self, setting: float) -> str:
        return f"crf={round(setting)}"


# ---------------------------------------------------------------------------------------------------
# The registry and the entry points.

#: Every classical codec, in the tables' order (CODECS holds their names).
CLASSICAL: tuple[ClassicalCodec, ...] = (Jpeg2000Codec(), HevcCodec(), H264Codec(), Av1Codec(), SperrCodec())
_BY_NAME = {codec.name: codec for codec in CLASSICAL}


def codec_named(name: str) -> ClassicalCodec:
    """The codec called `name` (one of CODECS), or ValueError."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}") from None


def availability() -> dict[str, str | None]:
    """Codec name -> None if usable here, else a one-line reason."""
    return {codec.name: codec.unavailable() for codec in CLASSICAL}


def compress(volume: Volume, codec: str, ratio: float) -> ClassicalResult:
    """Compress `volume` with one classical codec at the target ratio (raw bytes / produced bytes)."""
    return codec_named(codec).compress(volume, ratio)
