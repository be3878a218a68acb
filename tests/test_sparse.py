"""Sparse diffs and tuned-vs-pretrained distances."""
import jax
import numpy as np
import pytest

from prompt_tuning import methods, optim
from prompt_tuning.analysis import sparse
from tests.helpers import make_trainer, sentiment_data


def tuned_pair():
  tr = make_trainer(methods.make("layers", last_k=1),
                    optim.OptimizerConfig(name="adamw", learning_rate=1e-2))
  st = tr.init_state()
  pre = jax.tree.map(np.array, st.params)
  ds = sentiment_data(64)
  for i in range(3):
    st, _ = tr.train_step(st, ds.train_batch(i, 16))
  return pre, jax.tree.map(np.array, st.params)


def test_distances_per_parameter_and_layer():
  pre, tuned = tuned_pair()
  rows = sparse.param_distances(pre, tuned)
  # Every tuned parameter moved; small moves of norm scales (all ones) can round to 0 degrees.
  assert rows and all(r["l2"] > 0 and 0 <= r["angle_deg"] < 90 for r in rows)
  assert max(r["angle_deg"] for r in rows) > 0.1
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(pre)])  # sanity: rows cover all
  assert sum(r_["numel"] for r_ in rows) == a.size
  layers = sparse.per_layer(rows)
  assert set(layers) == {"encoder.layers.1", "decoder.layers.1"}
  # Layer L2 is the root of the summed squared parameter distances.
  enc = [x["l2"] ** 2 for x in rows if x["path"].startswith("encoder.layers.1.")]
  assert layers["encoder.layers.1"]["l2"] == pytest.approx(np.sqrt(sum(enc)))
  same = sparse.param_distances(pre, pre)
  assert all(x["l2"] == 0 and x["angle_deg"] == pytest.approx(0, abs=1e-2) for x in same)


def test_sparse_diff_keeps_largest_changes_and_round_trips(tmp_path):
  pre, tuned = tuned_pair()
  full = sparse.apply_diff(pre, sparse.sparsify(pre, tuned, 1.0))
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(tuned)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  diff = sparse.sparsify(pre, tuned, 0.1)
  for path, (idx, vals, shape) in diff.items():
    n = int(np.prod(shape))
    assert len(idx) == max(1, round(0.1 * n))
  path = str(tmp_path / "diff.npz")
  sparse.save_diff(path, diff)
  loaded = sparse.load_diff(path)
  rebuilt = sparse.apply_diff(pre, loaded)
  fp, ft, fr = sparse._flat(pre), sparse._flat(tuned), sparse._flat(rebuilt)
  for p in fp:
    delta = (ft[p] - fp[p]).ravel()
    kept = (fr[p] - fp[p]).ravel() != 0
    # Every kept entry equals the tuned value; every dropped entry's change is no larger.
    np.testing.assert_allclose(fr[p].ravel()[kept], ft[p].ravel()[kept], atol=1e-6)
    if (~kept).any():
      assert np.abs(delta[~kept]).max() <= np.abs(delta[kept]).min() + 1e-7
  with pytest.raises(ValueError, match="fraction"):
    sparse.sparsify(pre, tuned, 0.0)


def test_sparsify_a_finished_run(tmp_path):
  import json
  import os
  from prompt_tuning.run import loop
  from prompt_tuning.default_config import get_config
  c = get_config()
  c.unlock()
  c.output_dir = str(tmp_path)
  c.method.name = "layers"
  c.method.layers.last_k = 1
  c.optimizer.update(name="adamw", learning_rate=1e-3)
  c.data.update(num_train=32, num_eval=16)
  c.train.update(batch_size=8, num_steps=3, log_every=3, eval_every=3, checkpoint_every=3,
                 eval_batch_size=16)
  c.lock()
  loop.train(c)
  rep = sparse.sparsify_run(c, 0.25)
  assert abs(rep["kept_entries"] / rep["total_entries"] - 0.25) < 0.01
  assert set(rep["per_layer"]) == {"encoder.layers.1", "decoder.layers.1"}
  for key in ("eval_dense", "eval_sparse"):
    assert np.isfinite(rep[key]["synthetic_sentiment"]["loss"])
  assert os.path.exists(tmp_path / "sparse_diff.npz")
  assert json.load(open(tmp_path / "distances.json"))["fraction"] == 0.25
  # The sparse diff is much smaller on disk than the tuned layers themselves.
  tuned_bytes = 4 * rep["total_entries"]
  assert os.path.getsize(tmp_path / "sparse_diff.npz") < 0.75 * tuned_bytes
