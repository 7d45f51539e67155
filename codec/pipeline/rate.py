"""Rate control: a trained model's .moec bytes landed inside the plan's size window.

The experts' and decoder's quantization steps (qsteps) are searched (one multiplier on their base
qsteps, the frozen encoder's and router's kept) for the largest file not above the window's top,
and the decoder's floor (codec.decode.floor) is chosen on the weights as written. `SizedFile` says
how the file was landed, so that a file below the window or without its floor is told, not silent.
`unfloored_file` is the cheaper file a trial compares its candidates by; it takes `should_stop`
(a trial's measure is abandoned on a Stop) and raises `Interrupted` between two codings of the
weights.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from codec.coding.quantize import MAX_SYMBOL
from codec.decode.floor import SAMPLE_VOXELS, choose_floor
from codec.decode.reconstruct import unfloored_values
from codec.errors import MoecError
from codec.fit import sizing
from codec.fit.sizing import Plan
from codec.fit.train import Fitter
from codec.format import moecfile
from codec.format.header import MoecMeta, describe
from codec.format.moecfile import MoecFile
from codec.format.payload import encode_payload, finest_multiplier, scaled_qsteps, tensor_qsteps
from codec.io.volume import Volume

#: The largest weight a file can hold: the largest float16 qstep times the largest symbol.
LARGEST_WEIGHT = 6.0e4 * MAX_SYMBOL
#: Tries at landing a file with its floor: each try makes room for the floor's header bytes.
FLOOR_TRIES = 3

StopAsked = Callable[[], bool] | None


class Interrupted(Exception):
    """A file's landing abandoned because its caller's `should_stop()` said so."""


def stop_if_asked(should_stop: StopAsked) -> None:
    """Interrupted when `should_stop()` says so."""
    if should_stop is not None and should_stop():
        raise Interrupted


@dataclass(frozen=True, eq=False)
class SizedFile:
    """A file's bytes and how they were landed in the plan's size window."""

    data: bytes
    floored: bool  # the header holds the decoder's floor (False: its bytes never fitted below the top)
    below: bool  # smaller than the window's bottom (every other weight at its finest qstep)


def file_qsteps(fitter: Fitter, plan: Plan) -> dict[str, np.ndarray]:
    """The qsteps `file_bytes` would store the unfrozen tensors (experts, decoder) at now, for the
    final stage to train them at. Aimed a quarter of the window below its top, so that the few
    bytes the final stage moves, and the floor's header field, still fit and the file holds
    exactly them."""
    upper = plan.upper_bytes - (plan.upper_bytes - plan.lower_bytes) // 4
    qsteps, _ = _qstep_search(fitter, plan)(_meta(fitter, plan), upper)
    return {name: qstep for name, qstep in qsteps.items() if name not in fitter.frozen_qsteps}


def file_bytes(fitter: Fitter, plan: Plan) -> bytes:
    """The .moec bytes of the model trained so far, landed inside the plan's size window (`sized_file`)."""
    return sized_file(fitter, plan).data


def unfloored_file(fitter: Fitter, plan: Plan, should_stop: StopAsked = None) -> MoecFile:
    """The file of the model trained so far at the top of the plan's size window, without the
    decoder's floor (which `sized_file` chooses on a million decoded voxels): what a trial compares
    its candidates by. MoecError for a diverged model; Interrupted when `should_stop()` says so."""
    _refuse_diverged(fitter)
    meta = _meta(fitter, plan)
    if plan.quant.float16:
        payload = encode_payload(fitter.model, plan.quant, None)
    else:
        _, payload = _qstep_search(fitter, plan, should_stop)(meta, plan.upper_bytes)
    return moecfile.from_bytes(moecfile.assemble(meta, payload))


def sized_file(fitter: Fitter, plan: Plan) -> SizedFile:
    """The .moec bytes of the model trained so far, landed inside the plan's size window, with the
    decoder's floor (codec.decode.floor) chosen on the weights as written: at the qsteps the final
    stage trained at when that file lands in the window, else at the searched qsteps. MoecError
    for a diverged model."""
    model = fitter.model
    _refuse_diverged(fitter)
    meta = _meta(fitter, plan)

    def landed(data: bytes, floored: bool = True) -> SizedFile:
        return SizedFile(data, floored, len(data) < plan.lower_bytes)

    if plan.quant.float16:
        return landed(_with_floor(fitter.volume, meta, encode_payload(model, plan.quant, None)))

    if fitter.trained_qsteps is not None:
        qsteps = {**tensor_qsteps(model, plan.quant, fitter.frozen_qsteps), **fitter.trained_qsteps}
        data = _with_floor(fitter.volume, meta, encode_payload(model, plan.quant, qsteps))
        if plan.lower_bytes <= len(data) <= plan.upper_bytes:
            return landed(data)

    # The floor is chosen on the weights as stored at the searched qsteps and changes only the
    # header: the file keeps exactly those weights when its few header bytes still fit, else the
    # qsteps are searched again with room for them.
    search = _qstep_search(fitter, plan)
    sized = meta
    for _ in range(FLOOR_TRIES):
        _, payload = search(sized, plan.upper_bytes)
        sized = dataclasses.replace(meta, floor=_floor_of(fitter.volume, meta, payload))
        data = moecfile.assemble(sized, payload)
        if len(data) <= plan.upper_bytes:
            return landed(data)
    # The floor's header bytes never fitted: the last searched weights, without a floor.
    return landed(moecfile.assemble(meta, payload), floored=False)


def _refuse_diverged(fitter: Fitter) -> None:
    """MoecError where a weight is not finite or beyond LARGEST_WEIGHT (it has no stored form)."""
    if not all(torch.isfinite(p).all() and p.abs().max() <= LARGEST_WEIGHT for p in fitter.model.parameters()):
        raise MoecError(
            f"training diverged after {fitter.steps_run} steps (weights are no longer finite numbers, "
            "or too large to store); nothing was written: try a lower learning rate (--lr)"
        )


def _meta(fitter: Fitter, plan: Plan) -> MoecMeta:
    return describe(fitter.volume, fitter.model.config, plan.quant, fitter.record())


def _with_floor(volume: Volume, meta: MoecMeta, payload: bytes) -> bytes:
    return moecfile.assemble(dataclasses.replace(meta, floor=_floor_of(volume, meta, payload)), payload)


QStepSearch = Callable[[MoecMeta, int], tuple[dict[str, np.ndarray], bytes]]


def _qstep_search(fitter: Fitter, plan: Plan, should_stop: StopAsked = None) -> QStepSearch:
    """search(meta, upper): the qsteps, and the payload they code to, of the largest file with
    header `meta` not above `upper` bytes: the frozen tensors' qsteps as they are, the others' base
    qsteps scaled by one searched multiplier. The base qsteps (a rate search for latent grids) are
    computed once, and the coded trials are cached, so a second search (room for the floor) reuses
    them."""
    model, frozen = fitter.model, fitter.frozen_qsteps
    base = tensor_qsteps(model, plan.quant, frozen)
    finest = finest_multiplier(model, base, frozen)

    @functools.cache
    def payload_at(multiplier: float) -> bytes:
        stop_if_asked(should_stop)
        return encode_payload(model, plan.quant, scaled_qsteps(base, multiplier, frozen))

    def search(meta: MoecMeta, upper: int) -> tuple[dict[str, np.ndarray], bytes]:
        multiplier = sizing.fit_to_window(lambda m: len(moecfile.assemble(meta, payload_at(m))), upper, finest=finest)
        return scaled_qsteps(base, multiplier, frozen), payload_at(multiplier)

    return search


def sample_voxels(total: int, count: int, seed: int) -> torch.Tensor:
    """Flat indices of a fixed random sample of `count` voxels of `total` (every voxel when there
    are no more), the same for every file made from one volume."""
    if total <= count:
        return torch.arange(total)
    return torch.randint(0, total, (count,), generator=torch.Generator().manual_seed(seed))


def _floor_of(volume: Volume, meta: MoecMeta, payload: bytes) -> float | None:
    """The floor for these weights, chosen on their decoded values at a fixed sample of voxels."""
    moec = moecfile.from_bytes(moecfile.assemble(meta, payload))
    flat = sample_voxels(volume.data.size, SAMPLE_VOXELS, seed=0)
    recon = unfloored_values(moec, flat)
    return choose_floor(volume.data.reshape(-1)[flat.numpy()], recon, meta.vmin, meta.vmax)
