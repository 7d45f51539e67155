"""A trained model and its volume's description <-> the bytes of a .moec file.

The header (JSON inside the container) holds what a decoder needs to rebuild the voxels: shape,
stored dtype and NIfTI scaling, intensity range, coordinate convention, model configuration,
quantization settings, and how the file was made. Tensor shapes follow from the model configuration
and are never stored. The payload is either float16 weights, or (the default) a small binary table
of per-tensor steps and symbol models followed by one range-coded stream of integer symbols:

    per tensor, in ModelConfig.tensor_shapes() order:
        u8 family | i16 lowest symbol | i16 highest symbol | f16 scale | f16 step x n_steps
        [u16 count x (highest - lowest + 1), for the table family only]
        [u8 bins, then per bin: u8 family | i16 lo | i16 hi | f16 scale | [u16 counts],
         for the context family only (latent grids, format version 3): the residuals' models]
    then the range coder's 32-bit words.

Reading validates every field against sane limits before anything is allocated; any problem is a
MoecFormatError.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from . import __version__, entropy
from .bitstream import VERSION, Container, pack_container, unpack_container
from .coords import COORDINATE_CONVENTION
from .dicom import DicomIdentity, identity_from_json
from .errors import MoecFormatError
from .files import atomic_write_bytes
from .model import ENCODERS, ModelConfig, MoEC, is_latent
from .quantize import MAX_SYMBOL, QuantConfig, dequantize, latent_steps, max_steps, quantize, step_shape, to_float16
from .volume import SUPPORTED_DTYPES, Volume

MAX_AXIS = 1 << 15
MAX_VOXELS = 1 << 31
MAX_PARAMETERS = 1 << 24
#: A coded weight costs well over 1/64 of a byte; a file claiming more weights than this per payload
#: byte is hostile, and is refused before anything is decoded or allocated.
MAX_WEIGHTS_PER_BYTE = 64
_TABLE_ENTRY = struct.Struct("<Bhhe")


@dataclass(frozen=True, eq=False)
class MoecMeta:
    """The validated header of a .moec file."""

    shape: tuple[int, ...]
    dtype: np.dtype
    slope: float
    inter: float
    vmin: float
    vmax: float
    nifti: bytes
    model: ModelConfig
    quant: QuantConfig
    train: dict
    made_by: dict
    version: int = VERSION  # of the container it was read from (new files: the current one)
    floor: float | None = None  # decoded values at or below it become vmin (codec.floor; version 4)
    #: Patient, study and series of a volume compressed from DICOM (codec.dicom), so that the
    #: reconstruction can be written back as a derived series under them; absent otherwise.
    dicom: DicomIdentity | None = None

    @property
    def affine(self) -> np.ndarray:
        return nib.Nifti1Header(binaryblock=self.nifti).get_best_affine()

    @property
    def raw_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "scaling": [self.slope, self.inter],
            "range": [self.vmin, self.vmax],
            "coords": COORDINATE_CONVENTION,
            "model": self.model.to_dict(),
            "weights": {"bits": self.quant.bits, "extra": self.quant.first_layer_extra_bits,
                        "granularity": self.quant.granularity},
            "train": self.train,
            "made_by": self.made_by,
        } | ({} if self.floor is None else {"floor": self.floor}) | (
            {} if self.dicom is None else {"dicom": self.dicom.to_json()})


@dataclass(frozen=True, eq=False)
class MoecFile:
    meta: MoecMeta
    model: MoEC
    nbytes: int

    @property
    def ratio(self) -> float:
        return self.meta.raw_bytes / self.nbytes


def made_by() -> dict:
    return {"moec": __version__, "torch": torch.__version__.split("+")[0], "numpy": np.__version__}


def describe(volume: Volume, model: ModelConfig, quant: QuantConfig, train: dict) -> MoecMeta:
    """The header for compressing `volume` with this model; the NIfTI header carries the affine."""
    hdr = nib.Nifti1Header(binaryblock=volume.header).copy()
    if not np.allclose(hdr.get_best_affine(), volume.affine, atol=1e-6):
        hdr.set_sform(volume.affine, code=int(hdr["sform_code"]) or 2)
    vmin, vmax = volume.value_range
    return MoecMeta(volume.shape, np.dtype(volume.dtype), volume.slope, volume.inter, vmin, vmax,
                    bytes(hdr.binaryblock), model, quant, dict(train), made_by(), dicom=volume.dicom)


# --- writing ---------------------------------------------------------------------------------------

def tensor_steps(model: MoEC, quant: QuantConfig,
                 fixed: Mapping[str, np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
    """Each tensor's quantization steps: `fixed` ones as they are (the frozen encoder and router),
    latent grids at the steps their rate asks for, the rest from their largest weight at the
    configured bit width. Unrounded: `scaled_steps` turns them into the stored float16 steps."""
    fixed = fixed or {}
    steps: dict[str, Any] = {}  # a frozen float16 tensor keeps its None
    # A latent stack's levels share one rate (quantize.latent_steps): set together, or all fixed.
    grids = {name: p.detach().cpu().numpy() for name, p in model.named_tensors() if is_latent(name)}
    if grids and not all(name in fixed for name in grids):
        steps.update(zip(grids, latent_steps(list(grids.values()), quant.latent_bits)))
    for name, param in model.named_tensors():
        if name in fixed:
            steps[name] = fixed[name]
        elif name not in steps:
            bits = quant.bits_for(name, model.config.coordinate_layer)
            steps[name] = max_steps(param.detach().cpu().numpy(), bits, quant.granularity)
    return steps


def scaled_steps(base: dict[str, np.ndarray], multiplier: float,
                 fixed: Mapping[str, np.ndarray | None] | None = None) -> dict[str, np.ndarray]:
    """`base` steps times `multiplier` (coarser as it grows), as stored; `fixed` ones untouched."""
    fixed = fixed or {}
    return {name: step if name in fixed else to_float16(np.clip(step * multiplier, 6.0e-8, 6.0e4))
            for name, step in base.items()}


def finest_multiplier(model: MoEC, base: dict[str, np.ndarray],
                      fixed: Mapping[str, np.ndarray | None] | None = None) -> float:
    """The smallest multiplier of `base` at which every scaled tensor still holds its largest
    weight in a symbol (MAX_SYMBOL); finer, symbols clip and the weights come out wrong."""
    fixed = fixed or {}
    peaks = {name: np.abs(p.detach().cpu().numpy()) for name, p in model.named_tensors() if name not in fixed}

    def clips(multiplier: float) -> bool:
        steps = scaled_steps(base, multiplier, fixed)
        return any(np.max(w / steps[name], initial=0.0) > MAX_SYMBOL for name, w in peaks.items())

    multiplier = max((float(np.max(w / (np.asarray(base[name]) * MAX_SYMBOL), initial=0.0))
                      for name, w in peaks.items()),
                     default=0.0)
    # Small steps are float16 subnormals, stored up to several percent finer than asked.
    while multiplier > 0 and clips(multiplier):
        multiplier *= 1.05
    return multiplier


def encode_payload(model: MoEC, quant: QuantConfig, steps: dict[str, np.ndarray] | None) -> bytes:
    tensors = [(name, p.detach().cpu().numpy().astype(np.float32)) for name, p in model.named_tensors()]
    if quant.float16:
        return b"".join(w.astype("<f2").tobytes() for _, w in tensors)
    assert steps is not None
    symbols = [quantize(w, steps[name]) for name, w in tensors]
    models = [entropy.fit_model(s, spatial=is_latent(name)) for (name, _), s in zip(tensors, symbols)]
    table = b"".join(_model_entry(m, steps[name]) for (name, _), m in zip(tensors, models))
    return table + entropy.encode(symbols, models)


def _model_entry(model: entropy.SymbolModel, step: np.ndarray | None = None) -> bytes:
    """A symbol model as the table stores it (with the tensor's steps, for a top-level entry)."""
    entry = _TABLE_ENTRY.pack(model.family, model.lo, model.hi, model.scale)
    if step is not None:
        entry += step.astype("<f2").tobytes()
    entry += np.asarray(model.counts, dtype="<u2").tobytes()
    if model.family == entropy.CONTEXT:
        entry += bytes([len(model.bins)]) + b"".join(_model_entry(m) for m in model.bins)
    return entry


def encode(model: MoEC, meta: MoecMeta, steps: dict[str, np.ndarray] | None) -> bytes:
    """The complete .moec bytes for `model` (steps: from scaled_steps, None for float16)."""
    return assemble(meta, encode_payload(model, meta.quant, steps))


def assemble(meta: MoecMeta, payload: bytes) -> bytes:
    """The .moec bytes of a header and an already coded payload."""
    return pack_container(meta.to_json(), meta.nifti, payload)


def write(path: str | Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


# --- reading ---------------------------------------------------------------------------------------

def _int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MoecFormatError(f"header field {name} must be an integer in {lo}..{hi}, not {value!r}")
    return value


def _float(value, name: str) -> float:
    problem = MoecFormatError(f"header field {name} must be a finite number, not {_short(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise problem
    try:
        number = float(value)  # an integer of a thousand digits is valid JSON but overflows a float
    except OverflowError:
        raise problem from None
    if not math.isfinite(number):
        raise problem
    return number


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: The training record's fields (codec.train.train_record) and what each must be. The record only
#: informs (`moec info`, the plugin), but what reads it must be able to trust its types.
_TRAIN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "seed": int, "steps": int, "runs": int, "batch": int, "minutes": (int, float, type(None)),
                 "lr": (int, float), "balance": (int, float), "gate_gradient": (int, float), "pretrain": str}


def _train_record(d: dict) -> dict:
    for key, kind in _TRAIN_FIELDS.items():
        value = d.get(key)
        if key in d and (not isinstance(value, kind) or isinstance(value, bool)
                         or (isinstance(value, float) and not math.isfinite(value))):
            raise MoecFormatError(f"the training record's field {key!r} is malformed: {_short(value)}")
    stages = d.get("stages", [0, 0, 0])
    if not (isinstance(stages, list) and len(stages) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in stages)):
        raise MoecFormatError(f"the training record's field 'stages' must be three step counts, not {_short(stages)}")
    roi = d.get("roi")
    if "roi" in d and not (isinstance(roi, dict) and isinstance(roi.get("voxels"), int)
                           and not isinstance(roi.get("voxels"), bool) and roi["voxels"] > 0
                           and isinstance(roi.get("weight"), (int, float)) and not isinstance(roi.get("weight"), bool)
                           and math.isfinite(roi["weight"]) and roi["weight"] >= 1):
        raise MoecFormatError(f"the training record's field 'roi' must give the region's voxels and weight, "
                              f"not {_short(roi)}")
    return d


def _field(d: dict, key: str, kind: type, where: str = "header"):
    if key not in d:
        raise MoecFormatError(f"the {where} lacks the field {key!r}")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MoecFormatError(f"the {where} field {key!r} has the wrong type")
    return value


#: Model fields that format version 1 did not have, with the value every version-1 file means.
_ADDED_IN_2 = {"encoder": "siren", "grid_channels": 2, "grid_levels": 4, "grid_finest": [], "router_features": True}


def _model_config(d: dict, ndim: int, version: int) -> ModelConfig:
    known = {f for f in ModelConfig.__dataclass_fields__}
    if version == 1:
        if set(d) & set(_ADDED_IN_2):
            raise MoecFormatError("a version-1 file cannot describe a latent-grid encoder")
        d = {**_ADDED_IN_2, **d}
    if "grid_hold" in d and version < 6:
        raise MoecFormatError(f"a version-{version} file cannot describe a grid whose axes hold")
    d = {"grid_hold": [], **d}  # optional: a grid that halves every axis at every level leaves it out
    if set(d) != known:
        raise MoecFormatError(f"the model description has unexpected fields: {sorted(set(d) ^ known)}")
    values: dict[str, Any] = {}
    for key in known - {"partition", "omega0", "block_grid", "encoder", "grid_finest", "grid_hold", "router_features"}:
        values[key] = _int(d[key], f"model.{key}", 0, 4096)
    if not isinstance(d["router_features"], bool):
        raise MoecFormatError("model.router_features must be true or false")
    values["router_features"] = d["router_features"]
    values["omega0"] = _float(d["omega0"], "model.omega0")
    if d["partition"] not in ("learned", "blocks"):
        raise MoecFormatError(f"unknown partition {d['partition']!r}")
    values["partition"] = d["partition"]
    if d["encoder"] not in ENCODERS:
        raise MoecFormatError(f"unknown encoder {d['encoder']!r}")
    values["encoder"] = d["encoder"]
    for key, low, limit in (("block_grid", 1, 64), ("grid_finest", 1, 1024), ("grid_hold", 0, 8)):
        axes = d[key]
        if not isinstance(axes, list) or len(axes) > 4:
            raise MoecFormatError(f"model.{key} must be a short list")
        values[key] = tuple(_int(n, f"model.{key}", low, limit) for n in axes)
    try:
        config = ModelConfig(**values)
    except ValueError as exc:
        raise MoecFormatError(str(exc)) from None
    if config.dims != ndim:
        raise MoecFormatError(f"the model reads {config.dims} coordinates but the volume is {ndim}D")
    if config.parameter_count() > MAX_PARAMETERS:
        raise MoecFormatError(f"the model claims {config.parameter_count()} parameters (limit {MAX_PARAMETERS})")
    return config


def parse_meta(container: Container) -> MoecMeta:
    j = container.meta
    shape_list = _field(j, "shape", list)
    if len(shape_list) not in (3, 4):
        raise MoecFormatError(f"the volume must be 3D or 4D, not {len(shape_list)}D")
    shape = tuple(_int(n, "shape", 1, MAX_AXIS) for n in shape_list)
    if math.prod(shape) > MAX_VOXELS:
        raise MoecFormatError(f"the volume claims {math.prod(shape)} voxels (limit {MAX_VOXELS})")
    dtype_name = _field(j, "dtype", str)
    if dtype_name not in SUPPORTED_DTYPES:
        raise MoecFormatError(f"unsupported stored dtype {dtype_name!r}")
    scaling = _field(j, "scaling", list)
    rng = _field(j, "range", list)
    if len(scaling) != 2 or len(rng) != 2:
        raise MoecFormatError("scaling and range must be pairs")
    slope, inter = (_float(v, "scaling") for v in scaling)
    vmin, vmax = (_float(v, "range") for v in rng)
    if slope == 0 or vmin > vmax:
        raise MoecFormatError("scaling slope is zero or the intensity range is reversed")
    with np.errstate(all="ignore"):
        # Decoding computes in float32: the span of the range and the stored values of its ends must
        # stay finite and the slope a normal number there (a float32 holds about 1e-38 .. 3e38).
        as32 = np.array([vmin, vmax, slope, inter], dtype=np.float32)
        span = as32[1] - as32[0]
        ends = (as32[:2] - as32[3]) / as32[2]
    if not (np.isfinite(as32).all() and np.isfinite(span) and np.isfinite(ends).all()
            and abs(slope) >= np.finfo(np.float32).tiny):
        raise MoecFormatError(f"the intensity range {vmin:g} .. {vmax:g} or the scaling (slope {slope:g}, "
                              f"intercept {inter:g}) is beyond what a NIfTI volume can hold")
    if _field(j, "coords", str) != COORDINATE_CONVENTION:
        raise MoecFormatError(f"unknown coordinate convention {j['coords']!r}")
    model = _model_config(_field(j, "model", dict), len(shape), container.version)
    w = _field(j, "weights", dict)
    try:
        quant = QuantConfig(_int(w.get("bits"), "weights.bits", 2, 16), _int(w.get("extra"), "weights.extra", 0, 6),
                            _field(w, "granularity", str, "weights"))
    except ValueError as exc:
        raise MoecFormatError(str(exc)) from None
    train = _train_record(_field(j, "train", dict))
    made = _field(j, "made_by", dict)
    try:
        hdr = nib.Nifti1Header(binaryblock=container.nifti, check=True)
        dims = tuple(int(d) for d in hdr.get_data_shape())
        affine = hdr.get_best_affine()
    except Exception as exc:  # nibabel reports a bad header with several exception types
        raise MoecFormatError(f"the stored NIfTI header is invalid ({exc})") from None
    if dims[: len(shape)] != shape or any(d != 1 for d in dims[len(shape):]):
        raise MoecFormatError(f"the NIfTI header's shape {dims} does not match the volume's {shape}")
    if not np.isfinite(affine).all():
        raise MoecFormatError("the NIfTI header's affine is not finite")
    floor = None
    if "floor" in j:
        if container.version < 4:
            raise MoecFormatError(f"a version-{container.version} file cannot hold a floor")
        floor = _float(j["floor"], "floor")
        if not vmin <= floor <= vmax:
            raise MoecFormatError(f"the floor {floor:g} is outside the intensity range {vmin:g} .. {vmax:g}")
    # Optional in every version: a reader that predates it ignores it, and a file without it is a
    # volume that did not come from DICOM.
    dicom = identity_from_json(j["dicom"]) if "dicom" in j else None
    if dicom is not None and len(shape) != 3:
        raise MoecFormatError("a DICOM series is 3D; the header's dicom entry is on a 4D volume")
    return MoecMeta(shape, np.dtype(dtype_name), slope, inter, vmin, vmax, container.nifti, model, quant,
                    train, made, container.version, floor, dicom)


def read_table(meta: MoecMeta, payload: bytes) -> tuple[list[entropy.SymbolModel], list[np.ndarray], int]:
    """The per-tensor symbol models and steps at the start of a quantized payload, and where the
    coded stream begins."""
    at, models, steps = 0, [], []
    for name, shape in meta.model.tensor_shapes():
        n_steps = math.prod(step_shape(shape, meta.quant.granularity))
        family, lo, hi, scale, after_entry = _read_entry(payload, at)
        end = after_entry + 2 * n_steps
        if end > len(payload):
            raise MoecFormatError("the weight table is truncated")
        step = np.frombuffer(payload[after_entry:end], dtype="<f2").astype(np.float32)
        if not (np.isfinite(step).all() and (step > 0).all()):
            raise MoecFormatError("the weight table holds an invalid quantization step")
        if family == entropy.CONTEXT and not (meta.version >= 3 and is_latent(name)):
            raise MoecFormatError("the weight table holds a context model where none can be")
        model, at = _read_model(payload, end, family, lo, hi, scale)
        models.append(model)
        steps.append(step.reshape(step_shape(shape, meta.quant.granularity)))
    return models, steps, at


def _read_entry(payload: bytes, at: int) -> tuple[int, int, int, float, int]:
    if at + _TABLE_ENTRY.size > len(payload):
        raise MoecFormatError("the weight table is truncated")
    family, lo, hi, scale = _TABLE_ENTRY.unpack_from(payload, at)
    if family >= len(entropy.FAMILIES) or lo > hi or not (math.isfinite(scale) and scale > 0):
        raise MoecFormatError("the weight table holds an invalid symbol model")
    return family, lo, hi, float(scale), at + _TABLE_ENTRY.size


def _read_model(payload: bytes, at: int, family: int, lo: int, hi: int,
                scale: float) -> tuple[entropy.SymbolModel, int]:
    """The rest of a symbol model whose fixed entry has been read: its table or its bins."""
    if family == entropy.TABLE:
        if hi - lo >= entropy.MAX_TABLE:
            raise MoecFormatError("the weight table holds a frequency table over too many symbols")
        end = at + 2 * (hi - lo + 1)
        if end > len(payload):
            raise MoecFormatError("the weight table is truncated")
        counts = tuple(int(c) for c in np.frombuffer(payload[at:end], dtype="<u2"))
        if not any(counts):
            raise MoecFormatError("the weight table holds an empty frequency table")
        return entropy.SymbolModel(family, scale, lo, hi, counts), end
    if family != entropy.CONTEXT:
        return entropy.SymbolModel(family, scale, lo, hi), at
    if at >= len(payload):
        raise MoecFormatError("the weight table is truncated")
    n_bins = payload[at]
    if n_bins != entropy.context.BINS:
        raise MoecFormatError(f"the weight table holds a context model of {n_bins} bins, not {entropy.context.BINS}")
    at += 1
    bins = []
    for _ in range(n_bins):
        sub_family, sub_lo, sub_hi, sub_scale, at = _read_entry(payload, at)
        if sub_family == entropy.CONTEXT:
            raise MoecFormatError("the weight table holds a context model inside a context model")
        sub, at = _read_model(payload, at, sub_family, sub_lo, sub_hi, sub_scale)
        bins.append(sub)
    return entropy.SymbolModel(family, scale, lo, hi, bins=tuple(bins)), at


def read_meta(data: bytes, name: str = "the file") -> MoecMeta:
    """The validated header of a .moec file, without decoding its weights."""
    return parse_meta(unpack_container(data, name))


def stored_steps(data: bytes) -> dict[str, np.ndarray]:
    """The quantization step of every tensor of a quantized .moec file (for analysis tools)."""
    return {name: step for name, (_, step) in _stored_table(data).items()}


def stored_models(data: bytes) -> dict[str, entropy.SymbolModel]:
    """The symbol model of every tensor of a quantized .moec file (for `moec info` and analysis)."""
    return {name: model for name, (model, _) in _stored_table(data).items()}


def _stored_table(data: bytes) -> dict[str, tuple[entropy.SymbolModel, np.ndarray]]:
    container = unpack_container(data)
    meta = parse_meta(container)
    if meta.quant.float16:
        raise MoecFormatError("a float16 file has no quantization steps")
    models, steps, _ = read_table(meta, container.payload)
    return {name: pair for (name, _), pair in zip(meta.model.tensor_shapes(), zip(models, steps))}


def _decode_tensors(meta: MoecMeta, payload: bytes) -> list[np.ndarray]:
    shapes = meta.model.tensor_shapes()
    count = meta.model.parameter_count()
    if count > MAX_WEIGHTS_PER_BYTE * len(payload) + 1024:
        raise MoecFormatError(f"the header claims {count} weights but the payload has only {len(payload)} bytes")
    if meta.quant.float16:
        need = 2 * meta.model.parameter_count()
        if len(payload) != need:
            raise MoecFormatError(f"the float16 weights take {len(payload)} bytes, not {need}")
        flat = np.frombuffer(payload, dtype="<f2").astype(np.float32)
        out, at = [], 0
        for _, shape in shapes:
            n = math.prod(shape)
            out.append(flat[at:at + n].reshape(shape))
            at += n
        return out
    models, steps, at = read_table(meta, payload)
    symbols = entropy.decode(payload[at:], models, [s for _, s in shapes])
    out = []
    for (_, shape), sym, model, step in zip(shapes, symbols, models, steps):
        if sym.size and (sym.min() < model.lo or sym.max() > model.hi):
            raise MoecFormatError("the weight stream decodes to symbols outside their range")
        out.append(dequantize(sym.reshape(shape), step))
    return out


def decode(data: bytes, name: str = "the file") -> MoecFile:
    """Bytes of a .moec file -> its header and the model with the stored weights."""
    container = unpack_container(data, name)
    meta = parse_meta(container)
    tensors = _decode_tensors(meta, container.payload)
    model = MoEC(meta.model)
    with torch.no_grad():
        for (tensor_name, param), values in zip(model.named_tensors(), tensors):
            if not np.isfinite(values).all():
                raise MoecFormatError(f"{tensor_name} holds non-finite weights")
            param.copy_(torch.from_numpy(np.ascontiguousarray(values)))
    model.eval()
    return MoecFile(meta, model, len(data))


def read(path: str | Path) -> MoecFile:
    path = Path(path)
    if not path.is_file():
        raise MoecFormatError(f"{path} is a folder, not a .moec file" if path.is_dir()
                              else f"no such .moec file: {path}")
    size = path.stat().st_size
    if size > MAX_PARAMETERS * 4 + (1 << 20):
        raise MoecFormatError(f"{path} is {size} bytes, far larger than any .moec file")
    return decode(path.read_bytes(), str(path))
