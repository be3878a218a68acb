"""Task metrics on hand-made predictions (no TensorFlow needed)."""
import pytest

from prompt_tuning import metrics as M


def test_accuracy_and_f1():
  t = ["equivalent", "equivalent", "not_equivalent", "not_equivalent"]
  p = ["equivalent", "not_equivalent", "equivalent", "not_equivalent"]
  out = M.accuracy_and_f1("equivalent")(t, p)
  assert out["accuracy"] == 50.0
  assert out["f1"] == pytest.approx(50.0)  # tp=1, fp=1, fn=1
  with pytest.raises(ValueError, match="predictions"):
    M.accuracy(t, p[:3])


def test_cb_macro_f1():
  labels = ("entailment", "contradiction", "neutral")
  t = ["entailment", "contradiction", "neutral", "entailment"]
  p = ["entailment", "contradiction", "entailment", "entailment"]
  out = M.accuracy_and_macro_f1(labels)(t, p)
  assert out["accuracy"] == 75.0
  # F1: entailment 2*2/(4+1)=0.8, contradiction 1.0, neutral 0.
  assert out["f1_macro"] == pytest.approx(100 * (0.8 + 1.0 + 0.0) / 3)
  assert out["avg"] == pytest.approx((75.0 + out["f1_macro"]) / 2)


def test_multirc_groups():
  ex = [{"targets": "True", "group": "0-0"}, {"targets": "False", "group": "0-0"},
        {"targets": "True", "group": "0-1"}, {"targets": "True", "group": "1-0"}]
  p = ["True", "False", "False", "True"]
  out = M.multirc(ex, p)
  assert out["exact_match"] == pytest.approx(200 / 3)  # groups 0-0 and 1-0 fully right
  assert out["f1a"] == pytest.approx(100 * 2 * 2 / (4 + 0 + 1))


def test_record_max_over_answers():
  ex = [{"targets": "Barack Obama", "answers": "Barack Obama\tObama"},
        {"targets": "Paris", "answers": "Paris"}]
  out = M.record(ex, ["obama", "the city of Paris"])
  assert out["exact_match"] == 50.0
  # second: pred tokens [city, of, paris] vs [paris] -> P=1/3, R=1, F1=0.5
  assert out["f1"] == pytest.approx(100 * (1.0 + 0.5) / 2)


def test_bleu_and_rouge():
  t = ["the cat sat on the mat today", "a quick brown fox jumps"]
  assert M.bleu()(t, t)["bleu"] == pytest.approx(100.0)
  assert M.bleu()(t, ["dogs run", "nothing here"])["bleu"] < 5
  zh = ["我喜欢吃苹果。"]
  assert M.bleu("zh")(zh, zh)["bleu"] == pytest.approx(100.0)
  r = M.rouge_l()(["the cat sat on the mat"], ["the cat on the mat"])["rougeL"]
  # LCS = 5 tokens; P = 5/5, R = 5/6 -> F = 2*1*(5/6)/(1+5/6)
  assert r == pytest.approx(100 * (2 * (5 / 6)) / (1 + 5 / 6))
