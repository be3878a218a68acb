"""GPU check: cuDNN fused attention gives the same T5 logits as the XLA einsum path.

  python benchmarks/attention_parity.py      # prints max |diff| and exits 1 if above tolerance
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prompt_tuning import models  # noqa: E402


def main():
  cfg = models.preset("t5-v1_1-base", dtype="bfloat16", num_layers=4, num_decoder_layers=4)
  xla = models.init_random(cfg, seed=0, param_dtype=jnp.bfloat16)
  cud = models.init_random(cfg.replace(attention_impl="cudnn"), seed=0, param_dtype=jnp.bfloat16)
  rng = np.random.RandomState(0)
  ids = rng.randint(2, cfg.vocab_size, (4, 300))
  mask = np.ones_like(ids)
  mask[1, 200:] = 0
  dec = rng.randint(2, cfg.vocab_size, (4, 16))
  prompt = rng.normal(size=(100, cfg.d_model)).astype(np.float32)
  f = jax.jit(lambda m, *a: m(*a, prompts=prompt))
  a = np.asarray(f(xla, ids, mask, dec), np.float32)
  b = np.asarray(f(cud, ids, mask, dec), np.float32)
  f32 = models.init_random(cfg.replace(dtype="float32"), seed=0, param_dtype=jnp.bfloat16)
  c = np.asarray(f(f32, ids, mask, dec), np.float32)

  def rel(x, y):
    return np.abs(x - y).max() / np.abs(y).max()

  d_cudnn, d_bf16 = rel(b, c), rel(a, c)
  print(f"vs float32 compute on the same weights: cudnn-bf16 {d_cudnn:.2e} (argmax agree "
        f"{np.mean(b.argmax(-1) == c.argmax(-1)):.3f}), xla-bf16 {d_bf16:.2e} (argmax agree "
        f"{np.mean(a.argmax(-1) == c.argmax(-1)):.3f})")
  # cuDNN must be no further from the float32 reference than XLA's own bf16 path (+ margin).
  sys.exit(0 if d_cudnn <= 1.5 * d_bf16 + 1e-2 else 1)


if __name__ == "__main__":
  main()
