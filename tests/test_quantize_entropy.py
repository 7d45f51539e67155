"""Quantization (post-training and straight-through) and the range coder, on their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.coding import entropy
from codec.coding.quantize import (
    QuantConfig,
    add_quantization_noise,
    dequantize,
    fake_quantize,
    max_qsteps,
    max_qsteps_torch,
    qstep_shape,
    quantize,
)
from codec.errors import MoecFormatError


@pytest.mark.parametrize("bits", [4, 8, 10])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_quantization_error_is_at_most_half_a_step_and_symbols_fit_the_bits(bits, granularity):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((3, 17, 9)) * rng.uniform(0.01, 2.0, size=(3, 1, 9))).astype(np.float32)
    step = max_qsteps(w, bits, granularity)
    assert step.shape == qstep_shape(w.shape, granularity)
    q = quantize(w, step)
    assert np.abs(q).max() <= 2 ** (bits - 1) - 1
    assert np.all(np.abs(dequantize(q, step) - w) <= step / 2 + 1e-7)
    # steps are stored as float16: the stored value is the value used
    assert np.array_equal(step, step.astype(np.float16).astype(np.float32))


def test_per_channel_steps_follow_each_channel_and_biases_keep_one_step():
    w = np.ones((2, 4, 3), np.float32) * np.array([0.01, 1.0, 100.0], np.float32)
    step = max_qsteps(w, 8, "channel")
    assert step.shape == (2, 1, 3)
    assert step[0, 0, 0] < step[0, 0, 1] < step[0, 0, 2]
    assert qstep_shape((2, 5), "channel") == (1, 5) and qstep_shape((5,), "channel") == ()


def test_torch_steps_equal_numpy_steps_so_training_sees_the_stored_weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6, 5)).astype(np.float32)
    for granularity in ("tensor", "channel"):
        a = max_qsteps(w, 8, granularity)
        b = max_qsteps_torch(torch.from_numpy(w), 8, granularity).numpy()
        assert np.array_equal(a, b)
        fq = fake_quantize(torch.from_numpy(w), torch.from_numpy(b)).numpy()
        assert np.array_equal(fq, dequantize(quantize(w, a), a))


def test_fake_quantize_passes_the_gradient_straight_through():
    w = torch.randn(7, 3, requires_grad=True)
    fake_quantize(w, torch.tensor(0.3)).mul(torch.arange(21.0).reshape(7, 3)).sum().backward()
    assert torch.equal(w.grad, torch.arange(21.0).reshape(7, 3))


def test_quantization_noise_spans_one_step_centred_with_the_gradient_of_the_value():
    """Training's stand-in for rounding: the spread of a rounding error (uniform over one step, mean
    0, variance step^2 / 12), drawn from the generator given (the same seed, the same noise), and
    every value's own gradient."""
    w = torch.linspace(-1.0, 1.0, 200_000).requires_grad_()
    step = torch.tensor(0.3)
    noisy = add_quantization_noise(w, step, torch.Generator().manual_seed(7))
    error = (noisy - w).detach()
    assert error.abs().max() <= 0.15 + 1e-6
    assert abs(float(error.mean())) < 2e-3 and float(error.var()) == pytest.approx(0.09 / 12, rel=0.02)
    again = add_quantization_noise(w, step, torch.Generator().manual_seed(7))
    assert torch.equal(noisy, again)
    noisy.mul(3.0).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 3.0))


def test_zero_tensors_and_bad_configurations():
    assert np.all(quantize(np.zeros((3, 3), np.float32), max_qsteps(np.zeros((3, 3), np.float32), 8, "tensor")) == 0)
    assert QuantConfig(8, 2).bits_for("encoder.w0", "encoder.w0") == 10
    assert QuantConfig(8, 2).bits_for("experts.w1", "encoder.w0") == 8
    for bad in ({"bits": 1}, {"bits": 17}, {"first_layer_extra_bits": 9}, {"granularity": "row"}):
        with pytest.raises(ValueError):
            QuantConfig(**bad)


def test_range_coding_round_trips_and_costs_close_to_the_ideal_code_length():
    rng = np.random.default_rng(1)
    streams = [
        np.clip(np.rint(rng.laplace(0, 6, 5000)), -127, 127).astype(np.int32),
        np.clip(np.rint(rng.normal(0, 20, 3000)), -127, 127).astype(np.int32),
        np.full(40, 3, np.int32),  # constant: nothing coded
        np.array([-1, 0, 1] * 10, np.int32),
    ]
    models = [entropy.fit_model(s) for s in streams]
    assert models[0].family == 0 and models[1].family == 1 and models[2].constant
    data = entropy.encode(streams, models)
    back = entropy.decode(data, models, [s.shape for s in streams])
    for a, b in zip(streams, back):
        assert np.array_equal(a, b)
    ideal = sum(entropy.ideal_bits(s, m) for s, m in zip(streams, models)) / 8
    assert ideal <= len(data) <= ideal * 1.01 + 16
    # well under 8 bits per symbol for Laplace weights of scale 6
    assert 8 * len(data) / sum(s.size for s in streams) < 6


def test_garbage_streams_raise_moec_format_error_only():
    models = [entropy.SymbolModel(0, 4.0, -127, 127)]
    with pytest.raises(MoecFormatError):
        entropy.decode(b"abc", models, [(10,)])
    rng = np.random.default_rng(2)
    for _ in range(50):
        data = rng.integers(0, 256, size=4 * int(rng.integers(0, 8)), dtype=np.uint8).tobytes()
        try:
            out = entropy.decode(data, models, [(int(rng.integers(0, 100)),)])
        except MoecFormatError:
            continue
        assert out[0].min() >= -127 and out[0].max() <= 127  # whatever decodes stays in range


def test_a_peaked_short_range_stream_carries_its_own_table_and_round_trips():
    """Latent-like symbols: most at zero, a few far out; a Laplace wastes bits on them."""
    rng = np.random.default_rng(3)
    spiky = np.where(rng.random(20000) < 0.7, 0, np.rint(rng.normal(0, 4, 20000))).astype(np.int32)
    model = entropy.fit_model(spiky)
    assert model.family == entropy.TABLE and len(model.counts) == model.hi - model.lo + 1
    parametric = min(
        entropy.ideal_bits(spiky, entropy.SymbolModel(f, s, model.lo, model.hi))
        for f, s in ((0, float(np.abs(spiky).mean())), (1, float(spiky.std())))
    )
    assert entropy.coded_bits(spiky) < 0.95 * parametric
    wide = np.rint(rng.laplace(0, 60, 5000)).astype(np.int32)  # a table over hundreds of symbols costs more
    assert entropy.fit_model(wide).family != entropy.TABLE
    data = entropy.encode([spiky, wide], [model, entropy.fit_model(wide)])
    back = entropy.decode(data, [model, entropy.fit_model(wide)], [spiky.shape, wide.shape])
    assert np.array_equal(back[0], spiky) and np.array_equal(back[1], wide)
    assert len(data) * 8 <= entropy.ideal_bits(spiky, model) + entropy.ideal_bits(wide, entropy.fit_model(wide)) + 256
