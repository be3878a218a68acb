"""Flax NNX models."""
from prompt_tuning.models.t5 import PRESETS as T5_PRESETS, T5, T5Config, greedy_decode
from prompt_tuning.models.convert import load_t5
