"""Model FLOPs of a training step and device peaks: what the training log's TFLOP/s and MFU use.

The convention is the one of benchmarks/RESULTS.md (and of the PEFT anchor we compare with):
model FLOPs per step = k * (N_enc * encoder tokens + (N_dec + N_head) * decoder tokens), where N
counts the matmul weights a token passes through (encoder tokens include a soft prompt's
vectors; attention score / value products are not counted), and k = 4 when the pre-trained
weights get no gradient (forward 2N + activation gradients 2N: prompt, LoRA, IA3, ...) up to
6 when all of them do (full tuning: + weight gradients 2N); tuning a subset of the weights
interpolates by its share. Padding tokens count: they are computed. MFU divides by the
devices' peak dense bfloat16 FLOP/s.
"""
from __future__ import annotations

import jax

# Dense bfloat16 peak FLOP/s per device, by jax device_kind substring.
PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
              ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5", 197e12),
              ("TPU v4", 275e12))


def matmul_params(cfg) -> tuple[int, int, int]:
  """(per-token matmul weights of the encoder, of the decoder, of the output head).
  Decoder-only models: (0, stack, head)."""
  d, dh = cfg.d_model, cfg.dh

  def stack(name, cross):
    n, h, f = cfg.stack_shape(name)
    g = h if cfg.is_encoder_decoder else cfg.kv_heads
    attn = 2 * d * h * dh + 2 * d * g * dh
    if cross:
      attn += 4 * d * h * dh
    return n * (attn + (3 if cfg.mlp_gated else 2) * d * f)

  head = d * cfg.vocab_size
  if cfg.is_encoder_decoder:
    return stack("encoder", False), stack("decoder", True), head
  return 0, stack("decoder", False), head


def train_step_flops(cfg, encoder_tokens: int, decoder_tokens: int,
                     base_trainable_fraction: float) -> float:
  """Model FLOPs of one training step over the given (padded) token counts of the global batch."""
  n_enc, n_dec, n_head = matmul_params(cfg)
  k = 4.0 + 2.0 * base_trainable_fraction
  return k * (n_enc * encoder_tokens + (n_dec + n_head) * decoder_tokens)


def peak_flops() -> float | None:
  """Summed peak FLOP/s of all devices, or None when the device kind is unknown (CPUs)."""
  devices = jax.devices()
  kind = getattr(devices[0], "device_kind", "")
  for name, flops in PEAK_FLOPS:
    if name in kind:
      return flops * len(devices)
  return None
