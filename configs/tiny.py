"""The embedded default: prompt tuning a tiny T5 on the synthetic sentiment task (CPU, <2 min).

  prompt-tuning train --config configs/tiny.py
"""
from prompt_tuning.default_config import get_config  # noqa: F401
