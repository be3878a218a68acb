"""The throughput benchmark runs on CPU with tiny shapes and reports its fields (no speed
assertions here: speed belongs to benchmarks/)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_tiny_runs(tmp_path):
  out = tmp_path / "r.jsonl"
  r = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--tiny", "--methods",
                      "prompt,lora", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                     timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [x["method"] for x in rows] == ["prompt", "lora"], rows
  for x in rows:
    assert x["tokens_per_s"] > 0 and x["step_s"] > 0 and x["attention"] == "xla"
    # tokens/s = batch x (inputs + targets) / step time (step_s is rounded to 4 decimals).
    assert abs(x["tokens_per_s"] - 4 * (32 + 8) / x["step_s"]) / x["tokens_per_s"] < 0.05
  assert rows[0]["trainable"] == 10 * 64 and rows[0]["prompt_len"] == 10


def test_side_by_side_tiny_runs(tmp_path):
  """The side-by-side benchmark (ours and the PEFT anchor) on tiny shapes: every case gives a
  row from both systems on the same shapes, the ratio table is printed, the JSON lines are
  appended."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import side_by_side
  if side_by_side.find_anchor(None) is None:
    pytest.skip("shared/anchors/peft_anchor.py is not beside the repository")
  out = tmp_path / "r.jsonl"
  out.write_text('{"earlier": 1}\n')
  r = subprocess.run([sys.executable, "benchmarks/side_by_side.py", "--tiny", "--out", str(out)],
                     cwd=ROOT, capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  rows = [json.loads(l) for l in out.read_text().splitlines()][1:]
  cases = ["train/t5-tiny/prompt", "train/t5-tiny/lora", "train/t5-tiny/full",
           "decode/t5-tiny/prompt", "train/llama-tiny/lora"]
  assert sorted((x["case"], x["side"]) for x in rows) == sorted(
      (c, s) for c in cases for s in ("ours", "peft"))
  by = {(x["case"], x["side"]): x for x in rows}
  for c in cases:
    o, p = by[c, "ours"], by[c, "peft"]
    assert o["tokens_per_s"] > 0 and p["tokens_per_s"] > 0 and o["batch"] == p["batch"]
    if c.startswith("train"):
      assert o["inp_len"] == p["inp_len"] == 16 and o["tgt_len"] == p["tgt_len"] == 4
      assert o["compile_s"] > 0 and o["xla_peak_gib"] > 0
    ratio = f"| {round(o['tokens_per_s'] / p['tokens_per_s'], 2)} |"
    assert any(l.startswith(f"| {c} |") and ratio in l for l in r.stdout.splitlines()), c
  # The same shapes on both sides: equal trainable counts (full tuning differs by the output
  # head, which transformers 5 ties in the anchor's T5).
  for c in ("train/t5-tiny/prompt", "train/t5-tiny/lora", "train/llama-tiny/lora"):
    assert by[c, "ours"]["trainable"] == by[c, "peft"]["trainable"], c
  # Decoding: 4 prompt tables in one batch, every new position decoded.
  d = by["decode/t5-tiny/prompt", "ours"]
  assert d["tasks"] == 4 and d["decoded_positions"] == d["new_tokens"] == 4
