"""Trust (issue 11): every bad input is one `error:` line with exit status 2 that says what to do;
config drift between a stored run and a new call is refused key by key; a diverging run stops
before anything of it is saved. Checkpoint integrity and the run lock: test_checkpoint_integrity.py
and test_runlock.py. The CLI runs in-process here (cli.execute) to keep these fast."""
import json
import os
import time

import pytest

from prompt_tuning import cli
from tests.test_cli import SMALL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def execute(capsys, verb, *args):
  capsys.readouterr()
  rc = cli.execute(verb, ["prompt-tuning"] + list(args))
  out = capsys.readouterr()
  return rc, out.out, [l for l in out.err.splitlines() if l.strip()]


def assert_one_error(capsys, verb, args, msg):
  rc, _, err = execute(capsys, verb, *args)
  assert rc == 2 and len(err) == 1 and err[0].startswith("error:"), err
  assert msg in err[0], err[0]
  return err[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished small run (prompt tuning, 4 steps) shared by the drift tests."""
  out = str(tmp_path_factory.mktemp("run"))
  assert cli.execute("train", ["p", f"--config.output_dir={out}"] + SMALL) == 0
  return out


@pytest.mark.parametrize("args,msg", [
    (["--config.train.batch_size=0"], "train.batch_size must be a positive integer, got 0"),
    (["--config.train.num_steps=-1"], "train.num_steps must be a positive integer, got -1"),
    (["--config.train.checkpoint_every=0"], "train.checkpoint_every must be a positive"),
    (["--config.train.log_every=0"], "train.log_every must be a positive"),
    (["--config.train.eval_every=0"], "train.eval_every must be a positive"),
    (["--config.train.max_decode_length=0"], "train.max_decode_length must be a positive"),
    (["--config.data.max_input_length=-3"], "data.max_input_length must be a positive"),
    (["--config.model.dtype=float7"], "model.dtype 'float7' is not supported"),
    (["--config.model.frozen_dtype=int8"], "model.frozen_dtype 'int8' is not supported"),
    (["--config.optimizer.learning_rate=-1.0"], "optimizer.learning_rate must be"),
    (["--config.train.batch_size=7", "--config.mesh.shape=(-1,1)"], None),   # 1 device: fine
    (["--config.mesh.shape=(3,5)"], "mesh_shape (3, 5) needs 15 devices"),
    (["--config.method.name=nosuch"], "unknown tuning method 'nosuch'"),
    (["--config.data.task=nosuch"], "unknown task 'nosuch'"),
    (["--config=/does/not/exist.py"], "/does/not/exist.py"),
    (["--config.model.hf_checkpoint=/does/not/exist"], "does not exist"),
    (["--config.data.vocab=/does/not/exist.model"], "data.vocab '/does/not/exist.model' does not "
                                                     "exist"),
    (["--config.method.init_from=/a/prompt.npy", "--config.method.prompt.init_from_run=/a/run"],
     "both give the initial prompt"),
    (["--config.model.preset=tiny-bart"], "model.hf_checkpoint ("),   # both given: which one?
    (["--config.model.hf_checkpoint="], "no model: set model.hf_checkpoint"),
    (["--config.model.hf_checkpoint=", "--config.model.preset=tiny", "--config.model.random_init=True"],
     "model.random_init=True takes the architecture of model.hf_checkpoint"),
])
def test_bad_values_are_one_clear_line(capsys, tmp_path, args, msg):
  base = [f"--config.output_dir={tmp_path}/run"] + SMALL
  # A --config FILE must come before the overrides; an override must come after SMALL's.
  full = args + base if args[0].startswith("--config=") else base + args
  if msg is None:
    rc, _, err = execute(capsys, "train", *full, "--config.train.num_steps=1")
    assert rc == 0, err
    return
  assert_one_error(capsys, "train", full, msg)
  assert not os.path.exists(f"{tmp_path}/run/checkpoints")   # nothing was written


def test_bad_files_are_one_clear_line(capsys, tmp_path):
  bad_vocab = tmp_path / "vocab.model"
  bad_vocab.write_bytes(b"this is not a sentencepiece model")
  base = [f"--config.output_dir={tmp_path}/run"] + SMALL
  assert_one_error(capsys, "train", base + [f"--config.data.vocab={bad_vocab}"],
                   "is not a SentencePiece model")
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "config.json").write_text('{"model_type": "t5", "d_model": ')
  assert_one_error(capsys, "train", base + [f"--config.model.hf_checkpoint={ckpt}"],
                   "not valid JSON")
  transformers = pytest.importorskip("transformers")
  transformers.GPT2Config(vocab_size=300, n_embd=8, n_layer=1, n_head=2,
                          n_positions=64).to_json_file(str(ckpt / "config.json"))
  (ckpt / "model.safetensors").write_bytes(os.urandom(300))
  assert_one_error(capsys, "train", base + [f"--config.model.hf_checkpoint={ckpt}"],
                   "not a readable safetensors file")


def test_infer_inputs(capsys, trained):
  base = [f"--config.output_dir={trained}"] + SMALL
  assert_one_error(capsys, "infer", base + ["--input=review: good", "--input= "],
                   "--input number 2 is empty")
  assert_one_error(capsys, "infer", base + ["--input=review: caf\udce9"], "not valid UTF-8")
  assert_one_error(capsys, "infer", base, "infer needs at least one --input")
  assert_one_error(capsys, "infer", base + ["--prompt_run=oops", "--input=a::b"],
                   "--prompt_run takes TASK=RUN_DIR; got 'oops'")


def test_missing_tfds_data_fails_in_seconds(capsys, tmp_path, monkeypatch):
  pytest.importorskip("seqio")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  t = time.time()
  line = assert_one_error(capsys, "train", [f"--config.output_dir={tmp_path}/run"] + SMALL + [
      "--config.data.task=glue_mrpc", "--config.data.num_train=16",
      "--config.data.max_input_length=128", "--config.data.truncate=True"],
      "TFDS dataset 'glue/mrpc' is not prepared")
  assert "tfds build glue/mrpc" in line and "data.download=True" in line
  assert time.time() - t < 60
  # A task variant that no longer exists: one line naming its replacement.
  assert_one_error(capsys, "train", [f"--config.output_dir={tmp_path}/run2"] + SMALL + [
      "--config.data.task=glue_mrpc_paraphrase"],
      "task 'glue_mrpc_paraphrase' was removed; use glue_mrpc")


def test_paper_config_refuses_random_init(capsys, tmp_path):
  line = assert_one_error(capsys, "train", [
      f"--config={ROOT}/configs/superglue_prompt.py", f"--config.output_dir={tmp_path}"],
      "needs pretrained weights")
  assert "model.hf_checkpoint" in line and "model.allow_random_init=True" in line


# ----------------------------------------------------------------------------- drift
@pytest.mark.parametrize("verb,change,listed", [
    ("train", ["--config.data.task=synthetic_copy"],
     "data.task: 'synthetic_sentiment' -> 'synthetic_copy'"),
    ("train", ["--config.optimizer.learning_rate=0.5"], "optimizer.learning_rate: 0.0 -> 0.5"),
    ("eval", ["--config.model.random_init=True"], "model.random_init: False -> True"),
    ("eval", ["--config.seed=3"], "seed: 0 -> 3"),
    ("infer", ["--config.method.prompt.init=uniform", "--input=review: good"],
     "method.prompt.init: 'class_labels' -> 'uniform'"),
])
def test_drift_is_refused_naming_each_key(capsys, trained, verb, change, listed):
  args = [f"--config.output_dir={trained}"] + SMALL + change
  if verb == "train":
    args.append("--config.train.num_steps=6")
  line = assert_one_error(capsys, verb, args, listed)
  assert "--allow_changed=" in line


def test_safe_and_allowed_changes(capsys, trained, tmp_path):
  import shutil
  run = str(tmp_path / "copy")
  shutil.copytree(trained, run)
  base = [f"--config.output_dir={run}"] + SMALL
  # More steps, other logging and evaluation intervals: safe to change.
  rc, _, err = execute(capsys, "train", *base, "--config.train.num_steps=6",
                       "--config.train.log_every=3", "--config.train.eval_batch_size=16")
  assert rc == 0, err
  rc, out, err = execute(capsys, "eval", *base, "--config.optimizer.learning_rate=0.5",
                         "--allow_changed=optimizer.learning_rate")
  assert rc == 0 and json.loads(out[out.index("{"):])["step"] == 6, err


# ----------------------------------------------------------------------------- divergence
def test_exploding_learning_rate_stops_and_is_never_best(capsys, tmp_path):
  out = str(tmp_path / "run")
  line = assert_one_error(capsys, "train", [f"--config.output_dir={out}"] + SMALL + [
      "--config.optimizer.learning_rate=1e30", "--config.train.log_every=1",
      "--config.train.eval_every=1", "--config.train.checkpoint_every=1"],
      "diverged at step 1")
  assert "Last good checkpoint: none" in line
  assert not os.path.exists(os.path.join(out, "best")) or not os.listdir(os.path.join(out, "best"))


def test_divergence_guard_counts_consecutive_logs():
  from prompt_tuning.run.loop import DivergenceGuard
  g = DivergenceGuard(factor=10.0, patience=3, start_norm=5.0)
  assert g.check(1, 2.0, 5.0) is None
  assert g.check(2, 1.0, 5.0) is None
  assert g.check(3, 50.0, 5.0) is None and g.check(4, 50.0, 5.0) is None   # 2 bad logs
  assert g.check(5, 1.2, 5.0) is None                                      # recovered
  assert g.check(6, 50.0, 5.0) is None and g.check(7, 50.0, 5.0) is None
  assert "loss diverged at step 8" in g.check(8, 50.0, 5.0)
  g = DivergenceGuard(10.0, 3, start_norm=5.0)
  assert g.check(1, 1.0, 5.0) is None
  assert "parameters diverged at step 2" in g.check(2, 1.0, 5.0 * 2e4)
  assert "loss became nan" in g.check(3, float("nan"), 5.0)


def test_drift_of_a_run_stored_by_an_older_version():
  """Keys added since the run was stored count as unchanged while at their defaults; keys this
  version dropped are ignored; anything else still drifts."""
  from prompt_tuning.default_config import get_config
  from prompt_tuning.run.validate import as_json, check_drift
  stored = as_json(get_config())
  del stored["train"]["z_loss"]
  stored["train"]["an_option_since_removed"] = 3
  current = get_config()
  check_drift(stored, current)
  current.unlock()
  current.train.z_loss = 1e-4
  with pytest.raises(ValueError, match=r"train.z_loss: \(absent\) -> 0.0001"):
    check_drift(stored, current)
