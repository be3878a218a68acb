"""Up-front validation of a run config, and config drift between a stored run and a new call.

:func:`validate` checks every value before anything is built, so a bad value is one ``error:``
line that says what to do, never a traceback from deep inside a step.

:func:`check_drift` compares the config a run's checkpoints were made with against the current
one (resuming ``train``, ``eval``, ``infer``, ``export``; :func:`check_stored_run` adds the
frozen model's files, prompt_tuning/provenance.py). Keys that change the model, the data or the
optimisation are refused, each listed as ``key: old -> new``; keys in :data:`SAFE_TO_CHANGE`
(run length, logging, evaluation, compute layout) may differ. ``allow_changed`` names keys
changed on purpose (``"all"`` accepts any).
"""
from __future__ import annotations

import json
import math
import os

# Keys that do not change what a run computes: its length, logging and evaluation, and how the
# same maths is laid out on the devices.
SAFE_TO_CHANGE = frozenset("""
output_dir
train.num_steps train.log_every train.eval_every train.checkpoint_every train.max_to_keep
train.eval_batch_size train.max_decode_length train.divergence_factor train.divergence_patience
train.record_batches
data.eval_tasks data.num_eval data.download
method.init_from method.prompt.init_from_run
model.remat model.scan_layers model.attention_impl
mesh.shape mesh.axis_rules mesh.coordinator_address mesh.num_processes mesh.process_id
""".split())

DTYPES = ("float32", "bfloat16", "float16")


def _fail(msg: str):
  raise ValueError(msg)


def _positive(config, section: str, *keys):
  for k in keys:
    v = config[section][k]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      _fail(f"{section}.{k} must be a positive integer, got {v!r}")


def validate(config):
  """Raises ValueError naming the first bad value and what to do about it."""
  if not isinstance(config.seed, int) or config.seed < 0:
    _fail(f"seed must be a non-negative integer, got {config.seed!r}")
  out = config.output_dir
  if not out:
    _fail("output_dir is empty; set --config.output_dir=DIR")
  if os.path.exists(out) and not os.path.isdir(out):
    _fail(f"output_dir {out!r} exists and is not a directory")

  m = config.model
  if m.preset and m.hf_checkpoint:
    _fail(f"model.hf_checkpoint ({m.hf_checkpoint!r}) and model.preset ({m.preset!r}) are both "
          f"set: give one (for a random-init preset clear the checkpoint: "
          f"--config.model.hf_checkpoint= --config.model.preset={m.preset})")
  if (m.random_init or not m.hf_checkpoint) and not m.allow_random_init:
    _fail("this config needs pretrained weights: set model.hf_checkpoint to a Hugging Face "
          "checkpoint directory (or a Hub id in the local cache), or model.allow_random_init=True "
          "to run on random weights anyway")
  if m.random_init and not m.hf_checkpoint:
    _fail("model.random_init=True takes the architecture of model.hf_checkpoint, which is empty "
          "(a preset is random-init already)")
  if not m.preset and not m.hf_checkpoint:
    _fail("no model: set model.hf_checkpoint (a Hugging Face checkpoint directory or a Hub id "
          "in the local cache) or model.preset (random init)")
  if m.dtype not in DTYPES:
    _fail(f"model.dtype {m.dtype!r} is not supported; use one of {DTYPES}")
  if m.frozen_dtype and m.frozen_dtype not in DTYPES:
    _fail(f"model.frozen_dtype {m.frozen_dtype!r} is not supported; use one of {DTYPES} or ''")
  if not 0.0 <= m.dropout_rate < 1.0:
    _fail(f"model.dropout_rate must be in [0, 1), got {m.dropout_rate}")

  if config.method.init_from and config.method.prompt.init_from_run:
    _fail(f"method.init_from ({config.method.init_from!r}) and method.prompt.init_from_run "
          f"({config.method.prompt.init_from_run!r}) both give the initial prompt: set one")

  o = config.optimizer
  lr = o.learning_rate
  if not math.isfinite(lr) or lr < 0:
    _fail(f"optimizer.learning_rate must be a finite number >= 0 (0: the method's default), "
          f"got {lr}")
  if o.warmup_steps < 0:
    _fail(f"optimizer.warmup_steps must be >= 0, got {o.warmup_steps}")
  if not 0.0 < o.decay_rate <= 1.0:
    _fail(f"optimizer.decay_rate must be in (0, 1], got {o.decay_rate}")
  for k in ("clipping_threshold", "weight_decay", "grad_clip_norm"):
    if not math.isfinite(o[k]) or o[k] < 0:
      _fail(f"optimizer.{k} must be a finite number >= 0, got {o[k]}")

  d = config.data
  _positive(config, "data", "max_input_length", "max_target_length")
  for k in ("num_train", "num_eval"):
    if d[k] < 0:
      _fail(f"data.{k} must be >= 0 (0: every example), got {d[k]}")
  if d.vocab and not os.path.exists(d.vocab):
    _fail(f"data.vocab {d.vocab!r} does not exist; give a SentencePiece .model file or a "
          f"tokenizer.json (or leave it empty)")

  t = config.train
  _positive(config, "train", "batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every",
            "max_to_keep", "eval_batch_size", "max_decode_length", "max_encoder_length",
            "divergence_patience")
  if not t.z_loss >= 0:
    _fail(f"train.z_loss must be >= 0, got {t.z_loss}")
  if not t.divergence_factor > 1:
    _fail(f"train.divergence_factor must be > 1, got {t.divergence_factor}")

  from prompt_tuning import sharding
  sharding.check_mesh_config(config.mesh.shape, config.mesh.axis_rules)


# ----------------------------------------------------------------------------- drift
def flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def as_json(config) -> dict:
  """A config as plain JSON data (tuples as lists), the form checkpoints store."""
  return json.loads(config.to_json()) if hasattr(config, "to_json") else json.loads(
      json.dumps(config))


ABSENT = "(absent)"


def drift(stored: dict, current: dict) -> list[tuple[str, object, object]]:
  """(key, stored value, current value) for every key that differs (ABSENT: not in that one)."""
  a, b = flatten(stored), flatten(current)
  return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
          if a.get(k, ABSENT) != b.get(k, ABSENT)]


def check_drift(stored: dict, current, allow_changed=(), what: str = "resume"):
  """Refuses a call whose config changes what the stored run computed (see module doc). A run
  stored by an older version lacks the keys added since: one now at its default is no change
  (the default is what that version did), nor is a key this version no longer has."""
  from prompt_tuning.default_config import get_config
  defaults = flatten(as_json(get_config()))
  allowed = set(allow_changed)
  bad = [(k, old, new) for k, old, new in drift(stored, as_json(current))
         if k not in SAFE_TO_CHANGE and k not in allowed and "all" not in allowed
         and new is not ABSENT and not (old is ABSENT and new == defaults.get(k, ABSENT))]
  if bad:
    shown = lambda v: v if v is ABSENT else repr(v)
    changes = "; ".join(f"{k}: {shown(old)} -> {shown(new)}" for k, old, new in bad)
    raise ValueError(f"cannot {what}: the run in {current.output_dir} was made with another "
                     f"config ({changes}). Use the run's own config, a new output_dir, or pass "
                     f"--allow_changed={','.join(k for k, _, _ in bad)} if the change is "
                     f"deliberate")


def check_stored_run(meta: dict, current, allow_changed=(), what: str = "resume"):
  """What a stored checkpoint's ``meta`` was made with against this call: the config
  (:func:`check_drift`), then the frozen model's files."""
  from prompt_tuning import provenance
  check_drift(meta.get("config", {}), current, allow_changed, what)
  provenance.check_model(meta, current, allow_changed, what)
