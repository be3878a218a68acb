"""The command line: default job, eval / infer on its checkpoint, one-line errors."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.method.prompt.length=8", "--config.data.num_train=128",
         "--config.data.num_eval=32", "--config.train.batch_size=8",
         "--config.train.num_steps=4", "--config.train.log_every=2",
         "--config.train.eval_every=4", "--config.train.checkpoint_every=4",
         "--config.train.eval_batch_size=32"]


def run(args, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600)


def last_json(stdout):
  return json.loads(stdout[stdout.rindex("\n{") + 1:] if "\n{" in stdout else stdout[stdout.index("{"):])


def test_train_eval_infer(tmp_path):
  out = str(tmp_path / "run")
  r = run(["-m", "prompt_tuning.train", f"--config.output_dir={out}"] + SMALL)
  assert r.returncode == 0, r.stderr[-2000:]
  res = last_json(r.stdout)
  assert res["step"] == 4 and res["trainable_params"] == 8 * 96
  assert "loss" in res["eval"]["synthetic_sentiment"]
  with open(os.path.join(out, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r_["step"] for r_ in rows if "loss" in r_] == [2, 4]
  r = run(["-m", "prompt_tuning.cli", "eval", "--config", "configs/tiny.py",
           f"--config.output_dir={out}"] + SMALL)
  assert r.returncode == 0, r.stderr[-2000:]
  ev = last_json(r.stdout)
  assert ev["step"] == 4
  assert abs(ev["eval"]["synthetic_sentiment"]["loss"] - res["eval"]["synthetic_sentiment"]["loss"]) < 1e-5
  r = run(["-m", "prompt_tuning.cli", "infer", f"--config.output_dir={out}",
           "--input=review: the teacher found a good box", "--input=review: sad"] + SMALL)
  assert r.returncode == 0, r.stderr[-2000:]
  assert len(last_json(r.stdout)["outputs"]) == 2


@pytest.mark.parametrize("args,msg", [
    (["--config.method.nme=lora"], "unknown config key"),
    (["--config.method.name=adapters"], "unknown tuning method"),
    (["--config.method.prompt.init=zeros"], "unknown prompt init"),
    (["--config.data.task=nonexistent_task"], "unknown task"),
    (["--config.method.prompt.length=2000"], "exceed train.max_encoder_length"),
    (["--config.data.max_input_length=5"], "longer than max_input_length"),
    (["--config.model.hf_checkpoint=/does/not/exist"], "does not exist"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, msg):
  r = run(["-m", "prompt_tuning.train", f"--config.output_dir={tmp_path}"] + SMALL + args)
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], r.stderr


def test_eval_without_checkpoint(tmp_path):
  r = run(["-m", "prompt_tuning.cli", "eval", f"--config.output_dir={tmp_path}"] + SMALL)
  assert r.returncode == 2
  # The message is printed intact: the quoted path keeps its closing quote.
  assert r.stderr.strip() == (f"error: FileNotFoundError: no checkpoint found in "
                              f"'{tmp_path}/checkpoints'"), r.stderr


def test_error_line_keeps_the_message():
  from prompt_tuning import cli
  assert cli.error_line(FileNotFoundError("checkpoint path '/x/y' does not exist")) == \
      "checkpoint path '/x/y' does not exist"
  assert cli.error_line(ValueError("first\n  second\n")) == "first second"
  # ml_collections: AttributeError(KeyError(message)); str(KeyError) would quote and escape it.
  e = AttributeError(KeyError('\'nme\'\nDid you mean "name" instead of "nme"?'))
  assert cli.error_line(e) == '\'nme\' Did you mean "name" instead of "nme"?'
  assert cli.error_line(FileNotFoundError(2, "No such file or directory", "x")) == \
      "[Errno 2] No such file or directory: 'x'"
