"""LoRA vs prompt tuning vs full fine-tuning on WMT14 en-de (BLEU) and MLSum (ROUGE-L).

`get_sweep()` lists the runs: prompt lengths 50..600, LoRA ranks 4..128, and full tuning, for
each task family. Run them all with `prompt-tuning sweep --config configs/peft_comparison.py`
(each run writes to output_dir/<run name>). MLSum needs $MLSUM_DIR (see README).
"""
from prompt_tuning.default_config import get_config as base

PROMPT_LENGTHS = (50, 100, 200, 400, 600)
LORA_RANKS = (4, 8, 16, 32, 64, 128)
TASKS = {"wmt14_ende": dict(task="wmt14_ende", max_input_length=256, max_target_length=256),
         "mlsum": dict(task="mlsum", eval_tasks=("mlsum_de", "mlsum_es", "mlsum_fr",
                                                 "cnn_dailymail_en"),
                       max_input_length=512, max_target_length=128)}


def get_config():
  c = base()
  c.unlock()
  c.output_dir = "runs/peft_comparison"
  # A paper setup: needs pretrained weights (a t5-v1_1-base checkpoint in model.hf_checkpoint);
  # --config.model.preset=t5-v1_1-base --config.model.allow_random_init=True runs random ones.
  c.model.update(hf_checkpoint="", allow_random_init=False, dtype="bfloat16",
                 frozen_dtype="bfloat16")
  c.method.prompt.update(init="vocab", class_labels=())
  c.data.update(num_train=0, num_eval=0, truncate=True, **TASKS["wmt14_ende"])
  c.train.update(batch_size=32, num_steps=20000, eval_every=2000, checkpoint_every=2000,
                 max_decode_length=256, max_encoder_length=1200)
  c.lock()
  return c


def get_sweep():
  runs = []
  for tname, data in TASKS.items():
    d = {f"data.{k}": v for k, v in data.items()}
    for n in PROMPT_LENGTHS:
      runs.append(dict(name=f"{tname}_prompt{n}", **d, **{"method.name": "prompt",
                                                          "method.prompt.length": n}))
    for r in LORA_RANKS:
      runs.append(dict(name=f"{tname}_lora{r}", **d, **{
          "method.name": "lora", "method.lora.rank": r, "method.lora.alpha": 2.0 * r}))
    runs.append(dict(name=f"{tname}_full", **d, **{"method.name": "full"}))
  return runs
