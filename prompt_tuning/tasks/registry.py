"""seqio Tasks and Mixtures backed by TFDS (and local MLSum files). Needs TensorFlow + seqio.

Task names: super_glue_{boolq,cb,copa,multirc,record,rte,wic,wsc}, mixture ``super_glue``;
glue_qqp_paraphrase, glue_mrpc_paraphrase (one shared format; domain-shift pairs
``qqp_to_mrpc`` / ``mrpc_to_qqp``); wmt14_ende, wmt19_enzh; mlsum_{de,es,fr},
cnn_dailymail_en, mixture ``mlsum``.

MLSum is not in TFDS: its tasks read the official MLSum jsonl files (fields ``text``,
``summary``) from ``$MLSUM_DIR/{lang}_{split}.jsonl`` (split: train, val, test), or a directory
given to :func:`register_mlsum`. They are read line by line (a seqio TextLineDataSource, JSON
parsed in the pipeline), so they stream, shard per host and resume exactly like TFDS sources.

Mixtures sample their tasks examples-proportionally, capped at 2**19 examples (T5): the size of
a task's training split comes from its source (TFDS metadata, the MLSum file) or, when that is
unavailable (data not prepared yet, mocked data), from the published sizes in ``TRAIN_SIZES``.
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


SPECS: dict[str, TaskSpec] = {}

# Natural-language instructions, prepended to the input when ``data.instructions`` is on
# (multi-task runs with vs. without instruction text, Albalak et al. 2022).
INSTRUCTIONS = {
    "super_glue_boolq": "Answer the yes/no question about the passage with True or False.",
    "super_glue_cb": "Does the premise entail, contradict, or say nothing about the hypothesis?",
    "super_glue_copa": "Which choice is the more plausible cause or effect of the premise?",
    "super_glue_multirc": "Is the answer to the question about the paragraph correct?",
    "super_glue_record": "Fill in @placeholder in the query with an entity from the passage.",
    "super_glue_rte": "Does the first sentence entail the second sentence?",
    "super_glue_wic": "Is the word used with the same meaning in both sentences?",
    "super_glue_wsc": "Does the second span refer to the first span in the text?",
    "glue_qqp_paraphrase": "Do the two sentences mean the same thing?",
    "glue_mrpc_paraphrase": "Do the two sentences mean the same thing?",
    "wmt14_ende": "Translate the English text into German.",
    "wmt19_enzh": "Translate the English text into Chinese.",
    "cnn_dailymail_en": "Write a short summary of the news article.",
    "mlsum_de": "Write a short summary of the news article in German.",
    "mlsum_es": "Write a short summary of the news article in Spanish.",
    "mlsum_fr": "Write a short summary of the news article in French.",
}
DOMAIN_SHIFT_PAIRS = {"qqp_to_mrpc": ("glue_qqp_paraphrase", "glue_mrpc_paraphrase"),
                      "mrpc_to_qqp": ("glue_mrpc_paraphrase", "glue_qqp_paraphrase")}


# ----------------------------------------------------------------------------- formatting
def _join(*parts):
  return tf.strings.join(list(parts))


def _label(label, names):
  """Label id -> name; unlabeled (test) examples (-1) get an empty target."""
  names = tf.constant(list(names))
  return tf.where(label < 0, tf.constant(""), tf.gather(names, tf.maximum(label, 0)))


def fmt_boolq(x):
  return {"inputs": _join("boolq passage: ", x["passage"], " question: ", x["question"]),
          "targets": _label(x["label"], ("False", "True"))}


def fmt_cb(x):
  return {"inputs": _join("cb hypothesis: ", x["hypothesis"], " premise: ", x["premise"]),
          "targets": _label(x["label"], ("entailment", "contradiction", "neutral"))}


def fmt_copa(x):
  return {"inputs": _join("copa choice1: ", x["choice1"], " choice2: ", x["choice2"],
                          " premise: ", x["premise"], " question: ", x["question"]),
          "targets": _label(x["label"], ("choice1", "choice2"))}


def fmt_multirc(x):
  group = _join(tf.strings.as_string(x["idx"]["paragraph"]), "-",
                tf.strings.as_string(x["idx"]["question"]))
  return {"inputs": _join("multirc question: ", x["question"], " answer: ", x["answer"],
                          " paragraph: ", x["paragraph"]),
          "targets": _label(x["label"], ("False", "True")), "group": group}


def fmt_record(x):
  answers = x["answers"]
  first = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(""))
  return {"inputs": _join("record query: ", x["query"], " entities: ",
                          tf.strings.reduce_join(x["entities"], separator=", "),
                          " passage: ", x["passage"]),
          "targets": first, "answers": tf.strings.reduce_join(answers, separator="\t")}


def fmt_rte(x):
  return {"inputs": _join("rte sentence1: ", x["premise"], " sentence2: ", x["hypothesis"]),
          "targets": _label(x["label"], ("entailment", "not_entailment"))}


def fmt_wic(x):
  return {"inputs": _join("wic sentence1: ", x["sentence1"], " sentence2: ", x["sentence2"],
                          " word: ", x["word"]),
          "targets": _label(x["label"], ("False", "True"))}


def fmt_wsc(x):
  return {"inputs": _join("wsc text: ", x["text"], " span1: ", x["span1_text"], " span2: ",
                          x["span2_text"]),
          "targets": _label(x["label"], ("False", "True"))}


PARAPHRASE_LABELS = ("not_equivalent", "equivalent")


def fmt_paraphrase(a_key, b_key):
  def fn(x):
    return {"inputs": _join("paraphrase sentence1: ", x[a_key], " sentence2: ", x[b_key]),
            "targets": _label(x["label"], PARAPHRASE_LABELS)}
  return fn


def fmt_translate(src, tgt):
  def fn(x):
    return {"inputs": _join(f"translate {LANGUAGES[src]} to {LANGUAGES[tgt]}: ", x[src]),
            "targets": x[tgt]}
  return fn


def summarize_prefix(lang: str) -> str:
  return f"Summarize the following document in {LANGUAGES[lang]}: "


def fmt_summarize(lang, text_key, summary_key):
  def fn(x):
    return {"inputs": _join(summarize_prefix(lang), x[text_key]), "targets": x[summary_key]}
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
  fmt = fmt_summarize(lang, "text", "summary")
  return lambda line: fmt(parse_mlsum_line(line))


# ----------------------------------------------------------------------------- registration
def _postprocess(spec: TaskSpec):
  extras = [k for k in ("group", "answers")]

  def fn(output, example=None, is_target=False):
    if not is_target:
      return output
    out = {"targets": output}
    for k in extras:
      if example is not None and k in example:
        v = example[k]
        out[k] = v.decode() if isinstance(v, bytes) else v
    return out
  return fn


def _tokenize_keep_extras(dataset, output_features):
  # Keeps the untokenized text (inputs_pretokenized, targets_pretokenized) and the extra fields
  # (group, answers) for the metrics; training pipelines drop them before batching.
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


def _preprocessors(formatter, instruction: str | None = None):
  steps = [seqio.map_over_dataset(formatter)]
  if instruction:
    steps.append(seqio.map_over_dataset(
        lambda x: dict(x, inputs=tf.strings.join([instruction + " ", x["inputs"]]))))
  return steps + [_tokenize_keep_extras, seqio.CacheDatasetPlaceholder(),
                  seqio.preprocessors.append_eos_after_trim]


def _register_task(name: str, spec: TaskSpec, source, instruction: str | None = None):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source, preprocessors=_preprocessors(spec.formatter, instruction),
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
    raise ValueError(f"unknown task {name!r}; registered: {', '.join(sorted(SPECS))}")
  if name not in _INSTRUCTION_TASKS:
    new = f"{name}_with_instructions"
    _register_task(new, SPECS[name], seqio.get_mixture_or_task(name).source, INSTRUCTIONS[name])
    _INSTRUCTION_TASKS[name] = new
  return _INSTRUCTION_TASKS[name]


# Published training-split sizes (TFDS catalog; MLSum: Scialom et al. 2020), used for mixing
# rates when a source cannot tell its size (data not prepared yet, mocked data).
TRAIN_SIZES = {
    "super_glue_boolq": 9427, "super_glue_cb": 250, "super_glue_copa": 400,
    "super_glue_multirc": 27243, "super_glue_record": 100730, "super_glue_rte": 2490,
    "super_glue_wic": 5428, "super_glue_wsc": 554, "glue_qqp_paraphrase": 363846,
    "glue_mrpc_paraphrase": 3668, "wmt14_ende": 4508785, "wmt19_enzh": 25986436,
    "cnn_dailymail_en": 287113, "mlsum_de": 220887, "mlsum_es": 266367, "mlsum_fr": 392902,
}
RATE_CAP = 2 ** 19


def num_train_examples(task) -> int:
  """Training examples of a task: from its source, else the published size."""
  n = None
  try:
    n = task.num_input_examples("train")
  except Exception:  # TFDS data not prepared / mocked: no split metadata
    n = None
  if not n:
    base = task.name[:-len("_with_instructions")] if task.name.endswith("_with_instructions") \
        else task.name
    n = TRAIN_SIZES.get(base)
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
      raise ValueError(f"unknown task {task!r} in mixture {name!r}; registered: "
                       f"{', '.join(sorted(SPECS))}")
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

  def get_dataset(self, *args, **kwargs):
    self.tfds_dataset._read_only = not _DOWNLOAD["allowed"]
    try:
      return super().get_dataset(*args, **kwargs)
    except AssertionError as e:  # tfds: "Dataset X: could not find data in DIR ..."
      name = self.tfds_dataset.name.split(":")[0]
      where = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared in {where} (TFDS_DATA_DIR): build it with "
          f"`tfds build {name}` (needs internet) or set data.download=True") from e


def _tfds(name, config=None):
  family = name
  full = f"{name}/{config}" if config else name
  return _TfdsSource(f"{full}:{TFDS_VERSIONS[family]}", read_only=True)


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
    spec = TaskSpec(f"mlsum_{lang}", fmt_mlsum(lang), M.rouge_l(False))
    _add(spec, MLSumSource(data_dir, lang))
  _mixture("mlsum", ["mlsum_de", "mlsum_es", "mlsum_fr", "cnn_dailymail_en"])


def register_all(mlsum_dir: str | None = None):
  sg = {
      "boolq": (fmt_boolq, M.accuracy, ("False", "True")),
      "cb": (fmt_cb, M.accuracy_and_macro_f1(("entailment", "contradiction", "neutral")),
             ("entailment", "contradiction", "neutral")),
      "copa": (fmt_copa, M.accuracy, ("choice1", "choice2")),
      "multirc": (fmt_multirc, M.multirc, ("False", "True")),
      "record": (fmt_record, M.record, ()),
      "rte": (fmt_rte, M.accuracy, ("entailment", "not_entailment")),
      "wic": (fmt_wic, M.accuracy, ("False", "True")),
      "wsc": (fmt_wsc, M.accuracy, ("False", "True")),
  }
  for short, (fmt, metric, labels) in sg.items():
    config = "wsc.fixed" if short == "wsc" else short
    _add(TaskSpec(f"super_glue_{short}", fmt, metric, labels), _tfds("super_glue", config))
  _mixture("super_glue", [f"super_glue_{s}" for s in sg])
  _add(TaskSpec("glue_qqp_paraphrase", fmt_paraphrase("question1", "question2"),
                M.accuracy_and_f1("equivalent"), PARAPHRASE_LABELS), _tfds("glue", "qqp"))
  _add(TaskSpec("glue_mrpc_paraphrase", fmt_paraphrase("sentence1", "sentence2"),
                M.accuracy_and_f1("equivalent"), PARAPHRASE_LABELS), _tfds("glue", "mrpc"))
  _add(TaskSpec("wmt14_ende", fmt_translate("en", "de"), M.bleu("13a")),
       _tfds("wmt14_translate", "de-en"))
  _add(TaskSpec("wmt19_enzh", fmt_translate("en", "zh"), M.bleu("zh")),
       _tfds("wmt19_translate", "zh-en"))
  _add(TaskSpec("cnn_dailymail_en", fmt_summarize("en", "article", "highlights"),
                M.rouge_l(True)), _tfds("cnn_dailymail"))
  register_mlsum(mlsum_dir)
