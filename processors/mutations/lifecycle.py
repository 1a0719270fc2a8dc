"""The proposal lifecycle as a pure ``decide``/``evolve`` pair (docs/mutations.md).

``decide(state, request, ctx)`` judges one :class:`MutationRequest` against the workflow's
state and returns the records to append to ``reflux.mutations`` (one :class:`Mutation` per
transition, an :class:`ImprovementPolicySet`, or one :class:`MutationRequestRefused`) plus the
workflow versions to register. ``evolve(state, record)`` folds one of those records; the
processor rebuilds its state by folding the topic, so what it decides next equals what a fresh
instance would decide.

Lifecycle::

    proposed -> validating -> validated | rejected
        (with a ReplayValidation: validating waits for the A/B replay's ``replay_verdict``)
    validated -> approved (a person, or policy auto) | rejected (a person)
    approved -> applied (a new workflow version registered, canary share of new runs)
    applied -> kept (all new runs) | rolled_back (the previous version again)
    applied -> applied (``reweight``: a new canary weight in (0, 1), the optimizer's bandit
        experiment moving traffic between the two versions; ADR 0037)
        (the canary judge, processors/canary, asks for one or the other; its evidence is
        stored as ``report["canary"]``)

A replay verdict validates only ``better``, or ``no_difference`` with a lower cost
(:func:`~processors.mutations.validation.judge_replay`); anything else rejects.

A request that does not fit (approving a rejected proposal, a second canary on the same
workflow, an optimizer proposal under policy ``off``) is refused with a reason naming the
current status; nothing changes. Every output carries the request's id, so a redelivered
request is recognised and ignored (:meth:`WorkflowMutations.handled`).

I/O is injected through :class:`MutationContext` (the base definition, the node catalog, the
version allocator), as the scheduler's ``DecisionContext`` does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from foundation.tenancy import DEFAULT_TENANT
from processors.mutations.routing import (
    MUTATION_REGISTRANT,
    WorkflowRoute,
    choose_workflow_version,
    route_after,
)
from processors.mutations.validation import (
    DEFAULT_STAGES,
    ReplayValidation,
    Stage,
    ValidationSubject,
    auto_canary_weight,
    candidate_definition,
    judge_replay,
    pending_report,
    replay_spec,
    validate,
)
from schemas.models import (
    ImprovementPolicy,
    ImprovementPolicySet,
    Mutation,
    MutationAction,
    MutationRequest,
    MutationRequestRefused,
    MutationStatus,
    ReplayRequested,
    WorkflowRegistered,
)
from workflows.model import WorkflowDefinition
from workflows.node_catalog import NodeCatalogView

__all__ = [
    "DEFAULT_CANARY_WEIGHT",
    "DEFAULT_POLICY",
    "TRANSITIONS",
    "MutationContext",
    "MutationDecision",
    "MutationsState",
    "OutputRecord",
    "WorkflowMutations",
    "decide",
    "evolve",
    "is_optimizer",
]

DEFAULT_CANARY_WEIGHT: Final = 0.2
DEFAULT_POLICY: Final = ImprovementPolicy.PROPOSE
AUTO_ACTOR: Final = "policy:auto"
PROCESSOR_ACTOR: Final = "processor"

S = MutationStatus
TRANSITIONS: Final[dict[MutationStatus, frozenset[MutationStatus]]] = {
    S.PROPOSED: frozenset({S.VALIDATING, S.REJECTED}),
    S.VALIDATING: frozenset({S.VALIDATED, S.REJECTED}),
    S.VALIDATED: frozenset({S.APPROVED, S.REJECTED}),
    S.APPROVED: frozenset({S.APPLIED}),
    S.APPLIED: frozenset({S.KEPT, S.ROLLED_BACK}),
}
"""Legal transitions; every other status is final."""

# The status a person's request moves a proposal to.
_TARGET: Final = {
    MutationAction.APPROVE: S.APPROVED,
    MutationAction.REJECT: S.REJECTED,
    MutationAction.ROLLBACK: S.ROLLED_BACK,
    MutationAction.KEEP: S.KEPT,
}

OutputRecord = Mutation | ImprovementPolicySet | MutationRequestRefused


def is_optimizer(actor: str) -> bool:
    return actor == "optimizer" or actor.startswith("optimizer:")


@dataclass
class WorkflowMutations:
    """One workflow's proposals (latest record of each), policy and handled request ids."""

    policy: ImprovementPolicy = DEFAULT_POLICY
    proposals: dict[str, Mutation] = field(default_factory=dict)
    handled: set[str] = field(default_factory=set)
    route: WorkflowRoute | None = None
    """The split the latest applied/kept/rolled_back record set (what the scheduler applies)."""

    def record(self, mutation: Mutation) -> None:
        self.proposals[mutation.mutation_id] = mutation
        if mutation.request_id is not None:
            self.handled.add(mutation.request_id)
        route = route_after(mutation)
        if route is not None:
            self.route = route

    def canary(self) -> Mutation | None:
        """The proposal currently applied (routing a share of runs), if any."""
        return next((m for m in self.proposals.values() if m.status is S.APPLIED), None)


@dataclass
class MutationsState:
    workflows: dict[str, WorkflowMutations] = field(default_factory=dict)

    def of(self, workflow_id: str) -> WorkflowMutations:
        return self.workflows.setdefault(workflow_id, WorkflowMutations())


def evolve(state: MutationsState, record: object) -> None:
    """Folds one record of ``reflux.mutations`` into ``state`` (requests change nothing)."""
    if isinstance(record, Mutation):
        state.of(record.workflow_id).record(record)
    elif isinstance(record, ImprovementPolicySet):
        workflow = state.of(record.workflow_id)
        workflow.policy = record.policy
        if record.request_id is not None:
            workflow.handled.add(record.request_id)
    elif isinstance(record, MutationRequestRefused):
        state.of(record.workflow_id).handled.add(record.request_id)


def _uuid() -> str:
    return str(uuid.uuid4())


def _nothing_registered(workflow_id: str) -> Mapping[int, str | None]:
    return {}


def _default_tenant(workflow_id: str, version: int) -> str:
    return DEFAULT_TENANT


@dataclass(frozen=True)
class MutationContext:
    now: datetime
    base_definition: Callable[[str, int], WorkflowDefinition | None]
    """``(workflow id, version) -> definition`` (``None``: not registered)."""
    allocate_version: Callable[[str], int]
    """A new, never issued version number of the workflow (shared with the API's registrations)."""
    registered: Callable[[str], Mapping[int, str | None]] = _nothing_registered
    """``workflow id -> {version: registered_by}``: which version new runs get before an apply
    (the canary's other side, and what a rollback restores)."""
    tenant_of: Callable[[str, int], str] = _default_tenant
    """``(workflow id, version) -> tenant``: an applied proposal's version is registered in its
    base version's tenant (ADR 0051)."""
    node_catalog: NodeCatalogView | None = None
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    new_id: Callable[[], str] = _uuid
    replay: ReplayValidation | None = None
    """Replay recent runs before validating (ADR 0030); ``None``: the static checks decide."""


@dataclass
class MutationDecision:
    records: list[OutputRecord] = field(default_factory=list)
    registrations: list[WorkflowRegistered] = field(default_factory=list)
    """Workflow versions to publish on ``workflows`` before ``records``."""
    replays: list[ReplayRequested] = field(default_factory=list)
    """A/B replays to request on ``replays`` after ``records``."""

    @property
    def refused(self) -> MutationRequestRefused | None:
        return next((r for r in self.records if isinstance(r, MutationRequestRefused)), None)


class _Writer:
    def __init__(
        self, state: MutationsState, request: MutationRequest, ctx: MutationContext
    ) -> None:
        self.workflow = state.of(request.workflow_id)
        self.request = request
        self.ctx = ctx
        self.decision = MutationDecision()

    def refuse(self, reason: str, current: MutationStatus | None = None) -> MutationDecision:
        r = self.request
        self.decision.records.append(
            MutationRequestRefused(
                event_id=self.ctx.new_id(),
                occurred_at=self.ctx.now,
                workflow_id=r.workflow_id,
                mutation_id=r.mutation_id,
                request_id=r.event_id,
                action=r.action,
                actor=r.actor,
                reason=reason,
                current_status=None if current is None else current.value,
            )
        )
        self.workflow.handled.add(r.event_id)
        return self.decision

    def transition(self, current: Mutation, status: MutationStatus, **changes: object) -> Mutation:
        record = current.model_copy(
            update={
                "event_id": self.ctx.new_id(),
                "occurred_at": self.ctx.now,
                "status": status,
                "request_id": self.request.event_id,
                "actor": changes.pop("actor", self.request.actor),
                "reason": changes.pop("reason", None),
                **changes,
            }
        )
        self.decision.records.append(record)
        self.workflow.record(record)
        return record


def decide(
    state: MutationsState, request: MutationRequest, ctx: MutationContext
) -> MutationDecision:
    """What ``request`` does; mutates ``state`` as if the returned records were folded."""
    w = _Writer(state, request, ctx)
    if request.event_id in w.workflow.handled:
        return MutationDecision()  # redelivered: answered already
    if request.action is MutationAction.SET_POLICY:
        if request.policy is None:
            return w.refuse("Expected a policy (off, propose or auto), but got none")
        record = ImprovementPolicySet(
            event_id=ctx.new_id(),
            occurred_at=ctx.now,
            workflow_id=request.workflow_id,
            policy=request.policy,
            actor=request.actor,
            request_id=request.event_id,
        )
        w.decision.records.append(record)
        w.workflow.policy = request.policy
        w.workflow.handled.add(request.event_id)
        return w.decision
    if request.mutation_id is None:
        return w.refuse(f"Expected a mutation_id for {request.action.value}, but got none")
    if request.action is MutationAction.PROPOSE:
        return _propose(w)
    current = w.workflow.proposals.get(request.mutation_id)
    if current is None:
        return w.refuse(
            f"Expected mutation {request.mutation_id!r} of workflow {request.workflow_id!r}, "
            "but there is none"
        )
    if request.action is MutationAction.REWEIGHT:
        return _reweight(w, current)
    target = _TARGET.get(request.action, S.VALIDATED)
    if target not in TRANSITIONS.get(current.status, frozenset()):
        return w.refuse(
            f"Cannot {request.action.value} mutation {current.mutation_id!r}: it is "
            f"{current.status.value}",
            current.status,
        )
    if request.action is MutationAction.REPLAY_VERDICT:
        return _replay_verdict(w, current)
    if request.action is MutationAction.APPROVE:
        return _approve(w, current, request.canary_weight, request.actor)
    if target in (S.KEPT, S.ROLLED_BACK) and isinstance(request.evidence, dict):
        # What ended the canary lands on the record: the canary judge's statistics and the
        # final effect (ADR 0033), next to the validation report and the replay's.
        report = {**(current.report or {}), "canary": request.evidence}
        ended = w.transition(current, target, reason=request.reason, report=report)
        return _next_waiting(w, ended)
    ended = w.transition(current, target, reason=request.reason)
    return _next_waiting(w, ended) if target in (S.KEPT, S.ROLLED_BACK) else w.decision


def _next_waiting(w: _Writer, ended: Mutation) -> MutationDecision:
    """Policy ``auto``, the canary slot free again: the newest proposal validated on the version
    new runs get now (it waited for the slot) is approved and applied. A proposal made on
    another version (the ended canary was kept: new runs get its version) stays validated for a
    person; its proposer proposes again on the new version (ADR 0040)."""
    if w.workflow.policy is not ImprovementPolicy.AUTO or w.workflow.canary() is not None:
        return w.decision
    serving = ended.applied_version if ended.status is S.KEPT else ended.previous_version
    waiting = [
        m
        for m in w.workflow.proposals.values()
        if m.status is S.VALIDATED and m.base_version == serving
    ]
    if serving is None or not waiting:
        return w.decision
    newest = max(waiting, key=lambda m: (m.occurred_at, m.mutation_id))
    return _approve(w, newest, auto_canary_weight(newest.report, DEFAULT_CANARY_WEIGHT), AUTO_ACTOR)


def _propose(w: _Writer) -> MutationDecision:
    request, ctx = w.request, w.ctx
    assert request.mutation_id is not None
    if request.mutation_id in w.workflow.proposals:
        existing = w.workflow.proposals[request.mutation_id]
        return w.refuse(
            f"Expected a new mutation id, but {request.mutation_id!r} exists "
            f"({existing.status.value})",
            existing.status,
        )
    if is_optimizer(request.actor) and w.workflow.policy is ImprovementPolicy.OFF:
        return w.refuse(
            f"Workflow {request.workflow_id!r} has improvement policy 'off': "
            "proposals from the optimizer are refused"
        )
    if request.base_version is None:
        return w.refuse("Expected a base_version to apply the changes to, but got none")
    proposed = Mutation(
        event_id=ctx.new_id(),
        occurred_at=ctx.now,
        mutation_id=request.mutation_id,
        workflow_id=request.workflow_id,
        base_version=request.base_version,
        status=S.PROPOSED,
        changes=list(request.changes),
        rationale=request.rationale or "",
        proposed_by=request.actor,
        evidence=request.evidence,
        actor=request.actor,
        request_id=request.event_id,
    )
    w.decision.records.append(proposed)
    w.workflow.record(proposed)
    base = ctx.base_definition(request.workflow_id, request.base_version)
    subject = ValidationSubject(
        workflow_id=request.workflow_id,
        base_version=request.base_version,
        changes=request.changes,
        base=base,
        node_catalog=ctx.node_catalog,
    )
    report = validate(subject, ctx.stages)
    if report.passed and ctx.replay is not None and subject.candidate is not None:
        # The verdict arrives later as a replay_verdict request (the runner's answer): the
        # proposal waits in validating, the processor stays free for other requests.
        # Shadow prefixes and schemas are built from it: lowercase hex, no dashes, short.
        replay_id = ctx.new_id().replace("-", "")[:24]
        w.transition(
            proposed,
            S.VALIDATING,
            actor=PROCESSOR_ACTOR,
            report=pending_report(report, replay_id),
            reason=f"replaying recent runs of version {request.base_version} (replay {replay_id})",
        )
        w.decision.replays.append(
            ReplayRequested(
                event_id=ctx.new_id(),
                occurred_at=ctx.now,
                replay_id=replay_id,
                workflow_id=request.workflow_id,
                spec=replay_spec(
                    request.workflow_id,
                    request.base_version,
                    request.mutation_id,
                    subject.candidate,
                    ctx.replay,
                ),
                requested_by="mutation-processor",
                mutation_id=request.mutation_id,
            )
        )
        return w.decision
    validating = w.transition(proposed, S.VALIDATING, actor=PROCESSOR_ACTOR)
    if not report.passed:
        failed = [c.name for c in report.checks if not c.passed]
        w.transition(
            validating,
            S.REJECTED,
            actor=PROCESSOR_ACTOR,
            report=report.to_json(),
            reason="validation failed: " + ", ".join(failed),
        )
        return w.decision
    return _validated(w, validating, report.to_json(), None)


def _validated(
    w: _Writer, validating: Mutation, report: dict[str, object], reason: str | None
) -> MutationDecision:
    """validating -> validated, then approved and applied under policy ``auto``."""
    auto = w.workflow.policy is ImprovementPolicy.AUTO
    canary = w.workflow.canary()
    # Policy auto with a canary running: the proposal waits, validated, for a person (or the
    # optimizer proposing again) once the canary is kept or rolled back.
    waits = (
        f"auto-approval skipped: mutation {canary.mutation_id!r} is applied (one canary at a time)"
        if auto and canary is not None
        else None
    )
    reasons = "; ".join(r for r in (reason, waits) if r)
    validated = w.transition(
        validating,
        S.VALIDATED,
        actor=PROCESSOR_ACTOR,
        report=report,
        reason=reasons or None,
    )
    if auto and canary is None:
        _approve(w, validated, auto_canary_weight(report, DEFAULT_CANARY_WEIGHT), AUTO_ACTOR)
    return w.decision


def _replay_verdict(w: _Writer, current: Mutation) -> MutationDecision:
    """The runner's answer for a validating proposal: validated or rejected, report attached."""
    outcome = w.request.evidence if isinstance(w.request.evidence, dict) else {}
    pending = (current.report or {}).get("pending") or []
    expected = {p.get("replay_id") for p in pending if isinstance(p, dict)}
    if outcome.get("replay_id") not in expected:
        return w.refuse(
            f"Expected the verdict of replay {sorted(map(str, expected))} for mutation "
            f"{current.mutation_id!r}, but got replay {outcome.get('replay_id')!r}",
            current.status,
        )
    validated, report, reason = judge_replay(current.report, outcome)
    if not validated:
        w.transition(current, S.REJECTED, actor=PROCESSOR_ACTOR, report=report, reason=reason)
        return w.decision
    return _validated(w, current, report, reason)


def _approve(
    w: _Writer, current: Mutation, canary_weight: float | None, actor: str
) -> MutationDecision:
    weight = DEFAULT_CANARY_WEIGHT if canary_weight is None else canary_weight
    if not 0.0 < weight <= 1.0:
        return w.refuse(f"Expected a canary_weight in (0, 1], but got {weight}", current.status)
    canary = w.workflow.canary()
    if canary is not None:
        return w.refuse(
            f"Workflow {current.workflow_id!r} already routes a share of runs to mutation "
            f"{canary.mutation_id!r} (applied); keep or roll it back first",
            current.status,
        )
    base = w.ctx.base_definition(current.workflow_id, current.base_version)
    if base is None:
        return w.refuse(
            f"Expected version {current.base_version} of {current.workflow_id!r} to be "
            "registered, but it is not",
            current.status,
        )
    candidate = candidate_definition(base, current.changes)  # validated: applies
    # What new runs get now (one version: a second canary is refused above); a stale route or
    # no route means the latest version registered by hand, as for the scheduler.
    previous = choose_workflow_version(
        current.workflow_id, "", w.workflow.route, w.ctx.registered(current.workflow_id)
    )
    approved = w.transition(current, S.APPROVED, actor=actor, canary_weight=weight)
    version = w.ctx.allocate_version(current.workflow_id)
    w.decision.registrations.append(
        WorkflowRegistered(
            event_id=w.ctx.new_id(),
            occurred_at=w.ctx.now,
            workflow_id=current.workflow_id,
            version=version,
            definition=candidate.to_json_dict(),
            registered_at=w.ctx.now,
            registered_by=f"{MUTATION_REGISTRANT}{current.mutation_id}",
            tenant=w.ctx.tenant_of(current.workflow_id, current.base_version),
        )
    )
    w.transition(
        approved,
        S.APPLIED,
        actor=PROCESSOR_ACTOR,
        applied_version=version,
        canary_weight=weight,
        previous_version=previous or current.base_version,
    )
    return w.decision


def _reweight(w: _Writer, current: Mutation) -> MutationDecision:
    """applied -> applied with a new canary weight (the optimizer's two-arm bandit experiment,
    ADR 0037). The weight must stay strictly inside (0, 1): both versions keep some traffic, so
    both stay measured; ending the experiment is a ``keep`` or a ``rollback``."""
    weight = w.request.canary_weight
    if current.status is not S.APPLIED:
        return w.refuse(
            f"Cannot reweight mutation {current.mutation_id!r}: it is {current.status.value} "
            "(only an applied proposal routes a share of runs)",
            current.status,
        )
    if weight is None or not 0.0 < weight < 1.0:
        return w.refuse(
            f"Expected a canary_weight in (0, 1) to reweight, but got {weight}", current.status
        )
    if is_optimizer(w.request.actor) and w.workflow.policy is ImprovementPolicy.OFF:
        # exploration never touches a workflow whose policy is off (a person may still move
        # the weight, keep or roll back)
        return w.refuse(
            f"Workflow {current.workflow_id!r} has improvement policy 'off': the optimizer may "
            "not move its traffic",
            current.status,
        )
    reason = w.request.reason or f"canary weight {current.canary_weight} -> {weight}"
    w.transition(current, S.APPLIED, reason=reason, canary_weight=weight)
    return w.decision
