"""A .moec file as a whole: a trained model and its header <-> bytes <-> a file on disk (written
atomically). `from_bytes` rebuilds the stored network; decoding it to voxels is codec.decode's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec.errors import MoecFormatError
from codec.format.container import pack_container, unpack_container
from codec.format.header import MAX_PARAMETERS, MoecMeta, parse_meta
from codec.format.payload import decode_tensors, encode_payload
from codec.io.files import atomic_write_bytes
from codec.model import MoEC


@dataclass(frozen=True, eq=False)
class MoecFile:
    """A decoded `.moec` file: what it describes, the network, and its size on disk."""

    meta: MoecMeta
    model: MoEC
    nbytes: int
    payload: bytes = b""  # the coded weights as read (what each part of the file costs: codec.eval.expert_rate)

    @property
    def ratio(self) -> float:
        return self.meta.raw_bytes / self.nbytes


def model_bytes(model: MoEC, meta: MoecMeta, qsteps: dict[str, np.ndarray] | None) -> bytes:
    """The complete .moec bytes for `model` (qsteps: from scaled_qsteps, None for float16)."""
    return assemble(meta, encode_payload(model, meta.quant, qsteps))


def assemble(meta: MoecMeta, payload: bytes) -> bytes:
    """The .moec bytes of a header and an already coded payload."""
    return pack_container(meta.to_json(), meta.nifti, payload)


def write(path: str | Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def from_bytes(data: bytes, name: str = "the file", *, admit: Callable[[MoecMeta], None] | None = None) -> MoecFile:
    """Bytes of a .moec file -> its header and the model with the stored weights. `admit` sees the
    validated header before the weights are decoded, and raises to refuse (a decode's cost)."""
    container = unpack_container(data, name)
    meta = parse_meta(container)
    if admit is not None:
        admit(meta)
    tensors = decode_tensors(meta, container.payload)
    model = MoEC(meta.model)
    with torch.no_grad():
        for (tensor_name, param), values in zip(model.named_tensors(), tensors):
            if not np.isfinite(values).all():
                raise MoecFormatError(f"{tensor_name} holds non-finite weights")
            param.copy_(torch.from_numpy(np.ascontiguousarray(values)))
    model.eval()
    return MoecFile(meta, model, len(data), container.payload)


#: The largest file `read` reads: every parameter in float32, and a megabyte of the rest.
MAX_FILE_BYTES = MAX_PARAMETERS * 4 + (1 << 20)


def read(path: str | Path, *, admit: Callable[[MoecMeta], None] | None = None) -> MoecFile:
    """A .moec file from disk (see `from_bytes` for `admit`)."""
    path = Path(path)
    if not path.is_file():
        raise MoecFormatError(
            f"{path} is a folder, not a .moec file" if path.is_dir() else f"no such .moec file: {path}"
        )
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise MoecFormatError(f"{path} is {size} bytes, far larger than any .moec file")
    return from_bytes(path.read_bytes(), str(path), admit=admit)
