"""Task metrics on decoded strings (no TensorFlow). Scores are percentages.

Each metric takes ``examples`` (dicts with at least ``targets``; MultiRC adds ``group``, ReCoRD
``answers``) and ``predictions`` (strings), as seqio metric functions with postprocessed
targets do.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence


def _t(examples):
  return [e["targets"] if isinstance(e, dict) else e for e in examples]


def accuracy(examples, predictions) -> dict:
  t = _t(examples)
  _check(t, predictions)
  return {"accuracy": 100.0 * sum(a == b for a, b in zip(t, predictions)) / len(t)}


def _check(t, p):
  if len(t) != len(p):
    raise ValueError(f"{len(t)} targets but {len(p)} predictions")
  if not t:
    raise ValueError("no examples to score")


def binary_f1(targets: Sequence[str], predictions: Sequence[str], positive: str) -> float:
  tp = sum(t == positive and p == positive for t, p in zip(targets, predictions))
  fp = sum(t != positive and p == positive for t, p in zip(targets, predictions))
  fn = sum(t == positive and p != positive for t, p in zip(targets, predictions))
  return 0.0 if tp == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)


def accuracy_and_f1(positive: str):
  def fn(examples, predictions):
    t = _t(examples)
    out = accuracy(t, predictions)
    out["f1"] = binary_f1(t, predictions, positive)
    return out
  return fn


def accuracy_and_macro_f1(labels: Sequence[str]):
  """CommitmentBank: accuracy, macro-averaged F1 over the classes, and their mean."""
  def fn(examples, predictions):
    t = _t(examples)
    out = accuracy(t, predictions)
    out["f1_macro"] = sum(binary_f1(t, predictions, l) for l in labels) / len(labels)
    out["avg"] = (out["accuracy"] + out["f1_macro"]) / 2
    return out
  return fn


def multirc(examples, predictions) -> dict:
  """Exact match per question (all its answers right) and F1 over all answer options."""
  t = _t(examples)
  _check(t, predictions)
  groups = collections.defaultdict(list)
  for ex, tt, p in zip(examples, t, predictions):
    groups[ex["group"]].append(tt == p)
  em = 100.0 * sum(all(g) for g in groups.values()) / len(groups)
  f1a = binary_f1(t, predictions, "True")
  return {"exact_match": em, "f1a": f1a, "avg": (em + f1a) / 2}


def _normalize(s: str) -> str:
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def _token_f1(pred: str, gold: str) -> float:
  p, g = _normalize(pred).split(), _normalize(gold).split()
  common = collections.Counter(p) & collections.Counter(g)
  same = sum(common.values())
  if same == 0:
    return 0.0
  prec, rec = same / len(p), same / len(g)
  return 2 * prec * rec / (prec + rec)


def record(examples, predictions) -> dict:
  """ReCoRD: max exact match and token F1 over the gold answers (SQuAD normalisation)."""
  _check(examples, predictions)
  em = f1 = 0.0
  for ex, p in zip(examples, predictions):
    answers = [a for a in ex["answers"].split("\t") if a] or [ex["targets"]]
    em += max(float(_normalize(p) == _normalize(a)) for a in answers)
    f1 += max(_token_f1(p, a) for a in answers)
  n = len(examples)
  return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def bleu(tokenize: str = "13a"):
  def fn(examples, predictions):
    import sacrebleu
    t = _t(examples)
    _check(t, predictions)
    return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(t)], tokenize=tokenize).score}
  return fn


def rouge_l(use_stemmer: bool = False):
  def fn(examples, predictions):
    from rouge_score import rouge_scorer
    t = _t(examples)
    _check(t, predictions)
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    vals = [sc.score(a, b)["rougeL"].fmeasure for a, b in zip(t, predictions)]
    return {"rougeL": 100.0 * sum(vals) / len(vals)}
  return fn
