"""The text the historian embeds for a diagnosis and for a proposal (pure).

A sentence-embedding model compares meanings, so the text says in words what the record is
about: the kind, the workflow, step and node, the error class and message, a summary of the
evidence and the critic's explanation. Identifiers are split into words (``fetch_price`` ->
``fetch price``, ``http.request`` -> ``http request``) so the tokenizer sees words it knows;
run ids and other opaque values are left out (they carry no meaning and would only add noise).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from schemas.models import Diagnosis

__all__ = [
    "MAX_CONTEXT_CHARS",
    "diagnosis_context",
    "diagnosis_id_of",
    "evidence_summary",
    "proposal_context",
    "strategy_of",
    "words",
]

MAX_CONTEXT_CHARS: Final = 2000
"""Longer texts are cut: an average of word vectors gains nothing from a longer tail."""

_SEPARATORS: Final = re.compile(r"[_\-./@:=]+")
_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPACES: Final = re.compile(r"\s+")
# Opaque values: UUIDs, long hex digests, ids with many digits.
_OPAQUE: Final = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$|^[0-9a-f]{16,}$", re.I
)
_MESSAGE_KEYS: Final = ("error_message", "message", "messages", "error", "errors", "sample_error")
# Run lists and digests name no meaning; a detector's own settings (the critic's ``detector``
# block: delta, grace period...) describe the detector, not the incident.
_SKIPPED_KEYS: Final = frozenset(
    {
        "example_run_ids",
        "run_ids",
        "runs",
        "trace_ids",
        "inputs_hash",
        "inputs_hashes",
        "detector",
        "tuning",
    }
)
_MAX_ITEMS: Final = 24
_MAX_STRING: Final = 200


def words(identifier: str) -> str:
    """``'fetch_price'`` -> ``'fetch price'``, ``'HTTPTimeoutError'`` -> ``'HTTPTimeout Error'``."""
    text = _CAMEL.sub(" ", identifier)
    return _SPACES.sub(" ", _SEPARATORS.sub(" ", text)).strip()


def _number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.3g}"


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return _number(float(value))
    if isinstance(value, str):
        text = value.strip()
        if not text or _OPAQUE.match(text):
            return None
        return text[:_MAX_STRING]
    return None


def _flatten(
    value: Any, prefix: str, out: list[tuple[str, str]], depth: int, skip: frozenset[str]
) -> None:
    if len(out) >= _MAX_ITEMS:
        return
    if isinstance(value, Mapping):
        if depth >= 2:
            return
        for key in sorted(value):
            if key in skip:
                continue
            _flatten(value[key], f"{prefix} {key}".strip(), out, depth + 1, skip)
        return
    if isinstance(value, list):
        texts = [t for t in (_scalar(item) for item in value[:5]) if t is not None]
        if texts and prefix:
            out.append((prefix, ", ".join(texts)))
        return
    text = _scalar(value)
    if text is not None and prefix:
        out.append((prefix, text))


def evidence_summary(evidence: Any, *, skip: Iterable[str] = ()) -> str:
    """``'key value; key value'`` over the scalar leaves of the evidence (two levels deep, at most
    24, opaque ids, run lists and the ``skip`` keys left out); ``evidence`` is JSON text or
    already parsed."""
    parsed = evidence
    if isinstance(evidence, str):
        try:
            parsed = json.loads(evidence) if evidence.strip() else {}
        except json.JSONDecodeError:
            return evidence[:_MAX_STRING]
    items: list[tuple[str, str]] = []
    _flatten(parsed, "", items, 0, _SKIPPED_KEYS | frozenset(skip))
    return "; ".join(f"{words(key)} {text}" for key, text in items)


def _error_messages(evidence: Any) -> list[str]:
    if isinstance(evidence, str):
        try:
            evidence = json.loads(evidence) if evidence.strip() else {}
        except json.JSONDecodeError:
            return []
    if not isinstance(evidence, Mapping):
        return []
    found: list[str] = []
    for key in _MESSAGE_KEYS:
        value = evidence.get(key)
        candidates = value if isinstance(value, list) else [value]
        for candidate in candidates[:3]:
            text = candidate.get("message") if isinstance(candidate, Mapping) else candidate
            if isinstance(text, str) and text.strip():
                found.append(text.strip()[:_MAX_STRING])
    return found


def _sentences(parts: Iterable[str]) -> str:
    text = " ".join(p.strip() for p in parts if p and p.strip())
    return _SPACES.sub(" ", text)[:MAX_CONTEXT_CHARS]


def diagnosis_context(diagnosis: Diagnosis) -> str:
    """The text embedded for ``diagnosis``: what, where, which error, evidence, explanation."""
    d = diagnosis
    where = []
    if d.workflow_id:
        where.append(f"workflow {words(d.workflow_id)}")
    if d.step_id:
        where.append(f"step {words(d.step_id)}")
    if d.node:
        node = f"node {words(d.node)}"
        where.append(node + (f" version {d.node_version}" if d.node_version else ""))
    parts = [
        f"{words(d.kind.value)} ({d.severity.value}) found by {words(d.detector)}.",
        ("In " + ", ".join(where) + ".") if where else f"On {words(d.subject)}.",
    ]
    if d.error_class:
        parts.append(f"Error class {words(d.error_class)}.")
    messages = _error_messages(d.evidence)
    if messages:
        parts.append("Error message: " + " | ".join(messages) + ".")
    metrics = "; ".join(
        f"{words(k)} {_number(v)}" for k, v in sorted(d.metrics.items())[:_MAX_ITEMS]
    )
    if metrics:
        parts.append(f"Metrics: {metrics}.")
    # The messages are said above already.
    summary = evidence_summary(d.evidence, skip=_MESSAGE_KEYS)
    if summary:
        parts.append(f"Evidence: {summary}.")
    parts.append(d.explanation)
    return _sentences(parts)


def strategy_of(author: str | None, evidence: Any) -> str | None:
    """The optimizer's strategy: ``evidence.strategy``, else the tail of ``optimizer:<name>``."""
    if isinstance(evidence, Mapping):
        strategy = evidence.get("strategy")
        if isinstance(strategy, str) and strategy:
            return strategy
    if author and author.startswith("optimizer:"):
        return author.split(":", 1)[1] or None
    return None


def diagnosis_id_of(evidence: Any) -> str | None:
    """The diagnosis a proposal answers: ``evidence.diagnosis_id`` (the optimizer's contract)."""
    if isinstance(evidence, Mapping):
        value = evidence.get("diagnosis_id")
        if isinstance(value, str) and value:
            return value
    return None


def proposal_context(
    workflow_id: str,
    author: str,
    rationale: str,
    changes: Iterable[Mapping[str, Any]],
    evidence: Any,
) -> str:
    """The text embedded for a proposal: the strategy, the rationale and what the diff does."""
    strategy = strategy_of(author, evidence)
    diff = []
    for change in list(changes)[:_MAX_ITEMS]:
        step = words(str(change.get("step_id", "")))
        data = change.get("data")
        detail = evidence_summary(data) if isinstance(data, Mapping) else ""
        what = f"{words(str(change.get('type', '')))} {step}"
        diff.append(f"{what} ({detail})" if detail else what)
    parts = [
        f"Fix {words(strategy)}" if strategy else "Change",
        f"of workflow {words(workflow_id)}.",
        rationale,
        ("Changes: " + "; ".join(diff) + ".") if diff else "",
    ]
    return _sentences(parts)
