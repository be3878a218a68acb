"""Training throughput of random-init T5 v1.1 under prompt tuning / LoRA / full tuning.

Prints one JSON line per case: tokens/s, model TFLOP/s, MFU, peak device memory.

  python benchmarks/train_throughput.py                       # base/large/xl x prompt/lora/full
  python benchmarks/train_throughput.py --sizes large --methods prompt
  python benchmarks/train_throughput.py --tiny                # CPU smoke run, tiny shapes

Conventions (the same as the transformers+PEFT anchor in shared/anchors/peft_h100.jsonl):
  * tokens/s  = batch * (input_len + target_len) / step time -- prompt tokens are *not* counted;
  * model FLOPs per step = k * (N_enc * encoder tokens + (N_dec + N_head) * decoder tokens), with
    N the matmul weights a token passes through (encoder tokens include the prompt), attention
    score/value FLOPs excluded; k = 4 for frozen-base methods (forward 2N + activation
    gradients 2N; LoRA's weight gradients are negligible) and k = 6 for full tuning;
  * MFU = model FLOP/s / peak bf16 dense FLOP/s of the device (H100 SXM: 989 TFLOP/s);
    ``mfu_vs_790`` divides by the 790 TFLOP/s the anchor used.
Each case runs in its own process, so peak memory is per case and an OOM does not end the sweep.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

def run_case(size, method, a):
  from prompt_tuning import models

  if a.attention == "auto":
    import jax
    a.attention = "cudnn" if jax.default_backend() == "gpu" else "xla"
  preset = "tiny" if size == "tiny" else f"t5-v1_1-{size}"
  cfg = models.preset(preset, dtype=a.dtype, remat=a.remat, attention_impl=a.attention,
                      scan_layers=a.scan)
  return dict(size=size, **measure_train(cfg, method, a, label=f"{size},{method}"))


def measure_train(cfg, method, a, label=""):
  """One training case on ``cfg`` (a ModelConfig with its compute options): timed steps of the
  jit train step on one random batch. ``a`` carries batch, inp_len, tgt_len, prompt_length,
  lora_rank, dtype, steps, warmup. Also used by side_by_side.py."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from prompt_tuning import methods, models, optim
  from prompt_tuning.flops import peak_flops, train_step_flops
  from prompt_tuning.trainer import Trainer

  t_phase = time.time()

  def phase(name):
    nonlocal t_phase
    print(f"[{label}] {name}: {time.time() - t_phase:.1f}s", file=sys.stderr, flush=True)
    t_phase = time.time()

  frozen_dtype = jnp.bfloat16 if a.dtype == "bfloat16" else None
  model = models.init_random(cfg, seed=0, param_dtype=frozen_dtype or jnp.float32)
  phase("init")
  options = {"prompt": dict(length=a.prompt_length),
             "lora": dict(rank=a.lora_rank, alpha=2.0 * a.lora_rank)}.get(method, {})
  mc = methods.make(method, **options)
  methods.attach(model, mc)
  if method == "full":
    opt = optim.OptimizerConfig(name="adamw", learning_rate=1e-5)
  elif method == "lora":
    opt = optim.OptimizerConfig(name="adamw", learning_rate=1e-4)
  else:
    opt = None   # the method's default: Adafactor at 0.3
  tr = Trainer(model, mc, opt, frozen_dtype=frozen_dtype)
  del model
  rng = np.random.RandomState(0)
  placed = tr.place({"inputs": rng.randint(2, cfg.vocab_size, (a.batch, a.inp_len)),
                     "targets": rng.randint(2, cfg.vocab_size, (a.batch, a.tgt_len))})
  state = tr.init_state()
  phase("trainer + state")
  t_compile = time.time()
  state, aux = tr.step(state, placed)
  jax.block_until_ready(aux["loss"])
  t_compile = time.time() - t_compile   # trace + compile + one step
  for _ in range(a.warmup - 1):
    state, aux = tr.step(state, placed)
  jax.block_until_ready(aux["loss"])
  phase("compile + warmup")
  t0 = time.time()
  for _ in range(a.steps):
    state, aux = tr.step(state, placed)
  loss = float(aux["loss"])  # blocks
  step_s = (time.time() - t0) / a.steps
  assert tr.trace_counts["train"] == 1, tr.trace_counts
  prompt = a.prompt_length if method == "prompt" else 0
  k = 6 if method == "full" else 4
  if cfg.is_encoder_decoder:
    tokens = (a.batch * (a.inp_len + prompt), a.batch * a.tgt_len)
  else:   # one sequence per example: prompt, inputs and targets all pass the decoder stack
    tokens = (0, a.batch * (a.inp_len + a.tgt_len + prompt))
  flops = train_step_flops(cfg, *tokens, 1.0 if method == "full" else 0.0)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  xla_peak = None
  if peak is None:   # CPUs count no device memory: XLA's analysis of the compiled step instead
    m = tr._train.lower(state, tr.frozen, placed).compile().memory_analysis()
    xla_peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                - m.alias_size_in_bytes) / 2 ** 30
  peak_tf = None if peak_flops() is None else peak_flops() / len(jax.devices()) / 1e12
  tflops = flops / step_s / 1e12
  return {
      "system": f"jax{jax.__version__}+flax-nnx", "device": getattr(dev, "device_kind", str(dev)),
      "method": method, "batch": a.batch, "inp_len": a.inp_len,
      "tgt_len": a.tgt_len, "prompt_len": prompt, "dtype": a.dtype, "remat": cfg.remat,
      "scan_layers": cfg.scan_layers,
      "attention": cfg.attention_impl, "trainable": tr.num_trainable, "step_s": round(step_s, 4),
      "tokens_per_s": round(a.batch * (a.inp_len + a.tgt_len) / step_s),
      "tflops": round(tflops, 1),
      "mfu": None if peak_tf is None else round(tflops / peak_tf, 3),
      "mfu_vs_790": round(tflops / 790.0, 3),
      "peak_gib": None if peak is None else round(peak / 2 ** 30, 2),
      "xla_peak_gib": None if xla_peak is None else round(xla_peak, 3),
      "compile_s": round(t_compile, 1), "loss": round(loss, 4),
      "flop_convention": f"{k}N per token (N = matmul weights seen; prompt tokens in encoder)",
  }


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--sizes", default="base,large,xl")
  p.add_argument("--methods", default="prompt,lora,full")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--inp_len", type=int, default=512)
  p.add_argument("--tgt_len", type=int, default=16)
  p.add_argument("--prompt_length", type=int, default=100)
  p.add_argument("--lora_rank", type=int, default=4)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  p.add_argument("--scan", action="store_true", help="scan over layers (one compiled layer)")
  p.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn"),
                 help="auto: cuDNN fused attention on GPU, XLA einsum elsewhere")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model and shapes")
  p.add_argument("--case", default=None, help=argparse.SUPPRESS)
  p.add_argument("--out", default=None, help="also append the JSON lines to this file")
  p.add_argument("--timeout", type=int, default=900, help="seconds per case")
  a = p.parse_args()
  if a.tiny:
    a.sizes, a.batch, a.inp_len, a.tgt_len, a.prompt_length = "tiny", 4, 32, 8, 10
    a.dtype, a.steps, a.warmup = "float32", 3, 1
  if a.case:
    size, method = a.case.split(",")
    print("RESULT " + json.dumps(run_case(size, method, a)), flush=True)
    return
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  passthrough = []
  for name in ("batch", "inp_len", "tgt_len", "prompt_length", "lora_rank", "dtype", "remat",
               "attention", "steps", "warmup"):
    passthrough += [f"--{name}", str(getattr(a, name))]
  passthrough += ["--scan"] if a.scan else []
  for size in a.sizes.split(","):
    for method in a.methods.split(","):
      cmd = [sys.executable, os.path.abspath(__file__), "--case", f"{size},{method}"] + passthrough
      try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if lines:
          rec = json.loads(lines[-1][7:])
        else:
          err = (r.stderr.strip().splitlines() or ["no output"])[-1]
          rec = {"case": [size, method, a.batch, a.inp_len, a.tgt_len], "error": err[:300]}
      except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rec = {"case": [size, method, a.batch, a.inp_len, a.tgt_len], "error": "timeout",
               "progress": err.strip().splitlines()[-3:]}
      line = json.dumps(rec)
      print(line, flush=True)
      if a.out:
        with open(a.out, "a") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  main()
