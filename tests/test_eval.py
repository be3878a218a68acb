"""Exact evaluation (issue 10.5): every dev example counted once, padding rows of the last batch
never; eval sizes that do not divide the batch; the same numbers as scoring examples one by one."""
import numpy as np

from prompt_tuning import metrics
from prompt_tuning.run import build, evaluate
from tests.test_rank import small


def test_metrics_equal_one_by_one_scoring(tmp_path):
  c = small(tmp_path)
  c.unlock()
  c.train.eval_batch_size = 4           # 10 examples: batches of 4, 4 and 2 (+2 padding rows)
  c.lock()
  exp = build.build(c)
  params = exp.trainer.init_state().params
  ev = exp.eval_sets["synthetic_sentiment"]
  batches = list(ev)
  assert len(batches) == 3 and [int(b["valid"].sum()) for b, _ in batches] == [4, 4, 2]
  m = evaluate.evaluate_set(exp, "synthetic_sentiment", ev, params)
  assert m["num_examples"] == 10
  raw = [r for _, rs in batches for r in rs]
  preds, correct, loss_sum, tokens = [], 0, 0.0, 0.0
  for b, _ in batches:
    for i in np.flatnonzero(b["valid"]):
      one = {k: b[k][i:i + 1] for k in ("inputs", "input_mask", "targets", "target_weights")}
      preds.append(exp.vocab.decode(exp.trainer.decode(params, one, 6)[0]))
      out = exp.trainer.eval_step(params, one)
      correct += int(out["seq_correct"])
      loss_sum += float(out["loss_sum"])
      tokens += float(out["weight_sum"])
  assert m["accuracy"] == metrics.accuracy(raw, preds)["accuracy"]
  assert m["sequence_accuracy"] == 100.0 * correct / 10
  np.testing.assert_allclose(m["loss"], loss_sum / tokens, rtol=1e-5)
