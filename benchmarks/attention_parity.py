"""GPU check: cuDNN fused attention gives the same T5 logits as the XLA einsum path.

  python benchmarks/attention_parity.py      # prints max |diff| and exits 1 if above tolerance
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prompt_tuning.models import t5  # noqa: E402


def main():
  cfg = t5.get_config("t5-v1_1-base", dtype="bfloat16", num_layers=4, num_decoder_layers=4)
  xla = t5.init_random(cfg, seed=0, param_dtype=jnp.bfloat16)
  cud = t5.init_random(cfg.replace(attention_impl="cudnn"), seed=0, param_dtype=jnp.bfloat16)
  rng = np.random.RandomState(0)
  ids = rng.randint(2, cfg.vocab_size, (4, 300))
  mask = np.ones_like(ids)
  mask[1, 200:] = 0
  dec = rng.randint(2, cfg.vocab_size, (4, 16))
  prompt = rng.normal(size=(100, cfg.d_model)).astype(np.float32)
  f = jax.jit(lambda m, *a: m(*a, prompts=prompt))
  a = np.asarray(f(xla, ids, mask, dec), np.float32)
  b = np.asarray(f(cud, ids, mask, dec), np.float32)
  diff = np.abs(a - b).max() / np.abs(a).max()
  print(f"max |xla - cudnn| / max |logit| = {diff:.2e}; argmax agreement "
        f"{np.mean(a.argmax(-1) == b.argmax(-1)):.3f}")
  sys.exit(0 if diff < 2e-2 else 1)


if __name__ == "__main__":
  main()
