"""Task metrics on decoded strings (no TensorFlow). Scores are percentages.

Each metric takes ``examples`` (dicts with at least ``targets``; MultiRC adds ``group``, ReCoRD
``answers`` and ``group``, WSC ``label``) and ``predictions`` (strings). The task metrics give
the values of ``t5.evaluation.metrics`` after T5's postprocessors (tests pin them against the
reference code's output, tests/fixtures/reference_tasks.json): classification compares class
ids, so every prediction that is no label word is one invalid class.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence


def _t(examples):
  return [e["targets"] if isinstance(e, dict) else e for e in examples]


def _check(t, p):
  if len(t) != len(p):
    raise ValueError(f"{len(t)} targets but {len(p)} predictions")
  if not t:
    raise ValueError("no examples to score")


def accuracy(examples, predictions) -> dict:
  """Exact-match accuracy of the strings (synthetic tasks, mixtures)."""
  t = _t(examples)
  _check(t, predictions)
  return {"accuracy": 100.0 * sum(a == b for a, b in zip(t, predictions)) / len(t)}


def _ids(strings, labels: Sequence[str]) -> list[int]:
  """T5's string_label_to_class_id: the label's index, -1 for anything else."""
  index = {label: i for i, label in enumerate(labels)}
  return [index.get(s, -1) for s in strings]


def _accuracy_ids(t, p) -> float:
  return 100.0 * sum(a == b for a, b in zip(t, p)) / len(t)


def _f1(t, p, positive) -> float:
  """F1 of one class (0 when it is neither predicted nor a target, as sklearn)."""
  tp = sum(a == positive and b == positive for a, b in zip(t, p))
  denom = sum(a == positive for a in t) + sum(b == positive for b in p)
  return 100.0 * 2 * tp / denom if denom else 0.0


def _f1_with_invalid(t, p) -> float:
  """T5's f1_score_with_invalid: a prediction that is neither class counts as the wrong one."""
  p = [b if b in (0, 1) else 1 - a for a, b in zip(t, p)]
  return _f1(t, p, 1)


def class_accuracy(labels: Sequence[str]):
  """Accuracy over class ids (T5's accuracy after string_label_to_class_id)."""
  def fn(examples, predictions):
    t = _t(examples)
    _check(t, predictions)
    return {"accuracy": _accuracy_ids(_ids(t, labels), _ids(predictions, labels))}
  return fn


def f1_and_accuracy(labels: Sequence[str]):
  """QQP / MRPC: F1 of the positive class (labels[1]), invalid predictions wrong, and accuracy."""
  def fn(examples, predictions):
    t = _t(examples)
    _check(t, predictions)
    ti, pi = _ids(t, labels), _ids(predictions, labels)
    return {"f1": _f1_with_invalid(ti, pi), "accuracy": _accuracy_ids(ti, pi)}
  return fn


def _macro_f1(t, p, n: int) -> float:
  return sum(_f1(t, p, c) for c in range(n)) / n


def macro_f1_and_accuracy(labels: Sequence[str]):
  """Own classification data: accuracy and the mean F1 over the label set's classes; a
  prediction that is no label word is wrong for its example's class."""
  def fn(examples, predictions):
    t = _t(examples)
    _check(t, predictions)
    ti, pi = _ids(t, labels), _ids(predictions, labels)
    return {"accuracy": _accuracy_ids(ti, pi), "f1_macro": _macro_f1(ti, pi, len(labels))}
  return fn


def cb(labels: Sequence[str]):
  """CommitmentBank: macro F1 over the three classes (T5's mean_3class_f1), accuracy, and
  their mean (the SuperGLUE score)."""
  def fn(examples, predictions):
    t = _t(examples)
    _check(t, predictions)
    ti, pi = _ids(t, labels), _ids(predictions, labels)
    out = {f"mean_{len(labels)}class_f1": _macro_f1(ti, pi, len(labels)),
           "accuracy": _accuracy_ids(ti, pi)}
    out["avg"] = (out["accuracy"] + out[f"mean_{len(labels)}class_f1"]) / 2
    return out
  return fn


def multirc(examples, predictions) -> dict:
  """T5's MultiRC: F1 over all answer options (invalid predictions wrong) and exact match per
  group (all of a group's answers right), groups by ``group`` (T5: the question index)."""
  t = _t(examples)
  _check(t, predictions)
  labels = ("False", "True")
  ti, pi = _ids(t, labels), _ids(predictions, labels)
  groups = collections.defaultdict(list)
  for ex, a, b in zip(examples, ti, pi):
    groups[ex["group"]].append(a == b)
  em = 100.0 * sum(all(g) for g in groups.values()) / len(groups)
  f1 = _f1_with_invalid(ti, pi)
  return {"f1": f1, "exact_match": em, "avg": (em + f1) / 2}


def normalize_squad(s: str) -> str:
  """The SQuAD evaluation script's normalisation: lower case, no punctuation or articles."""
  s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def _token_f1(gold: str, pred: str) -> float:
  p, g = pred.split(), gold.split()
  same = sum((collections.Counter(p) & collections.Counter(g)).values())
  if same == 0:
    return 0.0
  prec, rec = same / len(p), same / len(g)
  return 2 * prec * rec / (prec + rec)


def record(examples, predictions) -> dict:
  """ReCoRD as T5: each passage/query ``group`` scored once (its first row: training rows repeat
  it once per answer), max exact match and token F1 over all its gold answers (SQuAD
  normalisation); ``avg`` is their mean (the SuperGLUE score)."""
  _check(examples, predictions)
  seen, em, f1 = set(), [], []
  for ex, p in zip(examples, predictions):
    if ex["group"] in seen:
      continue
    seen.add(ex["group"])
    answers = [normalize_squad(a) for a in ex["answers"].split("\t") if a] or \
        [normalize_squad(ex["targets"])]
    p = normalize_squad(p)
    em.append(max(float(a == p) for a in answers))
    f1.append(max(_token_f1(a, p) for a in answers))
  out = {"em": 100.0 * sum(em) / len(em), "f1": 100.0 * sum(f1) / len(f1)}
  out["avg"] = (out["em"] + out["f1"]) / 2
  return out


_DETERMINERS = {"a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our",
                "some", "that", "the", "their", "these", "this", "those", "which", "whose",
                "your"}


def _wsc_clean(s: str) -> str:
  return " ".join(w for w in s.strip().lower().split(" ") if w not in _DETERMINERS)


def wsc_predicted_referent(prediction: str, referent: str) -> int:
  """T5's wsc_simple postprocessor: 1 when the prediction names the candidate referent (case and
  determiners ignored, one word set containing the other, possessives kept apart), 0 when not,
  -1 for an empty prediction (never matches a label)."""
  p = _wsc_clean(prediction)
  if not p:
    return -1
  r = _wsc_clean(referent)
  if ("'" in p) != ("'" in r):
    return 0
  pw, rw = set(p.split(" ")), set(r.split(" "))
  return int(pw <= rw or rw <= pw)


def wsc(examples, predictions) -> dict:
  """Simple WSC: accuracy of "the prediction names the candidate referent" against the label."""
  _check(examples, predictions)
  hits = [wsc_predicted_referent(p, ex["targets"]) == int(ex["label"])
          for ex, p in zip(examples, predictions)]
  return {"accuracy": 100.0 * sum(hits) / len(hits)}


def bleu(tokenize: str = "intl"):
  """Corpus BLEU with T5's sacrebleu settings (exp smoothing, no lower-casing); ``tokenize``:
  "intl" as T5's WMT tasks, "zh" (sacrebleu's Chinese tokenizer) for English -> Chinese."""
  def fn(examples, predictions):
    import sacrebleu
    t = _t(examples)
    _check(t, predictions)
    return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(t)], smooth_method="exp",
                                          smooth_value=0.0, force=False, lowercase=False,
                                          tokenize=tokenize, use_effective_order=False).score}
  return fn


def rouge(keys: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")):
  """Mean ROUGE F-measures, as T5's rouge_mean: rouge_score without stemming, " . " taken as a
  sentence end (for rougeLsum)."""
  def fn(examples, predictions):
    from rouge_score import rouge_scorer
    t = _t(examples)
    _check(t, predictions)
    sc = rouge_scorer.RougeScorer(list(keys))
    prep = lambda s: s.replace(" . ", " .\n")
    sums = collections.defaultdict(float)
    for a, b in zip(t, predictions):
      for k, v in sc.score(target=prep(a), prediction=prep(b)).items():
        sums[k] += v.fmeasure
    return {k: 100.0 * sums[k] / len(t) for k in keys}
  return fn
