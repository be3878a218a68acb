"""Load time and peak host memory of `models.load` on a Hugging Face checkpoint.

  python benchmarks/load_memory.py make t5-large /tmp/ck_t5_large     # random-init, transformers
  python benchmarks/load_memory.py make llama-1b /tmp/ck_llama_1b
  python benchmarks/load_memory.py load /tmp/ck_t5_large [--dtype bfloat16] [--mesh 1,8,1]

``load`` runs in a fresh process: peak RSS (``ru_maxrss``) minus the RSS after the imports, set
against the bytes of the weights the process holds when loaded (on CPU devices the device
arrays live in host memory). With ``--mesh`` (forced CPU devices) each tensor goes straight
into its sharded layout. Prints one JSON line.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make(kind: str, out: str):
  import torch
  torch.manual_seed(0)
  if kind == "t5-large":   # T5 v1.1-large's shape (the anchor's "large")
    from transformers import T5Config, T5ForConditionalGeneration
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=32128, d_model=1024, d_ff=2816, num_layers=24, num_heads=16, d_kv=64,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0))
  else:   # TinyLlama-1.1B's shape
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from side_by_side import LLAMA_1B
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B))
  model.save_pretrained(out)
  print(json.dumps({"made": kind, "dir": out,
                    "params": sum(p.numel() for p in model.parameters())}))


def _rss_kib() -> int:
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def load(path: str, dtype: str, mesh_shape: str | None):
  if mesh_shape:
    n = 1
    for s in mesh_shape.split(","):
      n *= int(s)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from prompt_tuning import models, sharding
  mesh = sharding.make_mesh(tuple(int(s) for s in mesh_shape.split(","))) if mesh_shape else None
  base = _rss_kib()
  t0 = time.time()
  model = models.load(path, param_dtype=jnp.dtype(dtype) if dtype else None, mesh=mesh)
  jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
  secs = time.time() - t0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  held = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
  file_bytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                   if f.endswith(".safetensors"))
  print(json.dumps({
      "dir": path, "dtype": dtype or "as stored", "mesh": mesh_shape, "load_s": round(secs, 1),
      "file_gib": round(file_bytes / 2 ** 30, 3), "held_gib": round(held / 2 ** 30, 3),
      "peak_rss_increase_gib": round((peak - base) / 2 ** 20, 3),
      "ratio": round((peak - base) * 1024 / held, 3),
      "note": "shared 2-core CPU machine" if os.cpu_count() <= 2 else ""}))


if __name__ == "__main__":
  a = sys.argv[1:]
  if len(a) >= 3 and a[0] == "make":
    make(a[1], a[2])
  elif len(a) >= 2 and a[0] == "load":
    opt = lambda k: a[a.index(k) + 1] if k in a else None
    load(a[1], opt("--dtype"), opt("--mesh"))
  else:
    sys.exit(__doc__)
