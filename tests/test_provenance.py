"""Provenance (issue 20): files swapped on disk. A step copied in from another run, a data state
copied from an older step, a changed base model, every step's metadata damaged; and readers
(eval / infer / export) racing a writer that saves every step with max_to_keep=1. The CLI runs
in-process (cli.execute) on one shared pair of small runs."""
import hashlib
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from prompt_tuning import checkpoint, cli, provenance
from prompt_tuning.run import sweep
from prompt_tuning.default_config import TINY_T5
from prompt_tuning.trainer import TrainState
from tests.test_cli import SMALL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["--config.train.num_steps=6", "--config.train.checkpoint_every=2",
         "--config.train.eval_every=6", "--config.train.max_to_keep=3"]


def execute(capsys, verb, out, model, *args):
  capsys.readouterr()
  rc = cli.execute(verb, ["p", f"--config.output_dir={out}",
                          f"--config.model.hf_checkpoint={model}"] + SMALL + STEPS + list(args))
  got = capsys.readouterr()
  return rc, got.out, [l for l in got.err.splitlines() if l.strip()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two finished 6-step runs (checkpoints 2, 4, 6) on one copy of the shipped tiny T5."""
  sweep.share_compilations()   # the same shapes throughout: each compiles once
  root = tmp_path_factory.mktemp("runs")
  model = str(root / "model")
  shutil.copytree(TINY_T5, model)
  for name in ("a", "b"):
    assert cli.execute("train", ["p", f"--config.output_dir={root / name}",
                                 f"--config.model.hf_checkpoint={model}"] + SMALL + STEPS) == 0
  return root, model


def copy_run(runs, tmp_path, name="a"):
  root, _ = runs
  out = tmp_path / name
  shutil.copytree(root / name, out)
  return out


def tree_digest(d):
  h = hashlib.sha256()
  for dirpath, dirnames, files in sorted(os.walk(d)):
    dirnames.sort()
    for f in sorted(files):
      h.update(os.path.relpath(os.path.join(dirpath, f), d).encode())
      h.update(open(os.path.join(dirpath, f), "rb").read())
  return h.hexdigest()


def test_every_step_records_its_run_and_the_model_by_content(runs):
  root, model = runs
  ids = {n: provenance.read_run_id(str(root / n)) for n in ("a", "b")}
  assert len(ids["a"]) == 32 and ids["a"] != ids["b"]
  ck = checkpoint.Checkpointer(str(root / "a" / "checkpoints"), run_id=ids["a"])
  files = ck.read_meta()["model_files"]["files"]
  assert sorted(files) == ["config.json", "model.safetensors", "spiece.model"]
  with open(os.path.join(model, "model.safetensors"), "rb") as f:
    assert files["model.safetensors"] == {"size": os.path.getsize(f.name),
                                          "sha256": hashlib.sha256(f.read()).hexdigest()}
  for s in ck.all_steps():
    assert ck.read_meta(s)["run_id"] == ids["a"] and ck.read_meta(s)["step"] == s
  # The hash is computed once per file version: cached by real path, size and mtime.
  cache = provenance._cache_path(model)
  assert os.path.exists(cache)
  os.utime(cache, (1, 1))
  assert provenance.fingerprint_dir(model)["files"] == files
  assert os.path.getmtime(cache) == 1   # a cache hit rewrites nothing


def test_another_runs_step_and_an_older_steps_data_state_fall_back(runs, tmp_path, capsys):
  root, model = runs
  out = copy_run(runs, tmp_path)
  ck = out / "checkpoints"
  shutil.rmtree(ck / "6")
  shutil.copytree(root / "b" / "checkpoints" / "6", ck / "6")   # same shapes, another run
  name = "process_0-of-1.bin"
  shutil.copy(ck / "2" / "data_state" / name, ck / "4" / "data_state" / name)
  ids = [provenance.read_run_id(str(root / n))[:12] for n in ("b", "a")]

  rc, res, err = execute(capsys, "eval", out, model)
  assert rc == 0 and '"step": 4' in res, err   # eval reads no data state: step 4 is fine
  assert err == [f"warning: checkpoint step 6 in {ck} is unusable (it belongs to another run "
                 f"(run id {ids[0]}; this run's is {ids[1]})); ignored"]
  rc, _, err = execute(capsys, "eval", out, model, "--step=6")
  assert rc == 2 and len(err) == 1 and "belongs to another run" in err[0], err

  rc, res, err = execute(capsys, "train", out, model)
  assert rc == 0, err
  assert "resumed from step 2" in res
  # stderr also holds the progress lines and the run's summary: the warnings are the two steps
  assert [l for l in err if l.startswith(("warning:", "error:"))] == [
      f"warning: checkpoint step 6 in {ck} is unusable (it belongs to another run (run id "
      f"{ids[0]}; this run's is {ids[1]})); ignored",
      f"warning: checkpoint step 4 in {ck} is unusable (data_state/{name}: holds the "
      f"data-iterator state of step 2, not of step 4); falling back to step 2"]


def test_a_changed_base_model_is_refused_by_every_verb(runs, tmp_path, capsys):
  root, model = runs
  weights = os.path.join(model, "model.safetensors")
  original = open(weights, "rb").read()
  old = hashlib.sha256(original).hexdigest()[:12]
  changed = bytearray(original)
  changed[-64:] = bytes(64)   # the last float32 values of the last tensor, zeroed
  new = hashlib.sha256(changed).hexdigest()[:12]
  out = copy_run(runs, tmp_path)
  try:
    open(weights, "wb").write(changed)
    for verb, extra, what in [("eval", [], "evaluate"),
                              ("infer", ["--input=review: good"], "infer"),
                              ("infer", [f"--prompt_run=t={out}", "--input=t::review: good"],
                               "infer"),
                              ("export", ["--format=prompt", f"--out={tmp_path}/x"], "export"),
                              ("train", ["--config.train.num_steps=8"], "resume")]:
      rc, _, err = execute(capsys, verb, out, model, *extra)
      assert rc == 2 and err == [
          f"error: ValueError: cannot {what}: the frozen model {model} is not the one the run "
          f"in {out} was trained on: model.safetensors changed (sha256 {old} -> {new}). Restore "
          f"the original files, or pass --allow_changed=model.hf_checkpoint if the new base model "
          f"is deliberate"], (verb, err)
    assert not os.path.exists(f"{tmp_path}/x/prompt.npy")
    assert checkpoint.Checkpointer(str(out / "checkpoints")).latest_step() == 6   # not trained
    rc, _, err = execute(capsys, "eval", out, model, "--allow_changed=model.hf_checkpoint")
    assert rc == 0, err   # a deliberate change of the base model
  finally:
    open(weights, "wb").write(original)


def test_a_damaged_run_identity_file_is_one_error_line(runs, tmp_path, capsys):
  root, model = runs
  out = copy_run(runs, tmp_path)
  (out / "run_identity.json").write_text("{not json")
  rc, _, err = execute(capsys, "train", out, model, "--config.train.num_steps=8")
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith(f"error: ValueError: {out}/run_identity.json is unreadable (")
  assert checkpoint.Checkpointer(str(out / "checkpoints")).latest_step() == 6   # not trained


def test_no_usable_step_is_refused_and_nothing_is_deleted(runs, tmp_path, capsys):
  """Every kept step's metadata damaged, the arrays intact: refuse (one line naming each step)
  instead of starting over and overwriting steps that could still be recovered."""
  root, model = runs
  out = copy_run(runs, tmp_path)
  ck = out / "checkpoints"
  for s in ("2", "4", "6"):
    (ck / s / "meta" / "metadata").write_text("{garbage")
  before = tree_digest(ck)
  rc, _, err = execute(capsys, "train", out, model, "--config.train.num_steps=8")
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith(f"error: CheckpointError: no usable checkpoint in {ck}: step 6: "
                           f"meta/metadata is unreadable or not JSON")
  assert "step 2: meta" in err[0] and err[0].endswith(
      f"Not starting the run over, which would overwrite these steps: repair or move {ck} "
      f"away, or use another output_dir")
  assert tree_digest(ck) == before


# ------------------------------------------------------------------------------ readers
WRITER = r"""
import os, sys
import numpy as np
from prompt_tuning import checkpoint
from prompt_tuning.trainer import TrainState
d, locking, stop = sys.argv[1], sys.argv[2], sys.argv[3]
if locking == "no_flock":
  checkpoint.fcntl = None
ck = checkpoint.Checkpointer(d, max_to_keep=1)
s = 0
while not os.path.exists(stop):
  s += 1
  ck.save(TrainState(step=np.asarray(s, np.int32), params={"w": np.full(4096, s, np.float32)},
                     opt_state={"m": np.full(4096, -s, np.float32)}))
print(s)
"""


@pytest.mark.parametrize("locking", ["flock", "no_flock"])
def test_a_reader_never_races_the_writer(tmp_path, monkeypatch, locking):
  """A writer saving every step with max_to_keep=1 (each save deletes the previous step) and a
  reader restoring the newest step over and over: every read is one whole, consistent step
  (pinned by the readers' lock, or read again when it vanished), never an error."""
  d, stop = str(tmp_path / "ck"), str(tmp_path / "stop")
  if locking == "no_flock":
    monkeypatch.setattr(checkpoint, "fcntl", None)
  w = subprocess.Popen([sys.executable, "-c", WRITER, d, locking, stop], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  template = TrainState(step=np.asarray(0, np.int32), params={"w": np.zeros(4096, np.float32)},
                        opt_state={"m": np.zeros(4096, np.float32)})
  try:
    deadline = time.time() + 120
    while not (os.path.isdir(d) and checkpoint.Checkpointer(d).latest_step()):
      assert w.poll() is None and time.time() < deadline, w.stderr.read()[-2000:]
      time.sleep(0.05)
    seen = []
    while len(set(seen)) < 6:   # until the writer has replaced the step 5 times under us
      state, meta = checkpoint.Checkpointer(d).restore(template)
      s = int(state.step)
      assert meta["step"] == s
      np.testing.assert_array_equal(np.asarray(state.params["w"]), np.full(4096, s, np.float32))
      np.testing.assert_array_equal(np.asarray(state.opt_state["m"]),
                                    np.full(4096, -s, np.float32))
      seen.append(s)
      assert w.poll() is None and time.time() < deadline, w.stderr.read()[-2000:]
  finally:
    open(stop, "w").close()
    out, err = w.communicate(timeout=120)
  assert w.returncode == 0, err[-2000:]
  assert len(seen) > 6   # several reads of each step, while the writer deleted it
  assert checkpoint.Checkpointer(d).latest_step() == int(out)


def test_export_while_train_saves_every_step(tmp_path, capsys):
  """The issue's case: `export` of a run whose `train` saves every step with max_to_keep=1
  (orbax's `AssertionError: unreachable` before). Each export reads one whole step."""
  import json
  import signal
  out = str(tmp_path / "run")
  args = [f"--config.output_dir={out}"] + SMALL + [
      "--config.train.num_steps=100000", "--config.train.checkpoint_every=1",
      "--config.train.max_to_keep=1", "--config.train.log_every=1",
      "--config.train.eval_every=100000"]
  sweep.share_compilations()
  import jax
  env = dict(os.environ, PYTHONPATH=ROOT,
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  p = subprocess.Popen([sys.executable, "-m", "prompt_tuning.train"] + args, cwd=ROOT,
                       env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
  try:
    ck = checkpoint.Checkpointer(os.path.join(out, "checkpoints"))
    deadline = time.time() + 300
    while not (os.path.exists(os.path.join(out, "run_identity.json")) and ck.latest_step()):
      assert p.poll() is None and time.time() < deadline, p.stderr.read()[-2000:]
      time.sleep(0.05)
    steps = []
    for i in range(3):
      capsys.readouterr()
      rc = cli.execute("export", ["p"] + args + ["--format=prompt", f"--out={tmp_path}/x{i}"])
      err = capsys.readouterr().err
      assert rc == 0, err
      steps.append(json.load(open(f"{tmp_path}/x{i}/prompt.json"))["step"])
    assert steps == sorted(steps) and steps[-1] > steps[0]   # the run went on meanwhile
  finally:
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
  assert p.returncode == 75, err[-2000:]
