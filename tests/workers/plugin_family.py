"""A model family as an operator's package would declare it under ``lifelong.models``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from workers.models import Family
from workers.spec import TaskSpec


class LinearOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bias: bool = True
    scale: float = Field(default=1.0, gt=0)


def build_linear(options: LinearOptions, task: TaskSpec) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(task.sample_elements, task.output_dim))


FAMILY = Family("tiny-linear", LinearOptions, build_linear, description="a linear model")
