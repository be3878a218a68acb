"""Full fine-tuning: every pre-trained weight is trainable (AdamW, lr 1e-4 by default)."""
from __future__ import annotations

import dataclasses

from prompt_tuning.methods.base import Method, MethodConfig, register
from prompt_tuning.models.core import base_params


@dataclasses.dataclass(frozen=True)
class FullConfig(MethodConfig):
  pass


class Full(Method):
  name = "full"
  Config = FullConfig

  def trainable(self, model, cfg):
    return base_params()


register(Full())
