"""Flax NNX language models: one core (core.py), families as configs + HF names."""
from prompt_tuning.models.core import (DecoderOnlyLM, EncoderDecoderLM, LanguageModel, ModelConfig,
                                       greedy_decode, init_random)
from prompt_tuning.models.families import (FAMILIES, PRESETS, build, checkpoint_config, load,
                                           preset, save, truncate, truncated)
from prompt_tuning.models.hf import CheckpointError
