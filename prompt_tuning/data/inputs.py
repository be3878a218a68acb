"""One entry point for the training loop: a per-host training iterator and per-host eval batches
for any task name (synthetic, registered seqio task or mixture, "taskA+taskB").

* Synthetic tasks and bounded subsets (``num_examples > 0``: few-shot runs, the default job) are
  tokenized once and served in memory (:mod:`prompt_tuning.data.pipeline`, no TensorFlow).
* Whole seqio training sets (``num_examples == 0``) stream through seqio
  (:mod:`prompt_tuning.data.seqio_pipeline`).
* Dev sets of seqio tasks always stream (``num_examples`` keeps the first examples).

Both kinds of training iterator have ``next(it)``, ``it.get_state() -> bytes`` and
``it.set_state(bytes)``. Both kinds of eval batches yield ``(batch, raw)`` with ``batch["valid"]``
and ``batch["index"]``. See :func:`train_iterator` and :func:`eval_batches`.

``task_names`` (per-task prompts, ``method.prompt.tasks``): in-memory batches then carry
``task_ids`` [B], each row's task's index in ``task_names`` (every task of the mixture must be
named there).
"""
from __future__ import annotations

from prompt_tuning.data import pipeline, synthetic
from prompt_tuning.data.pipeline import ENCODER_DECODER

EVAL_SEED_OFFSET = 10_000  # synthetic dev examples: another seed than the training ones


def _seqio_tasks():
  from prompt_tuning.data import seqio_pipeline
  return seqio_pipeline._tasks()


def _spm_path(vocab) -> str | None:
  """The SentencePiece model seqio tasks can tokenize with, if ``vocab`` is one."""
  from prompt_tuning.data import vocab as vocab_lib
  return vocab.path if isinstance(vocab, vocab_lib.SentencePieceVocab) else None


def in_memory_sources(task: str, split: str, vocab, feature_lengths: dict, num_examples: int,
                      seed: int = 0, shuffle: bool = False, instructions: bool = False,
                      truncate: bool = False) -> tuple[list, list[float]]:
  """Tokenized examples of each task of ``task`` (one, or a mixture's) and their rates."""
  S, T = feature_lengths["inputs"], feature_lengths["targets"]
  parts = synthetic.mixture_parts(task)
  if parts:   # one synthetic task, or a "+" mixture of them (num_examples split evenly)
    k = len(parts)
    shares = [num_examples // k + (i < num_examples % k) for i in range(k)]
    s = seed + (0 if split == "train" else EVAL_SEED_OFFSET)
    return ([pipeline.tokenize_examples(synthetic.get_examples(t, n, s, instructions), vocab, S,
                                        T, truncate, t)
             for t, n in zip(parts, shares)], [1.0] * k)
  tasks = _seqio_tasks()
  subs = tasks.mixture_tasks(task)
  rates = [r for _, r in subs]
  shares = tasks.apportion(num_examples, rates) if num_examples else [None] * len(subs)
  sources = []
  for (name, _), n in zip(subs, shares):
    ex = tasks.text_examples(name, split, n, seed=seed, shuffle=shuffle,
                             instructions=instructions)
    sources.append(pipeline.tokenize_examples(ex, vocab, S, T, truncate, name))
  return sources, rates


def check_sources(sources, split: str, process_index: int = 0):
  """Degenerate in-memory data is refused or warned about before training
  (:func:`pipeline.check_targets`); streamed seqio sets are not read ahead to check."""
  for s in sources:
    pipeline.check_targets(f"{s.name} ({split} split, {len(s)} examples)",
                           [r["targets"] for r in s.raw], process_index)


def source_task_ids(sources, task_names) -> list[int] | None:
  """The id (index in ``task_names``) of each source's task; None without ``task_names``."""
  if not task_names:
    return None
  names = list(task_names)
  unknown = [s.name for s in sources if s.name not in names]
  if unknown:
    raise ValueError(f"task(s) {unknown} of the data are not among the prompt tasks {names} "
                     f"(method.prompt.tasks)")
  return [names.index(s.name) for s in sources]


def train_iterator(task: str, *, vocab, feature_lengths: dict, global_batch_size: int,
                   seed: int = 0, num_examples: int = 0, few_shot: bool = False,
                   instructions: bool = False, truncate: bool = False, pack: bool = False,
                   model_type: str = ENCODER_DECODER, packed_length: int | None = None,
                   num_processes: int = 1, process_index: int = 0, stream: bool | None = None,
                   shuffle_buffer_size: int | None = None, use_cached: bool | None = None,
                   task_names=None):
  """The per-host training iterator of ``task``.

  ``num_examples`` > 0 takes that many training examples (a mixture: split by its rates; with
  ``few_shot`` a seeded random sample) into memory; 0 streams the whole training set through
  seqio (``stream`` overrides the choice). Streaming needs a SentencePiece ``vocab`` (the seqio
  tasks are re-registered to tokenize with it) and ignores ``truncate`` (seqio trims and keeps
  EOS). In memory, a sequence longer than ``feature_lengths`` is an error unless ``truncate``.
  """
  if synthetic.mixture_parts(task):
    stream = False
    if not num_examples:
      raise ValueError(f"synthetic task {task!r} needs num_examples > 0")
  elif stream is None:
    stream = not num_examples
  if stream:
    if task_names:
      raise ValueError("per-example task ids (method.prompt.tasks) need in-memory data for now; "
                       "set num_examples")
    path = _spm_path(vocab)
    if path is None:
      raise ValueError(f"streaming {task!r} through seqio needs a SentencePiece vocabulary; "
                       f"{type(vocab).__name__} is not one (set num_examples to read a subset "
                       f"into memory instead)")
    from prompt_tuning.data import seqio_pipeline
    if num_examples:
      raise ValueError("a streamed training set has no num_examples limit; use stream=False")
    return seqio_pipeline.SeqioIterator(
        task, global_batch_size, feature_lengths=feature_lengths, seed=seed, pack=pack,
        model_type=model_type, num_processes=num_processes, process_index=process_index,
        shuffle_buffer_size=shuffle_buffer_size, use_cached=use_cached,
        instructions=instructions, vocab_path=path)
  sources, rates = in_memory_sources(task, "train", vocab, feature_lengths, num_examples, seed,
                                     shuffle=few_shot, instructions=instructions,
                                     truncate=truncate)
  check_sources(sources, "training", process_index)
  return pipeline.InMemoryIterator(
      sources, global_batch_size, feature_lengths=feature_lengths, rates=rates, seed=seed,
      pack=pack, model_type=model_type, packed_length=packed_length,
      num_processes=num_processes, process_index=process_index,
      task_ids=source_task_ids(sources, task_names))


def eval_batches(task: str, *, vocab, feature_lengths: dict, global_batch_size: int,
                 num_examples: int = 0, seed: int = 0, instructions: bool = False,
                 truncate: bool = False, num_processes: int = 1, process_index: int = 0,
                 pad_to_multiple: int = 1, split: str = "validation",
                 stream: bool | None = None, task_names=None):
  """Per-host eval batches of ``task``: every example of the split (the first
  ``num_examples``) exactly once; iterate for ``(batch, raw)`` pairs (``len()`` batches, the
  same on every host). ``pad_to_multiple``: e.g. ``jax.device_count()``."""
  kw = dict(feature_lengths=feature_lengths, num_processes=num_processes,
            process_index=process_index, pad_to_multiple=pad_to_multiple)
  if synthetic.mixture_parts(task):
    stream = False
  elif stream is None:   # per-example task ids: in memory (the streamed sets lack them)
    # ReCoRD's rows per answer, too: SeqioEvalBatches counts and indexes the source examples
    stream = _spm_path(vocab) is not None and not task_names and \
        not _seqio_tasks().expands(task)
  if stream:
    if task_names:
      raise ValueError("per-example task ids (method.prompt.tasks) need in-memory data for now")
    from prompt_tuning.data import seqio_pipeline
    return seqio_pipeline.SeqioEvalBatches(
        task, global_batch_size, split=split, instructions=instructions,
        num_examples=num_examples or None, vocab_path=_spm_path(vocab), **kw)
  sources, _ = in_memory_sources(task, split, vocab, feature_lengths, num_examples, seed,
                                 instructions=instructions, truncate=truncate)
  check_sources(sources, split, process_index)
  if len(sources) > 1:  # a mixture's dev sets one after the other, as when streamed
    raw = [dict(r, task=s.name) for s in sources for r in s.raw]
    merged = pipeline.TokenizedExamples(
        [s.inputs(i) for s in sources for i in range(len(s))],
        [s.targets(i) for s in sources for i in range(len(s))], raw, task, sources[0].pad_id)
  else:
    merged = sources[0]
  ids = source_task_ids(sources, task_names)
  if ids is not None:
    kw["task_ids"] = [i for s, i in zip(sources, ids) for _ in range(len(s))]
  return pipeline.EvalBatches(merged, global_batch_size, **kw)
