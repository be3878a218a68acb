"""Mixed-task inference: per-example prompts from different runs on one shared frozen model."""
import numpy as np
import pytest

from prompt_tuning.run import build, infer, loop
from prompt_tuning.default_config import get_config


def cfg(out, task):
  c = get_config()
  c.unlock()
  c.output_dir = str(out)
  c.method.prompt.length = 8
  c.data.update(task=task, num_train=64, num_eval=16)
  c.train.update(batch_size=8, num_steps=6, log_every=3, eval_every=6, checkpoint_every=6,
                 eval_batch_size=16)
  c.lock()
  return c


def test_mixed_batch_equals_per_task_inference(tmp_path):
  a, b = cfg(tmp_path / "a", "synthetic_sentiment"), cfg(tmp_path / "b", "synthetic_copy")
  loop.train(a)
  loop.train(b)
  texts_a = ["review: the teacher found a good box", "review: a sad farmer"]
  texts_b = ["copy: great awful poor", "copy: lovely sad"]
  solo_a = infer.infer(a, texts_a)["outputs"]
  solo_b = infer.infer(b, texts_b)["outputs"]
  pairs = [("sent", texts_a[0]), ("copy", texts_b[0]), ("copy", texts_b[1]), ("sent", texts_a[1])]
  mixed = infer.infer_mixed(a, {"sent": str(tmp_path / "a"), "copy": str(tmp_path / "b")},
                            pairs)
  assert mixed == [solo_a[0], solo_b[0], solo_b[1], solo_a[1]]
  # The two stored prompts differ, so the routing is not vacuous.
  from prompt_tuning import checkpoint
  import jax
  pa = jax.tree.leaves(checkpoint.Checkpointer(str(tmp_path / "a" / "checkpoints")).restore(
      build.build(a, with_data=False).trainer.init_state())[0].params)[0]
  pb = jax.tree.leaves(checkpoint.Checkpointer(str(tmp_path / "b" / "checkpoints")).restore(
      build.build(b, with_data=False).trainer.init_state())[0].params)[0]
  assert np.abs(np.asarray(pa) - np.asarray(pb)).max() > 1e-3
  with pytest.raises(ValueError, match="no prompt run given"):
    infer.infer_mixed(a, {"sent": str(tmp_path / "a")}, [("copy", "copy: x")])
  other = cfg(tmp_path / "c", "synthetic_copy")
  other.unlock(); other.method.prompt.length = 4; other.lock()
  with pytest.raises(ValueError, match="prompt length"):
    infer.infer_mixed(other, {"sent": str(tmp_path / "a")}, [("sent", "review: x")])
