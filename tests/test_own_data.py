"""Own data (data.train_file / data.eval_file, data.hf_dataset): training through the CLI on
jsonl and csv, streamed files with exact resume and disjoint host shares, one-line errors for
bad files, degenerate targets, Hugging Face datasets from local files (offline)."""
import csv
import json
import os

import numpy as np
import pytest

from prompt_tuning import cli
from prompt_tuning.data import files, pipeline, synthetic
from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.default_config import TINY_T5, get_config
from prompt_tuning.run import build

SENTIMENT = ["--config.data.input_template=review: {text}",
             "--config.data.label_map=0=negative,1=positive"]
SHORT = ["--config.train.batch_size=16", "--config.train.num_steps=40",
         "--config.train.log_every=20", "--config.train.eval_every=40",
         "--config.train.checkpoint_every=40"]


def sentiment_records(n, seed):
  """The synthetic sentiment task as {"text", "label"} records with int labels."""
  return [{"text": ex["inputs"].removeprefix("review: "), "label": int(ex["targets"] == "positive")}
          for ex in synthetic.sentiment_examples(n, seed)]


def write_jsonl(path, records):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return str(path)


def write_csv(path, records, delimiter=","):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
    w.writeheader()
    w.writerows(records)
  return str(path)


def train(tmp_path, capsys, *args):
  code = cli.main(["prompt-tuning", "train", f"--config.output_dir={tmp_path / 'run'}",
                   *SHORT, *args])
  out = capsys.readouterr()
  assert code == 0, out.err[-2000:]
  return json.loads(out.out[out.out.rindex("\n{") + 1:])


def test_train_on_jsonl_and_csv_through_the_cli(tmp_path, capsys):
  train_rec, dev_rec = sentiment_records(400, 0), sentiment_records(64, 10_000)
  res = train(tmp_path / "jsonl", capsys, *SENTIMENT,
              f"--config.data.train_file={write_jsonl(tmp_path / 'train.jsonl', train_rec)}",
              f"--config.data.eval_file={write_jsonl(tmp_path / 'dev.jsonl', dev_rec)}")
  m = res["eval"][str(tmp_path / "dev.jsonl")]
  assert m["num_examples"] == 64 and res["step"] == 40
  # Chance is 50%; the run learns the task (measured: accuracy 76.6, macro F1 74.8, rank
  # classification 75.0 at step 40).
  assert m["accuracy"] > 65 and m["rank_accuracy"] > 65 and m["f1_macro"] > 60, m
  # infer --input_file on the dev records as they are ({"text", "label"}): the run's template
  # makes the inputs and its label set is ranked, so the ranked labels score the eval's figure.
  out = tmp_path / "ranked.jsonl"
  assert cli.main(["prompt-tuning", "infer", f"--run={tmp_path / 'jsonl' / 'run'}",
                   f"--input_file={tmp_path / 'dev.jsonl'}", f"--output_file={out}"]) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  words = ("negative", "positive")
  hits = [r["ranked"]["label"] == words[r["label"]] for r in rows]
  assert len(rows) == 64 and 100 * np.mean(hits) == pytest.approx(m["rank_accuracy"], abs=1e-9)
  # The same records as csv files (labels as text): the very same run, to the last bit.
  res_csv = train(tmp_path / "csv", capsys, *SENTIMENT,
                  f"--config.data.train_file={write_csv(tmp_path / 'train.csv', train_rec)}",
                  f"--config.data.eval_file={write_csv(tmp_path / 'dev.csv', dev_rec)}")
  assert res_csv["eval"][str(tmp_path / "dev.csv")] == m


# ------------------------------------------------------------------------------ streaming
WORDS = sorted(set(synthetic.NEUTRAL))


def unique_records(n):
  """Records with distinct texts (pairs of words the tiny T5 vocabulary spells exactly)."""
  k = len(WORDS)
  return [{"text": f"{WORDS[i // k]} {WORDS[i % k]}", "label": i % 2} for i in range(n)]


def stream(path, batch, hosts=1, host=0, buffer=1, seed=3):
  c = get_config().data
  c.train_file, c.eval_file, c.stream_above_mb = path, path, 0
  c.label_map = "0=negative,1=positive"
  own = files.OwnData(c)
  assert own.stream_paths == [path] and own.train is None
  vocab = vocab_lib.load(os.path.join(TINY_T5, "spiece.model"))
  return own.train_iterator(
      vocab, feature_lengths={"inputs": 16, "targets": 4}, global_batch_size=batch, seed=seed,
      truncate=False, pack=False, model_type="encoder_decoder", num_processes=hosts,
      process_index=host, shuffle_buffer_size=buffer), vocab


def test_own_data_needs_no_tensorflow(tmp_path):
  import subprocess
  import sys
  path = write_jsonl(tmp_path / "a.jsonl", sentiment_records(8, 0))
  code = ("import sys; from prompt_tuning.default_config import get_config; "
          "from prompt_tuning.run import build; c = get_config(); "
          f"c.output_dir = {str(tmp_path / 'run')!r}; "
          f"c.data.train_file = c.data.eval_file = {path!r}; c.data.stream_above_mb = 0; "
          "c.data.label_map = '0=negative,1=positive'; c.train.batch_size = 4; "
          "exp = build.build(c); next(exp.train_it); list(exp.eval_sets[c.data.eval_file]); "
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_streamed_hosts_read_disjoint_shares_that_cover_the_file(tmp_path, fmt):
  records = unique_records(101)
  path = (write_jsonl if fmt == "jsonl" else write_csv)(tmp_path / f"train.{fmt}", records)
  texts = []
  for host in range(2):
    it, vocab = stream(path, 2, hosts=2, host=host)   # buffer 1: the share in file order
    seen = [vocab.decode(next(it)["inputs"][0]) for _ in range(80)]
    n = seen.index(seen[0], 1)   # the share starts over: its length
    assert seen[n:2 * n] == seen[:n][:len(seen) - n]
    texts.append(seen[:n])
  assert min(len(t) for t in texts) >= 40   # equal byte ranges: about half the records each
  assert not set(texts[0]) & set(texts[1])
  assert sorted(texts[0] + texts[1]) == sorted(r["text"] for r in records)


def test_streamed_classification_needs_its_label_set_given(tmp_path):
  """Streamed training files are not read ahead: a label set from the dev file alone could miss
  a class (macro F1 and rank classification over too few labels), so it must be given."""
  path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a b", "label": "yes"}])
  write_jsonl(tmp_path / "d.jsonl", [{"text": "a b", "label": "no"}])
  c = get_config().data
  c.train_file, c.eval_file, c.stream_above_mb = path, str(tmp_path / "d.jsonl"), 0
  with pytest.raises(ValueError, match="is not read ahead for its label set; give "
                                       "data.label_map"):
    files.OwnData(c)
  c.label_map = "yes=yes,no=no"
  assert files.OwnData(c).labels == ("yes", "no")


def test_streamed_iterator_resumes_exactly(tmp_path):
  path = write_jsonl(tmp_path / "train.jsonl", unique_records(101))
  it, _ = stream(path, 4, hosts=2, host=1, buffer=16)
  for _ in range(7):
    next(it)
  state = it.get_state()
  after = [next(it) for _ in range(40)]   # 80 rows: past the end of the host's ~50 records
  again, _ = stream(path, 4, hosts=2, host=1, buffer=16)
  again.set_state(state)
  for a, b in zip(after, [next(again) for _ in range(40)]):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The shuffle buffer mixes: the batches are not the file order.
  fresh, vocab = stream(path, 4, hosts=2, host=1, buffer=16)
  first = [vocab.decode(r) for b in [next(fresh) for _ in range(3)] for r in b["inputs"]]
  ordered, _ = stream(path, 4, hosts=2, host=1, buffer=1)
  assert first != [vocab.decode(r) for b in [next(ordered) for _ in range(3)] for r in b["inputs"]]
  other, _ = stream(path, 4, hosts=2, host=0, buffer=16)
  with pytest.raises(ValueError, match="saved with other options"):
    other.set_state(state)


# ------------------------------------------------------------------------------ bad files
def one_error(capsys, *args):
  code = cli.main(["prompt-tuning", "train", *args])
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


GOOD = b'{"text": "good day", "label": 1}\n{"text": "bad day", "label": 0}\n'
BAD_FILES = {
    "missing field": (b'{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": "c"}\n',
                      "train.jsonl line 3: no field 'label' (fields: text); check "
                      "data.target_field"),
    "null field": (b'{"text": "a", "label": 1}\n{"text": null, "label": 0}\n',
                   "train.jsonl line 2: an empty (null) field 'text'"),
    "not utf-8": (b'{"text": "a", "label": 1}\n{"text": "caf\xe9", "label": 0}\n',
                  "train.jsonl line 2: not UTF-8 text (byte 0xe9 at column 14)"),
    "label outside the map": (GOOD + b'\n{"text": "c", "label": 2}\n',
                              "train.jsonl line 4: field 'label' is '2', not in the label map "
                              "{'0': 'negative', '1': 'positive'}"),
    "unparseable line": (GOOD + b'{"text": "c", "label": 1\n',
                         "train.jsonl line 3: not valid JSON (Expecting ',' delimiter at column "
                         "25)"),
    "not an object": (GOOD + b'["c", 1]\n', "train.jsonl line 3: a JSON list, not an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("streamed", [False, True])
def test_bad_training_file_is_one_line_naming_file_row_and_field(tmp_path, capsys, case,
                                                                  streamed):
  content, msg = BAD_FILES[case]
  (tmp_path / "train.jsonl").write_bytes(content)
  (tmp_path / "dev.jsonl").write_bytes(GOOD)
  line = one_error(capsys, f"--config.output_dir={tmp_path / 'run'}",
                   "--config.data.label_map=0=negative,1=positive",
                   f"--config.data.stream_above_mb={0 if streamed else 256}",
                   f"--config.data.train_file={tmp_path / 'train.jsonl'}",
                   f"--config.data.eval_file={tmp_path / 'dev.jsonl'}")
  assert line.startswith(f"error: ValueError: {tmp_path / msg}"), line


@pytest.mark.parametrize("name,content,extra,msg", [
    ("dev.jsonl", b"\n", [], "{dev}: no records"),
    ("dev.csv", b"text,label\n", [], "{dev}: no records"),
    ("dev.csv", b"text,label\ngood,1\nbad,0,extra\n", [],
     "{dev} line 3: 3 columns, the header has 2 (text, label)"),
    ("dev.tsv", b"text\tlabel\ngood\t1\n", ["--config.data.target_field=y"],
     "{train} line 1: no field 'y' (fields: label, text); check data.target_field"),
    ("dev.json", b'{"text": "a"}', [], "{dev}: a JSON dict, not an array of objects"),
    ("dev.json", b'[{"text": "good", "label": 1}, {"text": "' + b"good " * 60 + b'", "label": 0}]',
     [], "{dev} record 2: inputs is 61 tokens (with EOS), longer than max_input_length=48"),
    ("dev.txt", b"good\n", [], "{dev}: unknown data format '.txt'"),
    ("dev*.jsonl", None, [], "data.eval_file='{dev}' matches no file"),
])
def test_bad_dev_file_is_one_line(tmp_path, capsys, name, content, extra, msg):
  train = tmp_path / "train.jsonl"
  train.write_bytes(GOOD)
  dev = tmp_path / name
  if content is not None:
    dev.write_bytes(content)
  line = one_error(capsys, f"--config.output_dir={tmp_path / 'run'}",
                   "--config.data.label_map=0=negative,1=positive", *extra,
                   f"--config.data.train_file={train}", f"--config.data.eval_file={dev}")
  assert line.startswith("error: ValueError: " + msg.format(dev=dev, train=train)), line


# ------------------------------------------------------------------------------ degenerate data
def test_all_empty_targets_are_refused_and_one_class_is_warned_about(tmp_path, capsys):
  rec = [{"source": f"say {w}", "target": ""} for w in WORDS[:5]]
  path = write_jsonl(tmp_path / "empty.jsonl", rec)
  line = one_error(capsys, f"--config.output_dir={tmp_path / 'run'}",
                   f"--config.data.train_file={path}", f"--config.data.eval_file={path}")
  assert line == (f"error: ValueError: training data {path}: all 5 targets are empty; nothing "
                  f"to learn or score")
  c = get_config().data
  c.train_file = c.eval_file = write_jsonl(tmp_path / "one.jsonl",
                                           [{"text": w, "label": "yes"} for w in WORDS[:4]])
  own = files.OwnData(c)
  err = capsys.readouterr().err
  assert own.labels == ("yes",) and err.count("warning: ") == 2, err
  assert "all 4 targets are 'yes' (one class everywhere)" in err
  # The registered in-memory tasks go through the same check.
  empty = pipeline.TokenizedExamples([[5, 1]] * 3, [[1]] * 3, [{"targets": ""}] * 3, "t")
  from prompt_tuning.data import inputs
  with pytest.raises(ValueError, match=r"t \(train split, 3 examples\): all 3 targets are empty"):
    inputs.check_sources([empty], "train")


# ------------------------------------------------------------------------------ options, metrics
def test_defaults_for_text_label_and_source_target_records(tmp_path):
  c = get_config().data
  c.train_file = c.eval_file = write_jsonl(tmp_path / "a.jsonl",
                                           [{"text": "good", "label": "pos"},
                                            {"text": "bad", "label": "neg"}])
  own = files.OwnData(c)
  assert (own.task_type, own.labels, own.train[0]) == (
      "classification", ("neg", "pos"), {"inputs": "good", "targets": "pos"})
  # Invalid predictions count as errors: accuracy 1/4; F1 of neg 2*1 / (2*1 + 1 FP + 1 FN) and
  # of pos 0 (no true positive).
  s = own.score([{"targets": t} for t in ("neg", "neg", "pos", "pos")],
                ["neg", "maybe", "neg", "maybe"])
  assert s == pytest.approx({"accuracy": 25.0, "f1_macro": 100 * (0.5 + 0) / 2})
  c.train_file = c.eval_file = write_jsonl(tmp_path / "b.jsonl",
                                           [{"source": "translate: a", "target": "x y"},
                                            {"source": "translate: b", "target": "z"}])
  c.metrics = "exact_match,rouge"
  own = files.OwnData(c)
  assert own.task_type == "generation" and own.labels == ()
  s = own.score(own.dev, ["x y", "w"])
  assert s == pytest.approx({"exact_match": 50.0, "rougeL": 50.0})
  c.metrics = "perplexity"
  with pytest.raises(ValueError, match=r"data.metrics: unknown \['perplexity'\]"):
    files.OwnData(c)


# ------------------------------------------------------------------------------ HF datasets
def test_hf_datasets_from_local_files(tmp_path):
  datasets = pytest.importorskip("datasets")
  feats = datasets.Features({"sentence": datasets.Value("string"),
                             "label": datasets.ClassLabel(names=["negative", "positive"])})

  def split(n, seed):
    ex = synthetic.sentiment_examples(n, seed)
    return datasets.Dataset.from_dict(
        {"sentence": [e["inputs"] for e in ex],
         "label": [int(e["targets"] == "positive") for e in ex]}, features=feats)

  saved = str(tmp_path / "saved")
  datasets.DatasetDict({"train": split(64, 0), "validation": split(32, 1)}).save_to_disk(saved)
  config = get_config()
  config.output_dir, config.data.hf_dataset = str(tmp_path / "run"), saved
  exp = build.build(config)   # what `prompt-tuning train --config.data.hf_dataset=...` runs on
  (name, ev), = exp.eval_sets.items()
  assert name == f"{saved}[validation]" and ev.labels == ("negative", "positive")
  # The ClassLabel's names are the label map: the examples are the synthetic task's own.
  assert ev.examples.raw == [{"inputs": e["inputs"], "targets": e["targets"]}
                             for e in synthetic.sentiment_examples(32, 1)]
  assert next(exp.train_it)["inputs"].shape == (32, 48)
  c = config.data
  c.hf_eval_split = "test"
  with pytest.raises(ValueError, match=r"has no split 'test'; it has \['train', 'validation'\]"):
    files.OwnData(c)
  # A directory of data files, read by load_dataset (what a local HF cache entry also is).
  folder = tmp_path / "json"
  folder.mkdir()
  write_jsonl(folder / "train.jsonl", [{"source": "copy: good", "target": "good"}] * 3)
  write_jsonl(folder / "validation.jsonl", [{"source": "copy: bad", "target": "bad"}])
  c = get_config().data
  c.hf_dataset = str(folder)
  own = files.OwnData(c)
  assert own.task_type == "generation" and own.dev == [{"inputs": "copy: bad", "targets": "bad"}]
  c.hf_dataset = "no_such_dataset_here"
  with pytest.raises(ValueError, match="cannot be loaded offline"):
    files.OwnData(c)


def test_own_jsonl_gives_the_builtin_task_batches(tmp_path):
  """The synthetic sentiment task written as {"text", "label"} jsonl (int labels, a template
  and a label map) feeds exactly the batches and dev examples of the built-in task."""
  train_path = write_jsonl(tmp_path / "train.jsonl", sentiment_records(96, 0))
  dev_path = write_jsonl(tmp_path / "dev.jsonl", sentiment_records(40, 10_000))
  exps = []
  for own in (False, True):
    c = get_config()
    c.output_dir, c.train.batch_size = str(tmp_path / "run"), 8
    if own:
      c.data.update(train_file=train_path, eval_file=dev_path, input_template="review: {text}",
                    label_map="0=negative,1=positive")
    else:
      c.data.update(num_train=96, num_eval=40)
    exps.append(build.build(c))
  builtin, own = exps
  for _ in range(15):   # past the first epoch (12 steps)
    a, b = next(builtin.train_it), next(own.train_it)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  (ev_a,), (ev_b,) = builtin.eval_sets.values(), own.eval_sets.values()
  assert ev_a.examples.raw == ev_b.examples.raw and len(ev_b.examples.raw) == 40
  assert ev_b.labels == ("negative", "positive")
