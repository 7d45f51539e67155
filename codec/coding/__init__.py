"""Weights to symbols and symbols to bits: quantization, the range coder's models, the latents' context model."""
