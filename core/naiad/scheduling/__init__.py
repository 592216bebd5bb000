"""Schedulers: how requests reach model instances.

Every scheduler has the same small interface (:class:`Scheduler`); the model registry picks one
from the config (default, dynamic batcher, sequence batcher, ensemble) and wraps the instances.
"""

from .base import Scheduler
from .default import DefaultScheduler
from .dynamic import DynamicBatcher
from .factory import build_scheduler
from .instance import Instance
from .sequence import SequenceBatcher

__all__ = [
    "DefaultScheduler",
    "DynamicBatcher",
    "Instance",
    "Scheduler",
    "SequenceBatcher",
    "build_scheduler",
]
