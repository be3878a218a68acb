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

from prompt_tuning.tasks import metrics  # noqa: E402,F401
from prompt_tuning.tasks.registry import (DOMAIN_SHIFT_PAIRS, INSTRUCTIONS, SPECS,  # noqa: E402
                                          register_all, register_mlsum, summarize_prefix)

register_all()

TASK_NAMES = tuple(sorted(SPECS))


def _spec(name: str):
  if name not in SPECS:
    raise ValueError(f"unknown task {name!r}; registered: {', '.join(TASK_NAMES)}")
  return SPECS[name]


def text_examples(name: str, split: str, n: int | None = None, seed: int = 0,
                  shuffle: bool = False, instructions: bool = False) -> list[dict]:
  """Formatted (untokenized) examples of a task: {"inputs", "targets", extras...} strings.

  ``shuffle`` draws a seeded random sample of ``n`` (few-shot runs); a mixture name (registered,
  or "taskA+taskB") gives an equal share of ``n`` from each of its tasks, interleaved;
  ``instructions`` prepends each task's instruction text.
  """
  if name in seqio.MixtureRegistry.names() or "+" in name:
    subs = name.split("+") if "+" in name else \
        [t.name for t in seqio.get_mixture_or_task(name).tasks]
    per = None if not n else max(1, n // len(subs))  # n = 0 / None: every example
    parts = [text_examples(t, split, per, seed, shuffle, instructions) for t in subs]
    mixed = [ex for group in zip(*parts) for ex in group]
    return mixed[:n] if n else mixed
  spec = _spec(name)
  task = seqio.get_mixture_or_task(name)
  try:
    ds = task.source.get_dataset(split=split, shuffle=False)
  except (KeyError, ValueError) as e:
    raise ValueError(f"task {name!r}: cannot read split {split!r}: {e}") from e
  if shuffle:
    ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=False)
  ds = ds.map(spec.formatter)
  if n:
    ds = ds.take(n)
  out = []
  for ex in ds.as_numpy_iterator():
    out.append({k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()})
  return with_instruction(name, out) if instructions else out


def with_instruction(name: str, examples: list[dict]) -> list[dict]:
  """Prepends the task's natural-language instruction to every input."""
  text = INSTRUCTIONS[_spec(name).name]
  return [dict(ex, inputs=f"{text} {ex['inputs']}") for ex in examples]


def score(name: str, examples: list[dict], predictions: list[str]) -> dict:
  return _spec(name).metric(examples, predictions)


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
