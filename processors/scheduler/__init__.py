"""The step scheduler's pure core: run state, ``evolve`` (appliers), ``decide`` (processor).

The faust/Kafka runtime (``runtime*.py``, ``app.py``) wraps this core; nothing here does I/O.
See :mod:`processors.scheduler.decide` for the runtime contract (what to do with a Decision).
"""

from processors.scheduler.cache import cache_key, params_digest
from processors.scheduler.decide import (
    QUEUE_TIMEOUT,
    TIMEOUT_GRACE_MS,
    CacheHit,
    CacheLookup,
    CacheMiss,
    CacheWrite,
    Decision,
    DecisionContext,
    RegisteredWorkflow,
    SchedulerInput,
    decide,
    default_invoke_topic,
    default_resolve_node_version,
    invocation_for,
    pending_cache_lookups,
)
from processors.scheduler.evolve import (
    RUN_EVENT_TYPES,
    EvolveError,
    RunEvent,
    evolve,
    fold,
)
from processors.scheduler.state import RunState, RunStatus, StepState, StepStatus, Timer
from processors.scheduler.timers import due_timers, fire_timer_command, live_timers, next_due

__all__ = [
    "QUEUE_TIMEOUT",
    "RUN_EVENT_TYPES",
    "TIMEOUT_GRACE_MS",
    "CacheHit",
    "CacheLookup",
    "CacheMiss",
    "CacheWrite",
    "Decision",
    "DecisionContext",
    "EvolveError",
    "RegisteredWorkflow",
    "RunEvent",
    "RunState",
    "RunStatus",
    "SchedulerInput",
    "StepState",
    "StepStatus",
    "Timer",
    "cache_key",
    "decide",
    "default_invoke_topic",
    "default_resolve_node_version",
    "due_timers",
    "evolve",
    "fire_timer_command",
    "fold",
    "invocation_for",
    "live_timers",
    "next_due",
    "params_digest",
    "pending_cache_lookups",
]
