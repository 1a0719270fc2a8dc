"""Alert rule configuration (``REFLUX_ALERTS_*``) and the default rules built from it.

The defaults follow the seed's "SLO violations (latency > p99, error_rate > 1%)" and "cost budget
exceeded". Per-subject objectives are JSON maps, e.g.
``REFLUX_ALERTS_LATENCY_P99_MS_BY_NODE='{"llm.chat": 8000}'``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from processors.alerts.rules import AlertRule
from schemas.models import AlertKind

__all__ = [
    "COST_BUDGET_RULE",
    "ERROR_RATE_RULE",
    "LATENCY_RULE",
    "AlertSettings",
    "rules_from_settings",
]

LATENCY_RULE: Final = "node-latency-p99"
ERROR_RATE_RULE: Final = "node-error-rate"
COST_BUDGET_RULE: Final = "workflow-cost-budget"


class AlertSettings(BaseSettings):
    """Every field maps to ``REFLUX_ALERTS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="REFLUX_ALERTS_", frozen=True, extra="ignore")

    interval_s: float = Field(default=15.0, gt=0)
    """Seconds between evaluations."""

    latency_p99_ms: float = Field(default=1000.0, gt=0)
    """Default p99 latency objective of every node."""
    latency_p99_ms_by_node: dict[str, float] = Field(default_factory=dict)
    latency_window_s: int = Field(default=300, gt=0)
    latency_min_samples: int = Field(default=20, ge=0)

    error_rate: float = Field(default=0.01, gt=0, le=1)
    """Default error-rate objective (failures / attempts) of every node."""
    error_rate_by_node: dict[str, float] = Field(default_factory=dict)
    error_rate_window_s: int = Field(default=300, gt=0)
    error_rate_min_samples: int = Field(default=20, ge=0)

    cost_budget_tokens: float = Field(default=1_000_000, gt=0)
    """Default token budget of every workflow per ``cost_window_s``."""
    cost_budget_tokens_by_workflow: dict[str, float] = Field(default_factory=dict)
    cost_window_s: int = Field(default=3600, gt=0)

    clear_ratio: float = Field(default=0.9, gt=0, le=1)
    """A firing alert resolves at ``threshold * clear_ratio`` or below."""


def rules_from_settings(settings: AlertSettings | None = None) -> list[AlertRule]:
    s = settings or AlertSettings()
    return [
        AlertRule(
            rule_id=LATENCY_RULE,
            kind=AlertKind.LATENCY_P99,
            threshold=s.latency_p99_ms,
            overrides=s.latency_p99_ms_by_node,
            window=timedelta(seconds=s.latency_window_s),
            min_samples=s.latency_min_samples,
            clear_ratio=s.clear_ratio,
        ),
        AlertRule(
            rule_id=ERROR_RATE_RULE,
            kind=AlertKind.ERROR_RATE,
            threshold=s.error_rate,
            overrides=s.error_rate_by_node,
            window=timedelta(seconds=s.error_rate_window_s),
            min_samples=s.error_rate_min_samples,
            clear_ratio=s.clear_ratio,
        ),
        AlertRule(
            rule_id=COST_BUDGET_RULE,
            kind=AlertKind.COST_BUDGET,
            threshold=s.cost_budget_tokens,
            overrides=s.cost_budget_tokens_by_workflow,
            window=timedelta(seconds=s.cost_window_s),
            clear_ratio=s.clear_ratio,
        ),
    ]
