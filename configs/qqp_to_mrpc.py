"""Domain shift (Lester et al. 2021, Table 2) as prompt-tuning's glue_transfer: prompt-tune on QQP
in QQP's (taskless) format, evaluate zero-shot on MRPC's validation set in MRPC's format, the
predicted "duplicate" mapped to "equivalent" before scoring (accuracy and F1 on both).
`--config.data.domain_shift=taskless_mrpc_to_qqp` runs the reverse pair. Optimizer and z-loss:
Lester et al.'s (optim.LESTER)."""
from prompt_tuning import optim
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
                         class_labels=("duplicate", "not_duplicate"))
  c.optimizer.update(**optim.LESTER)
  c.train.z_loss = optim.LESTER_Z_LOSS
  c.data.update(domain_shift="taskless_qqp_to_mrpc", num_train=0, num_eval=0, max_input_length=256,
                max_target_length=8, truncate=True)
  c.train.update(batch_size=32, num_steps=30000, eval_every=1000, checkpoint_every=1000,
                 max_decode_length=8)
  c.lock()
  return c
