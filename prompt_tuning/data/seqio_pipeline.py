"""seqio Tasks and Mixtures streamed through tf.data behind the iterator interface of
:mod:`prompt_tuning.data.pipeline` (TensorFlow and seqio are imported on first use).

Training (:class:`SeqioIterator`): ``Task/Mixture.get_dataset`` with the task's own
preprocessors (tokenization inside the pipeline), ``seqio.ShardInfo(process_index,
process_count)`` so each host reads and tokenizes 1/P of the data, a bounded shuffle buffer,
mixtures sampled by their rates, seqio's feature converters (packing optional), and the
per-host batch; nothing is read into Python lists, so the time to the first batch and the
memory do not grow with the dataset. The iterator state is tf.data's own iterator checkpoint
(the readers' file offsets, the shuffle buffer and the prefetched batches) as bytes: a restored
iterator continues with exactly the batches an uninterrupted one would have produced, at a cost
bounded by the buffer sizes.

Evaluation (:class:`SeqioEvalBatches`): every example of the split exactly once, host p taking
examples p, p+P, p+2P, ... (sharded before preprocessing), padded batches with ``valid`` and the
untokenized targets and metric extras (group, answers) of each example alongside.

Offline cache: a task with a cache directory (``seqio.add_global_cache_dirs([dir])``; built by
seqio's ``cache_tasks_main`` with Apache Beam, or by :func:`write_cache` in one process) is read
from its TFRecord shards (``use_cached``), skipping the source reading, formatting and
tokenization.
"""
from __future__ import annotations

import io
import json
import math
import os
import uuid
from typing import Iterator, Sequence

import numpy as np

from prompt_tuning.data.pipeline import (DECODER_ONLY, ENCODER_DECODER, Packer, check_same,
                                         decode_state, encode_state, host_rows, pack_rows,
                                         round_up)

_TF = None


def _tf():
  """TensorFlow, imported once, with accelerators hidden from it (JAX owns them)."""
  global _TF
  if _TF is None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised
      pass
    _TF = tf
  return _TF


def _tasks():
  _tf()
  from prompt_tuning import tasks
  return tasks


def _subtasks(prov) -> list:
  import seqio
  return list(prov.tasks) if isinstance(prov, seqio.Mixture) else [prov]


def _options(tf):
  opts = tf.data.Options()
  opts.deterministic = True
  # Python preprocessing steps (the MLSum JSON parse) are pure functions: nothing to save.
  opts.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return opts


def iterator_state(iterator) -> bytes:
  """A tf.data iterator's checkpoint as bytes (written to TensorFlow's in-memory filesystem)."""
  tf = _tf()
  base = f"ram://pt_iterator_{uuid.uuid4().hex}"
  try:
    prefix = tf.train.Checkpoint(iterator=iterator).write(base + "/ckpt")
    files = {}
    for fn in tf.io.gfile.glob(prefix + "*"):
      with tf.io.gfile.GFile(fn, "rb") as f:
        files[os.path.basename(fn)] = f.read()
  finally:
    if tf.io.gfile.exists(base):
      tf.io.gfile.rmtree(base)
  head = json.dumps({k: len(v) for k, v in sorted(files.items())}).encode()
  return head + b"\n" + b"".join(v for _, v in sorted(files.items()))


def restore_iterator_state(iterator, state: bytes):
  tf = _tf()
  head, _, body = bytes(state).partition(b"\n")
  sizes = json.loads(head)
  base = f"ram://pt_iterator_{uuid.uuid4().hex}"
  try:
    at = 0
    tf.io.gfile.makedirs(base)
    for name, n in sizes.items():
      with tf.io.gfile.GFile(f"{base}/{name}", "wb") as f:
        f.write(body[at:at + n])
      at += n
    tf.train.Checkpoint(iterator=iterator).read(base + "/ckpt").assert_consumed()
  finally:
    if tf.io.gfile.exists(base):
      tf.io.gfile.rmtree(base)


def _model_batch(model_type: str, pack: bool):
  """seqio feature-converter batch -> the batch keys of INTERFACES.md (inside tf.data)."""
  tf = _tf()

  def encdec(b):
    out = {"inputs": b["encoder_input_tokens"], "targets": b["decoder_target_tokens"],
           "target_weights": tf.cast(b["decoder_loss_weights"], tf.float32)}
    if pack:
      out["input_mask"] = tf.cast(b["encoder_segment_ids"] > 0, tf.int32)
      out.update(input_segment_ids=b["encoder_segment_ids"], input_positions=b["encoder_positions"],
                 target_segment_ids=b["decoder_segment_ids"],
                 target_positions=b["decoder_positions"])
    else:  # seqio vocabularies pad with 0 and never emit it as a token
      out["input_mask"] = tf.cast(b["encoder_input_tokens"] != 0, tf.int32)
    return out

  def decoder(b):
    pos = b["decoder_positions"]
    # No loss on the first token of a segment: it has nothing to be predicted from.
    w = tf.cast(b["decoder_loss_weights"], tf.float32) * tf.cast(pos > 0, tf.float32)
    return {"tokens": b["decoder_target_tokens"], "segment_ids": b["decoder_segment_ids"],
            "positions": pos, "loss_weights": w}

  return decoder if (model_type == DECODER_ONLY and pack) else encdec


class SeqioIterator:
  """Endless per-host training batches of a seqio Task or Mixture (see the module docstring).

  Args:
    name: a registered task or mixture, or an ad-hoc mixture "taskA+taskB" ("taskA:2+taskB:1").
    global_batch_size: rows of the global batch; this host yields ``global_batch_size / P``.
    feature_lengths: {"inputs": S, "targets": T} (task feature lengths; longer sequences are
      trimmed by the task, EOS kept).
    pack: False; True or "seqio": seqio's packing (EncDecFeatureConverter /
      DecoderFeatureConverter with pack=True: consecutive examples, next-fit, in windows of
      max(S, T) examples); "first_fit": the examples streamed from seqio are packed first-fit
      into the rows of each batch by :class:`pipeline.Packer` (denser: see
      benchmarks/RESULTS_input_pipeline.md; its few carried-over examples are in the state).
    model_type: "encoder_decoder", or "decoder_only" (packed: tokens/segment_ids/positions/
      loss_weights of length S + T; unpacked: the encoder-decoder keys).
    num_processes, process_index: ``seqio.ShardInfo(index=process_index, num_shards=...)``.
    shuffle_buffer_size: the task's shuffle buffer (default: the task's, seqio's 1000).
    use_cached: read the offline cache (default: when every task has one).
    vocab_path: a SentencePiece model the tasks must tokenize with (the run's vocabulary).
  """

  def __init__(self, name: str, global_batch_size: int, *, feature_lengths: dict,
               split: str = "train", seed: int = 0, pack: bool | str = False,
               model_type: str = ENCODER_DECODER, num_processes: int = 1,
               process_index: int = 0, shuffle: bool = True,
               shuffle_buffer_size: int | None = None, use_cached: bool | None = None,
               instructions: bool = False, num_epochs: int | None = None,
               vocab_path: str | None = None, prefetch: int = 2):
    tf, tasks = _tf(), _tasks()
    import seqio
    if model_type not in (ENCODER_DECODER, DECODER_ONLY):
      raise ValueError(f"model_type must be {ENCODER_DECODER!r} or {DECODER_ONLY!r}, got "
                       f"{model_type!r}")
    if pack not in (False, True, "seqio", "first_fit"):
      raise ValueError(f"pack must be False, True / 'seqio' or 'first_fit', got {pack!r}")
    if pack == "first_fit" and num_epochs is not None:
      raise ValueError("pack='first_fit' needs an endless stream (num_epochs=None)")
    if vocab_path:
      tasks.set_vocabulary(vocab_path)
    start, stop = host_rows(global_batch_size, num_processes, process_index)
    prov = tasks.provider(name, instructions)
    subtasks = _subtasks(prov)
    if use_cached is None:
      use_cached = all(t.supports_caching and t.cache_dir for t in subtasks)
    lengths = {"inputs": int(feature_lengths["inputs"]), "targets": int(feature_lengths["targets"])}
    kw = dict(sequence_length=lengths, split=split, use_cached=use_cached, shuffle=shuffle,
              seed=seed, num_epochs=num_epochs, try_in_mem_cache=False,
              shard_info=seqio.ShardInfo(index=process_index, num_shards=num_processes)
              if num_processes > 1 else None)
    if isinstance(prov, seqio.Task) and shuffle_buffer_size:
      kw["shuffle_buffer_size"] = shuffle_buffer_size
    ds = prov.get_dataset(**kw)
    # Only the token features travel on: the untokenized text would fill the buffers.
    ds = ds.map(lambda x: {"inputs": x["inputs"], "targets": x["targets"]},
                num_parallel_calls=tf.data.AUTOTUNE)
    self.model_type, self.rows = model_type, stop - start
    self.lengths = dict(lengths, tokens=lengths["inputs"] + lengths["targets"])
    self.packer = None
    if pack == "first_fit":
      # Chunks of trimmed examples with their lengths; packed in Python, per host.
      ds = ds.map(lambda x: dict(x, n_inputs=tf.size(x["inputs"]),
                                 n_targets=tf.size(x["targets"])))
      ds = ds.padded_batch(self._CHUNK, padded_shapes={
          "inputs": [lengths["inputs"]], "targets": [lengths["targets"]], "n_inputs": [],
          "n_targets": []})
      if model_type == ENCODER_DECODER:
        cap, mins = (lengths["inputs"], lengths["targets"]), (1, 1)
      else:
        cap, mins = (self.lengths["tokens"],), (2,)
      self.packer = Packer(self._sizes, cap, self.rows, mins)
      self._buf: dict = {}
      self._fetched = 0
    else:
      pack = bool(pack)
      if model_type == DECODER_ONLY and pack:
        conv = seqio.DecoderFeatureConverter(pack=True)
      else:
        conv = seqio.EncDecFeatureConverter(pack=pack)
      ds = conv(ds, lengths)
      ds = ds.batch(self.rows, drop_remainder=True)
      ds = ds.map(_model_batch(model_type, pack), num_parallel_calls=tf.data.AUTOTUNE)
    self.dataset = ds.prefetch(prefetch).with_options(_options(tf))
    self._it = iter(self.dataset)
    self.steps = 0
    self.use_cached = bool(use_cached)
    self._opts = {"name": name, "split": split, "seed": seed, "pack": pack,
                  "model_type": model_type, "global_batch_size": global_batch_size,
                  "num_processes": num_processes, "process_index": process_index,
                  "lengths": [lengths["inputs"], lengths["targets"]], "shuffle": shuffle,
                  "shuffle_buffer_size": shuffle_buffer_size, "use_cached": self.use_cached,
                  "instructions": instructions}

  _CHUNK = 256  # examples fetched from tf.data at a time for pack="first_fit"

  def __iter__(self):
    return self

  # -- pack="first_fit": a window of streamed examples, addressed by stream position
  def _fetch(self):
    c = {k: v.numpy() for k, v in next(self._it).items()}
    for j in range(len(c["n_inputs"])):
      self._buf[self._fetched] = (c["inputs"][j, :c["n_inputs"][j]].copy(),
                                  c["targets"][j, :c["n_targets"][j]].copy())
      self._fetched += 1

  def _sizes(self, pos: np.ndarray) -> np.ndarray:
    while len(pos) and self._fetched <= int(pos.max()):
      self._fetch()
    ex = [self._buf[int(p)] for p in pos]
    if self.model_type == ENCODER_DECODER:
      return np.asarray([(len(i), len(t)) for i, t in ex], np.int64).reshape(-1, 2)
    return np.asarray([len(i) + len(t) for i, t in ex], np.int64).reshape(-1, 1)

  def __next__(self) -> dict:
    if self.packer is None:
      b = next(self._it)
      self.steps += 1
      return {k: v.numpy() for k, v in b.items()}
    rows = self.packer.pack()
    batch = pack_rows([[self._buf[p] for p in r] for r in rows], self.model_type, self.lengths)
    keep = set(self.packer.pending)
    for p in [p for p in self._buf if p < self.packer.next and p not in keep]:
      del self._buf[p]
    self.steps += 1
    return batch

  def get_state(self) -> bytes:
    header = {"kind": "seqio", "steps": self.steps, "options": self._opts}
    tf_state = iterator_state(self._it)
    if self.packer is None:
      return encode_state(header, tf_state)
    header.update(packer=self.packer.state(), fetched=self._fetched)
    pos = sorted(self._buf)
    buf = io.BytesIO()
    np.savez(buf, tf_state=np.frombuffer(tf_state, np.uint8), pos=np.asarray(pos, np.int64),
             **{f"{k}_{part}": arr for k, j in (("inputs", 0), ("targets", 1))
                for part, arr in zip(("flat", "len"), _flatten([self._buf[p][j] for p in pos]))})
    return encode_state(header, buf.getvalue())

  def set_state(self, state: bytes):
    header, payload = decode_state(state)
    if header.get("kind") != "seqio":
      raise ValueError(f"state of a {header.get('kind')!r} iterator, not a seqio one")
    check_same("seqio", header["options"], self._opts)
    if self.packer is None:
      restore_iterator_state(self._it, payload)
    else:
      z = np.load(io.BytesIO(payload))
      restore_iterator_state(self._it, z["tf_state"].tobytes())
      ins = _split(z["inputs_flat"], z["inputs_len"])
      tgts = _split(z["targets_flat"], z["targets_len"])
      self._buf = {int(p): (i, t) for p, i, t in zip(z["pos"], ins, tgts)}
      self._fetched = int(header["fetched"])
      self.packer.restore(header["packer"])
    self.steps = int(header["steps"])


def _flatten(seqs):
  lens = np.asarray([len(s) for s in seqs], np.int64)
  return (np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)), lens


def _split(flat, lens):
  return np.split(flat, np.cumsum(lens)[:-1]) if len(lens) else []


# ------------------------------------------------------------------------------ evaluation
def count_examples(task, split: str, use_cached: bool = False) -> int:
  """Examples in a task's split: cache statistics, the source's metadata, else one pass over
  the raw source (cheap next to preprocessing; dev sets are small)."""
  if use_cached:
    return int(task.get_cached_stats(split)["examples"])
  try:
    n = task.source.num_input_examples(split)
  except Exception:  # TFDS split metadata unavailable (e.g. mocked data)
    n = None
  if n:
    return int(n)
  ds = task.source.get_dataset(split=split, shuffle=False)
  return int(ds.reduce(np.int64(0), lambda c, _: c + 1).numpy())


class SeqioEvalBatches:
  """Every example of a task's split (a mixture: each task's split in turn) exactly once.

  Host ``p`` of ``P`` takes examples p, p+P, ... of each task (sharded before preprocessing, so
  it tokenizes only its share). The global batch is ``global_batch_size`` rounded up to a
  multiple of ``pad_to_multiple`` and of P; each host yields ``G/P`` rows per batch and all
  hosts yield the same number of batches (:attr:`num_batches`); rows past a host's share are
  padding (``valid`` False, zeros, ``index`` -1). ``index`` is the example's position in the
  split (tasks of a mixture follow each other; with ``use_cached``, the position in the cache's
  read order). Iterating yields ``(batch, raw)``: ``raw`` holds
  the untokenized {"inputs", "targets", extras (group, answers), "task"} of the valid rows, in
  row order. ``num_examples`` keeps the first examples only (a mixture splits it by rate).
  """

  def __init__(self, name: str, global_batch_size: int, *, feature_lengths: dict,
               split: str = "validation", num_processes: int = 1, process_index: int = 0,
               pad_to_multiple: int = 1, instructions: bool = False,
               num_examples: int | None = None, use_cached: bool = False,
               vocab_path: str | None = None):
    tasks = _tasks()
    if vocab_path:
      tasks.set_vocabulary(vocab_path)
    self.name, self.split = name, split
    self.P, self.p = num_processes, process_index
    self.global_batch_size = round_up(global_batch_size,
                                      math.lcm(max(pad_to_multiple, 1), num_processes))
    start, stop = host_rows(self.global_batch_size, num_processes, process_index)
    self.rows = stop - start
    self.S, self.T = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
    self.use_cached = use_cached
    prov = tasks.provider(name, instructions)
    self.tasks = _subtasks(prov)
    counts = [count_examples(t, split, use_cached) for t in self.tasks]
    if num_examples:
      if len(self.tasks) > 1:
        limits = tasks.apportion(num_examples, [prov.get_rate(t) for t in self.tasks])
      else:
        limits = [num_examples]
      counts = [min(c, k) for c, k in zip(counts, limits)]
    self.counts = counts
    self.limits = counts if num_examples else [None] * len(counts)
    self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.num_examples = int(self.offsets[-1])
    # Host 0 has the largest share of every task.
    self.num_batches = -(-sum(-(-c // num_processes) for c in counts) // self.rows)
    self._mixture = len(self.tasks) > 1

  def __len__(self) -> int:
    return self.num_batches

  def _task_rows(self, t: int):
    """(inputs [S], targets [T], raw dict, index) of this host's examples of task t."""
    tf = _tf()
    task = self.tasks[t]
    src = task._get_cached_source(self.split) if self.use_cached else task.source
    ds = src.get_dataset(split=self.split, shuffle=False)
    if self.limits[t]:
      ds = ds.take(self.limits[t])
    ds = ds.shard(self.P, self.p)
    if not self.use_cached:
      ds = task.preprocess_precache(ds, seed=0)
    ds = task.preprocess_postcache(ds, sequence_length={"inputs": self.S, "targets": self.T},
                                   seed=0)
    extras = [k for k, spec in ds.element_spec.items()
              if k not in ("inputs", "targets") and spec.dtype == tf.string
              and spec.shape.rank == 0]

    def pad(x):
      out = {k: x[k] for k in extras}
      for key, n in (("inputs", self.S), ("targets", self.T)):
        v = x[key][:n]
        out[key] = tf.pad(v, [[0, n - tf.shape(v)[0]]])
        out[key].set_shape([n])
      return out

    ds = ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE).batch(256).prefetch(2)
    ds = ds.with_options(_options(tf))
    j = 0
    for b in ds.as_numpy_iterator():
      for r in range(len(b["inputs"])):
        raw = {k[:-len("_pretokenized")] if k.endswith("_pretokenized") else k:
               b[k][r].decode() for k in extras}
        if self._mixture:
          raw["task"] = task.name
        yield b["inputs"][r], b["targets"][r], raw, int(self.offsets[t]) + self.p + j * self.P
        j += 1

  def __iter__(self) -> Iterator[tuple[dict, list]]:
    def rows():
      for t in range(len(self.tasks)):
        yield from self._task_rows(t)

    it = rows()
    for _ in range(self.num_batches):
      batch = {"inputs": np.zeros((self.rows, self.S), np.int32),
               "targets": np.zeros((self.rows, self.T), np.int32),
               "valid": np.zeros(self.rows, bool), "index": np.full(self.rows, -1, np.int32)}
      raw = []
      for r in range(self.rows):
        row = next(it, None)
        if row is None:
          break
        batch["inputs"][r], batch["targets"][r], ex, batch["index"][r] = row
        batch["valid"][r] = True
        raw.append(ex)
      batch["input_mask"] = (batch["inputs"] != 0).astype(np.int32)
      batch["target_weights"] = (batch["targets"] != 0).astype(np.float32)
      yield batch, raw
    if next(it, None) is not None:
      raise RuntimeError(f"{self.name}: the {self.split} split of host {self.p} has more "
                         f"examples than counted ({self.counts}); a preprocessor is not 1:1")


def raw_examples(name: str, split: str = "validation", instructions: bool = False,
                 num_examples: int | None = None, use_cached: bool = False) -> Iterator[dict]:
  """The untokenized examples of a split in ``index`` order, streamed (for the host that
  scores predictions gathered from all hosts). Same order and fields as SeqioEvalBatches with
  the same arguments (a cached split is read in the cache's shard order)."""
  ev = SeqioEvalBatches(name, 1, feature_lengths={"inputs": 1, "targets": 1}, split=split,
                        instructions=instructions, num_examples=num_examples,
                        use_cached=use_cached)
  for t in range(len(ev.tasks)):
    for _, _, raw, _ in ev._task_rows(t):
      yield raw


# ------------------------------------------------------------------------------ cache
def write_cache(name: str, cache_dir: str, splits: Sequence[str] = ("train", "validation"),
                num_shards: int = 16) -> str:
  """Writes a task's offline cache in seqio's layout (what ``seqio.scripts.cache_tasks_main``
  writes with Apache Beam) in one process: the examples after the preprocessors before
  ``CacheDatasetPlaceholder`` (formatted and tokenized), round-robin into ``num_shards``
  TFRecord files per split, plus info/stats JSON and COMPLETED. Returns the task's cache
  directory; ``seqio.add_global_cache_dirs([cache_dir])`` makes ``use_cached`` find it.

  For corpora too large for one process, run Beam instead:
    python -m seqio.scripts.cache_tasks_main --module_import=prompt_tuning.tasks \\
      --tasks=wmt19_enzh --output_cache_dir=$CACHE --alsologtostderr
  (Beam also shuffles across shards; here each shard is a strided slice of the source order.)
  """
  tf, tasks = _tf(), _tasks()
  import seqio
  task = tasks.provider(name) if "+" not in name else None
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{name!r} is not a task (mixtures are cached task by task)")
  out = os.path.join(cache_dir, seqio.utils.get_task_dir_from_name(task.name))
  tf.io.gfile.makedirs(out)
  for split in splits:
    ds = task.preprocess_precache(task.source.get_dataset(split=split, shuffle=False), seed=0)
    prefix = seqio.utils.get_cached_tfrecord_prefix(out, split)
    writers = [tf.io.TFRecordWriter(f"{prefix}-{i:05d}-of-{num_shards:05d}")
               for i in range(num_shards)]
    n, features, stats = 0, {}, {}
    for ex in ds.prefetch(tf.data.AUTOTUNE):
      if not features:
        for k, v in ex.items():
          shape = v.shape.as_list()
          features[k] = {"shape": [None] + shape[1:] if shape else [], "dtype": v.dtype.name}
      writers[n % num_shards].write(seqio.dict_to_tfexample(ex).SerializeToString())
      for k, v in ex.items():
        if v.dtype in (tf.int32, tf.int64):
          stats[f"{k}_tokens"] = stats.get(f"{k}_tokens", 0) + int(v.shape[0])
          stats[f"{k}_max_tokens"] = max(stats.get(f"{k}_max_tokens", 0), int(v.shape[0]))
      n += 1
    for w in writers:
      w.close()
    with tf.io.gfile.GFile(seqio.utils.get_cached_info_path(out, split), "w") as f:
      json.dump({"num_shards": num_shards, "features": features,
                 "seqio_version": seqio.__version__}, f)
    with tf.io.gfile.GFile(seqio.utils.get_cached_stats_path(out, split), "w") as f:
      json.dump(dict(stats, examples=n), f)
  with tf.io.gfile.GFile(os.path.join(out, "COMPLETED"), "w") as f:
    f.write("")
  return out
