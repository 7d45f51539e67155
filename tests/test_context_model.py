"""The spatial context model of latent grids: prediction, bins, coding, and its place in the file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from codec import pipeline
from codec.coding import context, entropy
from codec.decode.reconstruct import reconstruct
from codec.errors import MoecFormatError
from codec.format import moecfile
from codec.format.container import unpack_container
from codec.format.header import parse_meta
from codec.format.payload import _model_entry, read_table, stored_qsteps
from codec.io.phantom import make_phantom
from codec.settings import TrainConfig

from .test_format import assemble
from .training import train


def smooth_symbols(shape=(2, 14, 11, 9), sigma=1.5, spread=6.0, seed=0) -> np.ndarray:
    """Integer symbols of a spatially smooth field, like a trained grid's latents."""
    rng = np.random.default_rng(seed)
    field = np.stack([gaussian_filter(rng.standard_normal(shape[1:]), sigma) for _ in range(shape[0])])
    return np.rint(field / field.std() * spread).astype(np.int32)


def test_residuals_follow_the_documented_prediction_and_bins():
    """A plain loop over the nodes, written from the module's description."""
    q = np.random.default_rng(1).integers(-5, 6, size=(2, 4, 3, 5))
    r, bins = context.residuals(q)
    at = lambda a, c, i, j, k: a[c, i, j, k] if min(i, j, k) >= 0 else 0  # noqa: E731
    for c, i, j, k in np.ndindex(q.shape):
        total = at(q, c, i - 1, j, k) + at(q, c, i, j - 1, k) + at(q, c, i, j, k - 1)
        assert r[c, i, j, k] == q[c, i, j, k] - (total + 1) // 3
        busy = sum(abs(at(r, c, *n)) for n in ((i - 1, j, k), (i, j - 1, k), (i, j, k - 1)))
        assert bins[c, i, j, k] == min(busy, context.BINS - 1)


def test_every_node_is_on_exactly_one_plane_and_planes_only_look_back():
    w = context.walk((4, 3, 5))
    seen = np.concatenate(w.planes)
    assert np.array_equal(np.sort(seen), np.sort(w.nodes))
    rank = {int(n): p for p, plane in enumerate(w.planes) for n in plane}
    for p, plane in enumerate(w.planes):
        assert np.all(np.diff(plane) > 0)
        for s in w.strides:
            behind = [int(n - s) for n in plane if int(n - s) in rank]
            assert all(rank[b] == p - 1 for b in behind)


@pytest.mark.parametrize("shape", [(2, 14, 11, 9), (1, 1, 1, 7), (3, 5, 1, 4), (2, 3, 4)])
def test_a_smooth_grid_takes_the_context_model_costs_far_less_and_round_trips(shape):
    q = smooth_symbols(shape)
    model = entropy.fit_model(q, spatial=True)
    plain = entropy.coded_bits(q)
    assert entropy.coded_bits(q, spatial=True) <= plain
    data = entropy.encode([q, q.reshape(-1)], [model, entropy.fit_model(q)])
    back = entropy.decode(data, [model, entropy.fit_model(q)], [q.shape, (q.size,)])
    assert np.array_equal(back[0], q) and np.array_equal(back[1], q.reshape(-1))
    if q.size > 1000:
        assert model.family == entropy.CONTEXT and len(model.bins) == context.BINS
        assert entropy.coded_bits(q, spatial=True) < 0.8 * plain
        # The range coder spends what the model says, within a few words.
        ideal = entropy.ideal_bits(q, model) + entropy.ideal_bits(q.reshape(-1), entropy.fit_model(q))
        assert len(data) * 8 <= ideal * 1.01 + 64


def test_white_noise_is_not_forced_into_the_context_model():
    q = np.rint(np.random.default_rng(2).laplace(0, 2, size=(2, 20, 20, 20))).astype(np.int32)
    assert entropy.fit_model(q, spatial=True).family != entropy.CONTEXT
    assert entropy.fit_model(np.zeros((2, 5, 5, 5), np.int32), spatial=True).constant


def test_garbage_context_streams_raise_moec_format_error_only():
    q = smooth_symbols()
    model = entropy.fit_model(q, spatial=True)
    rng = np.random.default_rng(3)
    for _ in range(30):
        data = rng.integers(0, 256, size=4 * int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
        try:
            out = entropy.decode(data, [model], [q.shape])
        except MoecFormatError:
            continue
        assert out[0].shape == q.shape


@pytest.fixture(scope="module")
def grid_file():
    """A trained latent-grid file whose latents were then smoothed, so its grids take the context
    model whatever 30 training steps left in them (stored at their frozen steps). Read trilinearly
    throughout: a test rewrites it as a version-2 file."""
    volume, _ = make_phantom((32, 24, 16))
    settings = pipeline.Settings(ratio=6, experts=4, encoder="grid")
    fitter, plan = train(volume, settings, TrainConfig(steps=30, batch_size=1024, cubic_from=1.0))
    with torch.no_grad():
        for level in range(plan.model.grid_levels):
            grid = getattr(fitter.model.encoder, f"grid{level}")
            smooth = [gaussian_filter(g, 1.0) for g in grid.detach().cpu().numpy()]
            grid.copy_(torch.from_numpy(np.stack(smooth)))
    return volume, plan, fitter.model, pipeline.file_bytes(fitter, plan)


def test_a_grid_file_stores_its_finest_grid_with_the_context_model_and_decodes_exactly(grid_file):
    volume, plan, model, data = grid_file
    container = unpack_container(data)
    assert container.version >= 3
    meta = parse_meta(container)
    models, qsteps, _ = read_table(meta, container.payload)
    families = dict(zip((name for name, _ in meta.model.tensor_shapes()), (m.family for m in models)))
    assert families["encoder.grid0"] == entropy.CONTEXT
    assert all(f != entropy.CONTEXT for name, f in families.items() if not name.startswith("encoder.grid"))
    stored = moecfile.from_bytes(data).model
    for level in range(plan.model.grid_levels):
        step = qsteps[[n for n, _ in meta.model.tensor_shapes()].index(f"encoder.grid{level}")]
        grid = getattr(model.encoder, f"grid{level}").detach().cpu().numpy()
        np.testing.assert_array_equal(
            getattr(stored.encoder, f"grid{level}").detach().numpy(), np.rint(grid / step) * step
        )
    first, second = reconstruct(moecfile.from_bytes(data)), reconstruct(moecfile.from_bytes(data))
    np.testing.assert_array_equal(first.volume.data, second.volume.data)


def _first_table_entry(container) -> tuple[bytes, bytes]:
    """(the finest grid's entry with its step, the rest of the payload) of a grid file."""
    cut = struct.calcsize("<Bhhe") + 2
    return container.payload[:cut], container.payload[cut:]


def test_a_context_model_in_a_version_2_file_is_refused(grid_file):
    c = unpack_container(grid_file[3])
    with pytest.raises(MoecFormatError, match="context model where none can be"):
        moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, c.payload, version=2))


@pytest.mark.parametrize(
    "bins,message",
    [
        (bytes([3]) + bytes(4000), "3 bins"),
        (
            bytes([context.BINS]) + struct.pack("<Bhhe", entropy.CONTEXT, 0, 1, 1.0) * context.BINS + bytes(4000),
            "inside a context",
        ),
        (
            bytes([context.BINS]) + struct.pack("<Bhhe", 0, 5, 1, 1.0) * context.BINS + bytes(4000),
            "invalid symbol model",
        ),
        # Cut inside a bin's frequency table (still long enough for the weights-per-byte check).
        (bytes([context.BINS]) + struct.pack("<Bhhe", entropy.TABLE, 0, 500, 1.0) + bytes(300), "truncated"),
    ],
)
def test_hostile_context_models_are_refused_in_words(grid_file, bins, message):
    c = unpack_container(grid_file[3])
    entry, _ = _first_table_entry(c)
    with pytest.raises(MoecFormatError, match=message):
        moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, entry + bins))


def test_a_context_model_on_an_expert_tensor_is_refused(grid_file):
    """Only latent grids have neighbours: a context entry anywhere else is a corrupt table."""
    c = unpack_container(grid_file[3])
    meta = parse_meta(c)
    models, _, _ = read_table(meta, c.payload)
    names = [name for name, _ in meta.model.tensor_shapes()]
    # Rewrite the table with the finest grid's context model moved onto the router's first weights.
    table = b""
    for name, model in zip(names, models):
        qsteps = stored_qsteps(grid_file[3])[name]
        if name == "router.w0":
            model = models[0]
        elif name == "encoder.grid0":
            model = entropy.SymbolModel(0, 1.0, model.lo, model.hi)
        table += _model_entry(model, qsteps)
    with pytest.raises(MoecFormatError, match="context model where none can be"):
        moecfile.from_bytes(assemble(json.dumps(c.meta).encode(), c.nifti, table + bytes(4000)))
