"""The user's own data: local files (jsonl, json, csv, tsv; paths or globs) or a Hugging Face
``datasets`` dataset (a ``save_to_disk`` directory, a directory of data files, or a name in the
local HF cache; always offline), turned into text-to-text examples and served through the same
iterator interface as every other task (no TensorFlow).

A record becomes ``{"inputs": input_template.format(**record), "targets": target}``, the target
being the record's ``target_field`` value, mapped through ``label_map`` when one is given.
Defaults: the input is the record's first field among :data:`INPUT_FIELDS`, the target its first
among :data:`TARGET_FIELDS`, so {"text", "label"} and {"source", "target"} records need no
options. The task type is classification when a label map is given (or the HF dataset's target
is a ``ClassLabel``) or the target field is ``label``, else generation.

* Classification: accuracy and macro F1 over the label set (a prediction outside it is an error
  for its example's class), plus rank classification over the label set (``rank_*``). The label
  set is the label map's values, else every target of the training and dev data.
* Generation: ``data.metrics`` (exact_match, rouge, bleu).

Dev data is always read into memory. Training data too (:class:`pipeline.InMemoryIterator`),
unless its line-based files (jsonl, csv, tsv) total more than ``data.stream_above_mb``: then
:class:`StreamIterator` streams them, each host reading its own byte range of every file, with
an exact ``get_state`` / ``set_state``. HF datasets are read into memory.

A bad record is one ``ValueError`` naming the file, the line (or record / row) and the field.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import string

import numpy as np

from prompt_tuning import metrics as metrics_lib
from prompt_tuning.data import pipeline

INPUT_FIELDS = ("text", "source", "inputs", "input", "sentence", "question", "prompt")
TARGET_FIELDS = ("label", "target", "targets", "output", "answer")
TASK_TYPES = ("classification", "generation")
GENERATION_METRICS = ("exact_match", "rouge", "bleu")
LINE_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}   # one record per line
FORMATS = dict(LINE_FORMATS, **{".json": "json"})
MANY_LABELS = 100      # more classes than this: probably free text, warn
DEFAULT_BUFFER = 1000   # streamed shuffle buffer (data.shuffle_buffer_size = 0)


def is_own(d) -> bool:
  """Whether the data section names the user's own data (it then replaces data.task)."""
  return bool(d.train_file or d.hf_dataset)


# ------------------------------------------------------------------------------ options
def parse_label_map(text: str) -> dict[str, str]:
  """``"0=negative,1=positive"`` -> {"0": "negative", "1": "positive"}."""
  out = {}
  for item in (p.strip() for p in text.split(",")):
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
      raise ValueError(f"data.label_map {text!r}: {item!r} is not VALUE=LABEL; write e.g. "
                       f"data.label_map=0=negative,1=positive")
    if key.strip() in out:
      raise ValueError(f"data.label_map {text!r} maps {key.strip()!r} twice")
    out[key.strip()] = value.strip()
  return out


def template_fields(template: str) -> list[str]:
  try:
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
  except ValueError as e:
    raise ValueError(f"data.input_template {template!r}: {e} (fields are written {{name}}, a "
                     f"literal brace {{{{ or }}}})") from None
  if any(not n or not n.isidentifier() for n in names):
    raise ValueError(f"data.input_template {template!r}: every {{...}} must name a field, "
                     f"e.g. \"review: {{text}}\"")
  return names


def expand(pattern: str, key: str) -> list[str]:
  """The files of a path or glob, sorted; each must have a known format."""
  pattern = os.path.expanduser(pattern)
  paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
  if not paths:
    raise ValueError(f"data.{key}={pattern!r} matches no file")
  for p in paths:
    if not os.path.isfile(p):
      raise ValueError(f"data.{key}: {p} does not exist or is not a file")
    file_format(p)
  return paths


def file_format(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise ValueError(f"{path}: unknown data format {ext or '(no extension)'!r}; use "
                     f"{', '.join(sorted(FORMATS))}")
  return FORMATS[ext]


# ------------------------------------------------------------------------------ reading
def _text(path: str, where, raw: bytes) -> str:
  """``raw`` decoded; ``where`` None: ``raw`` is the whole file (the message counts lines)."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line_start = raw.rfind(b"\n", 0, e.start) + 1
    if where is None:
      lines = raw.count(b"\n", 0, e.start)
      where = f"line {lines + 1}"
    raise ValueError(f"{path} {where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                     f"{e.start - line_start + 1}); save the file as UTF-8") from None


def _json_object(path: str, where: str, text: str) -> dict:
  try:
    rec = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} {where}: not valid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(rec, dict):
    raise ValueError(f"{path} {where}: a JSON {type(rec).__name__}, not an object with fields")
  return rec


def _csv_row(path: str, where: str, text: str, header: list[str], delimiter: str) -> dict:
  try:
    (row,) = list(csv.reader([text], delimiter=delimiter, strict=True))
  except (csv.Error, ValueError) as e:
    raise ValueError(f"{path} {where}: not one {'CSV' if delimiter == ',' else 'TSV'} record "
                     f"({e}); a quoted field may not span lines") from None
  if len(row) != len(header):
    raise ValueError(f"{path} {where}: {len(row)} columns, the header has {len(header)} "
                     f"({', '.join(header)})")
  return dict(zip(header, row))


def _header(path: str, f) -> tuple[list[str], int]:
  """A csv / tsv file's column names and the offset of its first record."""
  raw = f.readline()
  text = _text(path, "line 1", raw).lstrip("\ufeff")
  header = next(csv.reader([text], delimiter="\t" if file_format(path) == "tsv" else ","), [])
  if not header or not all(h.strip() for h in header):
    raise ValueError(f"{path} line 1: the header must name every column, got {header}")
  return [h.strip() for h in header], f.tell()


def read_line_record(path: str, fmt: str, header, raw: bytes, where: str) -> dict:
  text = _text(path, where, raw).lstrip("\ufeff")   # a byte-order mark opens some files
  if fmt == "jsonl":
    return _json_object(path, where, text.strip())
  return _csv_row(path, where, text.rstrip("\r\n"), header, "\t" if fmt == "tsv" else ",")


def read_file(path: str):
  """(where, record) for every record of a file, in order."""
  fmt = file_format(path)
  with open(path, "rb") as f:
    if fmt == "json":
      text = _text(path, None, f.read()).lstrip("\ufeff")
      try:
        data = json.loads(text)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}: not valid JSON ({e.msg}); a .json file "
                         f"holds one array of objects (one object per line: .jsonl)") from None
      if not isinstance(data, list):
        raise ValueError(f"{path}: a JSON {type(data).__name__}, not an array of objects "
                         f"(one object per line: name it .jsonl)")
      for i, rec in enumerate(data):
        if not isinstance(rec, dict):
          raise ValueError(f"{path} record {i + 1}: a JSON {type(rec).__name__}, not an object")
        yield f"record {i + 1}", rec
      return
    header, line = None, 1
    if fmt != "jsonl":
      header, _ = _header(path, f)
      line = 2
    for raw in f:
      if raw.strip():
        yield f"line {line}", read_line_record(path, fmt, header, raw, f"line {line}")
      line += 1


def _hf_load(d, split: str):
  """One split of data.hf_dataset, offline (nothing is fetched from the Hub)."""
  try:
    import datasets
    from huggingface_hub import constants as hub_constants
  except ImportError:
    raise ValueError("data.hf_dataset needs the `datasets` package: pip install -e "
                     "'.[hf-datasets]'") from None
  name = os.path.expanduser(d.hf_dataset)
  # The offline switches are read when `datasets` is imported (HF_HUB_OFFLINE=1); set here for
  # this load only, as the process may have imported it before.
  saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
  datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
  try:
    if os.path.isdir(name) and any(os.path.exists(os.path.join(name, f))
                                   for f in ("dataset_dict.json", "state.json")):
      data = datasets.load_from_disk(name)   # written by save_to_disk
      if isinstance(data, datasets.Dataset):
        raise ValueError(f"data.hf_dataset {name}: one saved split, not a DatasetDict; save a "
                         f"DatasetDict with {d.hf_train_split!r} and {d.hf_eval_split!r} "
                         f"splits")
    else:
      data = datasets.load_dataset(name, d.hf_config or None)
  except ValueError:
    raise
  except Exception as e:   # the many ways a dataset is missing offline: one line
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(f"data.hf_dataset {d.hf_dataset!r} (config {d.hf_config or 'default'!r}) "
                     f"cannot be loaded offline: {first}") from None
  finally:
    datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
  if split not in data:
    raise ValueError(f"data.hf_dataset {d.hf_dataset!r} has no split {split!r}; it has "
                     f"{sorted(data)} (set data.hf_train_split / data.hf_eval_split)")
  return data[split]


def _hf_records(d, split: str):
  ds = _hf_load(d, split)
  where = f"{d.hf_dataset}[{split}]"
  return where, ds, ((f"row {i}", rec) for i, rec in enumerate(ds))


# ------------------------------------------------------------------------------ formatting
class Format:
  """How a record becomes an example (see the module docstring); resolved from the options and
  the first training record."""

  def __init__(self, d, first: dict, source: str, class_names=None):
    self.template = d.input_template
    if not self.template:
      field = next((f for f in INPUT_FIELDS if f in first), None)
      if field is None:
        raise ValueError(f"{source}: no input field ({', '.join(INPUT_FIELDS)}) in its fields "
                         f"{sorted(first)}; set data.input_template, e.g. "
                         f"\"{{{sorted(first)[0]}}}\"")
      self.template = "{" + field + "}"
    self.fields = template_fields(self.template)
    self.target_field = d.target_field or next((f for f in TARGET_FIELDS if f in first), "")
    if not self.target_field:
      raise ValueError(f"{source}: no target field ({', '.join(TARGET_FIELDS)}) in its fields "
                       f"{sorted(first)}; set data.target_field")
    if d.label_map:
      self.label_map = parse_label_map(d.label_map)
    elif class_names:   # an HF ClassLabel: its ints -> its names
      self.label_map = {str(i): n for i, n in enumerate(class_names)}
    else:
      self.label_map = None
    self.task_type = d.task_type or ("classification" if self.label_map is not None
                                     or self.target_field == "label" else "generation")

  def example(self, source: str, where: str, rec: dict) -> dict:
    values = {}
    for f in self.fields + [self.target_field]:
      if rec.get(f) is None:
        what = "no" if f not in rec else "an empty (null)"
        key = "data.target_field" if f == self.target_field else "data.input_template"
        raise ValueError(f"{source} {where}: {what} field {f!r} (fields: "
                         f"{', '.join(sorted(rec))}); check {key}")
      values[f] = rec[f]
    target = values[self.target_field]
    key = json.dumps(target) if isinstance(target, bool) else str(target)
    if self.label_map is not None:
      if key not in self.label_map:
        raise ValueError(f"{source} {where}: field {self.target_field!r} is {key!r}, not in the "
                         f"label map {self.label_map}")
      key = self.label_map[key]
    return {"inputs": self.template.format(**values), "targets": key}


# ------------------------------------------------------------------------------ the data
class OwnData:
  """The own-data section of a config, read and checked: the training records (in memory, or
  the files to stream), the dev examples, the label set and the metrics."""

  def __init__(self, d, process_index: int = 0):
    if d.train_file and d.hf_dataset:
      raise ValueError(f"data.train_file ({d.train_file!r}) and data.hf_dataset "
                       f"({d.hf_dataset!r}) are both set; give one")
    if d.stream_above_mb < 0:
      raise ValueError(f"data.stream_above_mb must be >= 0 (0: always stream), got "
                       f"{d.stream_above_mb}")
    if d.task_type and d.task_type not in TASK_TYPES:
      raise ValueError(f"data.task_type {d.task_type!r}: use one of {TASK_TYPES} (or '')")
    self.stream_paths = None
    if d.train_file:
      if not d.eval_file:
        raise ValueError("data.train_file needs data.eval_file (the dev set every evaluation "
                         "and the best checkpoint use)")
      train_paths = expand(d.train_file, "train_file")
      eval_paths = expand(d.eval_file, "eval_file")
      size = sum(os.path.getsize(p) for p in train_paths)
      if size > d.stream_above_mb * 2 ** 20 and all(
          file_format(p) != "json" for p in train_paths):
        self.stream_paths = train_paths
      first = self._first(train_paths)
      self.name = d.eval_file
      self.format = Format(d, first[1], first[0])
      self.train, self.train_where = (None, None) if self.stream_paths else \
          self._read_files(train_paths)
      self.dev, self.dev_where = self._read_files(eval_paths)
    else:
      train_src, train_ds, train_rows = _hf_records(d, d.hf_train_split)
      eval_src, _, eval_rows = _hf_records(d, d.hf_eval_split)
      if not len(train_ds):
        raise ValueError(f"{train_src}: the split is empty")
      feature = train_ds.features.get(d.target_field or next(
          (f for f in TARGET_FIELDS if f in train_ds.features), ""))
      names = getattr(feature, "names", None)   # datasets.ClassLabel
      self.name = eval_src
      self.format = Format(d, train_ds[0], train_src, names)
      self.train, self.train_where = self._examples(train_src, train_rows)
      self.dev, self.dev_where = self._examples(eval_src, eval_rows)
    self.task_type = self.format.task_type
    if self.train is not None:
      pipeline.check_targets(f"training data {d.train_file or d.hf_dataset}",
                             [e["targets"] for e in self.train], process_index)
    pipeline.check_targets(f"dev data {self.name}", [e["targets"] for e in self.dev],
                           process_index)
    if self.task_type == "classification":
      if self.format.label_map is not None:
        self.labels = tuple(dict.fromkeys(self.format.label_map.values()))
      elif self.stream_paths:   # the dev set alone could miss a class: wrong macro F1 and ranks
        raise ValueError(f"{d.train_file}: streamed training data (over data.stream_above_mb) "
                         f"is not read ahead for its label set; give data.label_map (e.g. "
                         f"'yes=yes,no=no') or data.task_type=generation")
      else:
        seen = [e["targets"] for e in (self.train or []) + self.dev]
        self.labels = tuple(sorted(set(seen)))
      if len(self.labels) > MANY_LABELS:   # rank classification scores every label
        pipeline.warn(f"{len(self.labels)} classes in {self.name}: rank classification scores "
                      f"each; for free-text targets set data.task_type=generation",
                      process_index)
      self.metrics = ()
    else:
      self.labels = ()
      self.metrics = tuple(m.strip() for m in (d.metrics or "exact_match").split(","))
      bad = [m for m in self.metrics if m not in GENERATION_METRICS]
      if bad:
        raise ValueError(f"data.metrics: unknown {bad}; use some of {GENERATION_METRICS}")
      for m, module, package in (("rouge", "rouge_score", "rouge-score"),
                                 ("bleu", "sacrebleu", "sacrebleu")):
        if m in self.metrics:
          try:
            __import__(module)
          except ImportError:
            raise ValueError(f"data.metrics={m} needs {package}: pip install {package}") \
                from None

  @staticmethod
  def _first(paths) -> tuple[str, dict]:
    for p in paths:
      for _, rec in read_file(p):
        return p, rec
    raise ValueError(f"{', '.join(paths)}: no records (the training data is empty)")

  def _read_files(self, paths) -> tuple[list[dict], list[str]]:
    """The examples of the files, and where each comes from (for error messages)."""
    out, places = [], []
    for p in paths:
      n = len(out)
      for where, rec in read_file(p):
        out.append(self.format.example(p, where, rec))
        places.append(f"{p} {where}")
      if len(out) == n:
        raise ValueError(f"{p}: no records")
    return out, places

  def _examples(self, source, rows) -> tuple[list[dict], list[str]]:
    out, places = [], []
    for where, rec in rows:
      out.append(self.format.example(source, where, rec))
      places.append(f"{source} {where}")
    if not out:
      raise ValueError(f"{source}: the split is empty")
    return out, places

  # -- metrics
  def score(self, examples, predictions) -> dict:
    targets = [e["targets"] for e in examples]
    if self.task_type == "classification":
      return metrics_lib.macro_f1_and_accuracy(self.labels)(targets, predictions)
    out = {}
    for m in self.metrics:
      if m == "exact_match":
        out["exact_match"] = metrics_lib.accuracy(targets, predictions)["accuracy"]
      elif m == "rouge":
        out.update(metrics_lib.rouge(("rougeL",))(targets, predictions))
      else:
        out.update(metrics_lib.bleu("13a")(targets, predictions))   # sacreBLEU's default
    return out

  # -- iterators
  def train_iterator(self, vocab, *, feature_lengths: dict, global_batch_size: int, seed: int,
                     truncate: bool, pack: bool, model_type: str, packed_length=None,
                     num_processes: int = 1, process_index: int = 0,
                     shuffle_buffer_size: int = 0, task_ids=None):
    if self.stream_paths:
      if pack or task_ids:
        raise ValueError("streamed training files (over data.stream_above_mb) are served "
                         "unpacked and without per-task ids; set data.pack=False (or raise "
                         "data.stream_above_mb to read them into memory)")
      return StreamIterator(self.stream_paths, self.format, vocab, global_batch_size,
                            feature_lengths=feature_lengths, seed=seed, truncate=truncate,
                            num_processes=num_processes, process_index=process_index,
                            buffer_size=shuffle_buffer_size or DEFAULT_BUFFER)
    src = pipeline.tokenize_examples(self.train, vocab, feature_lengths["inputs"],
                                     feature_lengths["targets"], truncate, self.name,
                                     self.train_where)
    return pipeline.InMemoryIterator(
        [src], global_batch_size, feature_lengths=feature_lengths, seed=seed, pack=pack,
        model_type=model_type, packed_length=packed_length, num_processes=num_processes,
        process_index=process_index, task_ids=task_ids)

  def eval_batches(self, vocab, *, feature_lengths: dict, global_batch_size: int,
                   truncate: bool, **kw):
    src = pipeline.tokenize_examples(self.dev, vocab, feature_lengths["inputs"],
                                     feature_lengths["targets"], truncate, self.name,
                                     self.dev_where)
    return pipeline.EvalBatches(src, global_batch_size, feature_lengths=feature_lengths,
                                labels=self.labels, scorer=self.score, **kw)


# ------------------------------------------------------------------------------ streaming
class _At:
  """Where a streamed record is, for error messages: the line number is counted only when a
  message needs it (reading the file up to the record)."""

  def __init__(self, path: str, offset: int, prefix: str = ""):
    self.path, self.offset, self.prefix = path, offset, prefix

  def __str__(self):
    with open(self.path, "rb") as f:
      lines = f.read(self.offset).count(b"\n")
    return f"{self.prefix}line {lines + 1}"


class StreamIterator:
  """Endless per-host training batches streamed from line-based files (jsonl, csv, tsv).

  Host ``p`` of ``P`` owns the lines that start in the ``p``-th of ``P`` equal byte ranges of
  every file (after a csv / tsv header), so it reads only its share and the hosts' shares are
  disjoint and cover every record.
  Its records go through a shuffle buffer of ``buffer_size`` examples; the rows of step ``s``
  are drawn from the buffer with a generator seeded by (seed, p, s), each replaced by the next
  record of the host's share (which starts over when it ends: epochs). The state is the step,
  the read position and the file offsets of the buffered records (re-read on restore), so a
  restored iterator yields exactly the batches an uninterrupted one would.
  """

  def __init__(self, paths, fmt: Format, vocab, global_batch_size: int, *,
               feature_lengths: dict, seed: int = 0, truncate: bool = False,
               num_processes: int = 1, process_index: int = 0,
               buffer_size: int = DEFAULT_BUFFER):
    start, stop = pipeline.host_rows(global_batch_size, num_processes, process_index)
    self.rows, self.paths, self.format, self.vocab = stop - start, list(paths), fmt, vocab
    self.S, self.T = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
    self.seed, self.truncate, self.p = seed, truncate, process_index
    self.buffer_size = buffer_size
    self.formats = [file_format(p) for p in self.paths]
    self.headers, self.shares = [], []   # shares: (file, first line start, end) of this host
    for i, path in enumerate(self.paths):
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        header, body = _header(path, f) if self.formats[i] != "jsonl" else (None, 0)
        lo, hi = (body + (size - body) * k // num_processes for k in (process_index,
                                                                     process_index + 1))
        if lo > body:   # the first line that starts at or after lo
          f.seek(lo - 1)
          f.readline()
          lo = f.tell()
      self.headers.append(header)
      if lo < hi:
        self.shares.append((i, lo, hi))
    self._opts = {"files": [[p, os.path.getsize(p)] for p in self.paths], "seed": seed,
                  "rows": self.rows, "process_index": process_index,
                  "num_processes": num_processes, "buffer_size": buffer_size,
                  "lengths": [self.S, self.T], "truncate": truncate,
                  "template": fmt.template, "target_field": fmt.target_field,
                  "label_map": fmt.label_map}
    self._files: dict = {}
    self.step, self.share, self.offset, self.epoch = 0, 0, None, 0
    self.buffer: list = []   # (file, offset, input ids, target ids, target text)
    first = [self._read_next() for _ in range(min(buffer_size, 1000))]
    pipeline.check_targets(f"streamed training data (first {len(first)} records of host "
                           f"{process_index})", [r[4] for r in first], process_index)
    self.share, self.offset, self.epoch = 0, None, 0   # the check's reading undone

  def _file(self, i: int):
    if i not in self._files:
      self._files[i] = open(self.paths[i], "rb")
    return self._files[i]

  def _record(self, i: int, offset: int, raw: bytes):
    path = self.paths[i]
    at = _At(path, offset)
    rec = read_line_record(path, self.formats[i], self.headers[i], raw, at)
    ex = self.format.example(path, at, rec)
    ids = pipeline.encode_example(ex, self.vocab, self.S, self.T, self.truncate,
                                  _At(path, offset, f"{path} "))
    return (i, offset) + ids + (ex["targets"],)

  def _read_next(self):
    """The next record of this host's share, in file order, starting over at the end."""
    if not self.shares:
      raise ValueError(f"host {self.p} has no records in its share of {self.paths} (fewer "
                       f"lines than hosts?)")
    empty_passes = 0
    while True:
      i, lo, hi = self.shares[self.share]
      if self.offset is None:
        self.offset = lo
      if self.offset < hi:
        f = self._file(i)
        f.seek(self.offset)
        raw = f.readline()
        at, self.offset = self.offset, self.offset + len(raw)
        if raw.strip():
          return self._record(i, at, raw)
        if raw:
          continue
      self.share, self.offset = self.share + 1, None
      if self.share == len(self.shares):
        self.share, self.epoch = 0, self.epoch + 1
        empty_passes += 1
        if empty_passes > 1:
          raise ValueError(f"host {self.p}'s share of {self.paths} has no records")

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    while len(self.buffer) < self.buffer_size:
      self.buffer.append(self._read_next())
    rng = np.random.default_rng([self.seed, self.p, self.step])
    rows = []
    for _ in range(self.rows):
      j = int(rng.integers(len(self.buffer)))
      rows.append(self.buffer[j])
      self.buffer[j] = self._read_next()
    self.step += 1
    ex = pipeline.TokenizedExamples([r[2] for r in rows], [r[3] for r in rows], None,
                                    pad_id=getattr(self.vocab, "pad_id", 0))
    return ex.padded(np.arange(len(rows)), self.S, self.T)

  def get_state(self) -> bytes:
    return pipeline.encode_state({
        "kind": "own_stream", "options": self._opts, "step": self.step, "share": self.share,
        "offset": self.offset, "epoch": self.epoch,
        "buffer": [[r[0], r[1]] for r in self.buffer]})

  def set_state(self, state: bytes):
    header, _ = pipeline.decode_state(state)
    if header.get("kind") != "own_stream":
      raise ValueError(f"state of a {header.get('kind')!r} iterator, not a streamed-file one")
    pipeline.check_same("streamed-file", header["options"], json.loads(json.dumps(self._opts)))
    self.step, self.share = int(header["step"]), int(header["share"])
    self.offset, self.epoch = header["offset"], int(header["epoch"])
    self.buffer = []
    for i, offset in header["buffer"]:
      f = self._file(i)
      f.seek(offset)
      self.buffer.append(self._record(i, offset, f.readline()))
