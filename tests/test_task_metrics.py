"""Task metrics on hand-made predictions (no TensorFlow needed); the values the reference code
gives on edge cases are pinned in test_reference_parity.py."""
import pytest

from prompt_tuning import metrics as M

MRPC = ("not_equivalent", "equivalent")


def test_f1_and_accuracy_count_invalid_predictions_as_wrong():
  t = ["equivalent", "equivalent", "not_equivalent", "not_equivalent"]
  p = ["equivalent", "not_equivalent", "equivalent", "not_equivalent"]
  out = M.f1_and_accuracy(MRPC)(t, p)
  assert out["accuracy"] == 50.0
  assert out["f1"] == pytest.approx(50.0)  # tp=1, fp=1, fn=1
  # An invalid prediction on a negative target is a false positive (T5's
  # f1_score_with_invalid): tp=1, fp=1 -> 66.7, not the 100 of a true negative.
  out = M.f1_and_accuracy(MRPC)(["equivalent", "not_equivalent"], ["equivalent", "maybe"])
  assert out["f1"] == pytest.approx(100 * 2 / 3)
  assert out["accuracy"] == 50.0
  with pytest.raises(ValueError, match="predictions"):
    M.accuracy(t, p[:3])


def test_cb_macro_f1():
  labels = ("entailment", "contradiction", "neutral")
  t = ["entailment", "contradiction", "neutral", "entailment"]
  p = ["entailment", "contradiction", "entailment", "entailment"]
  out = M.cb(labels)(t, p)
  assert out["accuracy"] == 75.0
  # F1: entailment 2*2/(4+1)=0.8, contradiction 1.0, neutral 0.
  assert out["mean_3class_f1"] == pytest.approx(100 * (0.8 + 1.0 + 0.0) / 3)
  assert out["avg"] == pytest.approx((75.0 + out["mean_3class_f1"]) / 2)


def test_multirc_groups_and_invalid_predictions():
  ex = [{"targets": "True", "group": 0}, {"targets": "False", "group": 0},
        {"targets": "True", "group": 1}, {"targets": "True", "group": 2}]
  p = ["True", "False", "False", "True"]
  out = M.multirc(ex, p)
  assert out["exact_match"] == pytest.approx(200 / 3)  # groups 0 and 2 fully right
  assert out["f1"] == pytest.approx(100 * 2 * 2 / (4 + 0 + 1))
  # "banana" on a False target counts as predicting True: tp=1, fp=1 -> F1 2/3.
  out = M.multirc(ex[:2], ["True", "banana"])
  assert out["f1"] == pytest.approx(100 * 2 / 3) and out["exact_match"] == 0.0


def test_record_scores_each_query_once_against_all_answers():
  ex = [{"targets": "Barack Obama", "answers": "Barack Obama\tObama", "group": "0-0"},
        {"targets": "Obama", "answers": "Barack Obama\tObama", "group": "0-0"},
        {"targets": "Paris", "answers": "Paris", "group": "0-1"}]
  out = M.record(ex, ["obama", "ignored: same query", "the city of Paris"])
  assert out["em"] == 50.0
  # second query: pred tokens [city, of, paris] vs [paris] -> P=1/3, R=1, F1=0.5
  assert out["f1"] == pytest.approx(100 * (1.0 + 0.5) / 2)


def test_wsc_postprocessing():
  ex = [{"targets": "The trophy", "label": 1}, {"targets": "Bob's hat", "label": 1},
        {"targets": "Mark", "label": 0}, {"targets": "Pete", "label": 0}]
  # "trophy" names the referent (determiner ignored); "Bob" is not "Bob's hat"; "Pete" is not
  # "Mark" (label 0: right); an empty prediction never matches a label.
  out = M.wsc(ex, ["trophy", "Bob", "Pete", ""])
  assert out["accuracy"] == 50.0


def test_bleu_and_rouge():
  t = ["the cat sat on the mat today", "a quick brown fox jumps"]
  assert M.bleu()(t, t)["bleu"] == pytest.approx(100.0)
  assert M.bleu()(t, ["dogs run", "nothing here"])["bleu"] < 5
  zh = ["我喜欢吃苹果。"]
  assert M.bleu("zh")(zh, zh)["bleu"] == pytest.approx(100.0)
  r = M.rouge(("rougeL",))(["the cat sat on the mat"], ["the cat on the mat"])["rougeL"]
  # LCS = 5 tokens; P = 5/5, R = 5/6 -> F = 2*1*(5/6)/(1+5/6)
  assert r == pytest.approx(100 * (2 * (5 / 6)) / (1 + 5 / 6))
