"""Per-host, checkpointable input iterators without TensorFlow (in-memory and synthetic data).

The one input interface of the training loop (INTERFACES.md): an iterator of per-host numpy
batches with ``next(it)``, ``it.get_state() -> bytes`` and ``it.set_state(bytes)``. This module
holds the TensorFlow-free implementations; :mod:`prompt_tuning.data.seqio_pipeline` streams seqio
Tasks / Mixtures through tf.data behind the same interface.

In-memory data is small (synthetic tasks, few-shot subsets, dev sets of the default job): it is
tokenized once into ragged arrays (:class:`TokenizedExamples`). Training batches
(:class:`InMemoryIterator`) are a pure function of (seed, step) and the same for any number of
processes; host ``p`` of ``P`` gets rows ``[p*B/P, (p+1)*B/P)`` of the global batch of ``B``
rows. A step costs O(B) (plus one permutation per task and epoch, cached), never O(dataset).
Mixtures sample their tasks by rate with a deterministic, exact schedule (:func:`mixture_schedule`).
Packing (:class:`Packer`) fills fixed-length rows first-fit; its carry-over is part of the state.
Evaluation (:class:`EvalBatches`) visits every example exactly once and pads the last batch with
``valid=False`` rows.
"""
from __future__ import annotations

import collections
import json
import math
from typing import Iterator, Sequence

import numpy as np

from prompt_tuning.events import warn

ENCODER_DECODER, DECODER_ONLY = "encoder_decoder", "decoder_only"
_STATE_VERSION = 1
_RATE_RESOLUTION = 2 ** 20  # mixture rates are quantised to integers summing to this


# ------------------------------------------------------------------------------ hosts
def host_rows(global_batch_size: int, num_processes: int = 1,
              process_index: int = 0) -> tuple[int, int]:
  """Rows ``[start, stop)`` of a global batch that process ``process_index`` feeds."""
  if num_processes < 1 or not 0 <= process_index < num_processes:
    raise ValueError(f"process_index {process_index} is not in [0, {num_processes})")
  if global_batch_size % num_processes:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"{num_processes} processes")
  b = global_batch_size // num_processes
  return process_index * b, (process_index + 1) * b


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def encode_state(header: dict, payload: bytes = b"") -> bytes:
  """State blob: a JSON header line, then an optional binary payload (tf.data iterator state)."""
  head = json.dumps(dict(header, version=_STATE_VERSION), sort_keys=True).encode()
  return head + b"\n" + payload


def decode_state(state: bytes) -> tuple[dict, bytes]:
  state = bytes(state)
  head, sep, payload = state.partition(b"\n")
  try:
    header = json.loads(head)
  except ValueError as e:
    raise ValueError(f"not an input-iterator state ({len(state)} bytes)") from e
  if not sep or header.get("version") != _STATE_VERSION:
    raise ValueError(f"unsupported input-iterator state version {header.get('version')}")
  return header, payload


def check_same(kind: str, saved: dict, current: dict):
  """A state only restores an iterator built with the same data options."""
  diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
  if diff:
    raise ValueError(f"{kind} iterator state was saved with other options (saved, now): {diff}")


# ------------------------------------------------------------------------------ examples
class TokenizedExamples:
  """Tokenized examples of one task as ragged int32 arrays (flat tokens + offsets), plus the
  raw (untokenized) examples the metrics need. Each sequence already ends with EOS."""

  def __init__(self, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
               raw: Sequence[dict] | None = None, name: str = "", pad_id: int = 0):
    if len(inputs) != len(targets):
      raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    if not len(inputs):
      raise ValueError(f"task {name or '?'}: no examples")
    self.name, self.pad_id = name, pad_id  # pad_id: the padding of unpacked rows (masks say
    self.raw = list(raw) if raw is not None else None  # what is real; packed rows pad with 0)
    self.input_lengths, self._inp, self._inp_off = _ragged(inputs)
    self.target_lengths, self._tgt, self._tgt_off = _ragged(targets)

  def __len__(self) -> int:
    return len(self.input_lengths)

  def inputs(self, i: int) -> np.ndarray:
    return self._inp[self._inp_off[i]:self._inp_off[i + 1]]

  def targets(self, i: int) -> np.ndarray:
    return self._tgt[self._tgt_off[i]:self._tgt_off[i + 1]]

  def padded(self, idx: np.ndarray, input_length: int, target_length: int) -> dict:
    """Unpacked rows for examples ``idx``: inputs, input_mask, targets, target_weights."""
    inp, m = _gather_padded(self._inp, self._inp_off, self.input_lengths, idx, input_length,
                            self.pad_id)
    tgt, w = _gather_padded(self._tgt, self._tgt_off, self.target_lengths, idx, target_length,
                            self.pad_id)
    return {"inputs": inp, "input_mask": m.astype(np.int32), "targets": tgt,
            "target_weights": w.astype(np.float32)}

  @property
  def max_lengths(self) -> tuple[int, int]:
    return int(self.input_lengths.max()), int(self.target_lengths.max())


def _ragged(seqs):
  lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
  offsets = np.zeros(len(seqs) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  flat = np.zeros(int(offsets[-1]), np.int32)
  for s, o, n in zip(seqs, offsets[:-1], lengths):
    flat[o:o + n] = s
  return lengths.astype(np.int32), flat, offsets


def _gather_padded(flat, offsets, lengths, idx, width, pad_id=0):
  idx = np.asarray(idx, np.int64)
  cols = np.arange(width)
  mask = cols[None] < lengths[idx][:, None]
  pos = np.where(mask, offsets[idx][:, None] + cols[None], 0)
  out = np.where(mask, flat[pos] if flat.size else 0, pad_id).astype(np.int32)
  return out, mask


def encode_example(ex: dict, vocab, max_input_length: int, max_target_length: int,
                   truncate: bool = False, where: str = "example") -> tuple[list, list]:
  """(input ids, target ids) of {"inputs": str, "targets": str}, each ending with EOS.

  Raises a ValueError naming ``where`` when a sequence is too long (unless ``truncate``: then it
  is cut and still ends with EOS), as :func:`arrays.encode_examples` does.
  """
  out = []
  for key, length in (("inputs", max_input_length), ("targets", max_target_length)):
    if key not in ex:
      raise KeyError(f"{where} has no {key!r} field (fields: {sorted(ex)})")
    ids = list(vocab.encode(ex[key])) + [vocab.eos_id]
    if len(ids) > length:
      if not truncate:
        raise ValueError(f"{where}: {key} is {len(ids)} tokens (with EOS), longer than "
                         f"max_{key[:-1]}_length={length}; raise the limit or set truncate=True")
      ids = ids[:length - 1] + [vocab.eos_id]
    out.append(ids)
  return out[0], out[1]


def tokenize_examples(examples: Sequence[dict], vocab, max_input_length: int,
                      max_target_length: int, truncate: bool = False,
                      name: str = "", where: Sequence[str] | None = None) -> TokenizedExamples:
  """Tokenizes {"inputs": str, "targets": str, extras...} once (:func:`encode_example`);
  ``where``: each example's place for error messages (default "example i")."""
  pairs = [encode_example(ex, vocab, max_input_length, max_target_length, truncate,
                          where[i] if where else f"example {i}")
           for i, ex in enumerate(examples)]
  return TokenizedExamples([p[0] for p in pairs], [p[1] for p in pairs], examples, name,
                           getattr(vocab, "pad_id", 0))


def check_targets(name: str, targets, process_index: int = 0):
  """Degenerate data before any training: every target empty is refused (the model would learn
  to stop at once and score 100% exact match); a single target everywhere is warned about
  (accuracy then only measures that class's share; legitimate for some probes)."""
  distinct = set(targets)
  if not any(t.strip() for t in distinct):
    raise ValueError(f"{name}: all {len(targets)} targets are empty; nothing to learn or score")
  if len(distinct) == 1 and len(targets) > 1:
    warn(f"{name}: all {len(targets)} targets are {next(iter(distinct))!r} (one class "
         f"everywhere): accuracy only measures that class's share", process_index)


# ------------------------------------------------------------------------------ mixtures
def quantize_rates(rates: Sequence[float]) -> np.ndarray:
  """Mixing rates -> positive integer weights (exact integer arithmetic in the schedule)."""
  r = np.asarray(rates, np.float64)
  if r.ndim != 1 or not len(r) or not np.all(np.isfinite(r)) or np.any(r <= 0):
    raise ValueError(f"mixing rates must be positive and finite, got {list(rates)}")
  return np.maximum(np.round(r / r.sum() * _RATE_RESOLUTION), 1).astype(np.int64)


def _cumulative_counts(n: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """[T, len(n)]: how many of the first ``n`` rows of the stream each task owns.

  A binary split of the tasks: the left half gets round(w_left / w * n) of n rows. Each split is
  non-decreasing in n and so is its complement (the left share grows by at most 1 per row), so
  every task's count is non-decreasing, the counts sum to n, and each is within a few rows of
  rate * n. Integer arithmetic: exact and platform independent."""
  T = len(weights)
  out = np.zeros((T, len(n)), np.int64)

  def split(lo, hi, m):
    if hi - lo == 1:
      out[lo] = m
      return
    mid = (lo + hi) // 2
    wl, w = int(weights[lo:mid].sum()), int(weights[lo:hi].sum())
    left = (m * wl + w // 2) // w
    split(lo, mid, left)
    split(mid, hi, m - left)

  split(0, T, np.asarray(n, np.int64))
  return out


def mixture_schedule(rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Global stream rows -> (task, position in that task's own stream), stateless."""
  rows = np.asarray(rows, np.int64)
  if len(weights) == 1:
    return np.zeros(len(rows), np.int64), rows
  before, after = _cumulative_counts(rows, weights), _cumulative_counts(rows + 1, weights)
  task = np.argmax(after - before, axis=0)
  return task, before[task, np.arange(len(rows))]


class _Stream:
  """Epoch-permuted order of one task's examples; one permutation per epoch, cached."""

  def __init__(self, size: int, seed: int, task_index: int, shuffle: bool = True):
    self.size, self.seed, self.task_index, self.shuffle = size, seed, task_index, shuffle
    self._cache: collections.OrderedDict = collections.OrderedDict()

  def perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if self.task_index == 0:  # the permutations of the former ArrayDataset.train_batch
        rng = np.random.RandomState((self.seed * 1_000_003 + epoch) % (2 ** 31))
        p = rng.permutation(self.size)
      else:
        p = np.random.default_rng((self.seed, self.task_index, epoch)).permutation(self.size)
      self._cache[epoch] = p
      if len(self._cache) > 2:
        self._cache.popitem(last=False)
    return self._cache[epoch]

  def indices(self, pos: np.ndarray) -> np.ndarray:
    pos = np.asarray(pos, np.int64)
    if not self.shuffle:
      return pos % self.size
    epochs = pos // self.size
    out = np.empty(len(pos), np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self.perm(int(e))[pos[sel] % self.size]
    return out


# ------------------------------------------------------------------------------ packing
def pack_rows(rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], model_type: str,
              lengths: dict) -> dict:
  """Packed batch from per-row lists of (input_ids, target_ids) examples.

  encoder_decoder: inputs and targets are packed independently, example k of a row has segment
  id k+1 in both (seqio EncDecFeatureConverter(pack=True)); lengths {"inputs": S, "targets": T}.
  decoder_only: each example is inputs ++ targets in one segment of ``lengths["tokens"]``;
  loss_weights are 1 on target tokens except the first token of a segment.
  """
  B = len(rows)
  if model_type == ENCODER_DECODER:
    S, T = lengths["inputs"], lengths["targets"]
    out = {k: np.zeros((B, n), np.int32) for k, n in (
        ("inputs", S), ("input_segment_ids", S), ("input_positions", S), ("targets", T),
        ("target_segment_ids", T), ("target_positions", T))}
    for r, row in enumerate(rows):
      i = t = 0
      for k, (inp, tgt) in enumerate(row, start=1):
        for seq, key, at in ((inp, "input", i), (tgt, "target", t)):
          n = len(seq)
          out[key + "s"][r, at:at + n] = seq
          out[key + "_segment_ids"][r, at:at + n] = k
          out[key + "_positions"][r, at:at + n] = np.arange(n)
        i, t = i + len(inp), t + len(tgt)
      if i > S or t > T:
        raise ValueError(f"row {r} overflows: {i} > {S} or {t} > {T}")
    out["input_mask"] = (out["input_segment_ids"] > 0).astype(np.int32)
    out["target_weights"] = (out["target_segment_ids"] > 0).astype(np.float32)
    return out
  if model_type != DECODER_ONLY:
    raise ValueError(f"model_type must be {ENCODER_DECODER!r} or {DECODER_ONLY!r}, got "
                     f"{model_type!r}")
  L = lengths["tokens"]
  out = {k: np.zeros((B, L), np.int32) for k in ("tokens", "segment_ids", "positions")}
  out["loss_weights"] = np.zeros((B, L), np.float32)
  for r, row in enumerate(rows):
    at = 0
    for k, (inp, tgt) in enumerate(row, start=1):
      n = len(inp) + len(tgt)
      if at + n > L:
        raise ValueError(f"row {r} overflows: {at + n} > {L}")
      out["tokens"][r, at:at + len(inp)] = inp
      out["tokens"][r, at + len(inp):at + n] = tgt
      out["segment_ids"][r, at:at + n] = k
      out["positions"][r, at:at + n] = np.arange(n)
      out["loss_weights"][r, at + max(len(inp), 1):at + n] = 1.0
      at += n
  return out


class Packer:
  """Greedy first-fit packing of an example stream into batches of ``rows`` fixed-length rows.

  Examples are taken in stream order (the examples deferred by the previous batch first); each
  goes into the first row with room for it. One that fits nowhere is deferred to the next batch.
  A batch is closed once ``max_pending`` examples are deferred or no row can take even the
  shortest example. Deferred examples open the next batch, so none waits more than one batch
  (and none is lost); with ``max_pending <= rows`` they always fit there. The state (next stream
  position, deferred positions) is a few numbers: resume costs O(max_pending).

  ``sizes(pos) -> [n, k]`` gives the lengths of stream examples ``pos`` in each of the k packed
  dimensions (inputs, targets for encoder-decoder; inputs + targets for decoder-only);
  ``capacity`` the row length of each dimension.
  """

  def __init__(self, sizes, capacity: Sequence[int], rows: int, min_size: Sequence[int],
               max_pending: int | None = None, lookahead: int = 256):
    self.sizes, self.rows = sizes, rows
    self.capacity = np.asarray(capacity, np.int64)
    self.min_size = np.asarray(min_size, np.int64)
    self.max_pending = rows if max_pending is None else max_pending
    if not 0 < self.max_pending <= rows:
      raise ValueError(f"max_pending must be in [1, rows={rows}], got {max_pending}")
    self.lookahead = lookahead
    self.next, self.pending = 0, []

  def state(self) -> dict:
    return {"next": self.next, "pending": list(self.pending)}

  def restore(self, state: dict):
    self.next, self.pending = int(state["next"]), [int(p) for p in state["pending"]]

  def pack(self) -> list[list[int]]:
    """The stream positions in each row of the next batch."""
    free = np.tile(self.capacity, (self.rows, 1))
    rows: list[list[int]] = [[] for _ in range(self.rows)]
    deferred: list[int] = []

    def place(pos, size):
      ok = np.flatnonzero(np.all(free >= size, axis=1))
      if not len(ok):
        return False
      r = ok[0]
      rows[r].append(pos)
      free[r] -= size
      return True

    if self.pending:
      for pos, size in zip(self.pending, self.sizes(np.asarray(self.pending))):
        if not place(pos, size):
          deferred.append(pos)
    while len(deferred) < self.max_pending and np.any(np.all(free >= self.min_size, axis=1)):
      chunk = np.arange(self.next, self.next + self.lookahead)
      for pos, size in zip(chunk, self.sizes(chunk)):
        self.next = int(pos) + 1
        if not place(int(pos), size):
          deferred.append(int(pos))
          if len(deferred) >= self.max_pending:
            break
        if not np.any(np.all(free >= self.min_size, axis=1)):
          break
    self.pending = deferred
    return rows


# ------------------------------------------------------------------------------ training
class InMemoryIterator:
  """Training batches from in-memory tokenized examples: endless, shuffled each epoch, per host.

  Args:
    sources: the tasks' examples (one :class:`TokenizedExamples` per task of a mixture).
    global_batch_size: rows of the global batch (all processes together).
    rates: mixing rates of ``sources`` (default: proportional to their sizes).
    feature_lengths: {"inputs": S, "targets": T}: the padded (or packed) lengths.
    pack: pack several examples per row (:class:`Packer`); unpacked rows hold one example.
    model_type: "encoder_decoder" (packed inputs/targets) or "decoder_only" (packed rows are
      ``tokens`` of ``packed_length``, default S + T; unpacked decoder-only batches use the
      encoder-decoder keys, as INTERFACES.md says).
    num_processes, process_index: this host's share: rows [p*B/P, (p+1)*B/P).
    start_step: the first step (a run that resumes without a saved state: packed streams are
      replayed from step 0, unpacked ones jump there directly).
    task_ids: one int per source: unpacked batches then carry ``task_ids`` [B] int32, the id of
      each row's source (per-task prompts; a packed row would mix tasks, so not with ``pack``).

  The batch of step s is a pure function of (sources, options, seed, s); it does not depend on
  the number of processes, so a state saved with P processes restores with any other P.
  """

  def __init__(self, sources, global_batch_size: int, *, feature_lengths: dict,
               rates: Sequence[float] | None = None, seed: int = 0, pack: bool = False,
               model_type: str = ENCODER_DECODER, packed_length: int | None = None,
               num_processes: int = 1, process_index: int = 0, shuffle: bool = True,
               max_pending: int | None = None, start_step: int = 0,
               task_ids: Sequence[int] | None = None):
    if isinstance(sources, TokenizedExamples):
      sources = [sources]
    self.sources = list(sources)
    self.task_ids = None if task_ids is None else np.asarray(task_ids, np.int32)
    if self.task_ids is not None and (pack or self.task_ids.shape != (len(self.sources),)):
      raise ValueError("task_ids need one id per source and unpacked rows (a packed row mixes "
                       f"tasks); got {list(task_ids)} for {len(self.sources)} sources, "
                       f"pack={pack}")
    if model_type not in (ENCODER_DECODER, DECODER_ONLY):
      raise ValueError(f"model_type must be {ENCODER_DECODER!r} or {DECODER_ONLY!r}, got "
                       f"{model_type!r}")
    self.global_batch_size = global_batch_size
    self.start, self.stop = host_rows(global_batch_size, num_processes, process_index)
    self.S, self.T = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
    for s in self.sources:
      mi, mt = s.max_lengths
      if mi > self.S or mt > self.T:
        raise ValueError(f"task {s.name or '?'} has examples of {mi} / {mt} tokens, longer than "
                         f"feature_lengths {feature_lengths}")
    self.rates = [float(len(s)) for s in self.sources] if rates is None else list(rates)
    if len(self.rates) != len(self.sources):
      raise ValueError(f"{len(self.rates)} rates for {len(self.sources)} tasks")
    self.weights = quantize_rates(self.rates)
    self.seed, self.pack, self.model_type, self.shuffle = seed, pack, model_type, shuffle
    self.packed_length = packed_length or self.S + self.T
    self.streams = [_Stream(len(s), seed, t, shuffle) for t, s in enumerate(self.sources)]
    self.step = 0
    self.packer = None
    if pack:
      if model_type == ENCODER_DECODER:
        cap, lengths = (self.S, self.T), lambda i, t: (i, t)
        mins = (min(int(s.input_lengths.min()) for s in self.sources),
                min(int(s.target_lengths.min()) for s in self.sources))
      else:
        cap, lengths = (self.packed_length,), lambda i, t: (i + t,)
        mins = (min(int((s.input_lengths + s.target_lengths).min()) for s in self.sources),)
        longest = max(int((s.input_lengths + s.target_lengths).max()) for s in self.sources)
        if longest > self.packed_length:
          raise ValueError(f"an example of {longest} tokens does not fit packed_length "
                           f"{self.packed_length}")

      def sizes(pos):
        task, idx = self._examples(pos)
        out = np.zeros((len(pos), len(cap)), np.int64)
        for t, s in enumerate(self.sources):
          sel = task == t
          out[sel] = np.stack(lengths(s.input_lengths[idx[sel]],
                                      s.target_lengths[idx[sel]]), axis=1)
        return out

      self.packer = Packer(sizes, cap, global_batch_size, mins, max_pending)
    if start_step:
      self.skip_to(start_step)

  # -- stream
  def _examples(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global stream positions -> (task, example index)."""
    task, tpos = mixture_schedule(pos, self.weights)
    idx = np.empty(len(pos), np.int64)
    for t, st in enumerate(self.streams):
      sel = task == t
      if sel.any():
        idx[sel] = st.indices(tpos[sel])
    return task, idx

  def skip_to(self, step: int):
    """Positions the iterator at ``step`` (resuming without a saved state)."""
    if self.packer is None:
      self.step = step
    else:
      while self.step < step:
        self.packer.pack()
        self.step += 1

  # -- protocol
  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.packer is None:
      pos = np.arange(self.step * self.global_batch_size + self.start,
                      self.step * self.global_batch_size + self.stop)
      task, idx = self._examples(pos)
      batch = None
      for t, s in enumerate(self.sources):
        sel = np.flatnonzero(task == t)
        if not len(sel):
          continue
        part = s.padded(idx[sel], self.S, self.T)
        if batch is None:
          batch = {k: np.zeros((len(pos),) + v.shape[1:], v.dtype) for k, v in part.items()}
        for k, v in part.items():
          batch[k][sel] = v
      if self.task_ids is not None:
        batch["task_ids"] = self.task_ids[task]
    else:
      rows = self.packer.pack()[self.start:self.stop]
      flat = np.asarray([p for r in rows for p in r], np.int64)
      task, idx = self._examples(flat)
      ex = iter([(self.sources[t].inputs(i), self.sources[t].targets(i))
                 for t, i in zip(task, idx)])
      per_row = [[next(ex) for _ in r] for r in rows]
      lengths = {"inputs": self.S, "targets": self.T, "tokens": self.packed_length}
      batch = pack_rows(per_row, self.model_type, lengths)
    self.step += 1
    return batch

  def _options(self) -> dict:
    return {"sizes": [len(s) for s in self.sources], "weights": self.weights.tolist(),
            "seed": self.seed, "global_batch_size": self.global_batch_size, "pack": self.pack,
            "model_type": self.model_type, "lengths": [self.S, self.T, self.packed_length],
            "shuffle": self.shuffle,
            **({} if self.task_ids is None else {"task_ids": self.task_ids.tolist()})}

  def get_state(self) -> bytes:
    header = {"kind": "in_memory", "step": self.step, "options": self._options()}
    if self.packer is not None:
      header["packer"] = self.packer.state()
    return encode_state(header)

  def set_state(self, state: bytes):
    header, _ = decode_state(state)
    if header.get("kind") != "in_memory":
      raise ValueError(f"state of a {header.get('kind')!r} iterator, not an in-memory one")
    check_same("in-memory", header["options"], self._options())
    self.step = int(header["step"])
    if self.packer is not None:
      self.packer.restore(header["packer"])


def real_token_fraction(batch: dict) -> float:
  """Share of non-padding positions (over all token arrays of the batch)."""
  if "tokens" in batch:
    return float((batch["segment_ids"] > 0).mean())
  real = batch["input_mask"].sum() + (batch["target_weights"] > 0).sum()
  return float(real / (batch["input_mask"].size + batch["target_weights"].size))


# ------------------------------------------------------------------------------ evaluation
class EvalBatches:
  """Every example of ``examples`` exactly once, in order, in per-host padded batches.

  The global eval batch is ``global_batch_size`` rounded up to a multiple of ``pad_to_multiple``
  (e.g. the global device count) and of ``num_processes``; global batch k holds examples
  ``[k*G, (k+1)*G)`` and host p its rows ``[p*G/P, (p+1)*G/P)``. Rows past the end are padding:
  ``valid`` False, zero tokens and weights, ``index`` -1. All hosts yield the same number of
  batches. Iterating yields ``(batch, raw)`` where ``raw`` lists the untokenized example dicts
  of this host's valid rows, in row order (what the task metrics need). ``task_ids`` (one int
  per example) adds a ``task_ids`` [B] feature (0 on padding rows).

  ``labels`` and ``scorer`` (``scorer(examples, predictions) -> metrics``): the label set and
  metrics of data that carries its own (the user's files); None: looked up by task name.
  """

  def __init__(self, examples: TokenizedExamples, global_batch_size: int, *,
               feature_lengths: dict, num_processes: int = 1, process_index: int = 0,
               pad_to_multiple: int = 1, task_ids: Sequence[int] | None = None,
               labels: Sequence[str] | None = None, scorer=None):
    self.examples, self.labels, self.scorer = examples, labels, scorer
    self.task_ids = None if task_ids is None else np.asarray(task_ids, np.int32)
    if self.task_ids is not None and self.task_ids.shape != (len(examples),):
      raise ValueError(f"{len(self.task_ids)} task ids for {len(examples)} examples")
    self.global_batch_size = round_up(global_batch_size,
                                      math.lcm(max(pad_to_multiple, 1), num_processes))
    self.start, self.stop = host_rows(self.global_batch_size, num_processes, process_index)
    self.S, self.T = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
    self.num_batches = -(-len(examples) // self.global_batch_size)

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[tuple[dict, list]]:
    n = len(self.examples)
    for k in range(self.num_batches):
      index = k * self.global_batch_size + np.arange(self.start, self.stop)
      valid = index < n
      batch = self.examples.padded(np.where(valid, index, 0), self.S, self.T)
      for key in ("input_mask", "target_weights"):
        batch[key][~valid] = 0
      for key in ("inputs", "targets"):
        batch[key][~valid] = self.examples.pad_id
      batch["valid"] = valid
      batch["index"] = np.where(valid, index, -1).astype(np.int32)
      if self.task_ids is not None:
        batch["task_ids"] = np.where(valid, self.task_ids[np.where(valid, index, 0)],
                                     0).astype(np.int32)
      raw = [self.examples.raw[i] for i in index[valid]] if self.examples.raw is not None \
          else [None] * int(valid.sum())
      yield batch, raw
