"""Model readiness beyond the registry: each instance's own say (Triton's
``TRITONBACKEND_ModelInstanceReady``; a Triton python model's ``is_ready()``).

A model version is ready when the registry says READY and every instance agrees. An instance
answers in two ways (see :class:`naiad.InferenceBackend`): ``not_ready_reason()``, cheap and asked
on the event loop (an instance process that died is not ready), and, only for instances that
have one, ``readiness_check()``, a blocking check run on a pool thread within
:data:`USER_READINESS_TIMEOUT_S`. Models without a check of their own are answered on the loop
at once, with no thread hop. Concurrent checks of one instance share its in-flight call, as
Triton's do; a check that timed out keeps running and the next ones wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .errors import NaiadError
from .scheduling.worker import DaemonPool

if TYPE_CHECKING:
    from .registry import ModelVersion
    from .scheduling import Instance

log = logging.getLogger(__name__)

#: Triton's ``kUserModelReadinessTimeoutMs``: how long a readiness check waits for an instance
USER_READINESS_TIMEOUT_S = 5.0

_pool = DaemonPool("naiad-readiness")


def failed_message(instance: str) -> str:
    """Triton's answer when a model's own check says no (False, raised, not a bool, too slow)."""
    return f"Model '{instance}' is not ready (user-defined check failed)."


def ready_now(mv: ModelVersion) -> bool | None:
    """The verdict known on the loop without waiting: False when an instance says it cannot
    serve, True when no instance has a check of its own, None when one must run."""
    pending = False
    for instance in mv.instances:
        reason = instance.backend.not_ready_reason()
        if reason:
            _log_not_ready(mv, reason)
            return False
        if instance.backend.readiness_check() is not None:
            pending = True
    return None if pending else True


async def ready(mv: ModelVersion) -> bool:
    """Every instance of ``mv`` is ready (their own checks run off the loop, concurrently)."""
    now = ready_now(mv)
    if now is not None:
        return now
    checked = [i for i in mv.instances if i.backend.readiness_check() is not None]
    reasons = await asyncio.gather(*(_check(i) for i in checked))
    for reason in reasons:
        if reason:
            _log_not_ready(mv, reason)
            return False
    return True


async def _check(instance: Instance) -> str:
    """Why ``instance`` is not ready by its own check ('' when it is)."""
    future = instance.ready_check
    if future is None or future.done():
        future = asyncio.wrap_future(_pool.submit(_run, instance))
        instance.ready_check = future
    try:
        return await asyncio.wait_for(asyncio.shield(future), USER_READINESS_TIMEOUT_S)
    except asyncio.TimeoutError:
        log.error(
            "the readiness check of instance '%s' did not answer within %.0f ms",
            instance.name,
            USER_READINESS_TIMEOUT_S * 1000,
        )
        return failed_message(instance.name)


def _run(instance: Instance) -> str:
    """On a pool thread: the instance's check, as a reason ('' = ready). Never raises."""
    check = instance.backend.readiness_check()
    if check is None:
        return ""
    try:
        check()
    except NaiadError as exc:
        return exc.message
    except Exception as exc:
        log.error("the readiness check of instance '%s' failed", instance.name, exc_info=exc)
        return failed_message(instance.name)
    return ""


def _log_not_ready(mv: ModelVersion, reason: str) -> None:
    # Triton's core logs the backend's reason and answers a plain "not ready"
    log.info("Model '%s' version %d is not ready: %s", mv.name, mv.version, reason)
