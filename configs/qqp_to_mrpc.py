"""Domain shift (Lester et al. 2021, Table 2): prompt-tune on QQP, evaluate zero-shot on MRPC
(accuracy and F1 on both). `--config.data.domain_shift=mrpc_to_qqp` runs the reverse pair."""
from prompt_tuning.default_config import get_config as base


def get_config():
  c = base()
  c.unlock()
  c.output_dir = "runs/qqp_to_mrpc"
  # A paper setup: needs pretrained weights (a t5-v1_1-base checkpoint in model.hf_checkpoint);
  # --config.model.preset=t5-v1_1-base --config.model.allow_random_init=True runs random ones.
  c.model.update(hf_checkpoint="", allow_random_init=False, dtype="bfloat16",
                 frozen_dtype="bfloat16")
  c.method.name = "prompt"
  c.method.prompt.update(length=100, init="class_labels",
                         class_labels=("equivalent", "not_equivalent"))
  c.data.update(domain_shift="qqp_to_mrpc", num_train=0, num_eval=0, max_input_length=256,
                max_target_length=8, truncate=True)
  c.train.update(batch_size=32, num_steps=30000, eval_every=1000, checkpoint_every=1000,
                 max_decode_length=8)
  c.lock()
  return c
