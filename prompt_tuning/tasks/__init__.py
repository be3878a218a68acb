"""seqio task registries (TensorFlow + seqio). Importing this package registers every task.

The training core never imports this package; :mod:`prompt_tuning.run.build` does, lazily, when a
task name is not one of the synthetic tasks.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")  # TF only feeds data; keep accelerators for JAX

from prompt_tuning.tasks.registry import (DOMAIN_SHIFT_PAIRS, INSTRUCTIONS, SPECS,  # noqa: E402
                                          TRAIN_SIZES, TaskSpec, adhoc_mixture, add_task,
                                          format_dataset, instruction_mixture, instruction_task,
                                          instruction_text, register_all, register_mlsum,
                                          set_download, set_vocabulary, unknown_task,
                                          summarize_prefix, vocabulary_path)

register_all()


def _spec(name: str):
  if name not in SPECS:
    raise unknown_task(name)
  return SPECS[name]


def is_mixture(name: str) -> bool:
  return "+" in name or name in seqio.MixtureRegistry.names()


def provider(name: str, instructions: bool = False):
  """The seqio Task or Mixture for ``name``: a registered task or mixture, or an ad-hoc mixture
  "taskA+taskB" (examples-proportional rates) / "taskA:2+taskB:1" (explicit rates);
  ``instructions``: the variant with each task's instruction text prepended to the inputs."""
  if "+" in name:
    return adhoc_mixture(name, instructions)
  if name in seqio.MixtureRegistry.names():
    return instruction_mixture(name) if instructions else seqio.get_mixture_or_task(name)
  if instructions:
    return seqio.get_mixture_or_task(instruction_task(name))
  if name not in SPECS and name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)  # registered elsewhere (e.g. benchmarks)
  _spec(name)
  return seqio.get_mixture_or_task(name)


def check_task_name(name: str):
  """Raises a one-line ValueError for a name that is no task, mixture or "a+b" mixture."""
  for sub in name.split("+"):
    base = sub.split(":")[0]
    if base not in SPECS and base not in seqio.MixtureRegistry.names() and \
        base not in seqio.TaskRegistry.names():
      raise unknown_task(base)


def mixture_tasks(name: str) -> list[tuple[str, float]]:
  """(task name, mixing rate) of each task of ``name`` (one task: rate 1)."""
  if not is_mixture(name):
    provider(name)
    return [(name, 1.0)]
  mix = provider(name)
  return [(t.name, float(mix.get_rate(t))) for t in mix.tasks]


def expands(name: str) -> bool:
  """Whether a task of ``name`` makes several rows of one example (ReCoRD: one per answer)."""
  return any(SPECS[t].expand for t, _ in mixture_tasks(name) if t in SPECS)


def apportion(n: int, rates, minimum: int = 1) -> list[int]:
  """Splits ``n`` by ``rates`` (largest remainder), at least ``minimum`` each when n allows."""
  r = np.asarray(rates, np.float64) / np.sum(rates)
  out = np.floor(n * r).astype(np.int64)
  for i in np.argsort(-(n * r - out), kind="stable")[:n - int(out.sum())]:
    out[i] += 1
  if n >= minimum * len(out):
    while out.min() < minimum:  # take from the largest share
      out[np.argmin(out)] += 1
      out[np.argmax(out)] -= 1
  return out.tolist()


def text_examples(name: str, split: str, n: int | None = None, seed: int = 0,
                  shuffle: bool = False, instructions: bool = False) -> list[dict]:
  """Formatted (untokenized) examples of a task: {"inputs", "targets", extras...} strings.

  For small data (few-shot subsets, short dev sets): it reads ``n`` examples (all when n is 0 or
  None) into a list. Full training sets stream through :mod:`prompt_tuning.data.seqio_pipeline`.
  ``shuffle`` draws a seeded random sample of ``n`` (few-shot runs). A mixture (registered,
  "taskA+taskB" or "taskA:2+taskB:1") splits ``n`` among its tasks by their mixing rates (each
  task at least one example) and interleaves them by rate, every example of every task kept;
  ``instructions`` prepends each task's instruction text.
  """
  if is_mixture(name):
    subs = mixture_tasks(name)
    shares = apportion(n, [r for _, r in subs]) if n else [None] * len(subs)
    parts = [text_examples(t, split, k, seed, shuffle, instructions)
             for (t, _), k in zip(subs, shares)]
    parts = [p for p in parts if p]
    from prompt_tuning.data.pipeline import mixture_schedule
    sizes = np.asarray([len(p) for p in parts], np.int64)
    task, pos = mixture_schedule(np.arange(int(sizes.sum())), sizes)
    return [parts[t][i] for t, i in zip(task, pos)]
  spec = _spec(name)
  task = seqio.get_mixture_or_task(name)
  try:
    ds = task.source.get_dataset(split=split, shuffle=False)
  except (KeyError, ValueError) as e:
    raise ValueError(f"task {name!r}: cannot read split {split!r}: {e}") from e
  if shuffle:
    ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=False)
  ds = format_dataset(spec, ds)
  if n:
    ds = ds.take(n)
  out = []
  for ex in ds.as_numpy_iterator():
    out.append({k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()})
  return with_instruction(name, out) if instructions else out


def with_instruction(name: str, examples: list[dict]) -> list[dict]:
  """Prepends the task's natural-language instruction to every input."""
  text = instruction_text(_spec(name).name)
  return [dict(ex, inputs=f"{text} {ex['inputs']}") for ex in examples]


def score(name: str, examples: list[dict], predictions: list[str]) -> dict:
  """The task's metrics on decoded predictions (after its postprocessing, e.g. the label-word
  mapping of a transfer evaluation task)."""
  spec = _spec(name)
  if spec.postprocess:
    predictions = [spec.postprocess(p) for p in predictions]
  return spec.metric(examples, predictions)


def get_batches(name: str, split: str, feature_lengths: dict, batch_size: int,
                model_type: str = "encoder_decoder", shuffle: bool = False, seed: int = 0):
  """Numpy batches through seqio's feature converters.

  encoder_decoder -> {"inputs", "input_mask", "targets", "target_weights"} (our trainer's keys);
  decoder_only -> seqio.DecoderFeatureConverter's features (inputs and targets concatenated,
  loss only on targets).
  """
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(feature_lengths, split=split, shuffle=shuffle, seed=seed,
                        try_in_mem_cache=False)
  if model_type == "encoder_decoder":
    conv = seqio.EncDecFeatureConverter(pack=False)
    lengths = feature_lengths
  elif model_type == "decoder_only":
    conv = seqio.DecoderFeatureConverter(pack=False)
    lengths = {"inputs": feature_lengths["inputs"], "targets": feature_lengths["targets"]}
  else:
    raise ValueError(f"model_type must be 'encoder_decoder' or 'decoder_only', got {model_type!r}")
  ds = conv(ds, lengths).batch(batch_size, drop_remainder=False)
  for b in ds.as_numpy_iterator():
    if model_type == "encoder_decoder":
      yield {"inputs": b["encoder_input_tokens"],
             "input_mask": (b["encoder_input_tokens"] != 0).astype(np.int32),
             "targets": b["decoder_target_tokens"],
             "target_weights": b["decoder_loss_weights"].astype(np.float32)}
    else:
      yield b
