"""seqio Tasks and Mixtures backed by TFDS (and local MLSum files). Needs TensorFlow + seqio.

Task names: super_glue_{boolq,cb,copa,multirc,record,rte,wic,wsc}, mixture ``super_glue``;
glue_qqp_paraphrase, glue_mrpc_paraphrase (one shared format; domain-shift pairs
``qqp_to_mrpc`` / ``mrpc_to_qqp``); wmt14_ende, wmt19_enzh; mlsum_{de,es,fr},
cnn_dailymail_en, mixture ``mlsum``.

MLSum is not in TFDS: its tasks read the official MLSum jsonl files (fields ``text``,
``summary``) from ``$MLSUM_DIR/{lang}_{split}.jsonl`` (split: train, val, test), or a directory
given to :func:`register_mlsum`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable

import seqio
import tensorflow as tf

from prompt_tuning.tasks import metrics as M

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
  return seqio.preprocessors.tokenize(dataset, output_features, copy_pretokenized=True)


_VOCAB_PATH = None


def vocabulary():
  """The seqio vocabulary all tasks use: $PROMPT_TUNING_SPM or the in-repo tiny model."""
  global _VOCAB_PATH
  if _VOCAB_PATH is None:
    path = os.environ.get("PROMPT_TUNING_SPM")
    if not path:
      from prompt_tuning.data import vocab as vocab_lib
      path = vocab_lib.default_vocab().path
    _VOCAB_PATH = path
  return seqio.SentencePieceVocabulary(_VOCAB_PATH)


def output_features():
  v = vocabulary()
  return {"inputs": seqio.Feature(v, add_eos=True), "targets": seqio.Feature(v, add_eos=True)}


def _add(spec: TaskSpec, source: seqio.DataSource):
  SPECS[spec.name] = spec
  if spec.name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(spec.name)
  seqio.TaskRegistry.add(
      spec.name, source=source,
      preprocessors=[seqio.map_over_dataset(spec.formatter), _tokenize_keep_extras,
                     seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos_after_trim],
      output_features=output_features(), postprocess_fn=_postprocess(spec),
      metric_fns=[spec.metric])


def _tfds(name, config=None):
  family = name
  full = f"{name}/{config}" if config else name
  return seqio.TfdsDataSource(f"{full}:{TFDS_VERSIONS[family]}")


def _mixture(name, tasks):
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)

  def rate(task):  # examples-proportional, capped as in T5
    try:
      return float(min(task.num_input_examples("train"), 2 ** 19))
    except Exception:  # statistics unavailable (e.g. mock data): equal mixing
      return 1.0

  seqio.MixtureRegistry.add(name, [(t, rate) for t in tasks])


def register_mlsum(data_dir: str | None = None):
  """(Re)registers mlsum_{de,es,fr} reading ``{lang}_{split}.jsonl`` under ``data_dir``."""
  data_dir = data_dir or os.environ.get("MLSUM_DIR", "")

  def reader(lang):
    def read(split, shuffle_files=False, seed=None):
      if not data_dir:
        raise FileNotFoundError("MLSum is not in TFDS: set $MLSUM_DIR (or call "
                                "register_mlsum(dir)) to a directory with the official "
                                "{lang}_{train,val,test}.jsonl files")
      fn = os.path.join(data_dir, f"{lang}_{ {'validation': 'val'}.get(split, split)}.jsonl")
      if not os.path.exists(fn):
        raise FileNotFoundError(f"MLSum file {fn!r} does not exist")

      def gen():
        with open(fn) as f:
          for line in f:
            if line.strip():
              row = json.loads(line)
              yield {"text": row["text"], "summary": row["summary"]}

      return tf.data.Dataset.from_generator(gen, output_signature={
          "text": tf.TensorSpec((), tf.string), "summary": tf.TensorSpec((), tf.string)})
    return read

  for lang in ("de", "es", "fr"):
    spec = TaskSpec(f"mlsum_{lang}", fmt_summarize(lang, "text", "summary"), M.rouge_l(False))
    _add(spec, seqio.FunctionDataSource(reader(lang), splits=("train", "validation", "test")))
  _mixture("mlsum", ["mlsum_de", "mlsum_es", "mlsum_fr", "cnn_dailymail_en"])


def register_all():
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
  register_mlsum()
