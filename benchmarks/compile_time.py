"""Compile seconds and step time of the train step, unrolled vs ``scan_layers``, in one process.

  python benchmarks/compile_time.py base:prompt base:full llama-1b:lora large:prompt

Each argument is MODEL:METHOD, MODEL a T5 v1.1 size or ``llama-1b`` (TinyLlama-1.1B's shape);
random-init float32 weights, batch 4 x (128 inputs + 16 targets), 100 prompt vectors for
``prompt``, AdamW for the others. compile_s = ``lower(...).compile()``; step_s = mean of 3 steps
after one. Both layouts of a case run back to back in this process and must give the same loss.
Prints one JSON line per (case, layout).
"""
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def model_config(name, scan):
  from prompt_tuning import models
  if name == "llama-1b":
    from side_by_side import LLAMA_1B
    from transformers import LlamaConfig
    with tempfile.TemporaryDirectory() as d:
      LlamaConfig(**LLAMA_1B).save_pretrained(d)
      return models.checkpoint_config(d, weights=False, scan_layers=scan)
  return models.preset(f"t5-v1_1-{name}", scan_layers=scan)


def main(cases):
  import jax
  import numpy as np
  from prompt_tuning import methods, models, optim
  from prompt_tuning.trainer import Trainer
  for name, method in (c.split(":") for c in cases):
    for scan in (False, True):
      cfg = model_config(name, scan)
      model = models.init_random(cfg, seed=0)
      mc = methods.make(method, **({"length": 100} if method == "prompt" else {}))
      methods.attach(model, mc)
      opt = None if method == "prompt" else optim.OptimizerConfig(name="adamw", learning_rate=1e-5)
      tr = Trainer(model, mc, opt)
      rng = np.random.RandomState(0)
      placed = tr.place({"inputs": rng.randint(2, cfg.vocab_size, (4, 128)),
                         "targets": rng.randint(2, cfg.vocab_size, (4, 16))})
      st = tr.init_state()
      t0 = time.time()
      compiled = tr._train.lower(st, tr.frozen, placed).compile()
      compile_s = time.time() - t0
      st, aux = compiled(st, tr.frozen, placed)
      jax.block_until_ready(aux["loss"])
      t0 = time.time()
      for _ in range(3):
        st, aux = compiled(st, tr.frozen, placed)
      loss = float(aux["loss"])
      print(json.dumps(dict(model=name, method=method, scan=scan, compile_s=round(compile_s, 1),
                            step_s=round((time.time() - t0) / 3, 3), loss=round(loss, 4))),
            flush=True)
      del tr, model, st, compiled


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  main(sys.argv[1:])
