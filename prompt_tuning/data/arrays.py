"""Text examples -> padded numpy arrays, and deterministic (resumable) batching.

The former input path, kept for existing callers; :mod:`prompt_tuning.data.pipeline` (in-memory,
per-host, packing, exact eval batches) and :mod:`prompt_tuning.data.seqio_pipeline` (streamed
seqio tasks) replace it, with the same batches for one unpacked task (same permutations)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def encode_examples(examples: Sequence[dict], vocab, max_input_length: int,
                    max_target_length: int, truncate: bool = False) -> dict[str, np.ndarray]:
  """Tokenizes {"inputs": str, "targets": str} examples, appends EOS, pads with 0.

  Raises a ValueError naming the example when a sequence is too long (unless ``truncate``).
  """
  n = len(examples)
  if n == 0:
    raise ValueError("no examples to encode")
  pad = getattr(vocab, "pad_id", 0)
  out = {"inputs": np.full((n, max_input_length), pad, np.int32),
         "targets": np.full((n, max_target_length), pad, np.int32)}
  lengths = {"inputs": np.zeros(n, np.int32), "targets": np.zeros(n, np.int32)}
  for i, ex in enumerate(examples):
    for key, length in (("inputs", max_input_length), ("targets", max_target_length)):
      if key not in ex:
        raise KeyError(f"example {i} has no {key!r} field (fields: {sorted(ex)})")
      ids = vocab.encode(ex[key]) + [vocab.eos_id]
      if len(ids) > length:
        if not truncate:
          raise ValueError(f"example {i}: {key} is {len(ids)} tokens (with EOS), longer than "
                           f"max_{key[:-1]}_length={length}; raise the limit or set truncate=True")
        ids = ids[:length - 1] + [vocab.eos_id]
      out[key][i, :len(ids)] = ids
      lengths[key][i] = len(ids)
  # Masks from true lengths (a pad id may also occur as a real token, e.g. GPT-2's EOS).
  out["input_mask"] = (np.arange(max_input_length)[None] < lengths["inputs"][:, None]
                       ).astype(np.int32)
  out["target_weights"] = (np.arange(max_target_length)[None] < lengths["targets"][:, None]
                           ).astype(np.float32)
  return out


class ArrayDataset:
  """Encoded examples with deterministic batching: the batch of step ``i`` depends only on
  (seed, i), so a resumed run sees exactly the batches an uninterrupted one would."""

  def __init__(self, arrays: dict[str, np.ndarray], seed: int = 0):
    self.arrays = arrays
    self.size = len(next(iter(arrays.values())))
    self.seed = seed
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    # Cached: drawing a permutation of the whole dataset on every step cost O(dataset) per step.
    if epoch not in self._perms:
      if len(self._perms) >= 2:
        self._perms.pop(min(self._perms))
      self._perms[epoch] = np.random.RandomState(
          (self.seed * 1_000_003 + epoch) % (2 ** 31)).permutation(self.size)
    return self._perms[epoch]

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    flat = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = flat // self.size
    idx = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      idx[sel] = self._perm(int(e))[flat[sel] % self.size]
    return {k: v[idx] for k, v in self.arrays.items()}

  def eval_batches(self, batch_size: int):
    """Sequential batches; the last is padded with zero-weight rows to a full batch."""
    for start in range(0, self.size, batch_size):
      b = {k: v[start:start + batch_size] for k, v in self.arrays.items()}
      short = batch_size - len(b["inputs"])
      if short:
        b = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
        b["valid"] = np.arange(batch_size) < batch_size - short
      else:
        b["valid"] = np.ones(batch_size, bool)
      yield b
