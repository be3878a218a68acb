"""Checkpoint integrity: corrupt, truncated, deleted or zeroed files and garbage meta are detected
(one warning line) and restore falls back to the newest good step with its exact values; stray
directories are ignored; per-process data-iterator states; a full disk gives one error line."""
import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prompt_tuning import checkpoint, methods
from prompt_tuning import train as train_lib
from prompt_tuning.run import loop
from tests.helpers import make_trainer, sentiment_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run():
  """A template state and the host values of steps 1 and 2 (prompt of 20x64 floats: more than
  orbax's 1 KiB inline limit, so it gets a data file of its own)."""
  tr = make_trainer(methods.make("prompt", length=20))
  template = tr.init_state()
  ds = sentiment_data(32)
  states = {}
  st = jax.tree.map(jnp.copy, template)
  for i in range(2):
    st, _ = tr.train_step(st, ds.train_batch(i, 8))
    states[i + 1] = jax.tree.map(np.asarray, st)
  return template, states


def save_steps(d, states, **kw):
  ck = checkpoint.Checkpointer(str(d), **kw)
  for s in (1, 2):
    ck.save(states[s], {"lr": 0.1, "note": f"step {s}"})
  return ck


def restore(d, template, **kw):
  return checkpoint.Checkpointer(str(d)).restore(template, **kw)


def assert_state(state, expected):
  assert int(state.step) == int(expected.step)
  for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                  jax.tree.leaves((expected.params, expected.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def warnings_of(capsys):
  err = capsys.readouterr().err
  return [l for l in err.splitlines() if l.startswith("warning:")]


def prompt_data_file(d, step):
  """The file orbax keeps the prompt array's (zstd-compressed) chunk in: the largest file of
  the step's ocdbt data directory. Small arrays are inlined in the b-tree nodes (state/d/)."""
  files = glob.glob(os.path.join(str(d), str(step), "state", "ocdbt.process_*", "d", "*"))
  return max(files, key=os.path.getsize)


def btree_file(d, step):
  return max(glob.glob(os.path.join(str(d), str(step), "state", "d", "*")), key=os.path.getsize)


def flip_bytes(path, n=64, seed=0):
  data = bytearray(open(path, "rb").read())
  rng = np.random.default_rng(seed)
  for o in rng.choice(np.arange(len(data) // 4, len(data) * 3 // 4), n, replace=False):
    data[o] ^= 0xFF
  open(path, "wb").write(data)


def flip_to_garbage(d, step, expected):
  """Flips 32 bytes of the step's array data file so that orbax still reads it, into wrong
  values: the silent case of issue 11 (the file also holds other arrays' chunks, and some
  flips break the zstd stream instead, so seeds are tried until one decodes)."""
  path = prompt_data_file(d, step)
  orig = open(path, "rb").read()
  want = checkpoint._flat({"params": checkpoint.to_nested(expected.params),
                           "opt_state": checkpoint.to_nested(expected.opt_state)})
  for seed in range(40):
    open(path, "wb").write(orig)
    flip_bytes(path, n=32, seed=seed)
    try:
      raw = ocp.StandardCheckpointer().restore(os.path.join(str(d), str(step), "state"))
    except Exception:
      continue
    wrong = sorted(k for k, v in checkpoint._flat({"params": raw["params"],
                                                   "opt_state": raw["opt_state"]}).items()
                   if not np.array_equal(np.asarray(v), np.asarray(want[k])))
    if wrong:
      return wrong
  raise AssertionError("no flip gave readable garbage")


def test_flipped_bytes_in_array_data_fall_back_to_previous_step(tmp_path, run, capsys):
  template, states = run
  save_steps(tmp_path, states)
  wrong = flip_to_garbage(tmp_path, 2, states[2])  # orbax alone would train from these
  capsys.readouterr()
  state, meta = restore(tmp_path, template)
  assert_state(state, states[1])
  assert meta == {"lr": 0.1, "note": "step 1", "step": 1}
  (w,) = warnings_of(capsys)
  assert w == (f"warning: checkpoint step 2 in {tmp_path} is unusable (array {wrong[0]}: "
               f"checksum mismatch); falling back to step 1")


def test_flipped_bytes_anywhere_never_restore_garbage(tmp_path, run, capsys):
  """Whatever the flips hit (zstd stream, b-tree, metadata), step 2 is never restored."""
  template, states = run
  save_steps(tmp_path, states)
  files = [os.path.join(dp, f) for dp, _, fs in os.walk(tmp_path / "2") for f in fs
           if os.path.getsize(os.path.join(dp, f)) > 64 and "commit_success" not in f]
  for i, f in enumerate(sorted(files)):
    orig = open(f, "rb").read()
    flip_bytes(f, n=min(64, len(orig) // 2), seed=i)
    state, _ = restore(tmp_path, template)
    open(f, "wb").write(orig)
    # Unused copies (orbax's per-process b-tree after the merge) may be flipped harmlessly;
    # then step 2 restores, exact.
    assert_state(state, states[int(state.step)])


def test_wrong_but_readable_arrays_fail_the_checksum(tmp_path, run, capsys):
  template, states = run
  save_steps(tmp_path, states)
  # Step 2's meta with step 1's (perfectly readable) arrays.
  shutil.rmtree(tmp_path / "2" / "state")
  shutil.copytree(tmp_path / "1" / "state", tmp_path / "2" / "state")
  capsys.readouterr()
  state, _ = restore(tmp_path, template)
  assert_state(state, states[1])
  (w,) = warnings_of(capsys)
  assert "step 2" in w and "checksum mismatch" in w and "falling back to step 1" in w


def truncate(p):
  data = open(p, "rb").read()
  open(p, "wb").write(data[:len(data) // 2])


def zero(p):
  open(p, "wb").write(bytes(os.path.getsize(p)))


@pytest.mark.parametrize("damage", [truncate, os.remove, zero], ids=["truncated", "deleted",
                                                                      "zeroed"])
@pytest.mark.parametrize("which", [prompt_data_file, btree_file], ids=["data", "btree"])
def test_damaged_file_falls_back_to_previous_step(tmp_path, run, capsys, damage, which):
  template, states = run
  save_steps(tmp_path, states)
  capsys.readouterr()
  damage(which(tmp_path, 2))
  state, meta = restore(tmp_path, template)
  assert_state(state, states[1])
  assert meta["step"] == 1
  out = capsys.readouterr()
  lines = [l for l in out.err.splitlines() if l.strip()]
  # Exactly one line, no orbax / tensorstore / asyncio tracebacks.
  assert len(lines) == 1, out.err
  assert lines[0].startswith(f"warning: checkpoint step 2 in {tmp_path} is unusable (")
  assert lines[0].endswith("; falling back to step 1")


@pytest.mark.parametrize("edit,reason", [
    (lambda t: t[:len(t) // 2], "not JSON"),
    (lambda t: t.replace('"lr": 0.1', '"lr": 0.2'), "meta/metadata checksum mismatch"),
    (lambda t: "\x00" * len(t), "not JSON"),
    (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "_integrity"}),
     "lost its checksums"),
], ids=["truncated", "edited", "zeroed", "checksums-removed"])
def test_corrupt_meta_is_detected_everywhere(tmp_path, run, capsys, edit, reason):
  template, states = run
  save_steps(tmp_path, states)
  p = tmp_path / "2" / "meta" / "metadata"
  p.write_text(edit(p.read_text()))
  capsys.readouterr()
  ck = checkpoint.Checkpointer(str(tmp_path))
  assert ck.all_steps() == [1] and ck.latest_step() == 1
  assert ck.read_meta() == {"lr": 0.1, "note": "step 1", "step": 1}
  with pytest.raises(checkpoint.CheckpointError, match=f"step 2 .* is unusable .*{reason}"):
    ck.read_meta(2)
  state, _ = ck.restore(template)
  assert_state(state, states[1])
  (w,) = warnings_of(capsys)  # once per Checkpointer, however often the steps are listed
  assert "checkpoint step 2" in w and reason in w and w.endswith("ignored")


def test_stray_and_foreign_directories_are_ignored(tmp_path, run, capsys):
  template, states = run
  save_steps(tmp_path, states)
  for name in ("12", "foo", "7.orbax-checkpoint-tmp-1234", "2.replaced-abcd", "bar.txt"):
    os.makedirs(tmp_path / name)
  (tmp_path / "5").write_text("a file, not a directory")
  capsys.readouterr()
  ck = checkpoint.Checkpointer(str(tmp_path))
  assert ck.all_steps() == [1, 2] and ck.latest_step() == 2
  state, _ = ck.restore(template)
  assert_state(state, states[2])
  (w,) = warnings_of(capsys)
  assert "checkpoint step 12" in w and "empty directory" in w
  # orbax's CheckpointManager would take the empty "12" for the latest step and silently skip
  # every save of a step <= 12; ours saves.
  assert ck.save(states[2].replace(step=np.asarray(3, np.int32)))
  assert ck.latest_step() == 3


def test_no_good_step_is_one_clear_error(tmp_path, run, capsys):
  template, states = run
  save_steps(tmp_path, states)
  flip_bytes(prompt_data_file(tmp_path, 2))
  (tmp_path / "1" / "meta" / "metadata").write_text("{garbage")
  with pytest.raises(checkpoint.CheckpointError) as e:
    restore(tmp_path, template)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"no usable checkpoint in {tmp_path}: step 2: ")
  assert "step 1: meta/metadata is unreadable or not JSON" in msg
  with pytest.raises(checkpoint.CheckpointError, match="checkpoint step 2 .* is unusable"):
    restore(tmp_path, template, step=2)
  with pytest.raises(FileNotFoundError, match="no checkpoint found"):
    restore(tmp_path / "empty", template)


def test_template_mismatch_is_not_corruption(tmp_path, run, capsys):
  template, states = run
  save_steps(tmp_path, states)
  capsys.readouterr()
  other = make_trainer(methods.make("prompt", length=9)).init_state()
  with pytest.raises(ValueError, match="does not match this model.*shape mismatch at "
                                       "params/prompt/value") as e:
    restore(tmp_path, other)
  assert not isinstance(e.value, checkpoint.CheckpointError)
  assert warnings_of(capsys) == []  # no step was given up on


def test_existing_unusable_step_is_replaced_by_a_new_save(tmp_path, run, capsys):
  template, states = run
  ck = save_steps(tmp_path, states)
  flip_bytes(prompt_data_file(tmp_path, 2))
  ck = checkpoint.Checkpointer(str(tmp_path))
  state, _ = ck.restore(template)  # falls back to 1 and remembers that 2 is bad
  assert int(state.step) == 1
  assert ck.save(states[2])        # the resumed run reaches step 2 again
  assert not [n for n in os.listdir(tmp_path) if not n.isdigit()]
  state, _ = checkpoint.Checkpointer(str(tmp_path)).restore(template)
  assert_state(state, states[2])
  assert not ck.save(states[2])    # a usable step is not rewritten without force


def test_data_state_round_trip(tmp_path, run, capsys):
  template, states = run
  ck = checkpoint.Checkpointer(str(tmp_path))
  ck.save(states[1], data_state=b"iterator at 1")
  ck.save(states[2], data_state=b"iterator at 2 \x00\xff")
  state, meta, blob = ck.restore(template, with_data_state=True)
  assert_state(state, states[2]) and blob == b"iterator at 2 \x00\xff"
  assert ck.restore(template, step=1, with_data_state=True)[2] == b"iterator at 1"
  assert len(ck.restore(template)) == 2  # the old two-value form without the flag
  ck.save(states[2].replace(step=np.asarray(3, np.int32)))
  assert ck.restore(template, with_data_state=True)[2] is None  # saved without one
  # A corrupt blob is a corrupt step.
  f = tmp_path / "2" / "data_state" / "process_0-of-1.bin"
  f.write_bytes(f.read_bytes()[:-1] + b"X")
  capsys.readouterr()
  with pytest.raises(checkpoint.CheckpointError, match="data_state/process_0-of-1.bin: "
                                                       "checksum mismatch"):
    checkpoint.Checkpointer(str(tmp_path)).restore(template, step=2, with_data_state=True)
  shutil.rmtree(tmp_path / "3")
  state, _, blob = checkpoint.Checkpointer(str(tmp_path)).restore(template,
                                                                    with_data_state=True)
  assert int(state.step) == 1 and blob == b"iterator at 1"
  (w,) = warnings_of(capsys)
  assert "step 2" in w and "checksum mismatch" in w


def test_data_state_per_process(tmp_path, run):
  """Two simulated processes: each writes, checks and restores only its own blob."""
  template, states = run
  p0 = checkpoint.Checkpointer(str(tmp_path), process_index=0, process_count=2)
  p0.save(states[1], data_state=b"shard 0")
  # In a real run process 1 writes its file through the same handler into orbax's temporary
  # step directory before the commit; here it writes after process 0's save.
  checkpoint.DataStateHandler(1, 2).save(tmp_path / "1" / "data_state",
                                         checkpoint.DataStateSave(b"shard 1"))
  p1 = checkpoint.Checkpointer(str(tmp_path), process_index=1, process_count=2)
  assert sorted(os.listdir(tmp_path / "1" / "data_state"))[-2:] == [
      "process_0-of-2.bin", "process_1-of-2.bin"]
  assert p0.restore(template, with_data_state=True)[2] == b"shard 0"
  assert p1.restore(template, with_data_state=True)[2] == b"shard 1"
  # Process 1's blob missing: unusable for process 1 (all processes agree on the verdict in
  # a real multi-process run; simulated here one process at a time).
  os.remove(tmp_path / "1" / "data_state" / "process_1-of-2.bin")
  with pytest.raises(checkpoint.CheckpointError, match="process_1-of-2.bin is missing"):
    checkpoint.Checkpointer(str(tmp_path), process_index=1, process_count=2).restore(
        template, step=1, with_data_state=True)
  # Another process count cannot use these states.
  with pytest.raises(checkpoint.CheckpointError, match="data-iterator states of 2 processes; "
                                                       "this run has 1"):
    checkpoint.Checkpointer(str(tmp_path)).restore(template, with_data_state=True)
  # ... but the arrays still restore when no data state is asked for.
  assert_state(checkpoint.Checkpointer(str(tmp_path)).restore(template)[0], states[1])


def test_disk_full_while_saving_is_one_error_and_keeps_earlier_steps(tmp_path, run,
                                                                     monkeypatch):
  template, states = run
  ck = save_steps(tmp_path, states)

  def full(path, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  monkeypatch.setattr(checkpoint, "_write_file", full)
  st3 = states[2].replace(step=np.asarray(3, np.int32))
  with pytest.raises(checkpoint.CheckpointSaveError) as e:
    ck.save(st3, data_state=b"x")
  msg = str(e.value)
  assert e.value.errno == errno.ENOSPC and "\n" not in msg
  assert msg.startswith(f"could not save checkpoint step 3 in {tmp_path}: No space left on "
                        f"device (errno 28) writing 3/data_state/process_0-of-1.bin; ")
  assert msg.endswith("nothing of step 3 was kept, earlier checkpoints are intact (latest: "
                      "step 2)")
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # no partial step, no temporary directory
  assert_state(restore(tmp_path, template)[0], states[2])

  # tensorstore reports a full disk as ValueError("... [os_error_code='28']").
  async def ts_full(self, *a, **k):
    raise ValueError('OUT_OF_RANGE: Error writing "params/0" in OCDBT database: Failed '
                     f'writing: "{tmp_path}/3.orbax-checkpoint-tmp/state/d/abc": No space '
                     "left on device [os_error_code='28']")

  monkeypatch.undo()
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", ts_full)
  with pytest.raises(checkpoint.CheckpointSaveError, match="No space left on device"):
    ck.save(st3)
  # A forced re-save of an existing step that fails leaves the old step in place.
  with pytest.raises(checkpoint.CheckpointSaveError):
    ck.save(states[2], force=True)
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]
  monkeypatch.undo()
  assert_state(restore(tmp_path, template)[0], states[2])


def test_checkpoints_from_before_integrity_checks_still_restore(tmp_path, run, capsys):
  """Written the way the previous version did (CheckpointManager, no _integrity)."""
  template, states = run
  st = states[2]
  mgr = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True),
                              item_names=("state", "meta"))
  tree = {"step": np.asarray(st.step), "params": checkpoint.to_nested(st.params),
          "opt_state": checkpoint.to_nested(st.opt_state)}
  mgr.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                      meta=ocp.args.JsonSave({"method": "prompt", "step": 2})))
  mgr.wait_until_finished()
  mgr.close()
  capsys.readouterr()
  state, meta = restore(tmp_path, template)
  assert_state(state, st) and meta == {"method": "prompt", "step": 2}
  (w,) = warnings_of(capsys)
  assert "has no checksums" in w


def test_digest_host_and_device_agree():
  rng = np.random.default_rng(0)
  arrays = [rng.normal(size=(3, 5)).astype(np.float32), np.asarray(7, np.int32),
            rng.normal(size=(4, 2)).astype(jnp.bfloat16), rng.random(6) > 0.5,
            rng.integers(0, 255, (2, 3, 4)).astype(np.uint8), np.zeros((0, 3), np.float32)]
  tree = {str(i): a for i, a in enumerate(arrays)}
  host = checkpoint.digests(tree)
  dev = checkpoint.digests(jax.tree.map(jnp.asarray, tree))
  assert host == dev
  # Any single changed element changes the digest; so does moving values around.
  a = arrays[0].copy()
  a[1, 2] = np.nextafter(a[1, 2], np.float32(np.inf))
  assert checkpoint.digests({"0": a})["0"] != host["0"]
  assert checkpoint.digests({"0": arrays[0][::-1].copy()})["0"] != host["0"]


SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np, sys
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from prompt_tuning import checkpoint
from prompt_tuning.trainer import TrainState
assert jax.device_count() == 4
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
x = np.arange(8 * 6, dtype=np.float32).reshape(8, 6) / 7
xs = jax.device_put(x, NamedSharding(mesh, P("data", "model")))
assert checkpoint.digests({"x": xs}) == checkpoint.digests({"x": x})
st = TrainState(step=jnp.asarray(5, jnp.int32), params={"w": xs},
                opt_state={"m": jax.device_put(x * 2, NamedSharding(mesh, P(None, "model")))})
checkpoint.Checkpointer(sys.argv[1]).save(st)
# Restored onto one device (another topology): the digests still verify.
tmpl = TrainState(step=jnp.asarray(0, jnp.int32), params={"w": jnp.zeros((8, 6))},
                  opt_state={"m": jnp.zeros((8, 6))})
r, _ = checkpoint.Checkpointer(sys.argv[1]).restore(tmpl)
np.testing.assert_array_equal(np.asarray(r.params["w"]), x)
np.testing.assert_array_equal(np.asarray(r.opt_state["m"]), x * 2)
print("OK")
"""


def test_digest_does_not_depend_on_sharding(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=ROOT,
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path / "ck")], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_training_on_a_full_disk_stops_with_one_error_line(tmp_path, monkeypatch, capsys):
  out = tmp_path / "run"
  real = ocp.JsonCheckpointHandler.async_save

  async def full_at_step_6(self, directory, *a, **k):
    if "/checkpoints/6" in str(directory):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory) + "/metadata")
    return await real(self, directory, *a, **k)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", full_at_step_6)
  argv = ["train", f"--config.output_dir={out}", "--config.method.prompt.length=8",
          "--config.data.num_train=64", "--config.data.num_eval=16",
          "--config.train.batch_size=8", "--config.train.num_steps=6",
          "--config.train.log_every=3", "--config.train.eval_every=6",
          "--config.train.checkpoint_every=3", "--config.train.eval_batch_size=16"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  assert train_lib.main() == 2
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(err) == 1, err
  assert err[0].startswith(f"error: CheckpointSaveError: could not save checkpoint step 6 in "
                           f"{out}/checkpoints: No space left on device (errno 28) writing 6/")
  assert err[0].endswith("earlier checkpoints are intact (latest: step 3)")
  assert sorted(os.listdir(out / "checkpoints")) == ["3"]
  assert not (out / "run.lock").exists()  # released on the error
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", real)
  assert train_lib.main() == 0  # space again: resumes from step 3
  assert checkpoint.Checkpointer(str(out / "checkpoints")).latest_step() == 6


WRITE_LIMIT = r"""
import resource, signal, sys
import numpy as np
from prompt_tuning import checkpoint
from prompt_tuning.trainer import TrainState
d = sys.argv[1]
rng = np.random.default_rng(0)
def state(step, n):
  return TrainState(step=np.asarray(step, np.int32), params={"w": rng.normal(size=n).astype(
      np.float32)}, opt_state={"m": np.zeros(n, np.float32)})
ck = checkpoint.Checkpointer(d)
ck.save(state(1, 100))
# The kernel now refuses any file over 8 KB (EFBIG; like ENOSPC, it reaches orbax through
# tensorstore's C++ writer, not through Python).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))  # soft limit: can be raised again
try:
  ck.save(state(2, 20000))
except checkpoint.CheckpointSaveError as e:
  print(f"error: {e}", file=sys.stderr)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
import os
print(sorted(os.listdir(d)), int(checkpoint.Checkpointer(d).restore(state(0, 100))[0].step))
"""


def test_a_real_write_error_inside_tensorstore_is_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", WRITE_LIMIT, str(tmp_path / "ck")], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip() == "['1'] 1"
  (line,) = [l for l in r.stderr.splitlines() if l.strip()]
  assert line.startswith(f"error: could not save checkpoint step 2 in {tmp_path}/ck: File too "
                         f"large (errno 27) writing 2/state/")
  assert line.endswith("earlier checkpoints are intact (latest: step 1)")


def test_training_resumes_from_the_last_good_step_when_the_latest_is_corrupt(tmp_path, capsys):
  from tests.test_checkpoint import small_config
  cfg = small_config(tmp_path / "run", **{"method.prompt.length": 20})
  loop.train(cfg)
  ck_dir = tmp_path / "run" / "checkpoints"
  tr = make_trainer(methods.make("prompt", length=20))
  template = tr.init_state()
  good6, _ = checkpoint.Checkpointer(str(ck_dir)).restore(template)
  assert int(good6.step) == 6
  flip_to_garbage(ck_dir, 6, good6)
  capsys.readouterr()
  result = loop.train(cfg)
  out = capsys.readouterr()
  assert "resumed from step 3" in out.out
  (w,) = [l for l in out.err.splitlines() if l.startswith("warning:")]
  assert w.startswith(f"warning: checkpoint step 6 in {ck_dir} is unusable (array ") \
      and w.endswith("checksum mismatch); falling back to step 3")
  # Steps 4..6 retrained (batches depend only on the step): step 6 again, exactly.
  assert result["step"] == 6
  again, _ = checkpoint.Checkpointer(str(ck_dir)).restore(template)
  assert_state(again, good6)


def test_two_processes(tmp_path):
  """A real two-process jax run on CPU: only process 0 takes the run lock and its refusal
  reaches process 1; each process saves and restores its own data state; when only process 1
  finds step 5 damaged, both processes fall back to step 3."""
  import socket
  from prompt_tuning import runlock
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  script = os.path.join(ROOT, "tests", "multiprocess_checkpoint.py")
  with runlock.RunLock(str(tmp_path / "locked"), command="another run"):
    procs = [subprocess.Popen([sys.executable, script, str(i), port, str(tmp_path / "run"),
                               str(tmp_path / "locked")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  for i, (out, err) in enumerate(outs):
    assert f"{i} refused: {tmp_path / 'locked'} is in use by another run" in out
    assert f"{i} holds the run lock: {i == 0}" in out
    assert f"{i} restored step 3 process {i} at 3" in out
    (w,) = [l for l in err.splitlines() if l.startswith("warning:")]
    assert "step 5" in w and "falling back to step 3" in w
  assert "process_1-of-2.bin: 15 bytes, expected 14)" in outs[1][1]  # one byte appended
  assert not (tmp_path / "run" / "run.lock").exists()
