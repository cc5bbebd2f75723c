"""The stage contract's building blocks: config bases every stage section derives from.

Stages import these (and the errors in thresher.schemas.errors), never thresher.flows: the
layers go flows > stages > kernels > schemas, and a Spark Python worker running a stage's
executor code imports nothing of the orchestration.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageConfig(Strict):
    """Base of every stage's config section."""

    # Filled from the run's seed unless set per stage: all randomness comes from here.
    seed: int | None = None
