"""The throughput benchmark runs on CPU with tiny shapes and reports its fields (no speed
assertions here: speed belongs to benchmarks/)."""
import json
import os
import subprocess
import sys

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
