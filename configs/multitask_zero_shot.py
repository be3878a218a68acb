"""Multi-task prompt tuning with or without instruction text, zero-shot on held-out tasks
(Albalak et al. 2022 style). `prompt-tuning sweep --config configs/multitask_zero_shot.py` trains
both variants; held-out classification is scored by accuracy, summarisation by ROUGE-L."""
from prompt_tuning.default_config import get_config as base

TRAIN = "super_glue_boolq+super_glue_cb+super_glue_copa+super_glue_multirc+glue_qqp"
HELD_OUT = ("super_glue_rte", "super_glue_wic", "glue_mrpc", "cnn_dailymail_en")


def get_config():
  c = base()
  c.unlock()
  c.output_dir = "runs/multitask_zero_shot"
  # A paper setup: needs pretrained weights (a t5-v1_1-base checkpoint in model.hf_checkpoint);
  # --config.model.preset=t5-v1_1-base --config.model.allow_random_init=True runs random ones.
  c.model.update(hf_checkpoint="", allow_random_init=False, dtype="bfloat16",
                 frozen_dtype="bfloat16")
  c.method.name = "prompt"
  c.method.prompt.update(length=100, init="vocab", class_labels=())
  c.data.update(task=TRAIN, eval_tasks=HELD_OUT, num_train=50000, num_eval=1000,
                max_input_length=512, max_target_length=64, truncate=True)
  c.train.update(batch_size=32, num_steps=20000, eval_every=2000, checkpoint_every=2000,
                 max_decode_length=64)
  c.lock()
  return c


def get_sweep():
  return [dict(name="with_instructions", **{"data.instructions": True}),
          dict(name="without_instructions", **{"data.instructions": False})]
