"""Rank classification (issue 13.1): each candidate label's log-likelihood, the best label, in eval
next to the decoded metrics and in infer; checked against per-label losses computed one by one."""
import numpy as np
import pytest

from prompt_tuning.run import build, evaluate, infer, loop
from prompt_tuning.default_config import get_config


def small(out, **train):
  c = get_config()
  c.unlock()
  c.output_dir = str(out)
  c.method.prompt.length = 6
  c.data.update(num_train=64, num_eval=10)     # 10 dev examples, eval batch 64: padding rows
  c.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=4,
                 eval_batch_size=64, max_decode_length=6, **train)
  c.lock()
  return c


def test_scores_equal_per_label_losses_one_by_one(tmp_path):
  exp = build.build(small(tmp_path))
  params = exp.trainer.init_state().params
  batch, raw = next(iter(exp.eval_sets["synthetic_sentiment"]))
  labels = ("positive", "negative")
  ranked = evaluate.rank_by_index(exp, params, batch, labels)
  assert sorted(ranked) == list(range(10))   # padding rows are not reported
  tokens, weights = evaluate.encode_labels(exp, labels)
  for i in (0, 3, 9):
    for j in range(2):
      one = {"inputs": batch["inputs"][i:i + 1], "input_mask": batch["input_mask"][i:i + 1],
             "targets": tokens[j:j + 1], "target_weights": weights[j:j + 1]}
      placed = exp.trainer.place(one)
      loss, aux = exp.trainer.loss(params, exp.trainer.frozen, placed)
      # mean token loss x tokens = -log-likelihood of the label
      np.testing.assert_allclose(ranked[i][1][j], -float(loss) * float(aux["tokens"]),
                                 rtol=1e-5, atol=1e-4)
    assert ranked[i][0] == labels[int(np.argmax(ranked[i][1]))]


def test_eval_reports_rank_metrics_and_infer_ranks(tmp_path):
  res = loop.train(small(tmp_path))
  m = res["eval"]["synthetic_sentiment"]
  assert m["num_examples"] == 10
  assert {"accuracy", "rank_accuracy"} <= set(m)
  assert m["rank_accuracy"] in {10.0 * k for k in range(11)}   # exact over 10 examples
  out = infer.infer(small(tmp_path), ["review: a good box", "review: a sad farmer"], rank=True)
  assert len(out["ranked"]) == 2
  for r in out["ranked"]:
    assert set(r["scores"]) == {"positive", "negative"}
    assert r["label"] == max(r["scores"], key=r["scores"].get)
  c = small(tmp_path)
  c.unlock()
  c.data.task = "synthetic_copy"
  c.lock()
  with pytest.raises(ValueError, match="has no class labels"):
    infer.infer(c, ["copy: a b"], rank=True, allow_changed=("data.task",))
