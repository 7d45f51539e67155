"""The header of a .moec file: what a decoder needs to rebuild the voxels (shape, stored dtype and
NIfTI scaling, intensity range, coordinate convention, model configuration, quantization settings)
and how the file was made, as JSON inside the container (codec.format.container). Tensor shapes
follow from the model configuration and are never stored. Reading validates every field against
sane limits before anything is allocated; any problem is a MoecFormatError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import nibabel as nib
import numpy as np
import torch

from codec import __version__
from codec.coding.quantize import QuantConfig
from codec.errors import MoecFormatError
from codec.format.container import VERSION, Container, unpack_container
from codec.format.dicom_entry import identity_from_json, identity_to_json
from codec.io.dicom_identity import DicomIdentity
from codec.io.volume import SUPPORTED_DTYPES, Volume, scaling_fits
from codec.model import ENCODERS, PARTITIONS, ModelConfig
from codec.model.coords import COORDINATE_CONVENTION
from codec.settings import GRID_INTERPOLATIONS

MAX_AXIS = 1 << 15

MAX_VOXELS = 1 << 31

MAX_PARAMETERS = 1 << 24


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
    floor: float | None = None  # decoded values at or below it become vmin (codec.decode.floor; version 4)
    #: Patient, study and series of a volume compressed from DICOM (codec.io.dicom), so that the
    #: reconstruction can be written back as a derived series under them; absent otherwise.
    dicom: DicomIdentity | None = None

    @property
    def affine(self) -> np.ndarray:
        return nib.Nifti1Header(binaryblock=self.nifti).get_best_affine()

    @property
    def raw_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def to_json(self) -> dict:
        return (
            {
                "shape": list(self.shape),
                "dtype": self.dtype.name,
                "scaling": [self.slope, self.inter],
                "range": [self.vmin, self.vmax],
                "coords": COORDINATE_CONVENTION,
                "model": self.model.to_dict(),
                "weights": {
                    "bits": self.quant.bits,
                    "extra": self.quant.first_layer_extra_bits,
                    "granularity": self.quant.granularity,
                },
                "train": self.train,
                "made_by": self.made_by,
            }
            | ({} if self.floor is None else {"floor": self.floor})
            | ({} if self.dicom is None else {"dicom": identity_to_json(self.dicom)})
        )


def made_by() -> dict:
    return {"moec": __version__, "torch": torch.__version__.split("+")[0], "numpy": np.__version__}


def describe(volume: Volume, model: ModelConfig, quant: QuantConfig, train: dict) -> MoecMeta:
    """The header for compressing `volume` with this model; the NIfTI header carries the affine."""
    hdr = nib.Nifti1Header(binaryblock=volume.header).copy()
    if not np.allclose(hdr.get_best_affine(), volume.affine, atol=1e-6):
        hdr.set_sform(volume.affine, code=int(hdr["sform_code"]) or 2)
    vmin, vmax = volume.value_range
    return MoecMeta(
        shape=volume.shape,
        dtype=np.dtype(volume.stored_dtype),
        slope=volume.slope,
        inter=volume.inter,
        vmin=vmin,
        vmax=vmax,
        nifti=bytes(hdr.binaryblock),
        model=model,
        quant=quant,
        train=dict(train),
        made_by=made_by(),
        dicom=volume.dicom,
    )


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MoecFormatError(f"header field {name} must be an integer in {lo}..{hi}, not {value!r}")
    return value


def _float(value: Any, name: str) -> float:
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


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: The training record's fields (codec.fit.train.train_record) and what each must be. The record only
#: informs (`moec info`, the plugin), but what reads it must be able to trust its types.
_TRAIN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "seed": int,
    "steps": int,
    "runs": int,
    "batch": int,
    "minutes": (int, float, type(None)),
    "lr": (int, float),
    "balance": (int, float),
    "gate_gradient": (int, float),
    "pretrain": str,
    "sample_activity": (int, float),
}


def _train_record(d: dict) -> dict:
    for key, kind in _TRAIN_FIELDS.items():
        value = d.get(key)
        if key in d and (
            not isinstance(value, kind)
            or isinstance(value, bool)
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise MoecFormatError(f"the training record's field {key!r} is malformed: {_short(value)}")
    stages = d.get("stages", [0, 0, 0])
    if not (
        isinstance(stages, list)
        and len(stages) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in stages)
    ):
        raise MoecFormatError(f"the training record's field 'stages' must be three step counts, not {_short(stages)}")
    roi = d.get("roi")
    if "roi" in d and not (
        isinstance(roi, dict)
        and isinstance(roi.get("voxels"), int)
        and not isinstance(roi.get("voxels"), bool)
        and roi["voxels"] > 0
        and isinstance(roi.get("weight"), (int, float))
        and not isinstance(roi.get("weight"), bool)
        and math.isfinite(roi["weight"])
        and roi["weight"] >= 1
    ):
        raise MoecFormatError(
            f"the training record's field 'roi' must give the region's voxels and weight, not {_short(roi)}"
        )
    return d


#: What a `made_by` entry may be: a package name and its version, printed by `moec info` and the
#: plugin, so never anything a terminal would act on (escape sequences) and never long.
_MADE_BY_TEXT = re.compile(r"[A-Za-z0-9_.+-]{1,40}")


def _made_by(d: dict) -> dict:
    if len(d) > 16 or not all(
        isinstance(k, str) and isinstance(v, str) and _MADE_BY_TEXT.fullmatch(k) and _MADE_BY_TEXT.fullmatch(v)
        for k, v in d.items()
    ):
        raise MoecFormatError("the header's made_by entry must name at most 16 packages and versions in plain text")
    return d


def _field(d: dict, key: str, kind: type, where: str = "header") -> Any:
    if key not in d:
        raise MoecFormatError(f"the {where} lacks the field {key!r}")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MoecFormatError(f"the {where} field {key!r} has the wrong type")
    return value


#: Model fields that format version 1 did not have, with the value every version-1 file means.
_ADDED_IN_2 = {"encoder": "siren", "grid_channels": 2, "grid_levels": 4, "grid_finest": [], "router_features": True}


def _choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise MoecFormatError(f"header field {name} must be one of {', '.join(options)}, not {_short(value)}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise MoecFormatError(f"header field {name} must be true or false")
    return value


def _axes(value: Any, name: str, lo: int, hi: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 4:
        raise MoecFormatError(f"header field {name} must be a short list")
    return tuple(_int(n, name, lo, hi) for n in value)


_COUNT = partial(_int, lo=0, hi=4096)
#: How each field of a stored model configuration is read, with its limits: a field ModelConfig
#: gains must be added here, or every file describing it is refused.
MODEL_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "dims": _COUNT,
    "experts": _COUNT,
    "top_k": _COUNT,
    "partition": partial(_choice, options=PARTITIONS),
    "encoder_width": _COUNT,
    "encoder_layers": _COUNT,
    "router_width": _COUNT,
    "expert_width": _COUNT,
    "expert_layers": _COUNT,
    "out_channels": _COUNT,
    "omega0": _float,
    "block_grid": partial(_axes, lo=1, hi=64),
    "encoder": partial(_choice, options=ENCODERS),
    "grid_channels": _COUNT,
    "grid_levels": _COUNT,
    "grid_finest": partial(_axes, lo=1, hi=1024),
    "grid_hold": partial(_axes, lo=0, hi=8),
    "router_features": _flag,
    "grid_interpolation": partial(_choice, options=GRID_INTERPOLATIONS),
}


def _model_config(d: dict, ndim: int, version: int) -> ModelConfig:
    if version == 1:
        if set(d) & set(_ADDED_IN_2):
            raise MoecFormatError("a version-1 file cannot describe a latent-grid encoder")
        d = {**_ADDED_IN_2, **d}
    if "grid_hold" in d and version < 6:
        raise MoecFormatError(f"a version-{version} file cannot describe a grid whose axes hold")
    if "grid_interpolation" in d and version < 7:
        raise MoecFormatError(f"a version-{version} file cannot describe a grid read by cubic interpolation")
    # Optional: a grid that halves every axis at every level leaves grid_hold out, a trilinear one
    # grid_interpolation.
    d = {"grid_hold": [], "grid_interpolation": "linear", **d}
    if set(d) != set(MODEL_FIELDS):
        raise MoecFormatError(f"the model description has unexpected fields: {sorted(set(d) ^ set(MODEL_FIELDS))}")
    values = {key: read(d[key], f"model.{key}") for key, read in MODEL_FIELDS.items()}
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
    # Decoding computes in float32; loading refuses a volume by the same rule, so that every volume
    # that loads makes a file that reads back.
    if not scaling_fits(slope, inter, vmin, vmax):
        raise MoecFormatError(
            f"the intensity range {vmin:g} .. {vmax:g} or the scaling (slope {slope:g}, "
            f"intercept {inter:g}) is beyond what a NIfTI volume can hold"
        )
    if _field(j, "coords", str) != COORDINATE_CONVENTION:
        raise MoecFormatError(f"unknown coordinate convention {j['coords']!r}")
    model = _model_config(_field(j, "model", dict), len(shape), container.version)
    w = _field(j, "weights", dict)
    try:
        quant = QuantConfig(
            _int(w.get("bits"), "weights.bits", 2, 16),
            _int(w.get("extra"), "weights.extra", 0, 6),
            _field(w, "granularity", str, "weights"),
        )
    except ValueError as exc:
        raise MoecFormatError(str(exc)) from None
    train = _train_record(_field(j, "train", dict))
    made = _made_by(_field(j, "made_by", dict))
    try:
        hdr = nib.Nifti1Header(binaryblock=container.nifti, check=True)
        dims = tuple(int(d) for d in hdr.get_data_shape())
        affine = hdr.get_best_affine()
    except Exception as exc:  # nibabel reports a bad header with several exception types
        raise MoecFormatError(f"the stored NIfTI header is invalid ({exc})") from None
    if dims[: len(shape)] != shape or any(d != 1 for d in dims[len(shape) :]):
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
    return MoecMeta(
        shape=shape,
        dtype=np.dtype(dtype_name),
        slope=slope,
        inter=inter,
        vmin=vmin,
        vmax=vmax,
        nifti=container.nifti,
        model=model,
        quant=quant,
        train=train,
        made_by=made,
        version=container.version,
        floor=floor,
        dicom=dicom,
    )


def read_meta(data: bytes, name: str = "the file") -> MoecMeta:
    """The validated header of a .moec file, without decoding its weights."""
    return parse_meta(unpack_container(data, name))
