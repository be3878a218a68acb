"""The command line as a user meets it: help with every config key, the config verb, one-line
config errors with the nearest keys, verbs that read a finished run (--run), infer on files,
progress lines and the end-of-run summary, the sweep table. In-process (cli.execute) on one tiny
run trained once per module, to stay fast."""
import csv
import io
import json
import os
import sys

import numpy as np
import pytest

from prompt_tuning import cli, events

from tests.test_cli import ROOT, SMALL   # not the defaults: the old way must repeat them all
TEXTS = ["review: the teacher found a wonderful box", "review: a terrible and boring storm",
         "review: my neighbour liked the happy garden"]


def call(capsys, verb, *args):
  """(exit status, stdout, stderr) of ``prompt-tuning VERB ARGS``."""
  rc = cli.execute(verb, ["prompt-tuning"] + list(args))
  cap = capsys.readouterr()
  return rc, cap.out, cap.err


def result(out: str) -> dict:
  return json.loads(out[out.rindex("\n{") + 1:] if "\n{" in out else out[out.index("{"):])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A finished tiny run (4 steps) and what its training printed."""
  out = str(tmp_path_factory.mktemp("cli") / "run")
  stdout, stderr = io.StringIO(), io.StringIO()
  saved = sys.stdout, sys.stderr
  sys.stdout, sys.stderr = stdout, stderr
  try:
    rc = cli.execute("train", ["prompt-tuning", f"--config.output_dir={out}"] + SMALL)
  finally:
    sys.stdout, sys.stderr = saved
  assert rc == 0, stderr.getvalue()[-3000:]
  return out, stdout.getvalue(), stderr.getvalue()


# ------------------------------------------------------------------------------ help, config
def test_help_lists_verbs_flags_and_every_key_with_default_and_comment(capsys):
  assert cli.main(["prompt-tuning", "--help"]) == 0
  out = capsys.readouterr().out
  for verb in cli.VERBS:
    assert f"\n  {verb} " in out
  rc, out, _ = call(capsys, "train", "--help")
  assert rc == 0
  lines = out.splitlines()
  # key = default, then its comment from default_config.py / the method module on the next line.
  for key, comment in (("train.num_steps = 300", "training steps in all"),
                       ("model.dtype = 'float32'", "compute dtype"),
                       ("method.lora.rank = 4", "r of each low-rank update"),
                       ("method.prompt.placement = 'prefix'", '"prefix" | "after_bos"')):
    i = lines.index(f"  {key}")
    assert comment in lines[i + 1], (key, lines[i + 1])
  assert "[optimizer]" in out and "--allow_changed" in out and "--input_file" not in out
  rc, out, _ = call(capsys, "infer", "--help")
  assert rc == 0 and "--input_file" in out and "--run" in out
  rc, out, _ = call(capsys, "sweep", "--help")
  assert "get_sweep() in the config file returns a list of runs" in out


def test_help_into_a_pipe_closed_early_is_quiet():
  """`prompt-tuning train --help | head -3`: the reader goes away; no error line, status 0."""
  import subprocess
  p = subprocess.Popen([sys.executable, "-m", "prompt_tuning.cli", "train", "--help"],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, bufsize=0)
  assert p.stdout.read(10) == b"usage: pro"
  p.stdout.close()   # before the ~230 lines of help are written: the next write gets EPIPE
  assert p.wait(timeout=120) == 0 and p.stderr.read() == b""


def test_config_verb_prints_the_resolved_config(capsys):
  rc, out, err = call(capsys, "config", "--config",
                      os.path.join(ROOT, "configs", "repro_lester.py"), "--config.train.num_steps=7")
  assert rc == 0, err
  lines = out.splitlines()
  assert "  train.num_steps = 7   (default 300)" in lines
  assert "  model.dtype = 'float32'" in lines   # unchanged keys: no default shown
  assert "  output_dir = 'runs/repro_lester'   (default 'runs/tiny_default')" in lines


# ------------------------------------------------------------------------------ config errors
BAD_FILES = {
    "syntax.py": "def get_config(:\n",
    "raises.py": "def get_config():\n  raise RuntimeError('no data here')\n",
    "imports.py": "import no_such_module_xyz\n",
    "noget.py": "X = 1\n",
    "partial.py": "import ml_collections\ndef get_config():\n"
                  "  return ml_collections.ConfigDict({'seed': 1})\n",
}


@pytest.mark.parametrize("args,expected", [
    (["--config", "{tmp}/syntax.py"], "config file '{tmp}/syntax.py' does not parse: "
                                      "invalid syntax (line 1)"),
    (["--config", "{tmp}/raises.py"], "config file '{tmp}/raises.py': get_config() raised "
                                      "RuntimeError: no data here (line 2)"),
    (["--config", "{tmp}/imports.py"], "config file '{tmp}/imports.py' failed to import: "
                                       "ModuleNotFoundError: No module named 'no_such_module_xyz'"
                                       " (line 1)"),
    (["--config", "{tmp}/noget.py"], "config file '{tmp}/noget.py' defines no get_config()"),
    (["--config", "{tmp}/partial.py"], "config file '{tmp}/partial.py' lacks config keys"),
    (["--config", "{tmp}/missing.py"], "config file '{tmp}/missing.py' does not exist"),
    (["--config.train.nested.x=1"], "unknown config key 'train.nested.x': no 'train.nested'; "
                                    "nearest: train.num_steps"),
    (["--config.model.dtype.x=1"], "unknown config key 'model.dtype.x': model.dtype is a value "
                                   "('float32'), not a section; nearest: model.dtype"),
    (["--config.method.nme=lora"], "unknown config key 'method.nme': no 'method.nme'; "
                                   "nearest: method.name"),
    (["--config.optimizer.lr=0.1"], "nearest: optimizer.learning_rate"),
    (["--config.train.num_steps=ten"], "bad value 'ten' for config key 'train.num_steps' "
                                       "(type int, here 300)"),
    (["--config.model.random_init=maybe"], "config key 'model.random_init' (type bool, here "
                                           "False): expected True or False"),
    (["--config.data.eval_tasks=3"], "bad value for config key 'data.eval_tasks': 3 in (3,) is "
                                     "not a str"),
    (["--allow_changed=optimizer.lr"], "unknown --allow_changed key 'optimizer.lr': no "
                                       "'optimizer.lr'; nearest: optimizer.learning_rate"),
    (["--format=peft"], "--format is not a flag of `train`"),
])
def test_config_errors_are_one_line_naming_the_file_or_key(tmp_path, capsys, args, expected):
  for name, text in BAD_FILES.items():
    (tmp_path / name).write_text(text)
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  rc, out, err = call(capsys, "train", f"--config.output_dir={tmp_path}/run", *args)
  assert rc == 2 and out == ""
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert expected.replace("{tmp}", str(tmp_path)) in lines[0]
  assert not os.path.exists(tmp_path / "run")   # refused before anything ran


def test_an_unknown_verb_suggests_the_nearest(capsys):
  assert cli.main(["prompt-tuning", "trian"]) == 2
  assert capsys.readouterr().err == ("error: unknown command 'trian'; use one of train, eval, "
                                     "infer, export, sweep, config (did you mean train?)\n")


# ------------------------------------------------------------------------------ training output
def test_training_prints_plain_progress_lines_and_a_summary(run_dir):
  out, stdout, stderr = run_dir
  lines = stdout.splitlines()
  # Not a terminal: plain lines, each with the position, rate and (before the end) the ETA.
  step2 = next(l for l in lines if l.startswith("train: step      2  loss"))
  assert "[2/4 steps" in step2 and "steps/s" in step2 and "ETA" in step2
  step4 = next(l for l in lines if l.startswith("train: step      4  loss"))
  assert "[4/4 steps" in step4 and "ETA" not in step4
  assert not any("\r" in l for l in lines)
  res = result(stdout)
  assert res["output_dir"] == out and res["step"] == 4
  summary = stderr.splitlines()
  assert summary[0] == f"done: {out} at step 4 (768 trainable parameters)"
  acc = res["eval"]["synthetic_sentiment"]["accuracy"]
  assert any(l.startswith("  final synthetic_sentiment (32 dev examples): ") and
             f"accuracy {acc:.4g}" in l for l in summary)
  assert any(l.startswith("  best (lowest dev perplexity): step 4") for l in summary)
  assert any(f"prompt-tuning eval --run {out}" in l for l in summary)


def test_progress_on_a_terminal_and_off_it():
  now = [0.0]

  class Tty(io.StringIO):
    def isatty(self):
      return True

  plain = io.StringIO()
  p = events.Progress(100, stream=plain, label="train", clock=lambda: now[0])
  for step in range(1, 11):
    now[0] = step * 0.5   # 2 steps/s from the first update on
    p.update(step)
  p.log("step     10  loss 0.5000")
  assert plain.getvalue() == ("train: step     10  loss 0.5000  [10/100 steps  2 steps/s  "
                              "ETA 0:45]\n")
  tty = Tty()
  p = events.Progress(100, stream=tty, label="train", clock=lambda: now[0])
  p.update(1)
  now[0] += 10.0
  p.update(21, loss=0.25)
  text = tty.getvalue()
  assert text.endswith("\r\033[Ktrain [" + "#" * 6 + "-" * 24 + "] 21/100 steps  2 steps/s  "
                       "ETA 0:40  loss 0.25")
  p.close()
  assert tty.getvalue().endswith("\r\033[K")


# ------------------------------------------------------------------------------ --run
def test_eval_with_run_reads_the_stored_config(run_dir, capsys):
  out, stdout, _ = run_dir
  trained = result(stdout)["eval"]["synthetic_sentiment"]
  # The old way refuses unless every training flag is repeated ...
  rc, _, err = call(capsys, "eval", f"--config.output_dir={out}")
  assert rc == 2 and "cannot evaluate" in err and "data.num_train: 128 -> 2000" in err
  rc, old, err = call(capsys, "eval", f"--config.output_dir={out}", *SMALL)
  assert rc == 0, err
  # ... --run needs none of them and gives the same numbers.
  rc, new, err = call(capsys, "eval", "--run", out)
  assert rc == 0, err
  old, new = result(old), result(new)
  assert new == old
  assert new["eval"]["synthetic_sentiment"]["loss"] == pytest.approx(trained["loss"], abs=1e-6)
  assert new["eval"]["synthetic_sentiment"]["num_examples"] == 32
  # A flag changes what it names only; a change that alters the results is still refused.
  rc, half, err = call(capsys, "eval", "--run", out, "--config.data.num_eval=16")
  assert rc == 0, err
  assert result(half)["eval"]["synthetic_sentiment"]["num_examples"] == 16
  rc, _, err = call(capsys, "eval", "--run", out, "--config.method.prompt.length=4")
  assert rc == 2 and err.count("\n") == 1 and "method.prompt.length: 8 -> 4" in err
  rc, _, err = call(capsys, "eval", "--run", out, "--config",
                    os.path.join(ROOT, "configs", "tiny.py"))
  assert rc == 2 and "give --run DIR or --config FILE, not both" in err
  rc, shown, _ = call(capsys, "config", "--run", out)
  assert "  data.num_train = 128   (default 2000)" in shown.splitlines()


def test_infer_files_and_stdin_with_rank_scores(run_dir, tmp_path, capsys, monkeypatch):
  out, _, _ = run_dir
  rc, old, err = call(capsys, "infer", f"--config.output_dir={out}", *SMALL, "--rank",
                      *[f"--input={t}" for t in TEXTS])
  assert rc == 0, err
  old = result(old)
  src = tmp_path / "in.jsonl"
  src.write_text(json.dumps({"inputs": TEXTS[0], "id": 7}) + "\n\n" + json.dumps(TEXTS[1]) + "\n"
                 + json.dumps({"inputs": TEXTS[2]}) + "\n")
  dst = tmp_path / "out.jsonl"
  rc, summary, err = call(capsys, "infer", "--run", out, "--input_file", str(src),
                          "--output_file", str(dst))
  assert rc == 0, err
  assert result(summary)["num_examples"] == 3 and result(summary)["ranked"]
  rows = [json.loads(l) for l in dst.read_text().splitlines()]
  assert [r["inputs"] for r in rows] == TEXTS and rows[0]["id"] == 7   # records kept
  assert [r["output"] for r in rows] == old["outputs"]
  for r, o in zip(rows, old["ranked"]):
    assert r["ranked"]["label"] == o["label"]
    assert set(r["ranked"]["scores"]) == {"positive", "negative"}
    for label, score in o["scores"].items():
      assert r["ranked"]["scores"][label] == pytest.approx(score, abs=1e-5)
      assert score < 0   # log-likelihoods
  # stdin to stdout: the records alone.
  monkeypatch.setattr(sys, "stdin", io.StringIO(src.read_text()))
  rc, printed, err = call(capsys, "infer", "--run", out, "--input_file", "-")
  assert rc == 0, err
  assert [json.loads(l) for l in printed.splitlines()] == rows
  # A bad line names the file and the line.
  src.write_text(json.dumps({"text": "no inputs key"}) + "\n")
  rc, _, err = call(capsys, "infer", "--run", out, "--input_file", str(src))
  assert rc == 2 and err == (f"error: ValueError: '{src}' line 1 has no \"inputs\" string; each "
                             f"line must be {{\"inputs\": TEXT}} or a JSON string\n")


def test_export_with_run_equals_the_old_way(run_dir, tmp_path, capsys):
  out, _, _ = run_dir
  rc, _, err = call(capsys, "export", "--run", out, "--format", "prompt", "--out",
                    str(tmp_path / "new"))
  assert rc == 0, err
  rc, _, err = call(capsys, "export", f"--config.output_dir={out}", *SMALL, "--format", "prompt",
                    "--out", str(tmp_path / "old"))
  assert rc == 0, err
  new, old = np.load(tmp_path / "new" / "prompt.npy"), np.load(tmp_path / "old" / "prompt.npy")
  assert new.shape == (8, 96) and np.array_equal(new, old)


# ------------------------------------------------------------------------------ sweep
def test_sweep_table_marks_the_best_setting_and_aggregates_seeds(tmp_path):
  from prompt_tuning.run import sweep as sweep_lib
  records = [
      {"run": f"len{n}_s{s}", "group": f"len{n}_s{s}", "tags": {},
       "overrides": {"method.prompt.length": n, "seed": s},
       "eval": {"t": {"accuracy": acc, "loss": 1 - acc / 100}}}
      for n, s, acc in ((4, 0, 60.0), (4, 1, 70.0), (8, 0, 90.0), (8, 1, 80.0), (16, 0, 75.0))]
  text = sweep_lib.write_table(str(tmp_path), records)
  lines = text.splitlines()
  assert lines[0].split() == ["method.prompt.length", "n", "t/accuracy", "t/loss"]
  assert lines[1].split() == ["4", "2", "65", "±", "5", "0.35", "±", "0.05"]
  assert lines[2].split() == ["*", "8", "2", "85", "±", "5", "0.15", "±", "0.05"]
  assert lines[3].split() == ["16", "1", "75", "0.25"]
  rows = list(csv.DictReader(open(tmp_path / "sweep_table.csv")))
  assert [r["best"] for r in rows] == ["0", "1", "0"]
  assert float(rows[1]["t/accuracy mean"]) == 85 and float(rows[1]["t/accuracy std"]) == 5
  assert rows[0]["runs"] == "len4_s0 len4_s1"
  # Lower is better for a loss.
  assert sweep_lib.table(records, "loss")["best"] == 1
  with pytest.raises(ValueError, match="sweep metric 't/f1' is not in the runs' results"):
    sweep_lib.table(records, "f1")
  # Runs that train different tasks: each is scored on its own training task.
  mixed = [{"run": f"{task}_s{s}", "group": f"{task}_s{s}", "tags": {},
            "overrides": {"data.task": task, "seed": s}, "eval": {task: {"accuracy": acc}}}
           for task, s, acc in (("a", 0, 50.0), ("a", 1, 60.0), ("b", 0, 80.0), ("b", 1, 70.0))]
  t = sweep_lib.table(mixed)
  assert t["metric"] == "train/accuracy" and t["best"] == 1
  assert [r["stats"]["train/accuracy"] for r in t["rows"]] == [(55.0, 5.0), (75.0, 5.0)]


def test_sweep_command_prints_the_table_and_writes_csv_and_plot(tmp_path, capsys):
  pytest.importorskip("matplotlib")
  cfg = tmp_path / "small_sweep.py"
  cfg.write_text(f'''from prompt_tuning.default_config import get_config as default


def get_config():
  c = default()
  c.output_dir = {str(tmp_path / "sweep")!r}
  c.data.update(num_train=32, num_eval=16)
  c.train.update(batch_size=8, num_steps=3, log_every=3, eval_every=3, checkpoint_every=3,
                 eval_batch_size=16)
  return c


def get_sweep():  # one shape for every run: compiled once (the sweep's compilation cache)
  return [{{"name": f"lr{{lr}}_seed{{s}}", "optimizer.learning_rate": lr, "seed": s}}
          for lr, s in ((0.3, 0), (0.3, 1), (0.1, 0))]
''')
  rc, out, err = call(capsys, "sweep", "--config", str(cfg))
  assert rc == 0, err
  lines = out.splitlines()
  table = lines[next(i for i, l in enumerate(lines)
                     if l.split()[:2] == ["optimizer.learning_rate", "n"]):]
  rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep_table.csv")))
  assert [(r["optimizer.learning_rate"], r["n"]) for r in rows] == [("0.3", "2"), ("0.1", "1")]
  accs = {r["optimizer.learning_rate"]: float(r["synthetic_sentiment/accuracy mean"])
          for r in rows}
  best = max(accs, key=accs.get)
  assert [r["best"] for r in rows] == ["1" if k == best else "0" for k in accs]
  marked = [l for l in table if l.startswith("*")]
  assert len(marked) == 2 and marked[0].split()[1] == best   # the row and the footnote
  results = [json.loads(l) for l in open(tmp_path / "sweep" / "results.jsonl")]
  seeds = [r["eval"]["synthetic_sentiment"]["accuracy"] for r in results[:2]]
  assert float(rows[0]["synthetic_sentiment/accuracy mean"]) == pytest.approx(np.mean(seeds))
  assert float(rows[0]["synthetic_sentiment/accuracy std"]) == pytest.approx(np.std(seeds))
  assert os.path.getsize(tmp_path / "sweep" / "sweep.png") > 5000
  assert f"plot: {tmp_path / 'sweep' / 'sweep.png'}" in out


# ------------------------------------------------------------------------------ install
def test_the_hub_hint_names_a_command_that_exists(tmp_path, monkeypatch):
  import subprocess
  from prompt_tuning.interop import hub
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  with pytest.raises(FileNotFoundError) as e:
    hub.resolve("some-org/some-model@v2")
  hint = str(e.value)[str(e.value).index("`") + 1:str(e.value).rindex("`")]
  assert hint == "hf download some-org/some-model --revision v2"
  # The base install's huggingface_hub (through tokenizers) has that command and these options.
  hf = os.path.join(os.path.dirname(sys.executable), "hf")
  r = subprocess.run([hf, "download", "--help"], capture_output=True, text=True, timeout=60)
  assert r.returncode == 0 and "REPO_ID" in r.stdout and "--revision" in r.stdout
