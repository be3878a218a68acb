"""Preemption (issue 20): real signals sent to real training / eval processes. SIGTERM mid-run
saves the current step and exits 75, and resuming gives the uninterrupted run's parameters bit
for bit with every step logged once (a cut metrics.jsonl line set aside, never merged); a
second Ctrl-C aborts at once; eval stops without a traceback or a crash."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from prompt_tuning import checkpoint, cli
from prompt_tuning.run import jsonl, stop, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The default job (shipped tiny T5), small: 40 steps, a log line per step to poll, two evals.
ARGS = ["--config.method.prompt.length=8", "--config.data.num_train=64",
        "--config.data.num_eval=16", "--config.train.batch_size=8",
        "--config.train.num_steps=40", "--config.train.log_every=1",
        "--config.train.eval_every=20", "--config.train.checkpoint_every=20",
        "--config.train.eval_batch_size=16", "--config.train.max_to_keep=2"]


def share_compilations() -> dict:
  """Every run here has the same shapes: JAX's persistent compilation cache (as sweeps use it)
  lets each compile once, in this process and in the subprocesses (their environment)."""
  sweep.share_compilations()
  return dict(os.environ, PYTHONPATH=ROOT,
              JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)


def train_in_process(out, *extra):
  share_compilations()
  return cli.execute("train", ["p", f"--config.output_dir={out}"] + ARGS + list(extra))


def start(verb, out, *extra, stderr=None):
  module = "prompt_tuning.train" if verb == "train" else "prompt_tuning.cli"
  argv = [sys.executable, "-m", module] + ([] if verb == "train" else [verb])
  return subprocess.Popen(argv + [f"--config.output_dir={out}"] + ARGS + list(extra), cwd=ROOT,
                          env=share_compilations(), stdout=subprocess.DEVNULL, text=True,
                          stderr=stderr or subprocess.PIPE)


def logged_steps(out):
  try:
    with open(os.path.join(out, "metrics.jsonl")) as f:
      return [r["step"] for r in map(json.loads, f) if "loss" in r]
  except (OSError, ValueError):
    return []


def wait_for(cond, proc, timeout=300):
  deadline = time.time() + timeout
  while not cond():
    assert proc.poll() is None, "the process ended before the signal could be sent"
    assert time.time() < deadline
    time.sleep(0.01)


def params(out):
  ck = checkpoint.Checkpointer(os.path.join(out, "checkpoints"))
  return ck.latest_step(), ck.read_params()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("uninterrupted"))
  assert train_in_process(out) == 0
  return out


def test_sigterm_saves_the_step_and_resume_is_bit_identical(tmp_path, uninterrupted, capsys):
  out = str(tmp_path / "run")
  p = start("train", out)
  wait_for(lambda: len(logged_steps(out)) >= 5, p)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=300)
  assert p.returncode == stop.EXIT_PREEMPTED == 75, err[-3000:]
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert lines[0] == ("SIGTERM received: finishing this step and saving a checkpoint "
                      "(Ctrl-C again aborts at once)")
  stopped = int(lines[-1].split("after step ")[1].split(":")[0])
  assert 5 <= stopped < 40
  assert lines[-1] == (f"stopped by SIGTERM after step {stopped}: checkpoint saved in {out}/"
                       f"checkpoints; run the same command again to resume from step {stopped}")
  assert params(out)[0] == stopped   # saved, off the checkpoint_every=20 schedule
  assert logged_steps(out) == list(range(1, stopped + 1))

  # A record cut mid-line (as a kill while writing leaves it) is set aside on resume.
  with open(os.path.join(out, "metrics.jsonl"), "a") as f:
    f.write('{"step": %d, "lo' % (stopped + 1))
  capsys.readouterr()
  assert train_in_process(out) == 0
  run = capsys.readouterr()
  assert f"resumed from step {stopped}" in run.out
  assert "metrics.jsonl: 1 line(s) that are not complete records moved to " \
         "metrics.jsonl.partial" in run.err
  (s1, p1), (s2, p2) = params(uninterrupted), params(out)
  assert s1 == s2 == 40
  np.testing.assert_array_equal(p1["prompt"]["value"], p2["prompt"]["value"])
  # metrics.jsonl: whole records, each step once, the uninterrupted run's evaluations.
  assert logged_steps(out) == list(range(1, 41))

  def evals(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
      return [(r["step"], r["eval"]["synthetic_sentiment"]["loss"])
              for r in map(json.loads, f) if "eval" in r]
  assert evals(out) == evals(uninterrupted) and [s for s, _ in evals(out)] == [20, 40]


def test_stop_at_an_evaluation_step_leaves_the_evaluation_to_the_resumed_run(
    tmp_path, uninterrupted, capsys):
  """Stopping saves without evaluating (the grace period is short); the resumed run evaluates
  that step first, so metrics.jsonl and best/ equal the uninterrupted run's."""
  out = str(tmp_path / "run")
  real = stop.StopSignals.requested
  # The signal arrives during step 20 (an eval step; step 19 is the last one logged), sent to
  # this process.
  stop.StopSignals.requested = lambda self: (
      os.kill(os.getpid(), signal.SIGTERM) if logged_steps(out)[-1:] == [19] and
      self.signum is None else None) or real(self)
  try:
    assert train_in_process(out) == stop.EXIT_PREEMPTED
  finally:
    stop.StopSignals.requested = real
  assert "after step 20" in capsys.readouterr().err
  assert not any('"eval"' in l for l in open(os.path.join(out, "metrics.jsonl")))
  assert train_in_process(out) == 0
  rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
  ref = [json.loads(l) for l in open(os.path.join(uninterrupted, "metrics.jsonl"))]
  assert [r["eval"] for r in rows if "eval" in r] == [r["eval"] for r in ref if "eval" in r]
  best = lambda d: checkpoint.Checkpointer(os.path.join(d, "best")).read_meta()
  assert best(out)["step"] == best(uninterrupted)["step"]
  assert best(out)["dev_perplexity"] == best(uninterrupted)["dev_perplexity"]


def test_a_signal_during_the_build_stops_before_the_first_step(tmp_path, capsys):
  """SIGTERM while the model loads: no compile and step first (the grace period may be short);
  nothing is saved and the line says so."""
  out = str(tmp_path / "run")
  real = stop.StopSignals.requested
  def requested(self):   # the signal lands before the loop's first look at the flag
    if self.signum is None:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(self)
  stop.StopSignals.requested = requested
  try:
    assert train_in_process(out) == stop.EXIT_PREEMPTED
  finally:
    stop.StopSignals.requested = real
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      "stopped by SIGTERM after step 0 (before training on): nothing saved; run the same command "
      "again to start")
  assert logged_steps(out) == [] and not os.listdir(os.path.join(out, "checkpoints"))


def test_second_ctrl_c_aborts_at_once_without_a_traceback(tmp_path):
  out = str(tmp_path / "run")
  err_path = tmp_path / "stderr"
  with open(err_path, "w") as err:
    p = start("train", out, "--config.train.num_steps=100000", stderr=err)
    wait_for(lambda: len(logged_steps(out)) >= 2, p)
    p.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT received" in err_path.read_text(), p)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=60)
  assert p.returncode == -signal.SIGINT   # killed by the signal itself: nothing ran after it
  text = err_path.read_text()
  assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def _catches_sigterm(pid) -> bool:
  with open(f"/proc/{pid}/status") as f:
    caught = int(next(l for l in f if l.startswith("SigCgt:")).split()[1], 16)
  return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_ctrl_c_during_eval_is_one_line_and_no_crash(uninterrupted, tmp_path):
  # 20,000 dev examples (about a minute of decoding): the signal surely lands before the end
  p = start("eval", uninterrupted, "--config.data.num_eval=20000")
  wait_for(lambda: _catches_sigterm(p.pid), p)   # the CLI has installed its handlers
  time.sleep(3)   # into building, compiling or evaluating
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=60)
  assert p.returncode == 128 + signal.SIGINT, err[-3000:]
  assert err.strip().splitlines() == ["SIGINT received: eval stopped"]


def test_cut_metrics_line_is_set_aside_never_merged(tmp_path, capsys):
  path = str(tmp_path / "metrics.jsonl")
  jsonl.append(path, {"step": 1, "loss": 1.0})
  jsonl.append(path, {"step": 2, "loss": 0.5})
  with open(path, "rb+") as f:   # a write cut short by a crash
    f.truncate(os.path.getsize(path) - 7)
  capsys.readouterr()
  jsonl.append(path, {"step": 2, "loss": 0.5})
  assert [json.loads(l) for l in open(path)] == [{"step": 1, "loss": 1.0},
                                                 {"step": 2, "loss": 0.5}]
  assert open(path + ".partial").read() == '{"step": 2, "loss"\n'
  (w,) = capsys.readouterr().err.splitlines()
  assert w == (f"warning: {path}: a partial last line (18 bytes) was moved to "
               f"metrics.jsonl.partial")
  # Resuming at step 1 drops the later records; a garbage line in the middle is set aside.
  with open(path, "a") as f:
    f.write('{"step": 3, "lo\n{"step": 3, "loss": 0.1}\n')
  jsonl.keep_through(path, 2)
  assert [json.loads(l)["step"] for l in open(path)] == [1, 2]
  assert open(path + ".partial").read().splitlines()[-1] == '{"step": 3, "lo'
