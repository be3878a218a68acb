"""Reliability: SIGKILL mid-run then resume == uninterrupted run; NaN loss stops cleanly."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from prompt_tuning import checkpoint, methods, optim
from prompt_tuning.run import loop
from tests.helpers import make_trainer, preset_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config.model.hf_checkpoint=", "--config.model.preset=tiny",  # make_trainer's model
        "--config.method.prompt.length=8", "--config.data.num_train=64",
        "--config.data.num_eval=16", "--config.train.batch_size=8",
        "--config.train.num_steps=40", "--config.train.log_every=5",
        "--config.train.eval_every=40", "--config.train.checkpoint_every=5",
        "--config.train.eval_batch_size=16", "--config.train.max_to_keep=2"]


def cmd(out):
  return [sys.executable, "-m", "prompt_tuning.train", f"--config.output_dir={out}"] + ARGS


def params_of(out):
  tr = make_trainer(methods.make("prompt", length=8))
  st, _ = checkpoint.Checkpointer(os.path.join(out, "checkpoints")).restore(tr.init_state())
  return int(st.step), jax.tree.leaves(st.params)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  r = subprocess.run(cmd(ref), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  p = subprocess.Popen(cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  ck_dir = os.path.join(killed, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    steps = [int(d) for d in os.listdir(ck_dir) if d.isdigit()] if os.path.isdir(ck_dir) else []
    if steps and max(steps) >= 10:
      break
    time.sleep(0.05)
  assert p.poll() is None, "run finished before it could be killed"
  p.send_signal(signal.SIGKILL)
  p.wait()
  step_at_kill, _ = params_of(killed)
  assert 10 <= step_at_kill < 40
  r = subprocess.run(cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"resumed from step {step_at_kill}" in r.stdout or "resumed from step" in r.stdout
  s1, p1 = params_of(ref)
  s2, p2 = params_of(killed)
  assert s1 == s2 == 40
  for a, b in zip(p1, p2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  def config(lr, steps):
    c = preset_config()
    c.unlock()
    c.output_dir = str(tmp_path)
    c.method.update(name="full")
    c.optimizer.update(name="sgd", learning_rate=lr)
    c.data.update(num_train=32, num_eval=16)
    c.train.update(batch_size=8, num_steps=steps, log_every=1, checkpoint_every=1,
                   eval_every=1000, eval_batch_size=16)
    c.lock()
    return c

  loop.train(config(1e-3, 3))  # healthy: checkpoints at steps 1..3
  # Resume with a huge learning rate: step 4's update makes the weights overflow (or run away).
  with pytest.raises(loop.TrainingError,
                     match=r"(loss became (nan|inf)|parameters became non-finite|parameters "
                           r"diverged) at step 4.*; stopped. Last good checkpoint: step 3"):
    loop.train(config(1e38, 6), allow_changed=("optimizer.learning_rate",))
  ck = checkpoint.Checkpointer(os.path.join(str(tmp_path), "checkpoints"))
  assert ck.latest_step() == 3
  tr = make_trainer(methods.make("full"), optim.OptimizerConfig(name="sgd", learning_rate=1e-3))
  st, _ = ck.restore(tr.init_state())
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(st.params))
