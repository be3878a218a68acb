"""Our training and decoding side by side with transformers + PEFT, on whatever device is present.

  python benchmarks/side_by_side.py            # the standard table (GPU: T5-large, ~1B Llama)
  python benchmarks/side_by_side.py --tiny     # CPU smoke run in tens of seconds (CI)

Cases (same shapes on both sides, random-init weights):
  * train T5 v1.1-{size}: prompt (100 encoder prompt vectors, Adafactor), LoRA (r 4 on every
    projection, AdamW), full (AdamW); batch 32, inputs 512, targets 16;
  * decode T5 v1.1-{size}, greedy, batch 32, inputs 512, 32 new tokens: ours with per-example
    prompts of 4 tasks in one batch (4 prompt tables, row i uses task i mod 4); PEFT's prompt
    tuning serves one prompt per batch, so its reference decodes one prompt: the same tokens and
    the same work per token (its generate is forced to 32 new tokens, ours counts the positions
    it really decoded);
  * train a ~1B Llama-shaped decoder (TinyLlama-1.1B's dims) with LoRA, batch 8, 512 + 16.

The PEFT side is the project's anchor script (``shared/anchors/peft_anchor.py`` beside the
repository, or ``--anchor``), imported, not copied: its ``train`` / ``decode`` run the T5 cases;
the Llama LoRA case uses its device and timing helpers with a Llama model built here. Each
system runs in its own subprocess (one per case with ``--isolate``, the default on GPUs, so each
case's peak memory is its own). Printed: one JSON line per case, then the ratio table (ours /
PEFT: tokens/s; peak memory); ``--out`` appends the JSON lines to a file.

Conventions are those of train_throughput.py and the anchor: train tokens/s = batch x (inputs +
targets) / step time (prompt vectors not counted); decode tokens/s = batch x new tokens / wall
time; MFU against the device's bf16 dense peak where known (prompt_tuning/flops.py); compile_s =
the first step (trace + compile + one step; XLA's persistent cache under the temp directory
makes a rerun's compiles short: set JAX_COMPILATION_CACHE_DIR to move it). On CPUs there is no device memory counter: ours
reports XLA's compiled memory analysis (``xla_peak_gib``: arguments + outputs + temporaries),
PEFT's ``peak_gib`` is None.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# TinyLlama-1.1B's shape (transformers LlamaConfig names).
LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False)
LLAMA_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
LORA_RANK = 4


def find_anchor(path: str | None) -> str | None:
  cands = [path] if path else [os.path.join(ROOT, up, "shared", "anchors", "peft_anchor.py")
                               for up in ("..", os.path.join("..", ".."))]
  return next((os.path.abspath(c) for c in cands if c and os.path.isfile(c)), None)


def load_anchor(path: str):
  spec = importlib.util.spec_from_file_location("peft_anchor", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def plan(a) -> list[dict]:
  """The cases, each run by both systems."""
  t5 = dict(size=a.size, batch=a.batch, inp=a.inp_len, tgt=a.tgt_len)
  cases = [dict(kind="train", family="t5", method=m, **t5) for m in a.methods.split(",")]
  cases.append(dict(kind="decode", family="t5", method="prompt", size=a.size,
                    batch=a.decode_batch, inp=a.inp_len, new=a.new_tokens, tasks=4))
  cases.append(dict(kind="train", family="llama", method="lora", size=a.llama,
                    batch=a.llama_batch, inp=a.inp_len, tgt=a.tgt_len))
  return cases


# ------------------------------------------------------------------------------ ours
def _t5_config(anchor, size, **compute):
  """Our T5 v1.1 config with the anchor's dimensions for ``size``."""
  from prompt_tuning import models
  dims = anchor.SIZES[size]
  return models.preset("t5-v1_1-base", **compute).replace(
      d_model=dims["d_model"], d_ff=dims["d_ff"], num_layers=dims["num_layers"],
      num_heads=dims["num_heads"], head_dim=dims["d_kv"])


def _llama_config(size, **compute):
  """Our config read from the transformers LlamaConfig's config.json (same shape by
  construction)."""
  from transformers import LlamaConfig
  from prompt_tuning import models
  with tempfile.TemporaryDirectory() as d:
    LlamaConfig(**(LLAMA_1B if size == "1b" else LLAMA_TINY)).save_pretrained(d)
    return models.checkpoint_config(d, weights=False, **compute)


def ours(case, a, anchor):
  import jax
  import train_throughput
  attention = a.attention
  if attention == "auto":
    attention = "cudnn" if jax.default_backend() == "gpu" else "xla"
  compute = dict(dtype=a.dtype, attention_impl=attention, scan_layers=a.scan, remat=a.remat)
  cfg = (_t5_config(anchor, case["size"], **compute) if case["family"] == "t5"
         else _llama_config(case["size"], **compute))
  if case["kind"] == "decode":
    return _our_decode(cfg, case, a, anchor.N_PROMPT)
  opts = types.SimpleNamespace(batch=case["batch"], inp_len=case["inp"], tgt_len=case["tgt"],
                               prompt_length=anchor.N_PROMPT, lora_rank=LORA_RANK, dtype=a.dtype,
                               steps=a.steps, warmup=a.warmup)
  return train_throughput.measure_train(cfg, case["method"], opts, label=case_name(case))


def _our_decode(cfg, case, a, prompt_length):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from prompt_tuning import methods, models
  from prompt_tuning.trainer import Trainer

  frozen_dtype = jnp.bfloat16 if a.dtype == "bfloat16" else None
  model = models.init_random(cfg, seed=0, param_dtype=frozen_dtype or jnp.float32)
  mc = methods.make("prompt", length=prompt_length)
  methods.attach(model, mc)
  tr = Trainer(model, mc, frozen_dtype=frozen_dtype)
  params = tr.init_state().params
  rng = np.random.RandomState(0)
  b = case["batch"]
  batch = {"inputs": rng.randint(2, cfg.vocab_size, (b, case["inp"]))}
  tables = rng.normal(0, 1, (case["tasks"], prompt_length, cfg.d_model)).astype(np.float32)
  prompts = tables[np.arange(b) % case["tasks"]]   # row i: task i mod 4
  t0 = time.time()
  out = tr.decode(params, batch, case["new"], prompts)
  compile_s = time.time() - t0
  t0 = time.time()
  for _ in range(a.decode_reps):
    out = tr.decode(params, batch, case["new"], prompts)
  wall = (time.time() - t0) / a.decode_reps
  # Decoding stops once every row emitted EOS: count the positions really decoded.
  positions = int(np.max(np.nonzero((out != cfg.pad_token_id).any(0))[0], initial=-1)) + 1
  dev = jax.devices()[0]
  peak = (dev.memory_stats() or {}).get("peak_bytes_in_use")
  return {"system": f"jax{jax.__version__}+flax-nnx", "device": getattr(dev, "device_kind", ""),
          "method": "prompt", "batch": b, "inp_len": case["inp"], "new_tokens": case["new"],
          "decoded_positions": positions, "prompt_len": prompt_length, "tasks": case["tasks"],
          "wall_s": round(wall, 4), "tokens_per_s": round(b * positions / wall),
          "compile_s": round(compile_s, 1),
          "peak_gib": None if peak is None else round(peak / 2 ** 30, 2)}


# ------------------------------------------------------------------------------ PEFT
def peft(case, a, anchor):
  if case["family"] == "t5" and case["kind"] == "train":
    return anchor.train(case["size"], case["method"], case["batch"], case["inp"], case["tgt"],
                        steps=a.steps, warm=a.warmup)
  if case["kind"] == "decode":
    return anchor.decode(case["size"], case["batch"], case["inp"], case["new"],
                         reps=a.decode_reps)
  return _peft_llama_lora(case, a, anchor)


def _peft_llama_lora(case, a, anchor):
  """LoRA r 4 on every projection of a Llama, AdamW, the anchor's timing conventions."""
  import peft as peft_lib
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  cfg = LlamaConfig(**(LLAMA_1B if case["size"] == "1b" else LLAMA_TINY))
  model = LlamaForCausalLM(cfg).to(anchor.DEV).to(anchor.DT)
  model = peft_lib.get_peft_model(model, peft_lib.LoraConfig(
      task_type="CAUSAL_LM", r=LORA_RANK, lora_alpha=2 * LORA_RANK,
      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                      "down_proj"]))
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-4)
  b, n_in, n_tgt = case["batch"], case["inp"], case["tgt"]
  ids = torch.randint(2, cfg.vocab_size, (b, n_in + n_tgt), device=anchor.DEV)
  labels = ids.clone()
  labels[:, :n_in] = -100   # loss on the targets only, as ours

  def step():
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return loss

  for _ in range(a.warmup):
    step()
  anchor.sync()
  if anchor.DEV == "cuda":
    torch.cuda.reset_peak_memory_stats()
  t0 = time.perf_counter()
  for _ in range(a.steps):
    loss = step()
  anchor.sync()
  dt = (time.perf_counter() - t0) / a.steps
  return dict(kind="train", system=anchor.system(False), size=case["size"], method="lora",
              batch=b, inp_len=n_in, tgt_len=n_tgt, trainable=sum(p.numel() for p in params),
              step_s=round(dt, 4), tokens_per_s=round(b * (n_in + n_tgt) / dt),
              peak_gib=anchor.peak_gib(), loss=float(loss.detach()))


# ------------------------------------------------------------------------------ driver
def case_name(case) -> str:
  return f"{case['kind']}/{case['family']}-{case['size']}/{case['method']}"


def worker(a):
  """Runs the given cases of one system in this process; one RESULT line each."""
  anchor = load_anchor(a.anchor)
  for case in json.loads(a.worker_cases):
    try:
      if a.worker == "ours":
        rec = ours(case, a, anchor)
      else:
        rec = peft(case, a, anchor)
    except Exception as e:   # an OOM is a result too
      rec = {"error": repr(e)[:300]}
    rec.update(case=case_name(case), side=a.worker)
    if a.worker == "ours":   # compile_s is short when this cache already held the programs
      rec["compile_cache"] = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    print("RESULT " + json.dumps(rec), flush=True)


def run_side(side, cases, a, argv) -> list[dict]:
  groups = [[c] for c in cases] if a.isolate else [cases]
  out = []
  for group in groups:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--worker_cases",
           json.dumps(group), "--anchor", a.anchor] + argv
    # XLA's persistent compilation cache: a rerun on the same machine skips our compiles.
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(),
                                                             "side_by_side_jax_cache"))
    try:
      r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
      got = [json.loads(l[7:]) for l in r.stdout.splitlines() if l.startswith("RESULT ")]
      err = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
    except subprocess.TimeoutExpired:
      got, err = [], "timeout"
    done = {g["case"] for g in got}
    out += got + [{"case": case_name(c), "side": side, "error": err} for c in group
                  if case_name(c) not in done]
  return out


def table(rows) -> str:
  by = {(r["case"], r["side"]): r for r in rows}
  lines = ["| case | ours tokens/s | PEFT tokens/s | ratio | ours peak GiB | PEFT peak GiB | "
           "ours compile s | ours MFU |", "|---|---|---|---|---|---|---|---|"]
  fmt = lambda v: "-" if v is None else str(v)
  for case in dict.fromkeys(r["case"] for r in rows):
    o, p = by.get((case, "ours"), {}), by.get((case, "peft"), {})
    ratio = (round(o["tokens_per_s"] / p["tokens_per_s"], 2)
             if o.get("tokens_per_s") and p.get("tokens_per_s") else None)
    peak = o.get("peak_gib") if o.get("peak_gib") is not None else o.get("xla_peak_gib")
    lines.append(f"| {case} | {fmt(o.get('tokens_per_s', o.get('error')))} | "
                 f"{fmt(p.get('tokens_per_s', p.get('error')))} | {fmt(ratio)} | {fmt(peak)} | "
                 f"{fmt(p.get('peak_gib'))} | {fmt(o.get('compile_s'))} | {fmt(o.get('mfu'))} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shapes (CI)")
  p.add_argument("--size", default="large", help="T5 v1.1 size of the anchor: base|large|xl")
  p.add_argument("--methods", default="prompt,lora,full")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--inp_len", type=int, default=512)
  p.add_argument("--tgt_len", type=int, default=16)
  p.add_argument("--decode_batch", type=int, default=32)
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--llama", default="1b", help="1b | tiny")
  p.add_argument("--llama_batch", type=int, default=8)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn"))
  p.add_argument("--scan", action="store_true", help="ours: scan over layers")
  p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--decode_reps", type=int, default=3)
  p.add_argument("--anchor", default=None, help="path of peft_anchor.py")
  p.add_argument("--sides", default="ours,peft")
  p.add_argument("--isolate", default="auto", choices=("auto", "yes", "no"),
                 help="one process per case (auto: yes on GPUs, where peak memory is measured)")
  p.add_argument("--timeout", type=int, default=600, help="seconds per subprocess")
  p.add_argument("--out", default=None, help="append the JSON lines to this file")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--worker_cases", default=None, help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.tiny:
    a.size, a.batch, a.inp_len, a.tgt_len, a.decode_batch, a.new_tokens = "tiny", 2, 16, 4, 4, 4
    a.llama, a.llama_batch, a.dtype, a.steps, a.warmup, a.decode_reps = "tiny", 2, "float32", 2, 1, 1
  if a.worker:
    return worker(a)
  a.anchor = find_anchor(a.anchor)
  if a.anchor is None:
    sys.exit("error: peft_anchor.py not found beside the repository (shared/anchors/); pass "
             "--anchor PATH")
  if a.isolate == "auto":
    import shutil
    a.isolate = shutil.which("nvidia-smi") is not None
  else:
    a.isolate = a.isolate == "yes"
  argv = [f"--{k}={getattr(a, k)}" for k in (
      "size", "methods", "batch", "inp_len", "tgt_len", "decode_batch", "new_tokens", "llama",
      "llama_batch", "dtype", "attention", "remat", "steps", "warmup", "decode_reps")]
  argv += ["--scan"] if a.scan else []
  cases, rows, t0 = plan(a), [], time.time()
  for side in a.sides.split(","):
    rows += run_side(side, cases, a, argv)
  for r in rows:
    print(json.dumps(r), flush=True)
    if a.out:
      with open(a.out, "a") as f:
        f.write(json.dumps(r) + "\n")
  print(table(rows))
  print(f"total {time.time() - t0:.0f}s", flush=True)
  if any("error" in r for r in rows):
    sys.exit(1)


if __name__ == "__main__":
  main()
