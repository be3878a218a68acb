"""Writes tests/fixtures/reference_tasks.json and tests/fixtures/reference_adafactor.json: what the
official reference code makes of hand-made edge-case rows, for tests/test_reference_parity.py.

The reference code is imported, never copied: it runs in a throwaway environment.

  python3 -m venv --system-site-packages /tmp/refenv    # on the project venv's python
  echo $(/work/venv/bin/python -c 'import site; print(site.getsitepackages()[0])') \\
      > $(/tmp/refenv/bin/python -c 'import site; print(site.getsitepackages()[0])')/venv.pth
  /tmp/refenv/bin/pip install gin-config babel scikit-learn editdistance clu cached_property \
      jestimator tensorboard
  # t5x.utils imports airio (not on PyPI) for isinstance checks only: an empty stand-in
  mkdir -p /tmp/refstubs/airio && touch /tmp/refstubs/airio/__init__.py && printf \
      'class Task: pass\nclass Mixture: pass\nclass AirIODatasetIterator: pass\n' \
      > /tmp/refstubs/airio/core.py
  # sources at the commits below: git archive of each repository, extracted under /tmp/ref
  PYTHONPATH=/tmp/ref/text-to-text-transfer-transformer:/tmp/ref/prompt-tuning:/tmp/ref/t5x \\
      /tmp/refenv/bin/python scripts/make_reference_fixtures.py

Rows: shaped like the TFDS datasets the tasks read (features from the installed TFDS builders),
with the edge cases that tell formats apart: unlabeled rows (label -1), CB's three classes,
ReCoRD passages with highlights and several answers and entities, MultiRC's HTML and a question
index reused across paragraphs, WSC spans (a negative candidate, T5's hard-coded text), and
predictions that are invalid, empty or differ only in case / articles.
"""
from __future__ import annotations

import argparse
import base64
import functools
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from t5.data import glue_utils, postprocessors, preprocessors
from t5.evaluation import metrics
from prompt_tuning.data import postprocessors as pt_postprocessors
from prompt_tuning.data import preprocessors as pt_preprocessors

COMMITS = {"google-research/text-to-text-transfer-transformer":
           "e081111ccd51df425aa7124e8e311ed6d403d767",
           "google-research/prompt-tuning": "72285eea06100f954bcbb16a447ec6cddfc6716c",
           "google-research/t5x": "cc342d419ec3e3e9c4bf1df33c82330cafdc1e16"}

HTML = "<b>Sent 1: </b>The cat sat on the mat.<br><b>Sent 2: </b>It purred loudly.<br>"
PASSAGE = ("Obama met Merkel in Berlin.\n@highlight\nThe two leaders talked trade\n@highlight\n"
           "Merkel said \"yes\"\n@highlight\nA deal is near.")
WSC_FIXED = ("The boy continued to whip the pony , and eventually the pony threw him over. John "
             "laughed out quite loud. \"Good for him,\" he said. ")

ROWS = {
    "super_glue/boolq": [
        dict(question="is water wet", passage="Water is wet.", idx=0, label=1),
        dict(question="is fire cold", passage="Fire is hot.", idx=1, label=0),
        dict(question="is it", passage="Unknown.", idx=2, label=-1)],
    "super_glue/cb": [
        dict(premise="It rained.", hypothesis="The ground is wet.", idx=0, label=0),
        dict(premise="It rained.", hypothesis="It was dry.", idx=1, label=1),
        dict(premise="He spoke.", hypothesis="He is tall.", idx=2, label=2),
        dict(premise="He left.", hypothesis="He stayed.", idx=3, label=-1)],
    "super_glue/copa": [
        dict(premise="The man broke his toe.", choice1="He dropped a hammer.",
             choice2="He got a hole in his sock.", question="cause", idx=0, label=0),
        dict(premise="It rained.", choice1="Dry.", choice2="Wet.", question="effect", idx=1,
             label=1),
        dict(premise="X.", choice1="A.", choice2="B.", question="effect", idx=2, label=-1)],
    "super_glue/multirc": [
        dict(paragraph=HTML, question="What sat?", answer="The cat",
             idx=dict(paragraph=0, question=0, answer=0), label=1),
        dict(paragraph=HTML, question="What sat?", answer="A dog",
             idx=dict(paragraph=0, question=0, answer=1), label=0),
        dict(paragraph=HTML, question="What did it do?", answer="Purred",
             idx=dict(paragraph=0, question=1, answer=2), label=1),
        # The same question index in another paragraph: T5 groups both paragraphs' answers.
        dict(paragraph="<b>Sent 1: </b>Dogs bark.<br>", question="Who barks?", answer="Dogs",
             idx=dict(paragraph=1, question=1, answer=0), label=1),
        dict(paragraph="<b>Sent 1: </b>Dogs bark.<br>", question="Who barks?", answer="Cats",
             idx=dict(paragraph=1, question=2, answer=1), label=0),
        dict(paragraph="Plain.", question="Q?", answer="A", idx=dict(paragraph=2, question=3,
                                                                     answer=0), label=-1)],
    "super_glue/record": [
        dict(passage=PASSAGE, query="@placeholder met Merkel in Berlin",
             entities=["Obama", "Merkel", "Berlin", "Barack Obama"],
             answers=["Obama", "Barack Obama"], idx=dict(passage=0, query=0)),
        dict(passage=PASSAGE, query="The leaders met in @placeholder",
             entities=["Obama", "Merkel", "Berlin"], answers=["Berlin"],
             idx=dict(passage=0, query=1)),
        dict(passage="No highlights here.", query="@placeholder is unknown",
             entities=["Nobody"], answers=[], idx=dict(passage=1, query=2))],
    "super_glue/rte": [
        dict(premise="A dog runs.", hypothesis="An animal moves.", idx=0, label=0),
        dict(premise="A dog runs.", hypothesis="A cat sleeps.", idx=1, label=1),
        dict(premise="P.", hypothesis="H.", idx=2, label=-1)],
    "super_glue/wic": [
        dict(word="bank", sentence1="I sat on the bank.", sentence2="The bank lends money.",
             start1=13, start2=4, end1=17, end2=8, idx=0, label=0),
        dict(word="run", sentence1="I run fast.", sentence2="They run home.", start1=2,
             start2=5, end1=5, end2=8, idx=1, label=1),
        dict(word="x", sentence1="x.", sentence2="x.", start1=0, start2=0, end1=1, end2=1, idx=2,
             label=-1)],
    "super_glue/wsc.fixed": [
        dict(text="Mark told Pete many lies about himself , which Pete included in his book .",
             span1_index=0, span2_index=12, span1_text="Mark", span2_text="his", idx=0,
             label=0),
        dict(text="Mark told Pete many lies about himself , which Pete included in his book .",
             span1_index=2, span2_index=12, span1_text="Pete", span2_text="his", idx=1,
             label=1),
        dict(text="The trophy does not fit into the brown suitcase because it is too large .",
             span1_index=0, span2_index=10, span1_text="The trophy", span2_text="it", idx=2,
             label=1),
        dict(text=WSC_FIXED, span1_index=10, span2_index=13, span1_text="the pony",
             span2_text="him", idx=3, label=0),
        dict(text="Malcolm X said he would come .", span1_index=0, span2_index=3,
             span1_text="Malcolm X", span2_text="he", idx=4, label=-1)],
    "glue/qqp": [
        dict(question1="How do I learn Python?", question2="How can I learn Python?", idx=0,
             label=1),
        dict(question1="Is the sky blue?", question2="Is grass green?", idx=1, label=0),
        dict(question1="Why?", question2="How?", idx=2, label=-1)],
    "glue/mrpc": [
        dict(sentence1="He said hello.", sentence2="He greeted them.", idx=0, label=1),
        dict(sentence1="Stocks fell.", sentence2="It rained.", idx=1, label=0),
        dict(sentence1="A.", sentence2="B.", idx=2, label=-1)],
    "wmt14_translate/de-en": [
        dict(de="Das Haus ist klein.", en="The house is small."),
        dict(de="Guten Morgen!", en="Good morning!")],
    "cnn_dailymail": [
        dict(article="(CNN) The mayor opened a bridge . It cost $5 million .",
             highlights="Mayor opens bridge .\nIt cost $5 million .", id="a1", publisher="cnn")],
}

# our task -> (TFDS dataset, the reference's text preprocessor(s), reference task name)
SG = {b.name: b for b in tfds.text.super_glue.SuperGlue.builder_configs.values()}
GLUE = {b.name: b for b in tfds.text.glue.Glue.builder_configs.values()}


def glue_text(builder):
  return [glue_utils.get_glue_text_preprocessor(builder)]


TASKS = {}
for short in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic"):
  TASKS[f"super_glue_{short}"] = (f"super_glue/{short}", {"*": glue_text(SG[short])},
                                  f"super_glue_{short}_v102")
TASKS["super_glue_wsc"] = (
    "super_glue/wsc.fixed",
    {"train": [functools.partial(preprocessors.wsc_simple, correct_referent_only=True)],
     "validation": [functools.partial(preprocessors.wsc_simple, correct_referent_only=False)]},
    "super_glue_wsc_v102_simple_train / _eval")
for short in ("qqp", "mrpc"):
  TASKS[f"glue_{short}"] = (f"glue/{short}", {"*": glue_text(GLUE[short])}, f"glue_{short}_v002")
TASKS["wmt14_ende"] = ("wmt14_translate/de-en", {"*": [functools.partial(
    preprocessors.translate, source_language="en", target_language="de")]}, "wmt14_ende_v003")
TASKS["cnn_dailymail_en"] = ("cnn_dailymail", {"*": [functools.partial(
    preprocessors.summarize, article_key="article", summary_key="highlights")]},
    "cnn_dailymail_v002")
for name in list(TASKS):  # prompt-tuning's taskless variants of every SuperGLUE and GLUE task
  if name.startswith(("super_glue_", "glue_")):
    ds, pre, ref = TASKS[name]
    TASKS["taskless_" + name] = (ds, {s: p + [pt_preprocessors.remove_first_text_token]
                                      for s, p in pre.items()}, "taskless_" + ref)


def signature(tfds_name: str):
  name, _, config = tfds_name.partition("/")
  info = tfds.builder(name, config=config or None).info.features.get_tensor_info()
  return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), info)


def dataset(tfds_name: str):
  rows = ROWS[tfds_name]
  sig = signature(tfds_name)
  return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=sig)


def apply(ds, steps):
  for step in steps:
    ds = step(ds)
  return ds


def to_py(v):
  if isinstance(v, bytes):
    return v.decode()
  if isinstance(v, np.ndarray):
    return [to_py(x) for x in v.tolist()]
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, list):
    return [to_py(x) for x in v]
  return v


def reference_examples(name: str, split: str) -> list[dict]:
  tfds_name, pre, _ = TASKS[name]
  steps = pre.get(split, pre.get("*"))
  return [{k: to_py(v) for k, v in ex.items()}
          for ex in apply(dataset(tfds_name), steps).as_numpy_iterator()]


def score(examples, predictions, postprocess, metric_fns):
  """As seqio's evaluator: targets and predictions through the task's postprocessor, then each
  metric function."""
  enc = [dict(ex, targets_pretokenized=ex["targets"].encode(),
              **({"answers": [a.encode() for a in ex["answers"]]} if "answers" in ex else {}))
         for ex in examples]
  t = [postprocess(ex["targets"], example=e, is_target=True) for ex, e in zip(examples, enc)]
  p = [postprocess(pr, example=e, is_target=False) for pr, e in zip(predictions, enc)]
  out = {}
  for fn in metric_fns:
    out.update({k: float(v) for k, v in fn(t, p).items()})
  return out


def labeled(examples):
  return [ex for ex in examples if ex["targets"] != "<unk>"]


# Predictions per task, aligned with the labeled validation examples (the reference's order).
PREDICTIONS = {
    "super_glue_boolq": ["True", "maybe"],
    "super_glue_cb": ["entailment", "neutral", ""],
    "super_glue_copa": ["choice1", "choice3"],
    "super_glue_multirc": ["True", "banana", "False", "True", "True"],
    "super_glue_rte": ["entailment", "entailment"],
    "super_glue_wic": ["", "True"],
    "glue_qqp": ["duplicate", "yes"],
    "glue_mrpc": ["not_equivalent", "maybe"],
}


def metric_cases():
  cases = []
  for name, preds in PREDICTIONS.items():
    tfds_name, _, _ = TASKS[name]
    ex = labeled(reference_examples(name, "validation"))
    short = tfds_name.split("/")[1]
    b = SG.get(short) or GLUE[short]
    fns = (glue_utils.get_super_glue_metric(short) if short in SG else
           glue_utils.get_glue_metric(short))
    cases.append(dict(task=name, predictions=preds,
                      reference=score(ex, preds, glue_utils.get_glue_postprocess_fn(b), fns)))
  # ReCoRD: one prediction per example row (rows repeat per answer; the metric scores each
  # passage/query once, against all its answers).
  ex = labeled(reference_examples("super_glue_record", "validation"))
  preds = ["barack obama", "Merkel", "the Berlin trade!"][:len(ex)]
  cases.append(dict(task="super_glue_record", predictions=preds, reference=score(
      ex, preds, postprocessors.record, glue_utils.get_super_glue_metric("record"))))
  # Simple WSC on all validation rows: label 0 rows need a different referent.
  ex = [e for e in reference_examples("super_glue_wsc", "validation") if e["label"] >= 0]
  preds = ["Pete", "pete", "the trophy's", "The pony"][:len(ex)]
  cases.append(dict(task="super_glue_wsc", predictions=preds, reference=score(
      ex, preds, postprocessors.wsc_simple, [metrics.accuracy])))
  preds = ["", "the", "Pete", "x"]  # empty after cleaning: -1, never the label
  cases.append(dict(task="super_glue_wsc", predictions=preds, reference=score(
      ex, preds, postprocessors.wsc_simple, [metrics.accuracy])))
  # Zero-shot transfer (prompt-tuning glue_transfer): predictions in the source's label words.
  for src, tgt, preds in (("qqp", "mrpc", ["duplicate", "duplicate"]),
                          ("mrpc", "qqp", ["not_equivalent", "banana"])):
    ex = labeled(reference_examples(f"glue_{tgt}", "validation"))
    translate = pt_postprocessors.qqp_to_mrpc if src == "qqp" else pt_postprocessors.mrpc_to_qqp
    post = pt_postprocessors.sequential(translate,
                                        glue_utils.get_glue_postprocess_fn(GLUE[tgt]))
    cases.append(dict(task=f"glue_{tgt}_from_{src}", predictions=preds, reference=score(
        ex, preds, post, glue_utils.get_glue_metric(tgt))))
  # Generation metrics straight on targets (T5's settings).
  de = ["Das Haus ist klein.", "Guten Morgen!", "Ich bin müde, danke.", "Er sagte: „Ja“."]
  pred = ["Das Haus ist gross.", "Guten Morgen", "Ich bin müde danke.", "Er sagte „Ja“."]
  cases.append(dict(task="wmt14_ende", targets=de, predictions=pred,
                    reference=metrics.bleu(de, pred)))
  zh = ["我喜欢吃苹果。", "今天天气很好，我们去公园吧。"]
  pzh = ["我喜欢苹果。", "今天天气很好，我们去公园。"]
  cases.append(dict(task="wmt19_enzh", targets=zh, predictions=pzh,
                    reference=metrics.bleu(zh, pzh, tokenizer="zh")))
  sums = ["Mayor opens bridge . It cost $5 million .", "Rain falls on the city . Floods follow ."]
  psum = ["The mayor opened a bridge . Cost was $5 million .", "Floods in the city ."]
  cases.append(dict(task="cnn_dailymail_en", targets=sums, predictions=psum,
                    reference=metrics.rouge_mean(sums, psum)))
  return cases


def tasks_fixture() -> dict:
  out = {}
  for name, (tfds_name, _, ref) in TASKS.items():
    splits = {s: reference_examples(name, s) for s in ("train", "validation")}
    out[name] = dict(tfds=tfds_name, reference_task=ref, rows=ROWS[tfds_name], splits={
        s: [{k: ex[k] for k in ("inputs", "targets")} for ex in exs] for s, exs in splits.items()})
  return out


def adafactor_fixture() -> dict:
  """50 updates of T5X's Adafactor on fixed gradients: Lester et al.'s settings with the step
  continuing from 1_100_000 (T5X's step after the LM-adapted checkpoint), and from 0."""
  import jax
  import jax.experimental.pjit
  import jax.numpy as jnp
  # T5X at that commit imports PartitionSpec from where older JAX kept it.
  jax.experimental.pjit.PartitionSpec = jax.sharding.PartitionSpec
  from t5x import adafactor
  rng = np.random.default_rng(0)
  shapes = {"prompt": (20, 16), "matrix": (128, 136)}  # not factored / factored (>= 128)
  params0 = {k: rng.standard_normal(s).astype(np.float32) * 0.5 for k, s in shapes.items()}
  grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(50)]
  runs = {}
  for label, start in (("from_1100000", 1_100_000), ("from_0", 0)):
    opt = adafactor.Adafactor(learning_rate=0.3, decay_rate=0.8, step_offset=0,
                              multiply_by_parameter_scale=False, clipping_threshold=1.0,
                              weight_decay_rate=1e-5, beta1=None)
    params = {k: jnp.asarray(v) for k, v in params0.items()}
    state = opt.init_state(params)
    state = state.replace(step=jnp.asarray(start))
    for g in grads:
      params, state = opt.apply_gradient(opt.hyper_params, params, state,
                                         {k: jnp.asarray(v) for k, v in g.items()})
    # float32 little-endian, base64: the exact values in a tenth of the JSON text
    runs[label] = dict(start_step=start, params={
        k: base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() for k, v in params.items()})
  return dict(seed=0, shapes={k: list(v) for k, v in shapes.items()}, num_steps=50,
              init_scale=0.5, settings=dict(learning_rate=0.3, decay_rate=0.8,
                                            multiply_by_parameter_scale=False,
                                            clipping_threshold=1.0, weight_decay_rate=1e-5),
              runs=runs, jax=jax.__version__)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                "fixtures"))
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  how = ("made by scripts/make_reference_fixtures.py, running the reference code (commits "
         "below) in a throwaway environment; see that script's docstring")
  doc = dict(how=how, commits=COMMITS, tasks=tasks_fixture(), metrics=metric_cases())
  with open(os.path.join(args.out, "reference_tasks.json"), "w") as f:
    json.dump(doc, f, indent=1, ensure_ascii=False)
  with open(os.path.join(args.out, "reference_adafactor.json"), "w") as f:
    json.dump(dict(how=how, commits=COMMITS, **adafactor_fixture()), f)


if __name__ == "__main__":
  main()
