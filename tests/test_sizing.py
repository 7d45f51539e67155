"""The size is the contract: the written file's ratio lies in [R, 1.05 R]."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codec import pipeline
from codec.errors import RatioError
from codec.fit.sizing import fit_to_window
from codec.format import moecfile
from codec.format.header import describe
from codec.format.payload import finest_multiplier, scaled_qsteps, tensor_qsteps
from codec.io.volume import from_array
from codec.settings import TrainConfig

from .training import train

QUICK = TrainConfig(steps=30, batch_size=2048)


@pytest.mark.parametrize(
    "settings",
    [
        pipeline.Settings(ratio=8, experts=8),
        pipeline.Settings(ratio=20, experts=4, top_k=2),
        pipeline.Settings(ratio=40, experts=1),
        pipeline.Settings(ratio=12, experts=8, partition="blocks"),
        pipeline.Settings(ratio=12, experts=4, granularity="channel"),
        pipeline.Settings(ratio=10, experts=4, bits=16),
        pipeline.Settings(ratio=25, experts=2, bits=6),
    ],
    ids=lambda s: f"{s.ratio:g}x-{s.experts}{s.partition[0]}-k{s.top_k}-{s.bits}b-{s.granularity[0]}",
)
def test_the_written_file_meets_the_ratio_within_5_percent(phantom, settings):
    volume, _ = phantom
    fitter, plan = train(volume, settings, QUICK)
    data = pipeline.file_bytes(fitter, plan)
    ratio = volume.raw_bytes / len(data)
    assert settings.ratio <= ratio <= 1.05 * settings.ratio


def test_an_unreachable_ratio_is_refused_with_the_highest_reachable_one(phantom):
    volume, _ = phantom
    with pytest.raises(RatioError, match="highest reachable ratio is about") as error:
        pipeline.make_plan(volume, pipeline.Settings(ratio=5000))
    highest = error.value.highest
    assert 20 < highest < 5000
    plan = pipeline.make_plan(volume, pipeline.Settings(ratio=highest * 0.97))
    assert plan.upper_bytes >= plan.estimated_bytes


def test_a_volume_too_small_for_any_file_is_told_so_not_offered_a_ratio_below_one():
    tiny = from_array(np.arange(8, dtype=np.int16).reshape(2, 2, 2))
    with pytest.raises(RatioError, match="too small to compress") as error:
        pipeline.make_plan(tiny, pipeline.Settings(ratio=8))
    assert error.value.highest < 1 and "about 0x" not in str(error.value)


def test_a_ratio_below_what_any_network_needs_is_refused(phantom):
    volume, _ = phantom
    with pytest.raises(RatioError, match="lowest reachable"):
        pipeline.make_plan(volume, pipeline.Settings(ratio=0.001))


def test_fit_to_window_takes_the_largest_size_that_fits():
    sizes = lambda m: int(10_000 / m)  # noqa: E731
    m = fit_to_window(sizes, 4000)
    assert 3990 <= sizes(m) <= 4000
    with pytest.raises(RatioError):
        fit_to_window(lambda m: 10_000, 4000)


def test_fit_to_window_never_goes_finer_than_the_weights_can_be_held():
    # A network whose bytes stop growing once its symbols clip (the frozen latents of a long 512x
    # run left the experts 1 KB short of the window): the search used to halve the steps down to
    # 2^-16, where every expert weight clipped to +-32767 steps of 6e-8 and the file decoded to 7 dB.
    sizes = lambda m: int(1000 + 100 * math.log2(1 / max(m, 1 / 256)))  # noqa: E731
    assert fit_to_window(sizes, 4000, finest=1 / 128) == 1 / 128
    assert fit_to_window(sizes, 1500, finest=1 / 128) == pytest.approx(1 / 32, rel=0.01)


def test_the_finest_multiplier_is_where_the_largest_weights_stop_fitting_a_symbol(phantom):
    volume, _ = phantom
    fitter, plan = train(volume, pipeline.Settings(ratio=16, experts=4), QUICK)
    model = fitter.model
    base = tensor_qsteps(model, plan.quant, fitter.frozen_qsteps)
    finest = finest_multiplier(model, base, fitter.frozen_qsteps)
    assert 0 < finest < 1  # the 8-bit steps themselves are far from the symbol limit
    for multiplier, clips in [(finest, False), (finest / 4, True)]:
        qsteps = scaled_qsteps(base, multiplier, fitter.frozen_qsteps)
        meta = describe(volume, model.config, plan.quant, fitter.record())
        stored = moecfile.from_bytes(moecfile.model_bytes(model, meta, qsteps))
        worst = max(
            float(np.max(np.abs(p.detach().numpy() - q.detach().numpy()) / qsteps[name]))
            for (name, p), (_, q) in zip(model.named_tensors(), stored.model.named_tensors())
            if name not in fitter.frozen_qsteps
        )
        assert (worst > 1) == clips  # rounding moves a weight by half a step at most; clipping by more


def test_a_grid_networks_decoding_cost_is_bounded_and_its_bytes_go_to_the_latents():
    """At a low ratio one network on the latent grid would be wide, and every voxel would pay for
    it when decoded: its width stops at sizing.MAX_SYNTHESIS_MACS per voxel, and the bytes a wider
    network would have taken buy latents instead."""
    from codec.fit.sizing import MAX_SYNTHESIS_MACS, synthesis_width_limit

    volume = from_array(np.random.default_rng(0).integers(0, 255, size=(96, 96, 64)).astype(np.uint8))
    # Half the payload offered to the network: uncapped it would be far wider than the limit.
    plan = pipeline.make_plan(volume, pipeline.Settings(ratio=64, experts=1, encoder="grid", latent_share=0.5))
    m, limit = plan.model, synthesis_width_limit(plan.model)
    assert m.expert_width == limit
    assert m.feature_width * limit + limit * limit + limit <= MAX_SYNTHESIS_MACS
    assert (m.feature_width + 1) * (limit + 1) + (limit + 1) ** 2 > MAX_SYNTHESIS_MACS
    half = 0.5 * (plan.lower_bytes + plan.upper_bytes) / 2 * 8 / plan.quant.latent_bits
    assert m.latent_count() > 1.3 * half  # the latents took what the network could not
    assert plan.estimated_bytes >= 0.97 * plan.lower_bytes
