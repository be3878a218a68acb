"""Prompt tuning T5 (LM-adapted) on SuperGLUE, Lester et al. (2021): prompt-tuning's taskless
SuperGLUE tasks (T5's formats without the task word: the prompt tells the task), prompt length
100, class-label init, their Adafactor (optim.LESTER: lr 0.3 constant, decay 0.8, clipping 1,
no parameter scaling, weight decay 1e-5, step continuing from the checkpoint's 1_100_000) and
z-loss 1e-4, evaluated on all eight dev sets.

  prompt-tuning train --config configs/superglue_prompt.py \\
      --config.model.hf_checkpoint=/ckpt/t5-v1_1-lm-adapt-base \\
      --config.data.vocab=/ckpt/t5-v1_1-lm-adapt-base/spiece.model
"""
from prompt_tuning import optim
from prompt_tuning.default_config import get_config as base

TASKS = tuple(f"taskless_super_glue_{t}" for t in ("boolq", "cb", "copa", "multirc", "record",
                                                    "rte", "wic", "wsc"))


def get_config():
  c = base()
  c.unlock()
  c.output_dir = "runs/superglue_prompt"
  # A paper setup: needs pretrained weights (a t5-v1_1-base checkpoint in model.hf_checkpoint);
  # --config.model.preset=t5-v1_1-base --config.model.allow_random_init=True runs random ones.
  c.model.update(hf_checkpoint="", allow_random_init=False, dtype="bfloat16",
                 frozen_dtype="bfloat16")
  c.method.name = "prompt"
  c.method.prompt.update(length=100, init="class_labels",
                         class_labels=("True", "False", "entailment", "not_entailment",
                                       "contradiction", "neutral", "choice1", "choice2"))
  c.optimizer.update(**optim.LESTER)
  c.train.z_loss = optim.LESTER_Z_LOSS
  c.data.update(task="taskless_super_glue", eval_tasks=TASKS, num_train=0, num_eval=0,
                max_input_length=512, max_target_length=16, truncate=True)
  c.train.update(batch_size=32, num_steps=30000, eval_every=1000, checkpoint_every=1000,
                 max_decode_length=16, max_encoder_length=612)
  c.lock()
  return c
