"""Multi-host through the CLI: 2 processes x 2 CPU devices over loopback, one FSDP mesh (1, 4, 1)
across both (train with evals and checkpoints, resume, eval, infer) against 1 process x 4
data-parallel devices. Per-host batches are disjoint
slices whose union is the single-process global batch, the final trainable parameters agree,
every metrics row is written once."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The random-init tiny preset, on which the two layouts agree to 1e-4. On the pretrained default
# model they differed by 1.1e-3 after 6 steps (float reduction order, likely magnified by
# Adafactor's normalised updates of near-zero gradients).
COMMON = ["--config.model.hf_checkpoint=", "--config.model.preset=tiny",
          "--config.method.prompt.length=4", "--config.data.num_train=64",
          "--config.data.num_eval=20", "--config.train.batch_size=8",
          "--config.train.log_every=1", "--config.train.eval_every=3",
          "--config.train.checkpoint_every=3", "--config.train.eval_batch_size=8",
          "--config.train.max_decode_length=4", "--config.train.record_batches=True"]
INPUTS = ["--input=review: the teacher found a good box", "--input=review: a sad farmer",
          "--input=review: lovely"]


def _port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices):
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def last_json(stdout: str) -> dict:
  """The result JSON the CLI prints last (after any log lines)."""
  return json.loads(stdout[stdout.rindex("\n{") + 1:] if "\n{" in stdout else stdout)


def run_single(verb, out, extra=()):
  r = subprocess.run([sys.executable, "-m", "prompt_tuning.cli", verb,
                      f"--config.output_dir={out}"] + COMMON + list(extra), cwd=ROOT,
                     env=_env(4), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return last_json(r.stdout)


def run_two(verb, out, extra=()):
  port = _port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.cli", verb, f"--config.output_dir={out}",
       f"--config.mesh.coordinator_address=127.0.0.1:{port}", "--config.mesh.num_processes=2",
       f"--config.mesh.process_id={i}", "--config.mesh.shape=(1,-1,1)"] + COMMON + list(extra),
      cwd=ROOT, env=_env(2),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (o, e) in zip(procs, outs):
    assert p.returncode == 0, e[-3000:]
  return [last_json(o) for o, _ in outs]


def params(out):
  from prompt_tuning import checkpoint
  import jax
  ck = checkpoint.Checkpointer(os.path.join(out, "checkpoints"))
  meta = ck.read_meta()
  from prompt_tuning.run import build
  from tests.helpers import preset_config
  c = preset_config()
  c.unlock()
  c.output_dir, c.method.prompt.length = out, 4
  c.lock()
  exp = build.build(c, with_data=False)
  state, _ = ck.restore(exp.trainer.init_state())
  ck.close()
  return int(state.step), [np.asarray(x) for x in jax.tree.leaves(state.params)], meta


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  ref = run_single("train", one, ["--config.train.num_steps=6"])
  # Two processes: 3 steps, then a resumed run to 6.
  run_two("train", two, ["--config.train.num_steps=3"])
  res = run_two("train", two, ["--config.train.num_steps=6"])
  assert res[0] == res[1]   # both processes report the same gathered metrics
  for step in range(6):
    whole = np.load(os.path.join(one, f"batch_{step}_p0.npz"))
    parts = [np.load(os.path.join(two, f"batch_{step}_p{p}.npz")) for p in range(2)]
    for k in whole.files:
      assert all(p[k].shape[0] == whole[k].shape[0] // 2 for p in parts)
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
  step1, p1, _ = params(one)
  step2, p2, _ = params(two)
  assert step1 == step2 == 6
  for a, b in zip(p1, p2):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
  rows = [json.loads(l) for l in open(os.path.join(two, "metrics.jsonl"))]
  keys = [(r["step"], "eval" in r) for r in rows]
  assert len(keys) == len(set(keys)) and sorted(keys) == sorted(
      [(s, False) for s in range(1, 7)] + [(3, True), (6, True)])
  for name, m in res[0]["eval"].items():   # the final evaluation counts each dev example once
    assert m["num_examples"] == 20
    for k, v in m.items():   # relative too: perplexity is exp(loss), here ~1e6
      assert v == pytest.approx(ref["eval"][name][k], rel=1e-5, abs=1e-4), (k, v,
                                                                            ref["eval"][name][k])
  ev = run_two("eval", two)
  for k, v in ev[0]["eval"]["synthetic_sentiment"].items():
    assert v == pytest.approx(res[0]["eval"]["synthetic_sentiment"][k], rel=1e-6, abs=1e-5)
  inf2 = run_two("infer", two, INPUTS)
  inf1 = run_single("infer", one, INPUTS)
  assert inf2[0]["outputs"] == inf2[1]["outputs"] == inf1["outputs"] and len(inf1["outputs"]) == 3


@pytest.mark.slow
def test_sigterm_to_one_host_stops_every_host_after_the_same_step(tmp_path):
  """Preemption reaches one host: both processes stop after the same step (agreed after every
  step), save it with both data-iterator states, and exit 75."""
  import signal
  import time
  out = str(tmp_path / "run")
  port = _port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.cli", "train", f"--config.output_dir={out}",
       f"--config.mesh.coordinator_address=127.0.0.1:{port}", "--config.mesh.num_processes=2",
       f"--config.mesh.process_id={i}", "--config.train.num_steps=100000",
       "--config.train.record_batches=False"] + COMMON, cwd=ROOT, env=_env(2),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
  log = os.path.join(out, "metrics.jsonl")
  deadline = time.time() + 600
  while not (os.path.exists(log) and sum(1 for _ in open(log)) >= 3):
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGTERM)
  errs = [p.communicate(timeout=300)[1] for p in procs]
  assert [p.returncode for p in procs] == [75, 75], errs
  last = [e.strip().splitlines()[-1] for e in errs]
  assert last[0] == last[1] and last[0].startswith("stopped by SIGTERM after step ")
  step = int(last[0].split("after step ")[1].split(":")[0])
  assert "SIGTERM received" in errs[1] and "SIGTERM received" not in errs[0]
  states = os.listdir(os.path.join(out, "checkpoints", str(step), "data_state"))
  assert sorted(n for n in states if n.endswith(".bin")) == ["process_0-of-2.bin",
                                                             "process_1-of-2.bin"]
