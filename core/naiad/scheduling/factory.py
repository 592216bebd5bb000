"""Pick the scheduler a model config asks for."""

from __future__ import annotations

from ..signature import Signature
from ..stats import ModelStats
from .base import Scheduler
from .default import DefaultScheduler
from .dynamic import DynamicBatcher
from .instance import Instance
from .sequence import SequenceBatcher


def build_scheduler(
    config, instances: list[Instance], stats: ModelStats, signature: Signature
) -> Scheduler:
    """The scheduler for one model version: Triton's ``scheduling_choice``.

    - ``dynamic_batching`` on a model with ``max_batch_size > 0``: :class:`DynamicBatcher`;
    - ``sequence_batching``: :class:`SequenceBatcher` (reads ``initial_state`` files, so this
      runs off the event loop, as all of model loading does);
    - otherwise the default scheduler (each request alone on the next free instance).
    """
    choice = config.WhichOneof("scheduling_choice")
    if choice == "dynamic_batching" and config.max_batch_size > 0:
        return DynamicBatcher(instances, stats, signature, config.dynamic_batching)
    if choice == "sequence_batching" and instances:
        model_path = instances[0].backend.model_path
        return SequenceBatcher(instances, stats, signature, config, model_path)
    return DefaultScheduler(instances, stats)
