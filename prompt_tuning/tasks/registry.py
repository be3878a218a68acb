"""seqio Tasks and Mixtures backed by TFDS (and local MLSum files). Needs TensorFlow + seqio.

Task names (README "Tasks" maps each to its reference task): super_glue_{boolq,cb,copa,multirc,
record,rte,wic,wsc} (T5's super_glue_*_v102; WSC its simple formulation), mixture
``super_glue``; prompt-tuning's ``taskless_*`` variant of each (mixture
``taskless_super_glue``); glue_qqp, glue_mrpc (T5's glue_*_v002) and their taskless variants;
the zero-shot transfer evaluation tasks glue_mrpc_from_qqp, glue_qqp_from_mrpc (prompt-tuning's
glue_transfer; pairs in DOMAIN_SHIFT_PAIRS); wmt14_ende, wmt19_enzh; cnn_dailymail_en (T5's
cnn_dailymail_v002); mlsum_{de,es,fr}, mixture ``mlsum``.

MLSum is not in TFDS: its tasks read the official MLSum jsonl files (fields ``text``,
``summary``) from ``$MLSUM_DIR/{lang}_{split}.jsonl`` (split: train, val, test), or a directory
given to :func:`register_mlsum`. They are read line by line (a seqio TextLineDataSource, JSON
parsed in the pipeline), so they stream, shard per host and resume exactly like TFDS sources.

Mixtures sample their tasks examples-proportionally, capped at 2**19 examples (T5): the size of
a task's training split is its spec's ``train_size`` where T5 fixes the rate (ReCoRD), else
comes from its source (TFDS metadata, the MLSum file) or, when that is unavailable (data not
prepared yet, mocked data), from the published sizes in ``TRAIN_SIZES``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable

import seqio
import tensorflow as tf

from prompt_tuning import metrics as M

# T5 / prompt-tuning read glue 1.0.0, whose download link is dead (TFDS 1.0.1: "Update dead URL
# links"; 2.0.0: "Update data source for glue/qqp"): the installed TFDS builds 2.0.0.
TFDS_VERSIONS = {"super_glue": "1.0.2", "glue": "2.0.0", "wmt14_translate": "1.0.0",
                 "wmt19_translate": "1.0.0", "cnn_dailymail": "3.4.0"}
LANGUAGES = {"de": "German", "es": "Spanish", "fr": "French", "en": "English", "zh": "Chinese"}


@dataclasses.dataclass
class TaskSpec:
  name: str
  formatter: Callable          # tf example dict -> {"inputs", "targets", (extras)}
  metric: Callable              # (examples, predictions) -> dict
  labels: tuple = ()            # class label strings (classification tasks)
  splits: dict = dataclasses.field(default_factory=lambda: {"train": "train",
                                                            "validation": "validation"})
  expand: bool = False          # formatter returns a batch of rows per example (ReCoRD)
  postprocess: Callable = None  # prediction string -> string before the metric (transfer)
  train_size: int = 0           # mixing size when not the source's row count (T5's weights)
  reference: str = ""           # the reference task it equals (README table)


SPECS: dict[str, TaskSpec] = {}

# Natural-language instructions, prepended to the input when ``data.instructions`` is on
# (multi-task runs with vs. without instruction text, Albalak et al. 2022). ``taskless_*``
# variants and transfer evaluation tasks use the instruction of the task they format like.
INSTRUCTIONS = {
    "super_glue_boolq": "Answer the yes/no question about the passage with True or False.",
    "super_glue_cb": "Does the premise entail, contradict, or say nothing about the hypothesis?",
    "super_glue_copa": "Which choice is the more plausible cause or effect of the premise?",
    "super_glue_multirc": "Is the answer to the question about the paragraph correct?",
    "super_glue_record": "Fill in @placeholder in the query with an entity from the passage.",
    "super_glue_rte": "Does the premise entail the hypothesis?",
    "super_glue_wic": "Is the word used with the same meaning in both sentences?",
    "super_glue_wsc": "Which noun does the starred pronoun refer to?",
    "glue_qqp": "Are the two questions duplicates of each other?",
    "glue_mrpc": "Do the two sentences mean the same thing?",
    "wmt14_ende": "Translate the English text into German.",
    "wmt19_enzh": "Translate the English text into Chinese.",
    "cnn_dailymail_en": "Write a short summary of the news article.",
    "mlsum_de": "Write a short summary of the news article in German.",
    "mlsum_es": "Write a short summary of the news article in Spanish.",
    "mlsum_fr": "Write a short summary of the news article in French.",
}
# Zero-shot transfer as prompt-tuning's glue_transfer.py: train on the source task in its own
# format, evaluate the target's validation set in the target's format, the predicted label words
# mapped into the target's (duplicate <-> equivalent) before scoring.
DOMAIN_SHIFT_PAIRS = {
    "qqp_to_mrpc": ("glue_qqp", "glue_mrpc_from_qqp"),
    "mrpc_to_qqp": ("glue_mrpc", "glue_qqp_from_mrpc"),
    "taskless_qqp_to_mrpc": ("taskless_glue_qqp", "taskless_glue_mrpc_from_qqp"),
    "taskless_mrpc_to_qqp": ("taskless_glue_mrpc", "taskless_glue_qqp_from_mrpc"),
}
# Task names that no longer exist -> what replaces them (one error line names it).
REMOVED = {
    "glue_qqp_paraphrase": "glue_qqp (T5's glue_qqp_v002 format; the shared 'paraphrase' format "
                           "of the QQP/MRPC pair is gone: see data.domain_shift=qqp_to_mrpc)",
    "glue_mrpc_paraphrase": "glue_mrpc (T5's glue_mrpc_v002 format; the shared 'paraphrase' "
                            "format of the QQP/MRPC pair is gone: see "
                            "data.domain_shift=mrpc_to_qqp)",
}


def unknown_task(name: str, where: str = "") -> ValueError:
  """The one-line error for a name that is no registered task: its replacement, if it was
  removed, else the registered names."""
  if name in REMOVED:
    return ValueError(f"task {name!r} was removed; use {REMOVED[name]}")
  return ValueError(f"unknown task {name!r}{where}; registered: {', '.join(sorted(SPECS))}")


def instruction_text(name: str) -> str:
  if name in INSTRUCTIONS:
    return INSTRUCTIONS[name]
  base = name[len("taskless_"):] if name.startswith("taskless_") else name
  return INSTRUCTIONS[base.split("_from_")[0]]


# ----------------------------------------------------------------------------- formatting
# The texts of T5's tasks (t5/data/preprocessors.py, glue_utils.py, tasks.py): tests pin them
# string for string against the reference code's output (tests/fixtures/reference_tasks.json).
UNLABELED = "<unk>"  # T5's target for rows without a label (label -1, ReCoRD without answers)


def _join(*parts):
  return tf.strings.join(list(parts))


def _label(label, names):
  names = tf.constant(list(names))
  return tf.where(label < 0, tf.constant(UNLABELED), tf.gather(names, tf.maximum(label, 0)))


def fmt_glue(benchmark: str, keys: tuple, labels: tuple):
  """T5's GLUE / SuperGLUE text: "<benchmark> <key1>: <text1> <key2>: <text2> ...", keys in the
  order T5 uses (sorted feature names, or WiC's and MultiRC's explicit lists)."""
  def fn(x):
    parts = [benchmark]
    for k in keys:
      parts += [f"{k}:", x[k]]
    return {"inputs": tf.strings.join(parts, separator=" "),
            "targets": _label(x["label"], labels)}
  return fn


BOOLQ_LABELS = ("False", "True")
CB_LABELS = ("entailment", "contradiction", "neutral")
COPA_LABELS = ("choice1", "choice2")
RTE_LABELS = ("entailment", "not_entailment")
QQP_LABELS = ("not_duplicate", "duplicate")
MRPC_LABELS = ("not_equivalent", "equivalent")

fmt_boolq = fmt_glue("boolq", ("passage", "question"), BOOLQ_LABELS)
fmt_cb = fmt_glue("cb", ("hypothesis", "premise"), CB_LABELS)
fmt_copa = fmt_glue("copa", ("choice1", "choice2", "premise", "question"), COPA_LABELS)
fmt_rte = fmt_glue("rte", ("hypothesis", "premise"), RTE_LABELS)
fmt_wic = fmt_glue("wic", ("sentence1", "sentence2", "word"), BOOLQ_LABELS)
fmt_qqp = fmt_glue("qqp", ("question1", "question2"), QQP_LABELS)
fmt_mrpc = fmt_glue("mrpc", ("sentence1", "sentence2"), MRPC_LABELS)


def fmt_multirc(x):
  """T5's MultiRC: HTML markup removed; the question index is the group of the exact-match
  metric (T5 groups by it alone)."""
  out = fmt_glue("multirc", ("question", "answer", "paragraph"), BOOLQ_LABELS)(x)
  text = tf.strings.regex_replace(out["inputs"], "<br>", " ")
  out["inputs"] = tf.strings.regex_replace(text, "<(/)?b>", "")
  out["group"] = tf.strings.as_string(x["idx"]["question"])  # extras travel as strings
  return out


def fmt_record(x):
  """T5's ReCoRD: one example per gold answer (``<unk>`` when there is none), each carrying all
  answers and its passage/query group (the metric scores each group once against all of them).
  Highlights join the passage as sentences. Returns a batch of rows (unbatched by the task)."""
  n = tf.maximum(tf.size(x["answers"]), 1)
  passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
  passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
  inputs = tf.strings.join(["record query:", x["query"], "entities:",
                            tf.strings.reduce_join(x["entities"], separator=", "), "passage:",
                            passage], separator=" ")
  targets = tf.cond(tf.size(x["answers"]) > 0, lambda: x["answers"],
                    lambda: tf.constant([UNLABELED]))
  group = _join(tf.strings.as_string(x["idx"]["passage"]), "-",
                tf.strings.as_string(x["idx"]["query"]))
  return {"inputs": tf.fill([n], inputs), "targets": targets,
          "answers": tf.fill([n], tf.strings.reduce_join(x["answers"], separator="\t")),
          "group": tf.fill([n], group)}


# Two WSC texts whose span2_index points at the wrong word; T5 hard-codes their blanked text.
_WSC_FIXES = {
    "The boy continued to whip the pony , and eventually the pony threw him over. John laughed "
    "out quite loud. \"Good for him,\" he said. ":
    "The boy continued to whip the pony , and eventually the pony threw him over. John laughed "
    "out quite loud. \"Good for X ,\" he said.",
    "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic "
    "pebble in an iron safe . Some day they might want to use it , but really for now, what "
    "more could they wish for?":
    "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic "
    "pebble in an iron safe . Some day they might want to use X , but really for now, what more "
    "could they wish for?",
}


def fmt_wsc(x):
  """T5's simple WSC: ``wsc: <text>`` with the pronoun starred, target the candidate referent
  (span1); ``label`` says whether it is the right one (training reads the right ones only, see
  _TfdsSource.keep_train; the metric compares the prediction with the referent)."""
  words = tf.strings.split(x["text"], sep=" ")
  i = x["span2_index"]
  blanked = tf.strings.join([tf.strings.reduce_join(words[:i], separator=" "), "X",
                             tf.strings.reduce_join(words[i + 1:], separator=" ")], separator=" ")
  for text, fixed in _WSC_FIXES.items():
    blanked = tf.where(tf.equal(x["text"], text), tf.constant(fixed), blanked)
  marked = tf.strings.regex_replace(blanked, " X ", _join(" *", x["span2_text"], "* "))
  return {"inputs": _join("wsc: ", marked), "targets": x["span1_text"],
          "label": tf.strings.as_string(x["label"])}


def taskless(formatter):
  """prompt-tuning's ``taskless_*`` variant: the first word (the task name) removed, so that
  only the prompt tells the model which task it is doing."""
  def fn(x):
    out = formatter(x)
    return dict(out, inputs=tf.strings.regex_replace(out["inputs"], r"^[^ ]* ", "",
                                                     replace_global=False))
  return fn


def fmt_translate(src, tgt):
  def fn(x):
    return {"inputs": _join(f"translate {LANGUAGES[src]} to {LANGUAGES[tgt]}: ", x[src]),
            "targets": x[tgt]}
  return fn


def summarize_prefix(lang: str) -> str:
  """MLSum's prompt (no reference task: ours); CNN/DailyMail uses T5's ``summarize: ``."""
  return f"Summarize the following document in {LANGUAGES[lang]}: "


def fmt_summarize(prefix, text_key, summary_key):
  def fn(x):
    return {"inputs": _join(prefix, x[text_key]), "targets": x[summary_key]}
  return fn


def parse_mlsum_line(line):
  """One line of an official MLSum jsonl file -> {"text", "summary"} (JSON parsed in Python:
  a pure function, so tf.data iterator checkpoints need not store any state for it)."""
  def parse(b):
    row = json.loads(b.numpy())
    return row["text"], row["summary"]
  text, summary = tf.py_function(parse, [line], [tf.string, tf.string])
  text.set_shape(())
  summary.set_shape(())
  return {"text": text, "summary": summary}


def fmt_mlsum(lang):
  fmt = fmt_summarize(summarize_prefix(lang), "text", "summary")
  return lambda line: fmt(parse_mlsum_line(line))


# ----------------------------------------------------------------------------- registration
EXTRAS = ("group", "answers", "label")  # per-example fields the metrics read


def format_dataset(spec: TaskSpec, ds):
  ds = ds.map(spec.formatter, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.unbatch() if spec.expand else ds


def _postprocess(spec: TaskSpec):
  def fn(output, example=None, is_target=False):
    if not is_target:
      return spec.postprocess(output) if spec.postprocess else output
    out = {"targets": output}
    for k in EXTRAS:
      if example is not None and k in example:
        v = example[k]
        out[k] = v.decode() if isinstance(v, bytes) else v
    return out
  return fn


def _tokenize_keep_extras(dataset, output_features):
  # Keeps the untokenized text (inputs_pretokenized, targets_pretokenized) and the extra fields
  # (group, answers, label: see EXTRAS) for the metrics; training pipelines drop them.
  return seqio.preprocessors.tokenize(dataset, output_features, copy_pretokenized=True)


_VOCAB_PATH = None


def vocabulary_path() -> str:
  """The SentencePiece model all tasks tokenize with: set by :func:`set_vocabulary`, else
  $PROMPT_TUNING_SPM, else the in-repo tiny model."""
  global _VOCAB_PATH
  if _VOCAB_PATH is None:
    path = os.environ.get("PROMPT_TUNING_SPM")
    if not path:
      from prompt_tuning.data import vocab as vocab_lib
      path = vocab_lib.default_vocab().path
    _VOCAB_PATH = path
  return _VOCAB_PATH


def vocabulary():
  return seqio.SentencePieceVocabulary(vocabulary_path())


def set_vocabulary(path: str):
  """Re-registers every task to tokenize with the SentencePiece model ``path`` (the run's
  vocabulary: streamed tasks must produce the ids the model was trained with)."""
  global _VOCAB_PATH
  if not path.endswith(".model") and os.path.isdir(path):
    path = os.path.join(path, "spiece.model")
  if not os.path.exists(path):
    raise FileNotFoundError(f"SentencePiece model {path!r} does not exist (streamed seqio "
                            f"tasks need a SentencePiece vocabulary)")
  if path == _VOCAB_PATH:
    return
  _VOCAB_PATH = path
  _INSTRUCTION_TASKS.clear()
  register_all(mlsum_dir=_MLSUM_DIR)
  for spec, source in _CUSTOM.values():
    _add(spec, source)


def output_features():
  v = vocabulary()
  return {"inputs": seqio.Feature(v, add_eos=True), "targets": seqio.Feature(v, add_eos=True)}


def _preprocessors(spec: TaskSpec, instruction: str | None = None):
  steps = [functools.partial(format_dataset, spec)]
  if instruction:
    steps.append(seqio.map_over_dataset(
        lambda x: dict(x, inputs=tf.strings.join([instruction + " ", x["inputs"]]))))
  return steps + [_tokenize_keep_extras, seqio.CacheDatasetPlaceholder(),
                  seqio.preprocessors.append_eos_after_trim]


def _register_task(name: str, spec: TaskSpec, source, instruction: str | None = None):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source, preprocessors=_preprocessors(spec, instruction),
      output_features=output_features(), postprocess_fn=_postprocess(spec),
      metric_fns=[spec.metric])


def _add(spec: TaskSpec, source: seqio.DataSource):
  SPECS[spec.name] = spec
  _register_task(spec.name, spec, source)
  _INSTRUCTION_TASKS.pop(spec.name, None)


_CUSTOM: dict[str, tuple] = {}


def add_task(spec: TaskSpec, source, instruction: str = ""):
  """Registers a task on any seqio DataSource (e.g. your own TFRecord / text files) with the
  same preprocessors, vocabulary and metric handling as the built-in tasks."""
  if instruction:
    INSTRUCTIONS[spec.name] = instruction
  _CUSTOM[spec.name] = (spec, source)
  _add(spec, source)


_INSTRUCTION_TASKS: dict[str, str] = {}


def instruction_task(name: str) -> str:
  """The name of a task that is ``name`` with its instruction text prepended to every input
  (registered on first use; the same source, preprocessors and metrics otherwise)."""
  if name not in SPECS:
    raise unknown_task(name)
  if name not in _INSTRUCTION_TASKS:
    new = f"{name}_with_instructions"
    _register_task(new, SPECS[name], seqio.get_mixture_or_task(name).source,
                   instruction_text(name))
    _INSTRUCTION_TASKS[name] = new
  return _INSTRUCTION_TASKS[name]


# Published training-split sizes (TFDS catalog; T5's glue_utils weights, which count ReCoRD's
# examples per answer and WSC's positive rows; MLSum: Scialom et al. 2020), used for mixing
# rates when a source cannot tell its size (data not prepared yet, mocked data).
TRAIN_SIZES = {
    "super_glue_boolq": 9427, "super_glue_cb": 250, "super_glue_copa": 400,
    "super_glue_multirc": 27243, "super_glue_record": 138854, "super_glue_rte": 2490,
    "super_glue_wic": 5428, "super_glue_wsc": 259, "glue_qqp": 363849, "glue_mrpc": 3668,
    "wmt14_ende": 4508785, "wmt19_enzh": 25986436,
    "cnn_dailymail_en": 287113, "mlsum_de": 220887, "mlsum_es": 266367, "mlsum_fr": 392902,
}
RATE_CAP = 2 ** 19


def num_train_examples(task) -> int:
  """Training examples of a task: its spec's ``train_size`` (T5's rate for a task whose rows
  are not its examples: ReCoRD's), else from its source, else the published size."""
  base = task.name[:-len("_with_instructions")] if task.name.endswith("_with_instructions") \
      else task.name
  spec = SPECS.get(base)
  n = spec.train_size if spec is not None else 0
  if not n:
    try:
      n = task.num_input_examples("train")
    except Exception:  # TFDS data not prepared / mocked: no split metadata
      n = None
  if not n:
    n = TRAIN_SIZES.get(base[len("taskless_"):] if base.startswith("taskless_") else base)
  if not n:
    raise ValueError(f"mixing rate of task {task.name!r}: the size of its training split is "
                     f"unknown; give explicit rates")
  return int(n)


def examples_proportional_rate(task) -> float:
  return float(min(num_train_examples(task), RATE_CAP))


def adhoc_mixture(name: str, instructions: bool = False) -> seqio.Mixture:
  """A mixture for "taskA+taskB" (examples-proportional rates, as registered mixtures) or
  "taskA:2+taskB:1" (explicit relative rates); not registered (seqio names may not hold '+')."""
  tasks = []
  for part in name.split("+"):
    task, _, rate = part.partition(":")
    if task not in SPECS:
      raise unknown_task(task, f" in mixture {name!r}")
    if rate:
      try:
        r = float(rate)
      except ValueError:
        raise ValueError(f"mixture {name!r}: rate {rate!r} of {task} is not a number") from None
      if not r > 0:
        raise ValueError(f"mixture {name!r}: rate of {task} must be positive, got {r}")
    else:
      r = examples_proportional_rate
    tasks.append((instruction_task(task) if instructions else task, r))
  if len({t for t, _ in tasks}) != len(tasks):
    raise ValueError(f"mixture {name!r} names a task twice")
  return seqio.Mixture(name.replace("+", "__").replace(":", "_"), tasks)


def instruction_mixture(name: str) -> seqio.Mixture:
  """A registered mixture with every task replaced by its instruction variant, same rates."""
  mix = seqio.get_mixture_or_task(name)
  tasks = [(instruction_task(t.name), mix.get_rate(t)) for t in mix.tasks]
  return seqio.Mixture(f"{name}_with_instructions", tasks)


_DOWNLOAD = {"allowed": False}


def set_download(allowed: bool):
  """Lets TFDS download and prepare missing datasets (off by default: see _TfdsSource)."""
  _DOWNLOAD["allowed"] = bool(allowed)


class _TfdsSource(seqio.TfdsDataSource):
  """A TFDS source that reads only what is on disk unless downloading was asked for: without
  the data, TFDS would spend minutes in download retries and end in a long traceback."""

  # keep_train: a predicate on raw rows; the training split keeps only the rows it accepts
  # (T5's WSC trains on the rows whose candidate referent is the right one).
  keep_train = None

  def get_dataset(self, split=None, *args, **kwargs):
    self.tfds_dataset._read_only = not _DOWNLOAD["allowed"]
    try:
      ds = super().get_dataset(split, *args, **kwargs)
    except AssertionError as e:  # tfds: "Dataset X: could not find data in DIR ..."
      name = self.tfds_dataset.name.split(":")[0]
      where = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared in {where} (TFDS_DATA_DIR): build it with "
          f"`tfds build {name}` (needs internet) or set data.download=True") from e
    return ds.filter(self.keep_train) if self.keep_train and split == "train" else ds


def _tfds(name, config=None, keep_train=None, splits=None):
  full = f"{name}/{config}" if config else name
  src = _TfdsSource(f"{full}:{TFDS_VERSIONS[name]}", read_only=True, splits=splits)
  src.keep_train = keep_train
  return src


def _mixture(name, tasks):
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)

  # Examples-proportional, capped as in T5 (a callable: sizes are looked up when mixed).
  seqio.MixtureRegistry.add(name, [(t, examples_proportional_rate) for t in tasks])


class MLSumSource(seqio.TextLineDataSource):
  """The official MLSum ``{lang}_{train,val,test}.jsonl`` files as a text-line source: a clear
  error when a file is missing, and split sizes counted from the files (for mixing rates)."""

  _counts: dict = {}

  def __init__(self, data_dir: str, lang: str):
    self.data_dir, self.lang = data_dir, lang
    super().__init__({s: self.path(s) or "" for s in ("train", "validation", "test")})

  def path(self, split: str) -> str | None:
    if not self.data_dir:
      return None
    return os.path.join(self.data_dir,
                        f"{self.lang}_{ {'validation': 'val'}.get(split, split)}.jsonl")

  def list_shards(self, split: str):
    if not self.data_dir:
      raise FileNotFoundError("MLSum is not in TFDS: set $MLSUM_DIR (or call "
                              "register_mlsum(dir)) to a directory with the official "
                              "{lang}_{train,val,test}.jsonl files")
    fn = self.path(split)
    if not os.path.exists(fn):
      raise FileNotFoundError(f"MLSum file {fn!r} does not exist")
    return [fn]

  def num_input_examples(self, split: str) -> int | None:
    fn = self.path(split)
    if not fn or not os.path.exists(fn):
      return None
    key = (fn, os.path.getmtime(fn), os.path.getsize(fn))
    if key not in MLSumSource._counts:
      n, last = 0, b"\n"
      with open(fn, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
          n, last = n + block.count(b"\n"), block[-1:]
      MLSumSource._counts[key] = n + (last != b"\n")  # a last line without a newline
    return MLSumSource._counts[key]


_MLSUM_DIR = ""


def register_mlsum(data_dir: str | None = None):
  """(Re)registers mlsum_{de,es,fr} reading ``{lang}_{split}.jsonl`` under ``data_dir``."""
  global _MLSUM_DIR
  data_dir = _MLSUM_DIR = data_dir or os.environ.get("MLSUM_DIR", "")
  for lang in ("de", "es", "fr"):
    spec = TaskSpec(f"mlsum_{lang}", fmt_mlsum(lang), M.rouge(("rougeL",)))
    _add(spec, MLSumSource(data_dir, lang))
  _mixture("mlsum", ["mlsum_de", "mlsum_es", "mlsum_fr", "cnn_dailymail_en"])


def _superglue_specs():
  """(short name, TaskSpec kwargs) of T5's super_glue_*_v102 tasks (WSC: the simple
  formulation, super_glue_wsc_v102_simple_train / _eval)."""
  return {
      "boolq": dict(formatter=fmt_boolq, metric=M.class_accuracy(BOOLQ_LABELS), labels=BOOLQ_LABELS),
      "cb": dict(formatter=fmt_cb, metric=M.cb(CB_LABELS), labels=CB_LABELS),
      "copa": dict(formatter=fmt_copa, metric=M.class_accuracy(COPA_LABELS), labels=COPA_LABELS),
      "multirc": dict(formatter=fmt_multirc, metric=M.multirc, labels=BOOLQ_LABELS),
      "record": dict(formatter=fmt_record, metric=M.record, expand=True,
                     train_size=TRAIN_SIZES["super_glue_record"]),
      "rte": dict(formatter=fmt_rte, metric=M.class_accuracy(RTE_LABELS), labels=RTE_LABELS),
      "wic": dict(formatter=fmt_wic, metric=M.class_accuracy(BOOLQ_LABELS), labels=BOOLQ_LABELS),
      "wsc": dict(formatter=fmt_wsc, metric=M.wsc,
                  train_size=TRAIN_SIZES["super_glue_wsc"]),
  }


def _transfer_postprocess(src_labels, tgt_labels):
  """prompt-tuning's qqp_to_mrpc / mrpc_to_qqp: the source's positive word replaced by the
  target's anywhere in the prediction ("not_duplicate" -> "not_equivalent" follows)."""
  return lambda s: s.replace(src_labels[1], tgt_labels[1])


def register_all(mlsum_dir: str | None = None):
  sg = _superglue_specs()
  for short, kw in sg.items():
    config = "wsc.fixed" if short == "wsc" else short
    ref = "super_glue_wsc_v102_simple_train / _eval" if short == "wsc" else \
        f"super_glue_{short}_v102"
    # T5 keeps the rows whose label casts to True (unlabeled -1 rows too; TFDS train has none).
    keep = (lambda x: x["label"] != 0) if short == "wsc" else None
    for prefix in ("", "taskless_"):
      fmt = taskless(kw["formatter"]) if prefix else kw["formatter"]
      _add(TaskSpec(f"{prefix}super_glue_{short}", **dict(kw, formatter=fmt),
                    reference=prefix + ref), _tfds("super_glue", config, keep))
  _mixture("super_glue", [f"super_glue_{s}" for s in sg])
  _mixture("taskless_super_glue", [f"taskless_super_glue_{s}" for s in sg])

  glue = {"qqp": (fmt_qqp, QQP_LABELS), "mrpc": (fmt_mrpc, MRPC_LABELS)}
  for short, (fmt, labels) in glue.items():
    for prefix in ("", "taskless_"):
      f = taskless(fmt) if prefix else fmt
      _add(TaskSpec(f"{prefix}glue_{short}", f, M.f1_and_accuracy(labels), labels,
                    reference=f"{prefix}glue_{short}_v002"), _tfds("glue", short))
  for src, tgt in (("qqp", "mrpc"), ("mrpc", "qqp")):
    fmt, labels = glue[tgt]
    for prefix in ("", "taskless_"):
      name = f"{prefix}glue_{tgt}_from_{src}"
      # Rank classification chooses among the words the model was trained to produce (the
      # source's); the postprocessor maps the choice into the target's.
      _add(TaskSpec(name, taskless(fmt) if prefix else fmt, M.f1_and_accuracy(labels),
                    glue[src][1], splits={"validation": "validation"},
                    postprocess=_transfer_postprocess(glue[src][1], labels),
                    reference=f"{name}_v002"), _tfds("glue", tgt, splits=["validation"]))

  _add(TaskSpec("wmt14_ende", fmt_translate("en", "de"), M.bleu("intl"),
                reference="wmt14_ende_v003"), _tfds("wmt14_translate", "de-en"))
  _add(TaskSpec("wmt19_enzh", fmt_translate("en", "zh"), M.bleu("zh")),
       _tfds("wmt19_translate", "zh-en"))
  _add(TaskSpec("cnn_dailymail_en", fmt_summarize("summarize: ", "article", "highlights"),
                M.rouge(("rouge1", "rouge2", "rougeLsum")), reference="cnn_dailymail_v002"),
       _tfds("cnn_dailymail"))
  register_mlsum(mlsum_dir)
