"""Which steps of a workflow really depend on each other (pure; used by critic and optimizer).

A step's ``needs`` say *when* it may start; its templates say *what it reads*. The two differ when
a user chained steps one after the other although they read nothing from each other ("call A,
then B, then C"): such steps could run at the same time. This module tells them apart, and says
which orderings must stay whatever the templates say (docs/learning.md, "Optimizer"; ADR 0032):

- **data**: ``X`` reads ``steps.P...`` in its params (meta params included) or its ``when``;
- **side effects**: ``P`` or ``X`` changes the outside world (the node declares ``side_effects``
  in its manifest, narrowed per invocation as the node itself does: an ``http.request`` GET/HEAD
  or a read-only ``database.query`` does not). An ordering the user wrote around a side effect
  may be a hidden dependency (write, then read what was written; validate, then send), so it
  is never relaxed. Unknown nodes and child runs count as side-effecting;
- **control**: ``P`` may be skipped (it has a ``when``, a ``meta.switch`` lists it, it is a
  switch or an ``ai.meta`` planner): skip propagation would skip ``X`` too, so dropping the
  edge would change what runs.

Every other ordering between two steps is *ordering only*: relaxing it cannot change any step's
inputs nor what reaches the outside world. :func:`relaxed_needs` gives the least ``needs`` that
keep every required ordering (transitively: a step after a relaxed one keeps its upstream
side-effect and control orderings), :func:`independent_pairs` the ordered pairs that could run
in parallel, :func:`sequential_chains` runs of steps executed one after the other for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from workflows.expressions import ExpressionSyntaxError, expression_references, iter_expressions
from workflows.meta import MAP_NODE, SWITCH_NODE, map_inner_node
from workflows.meta_children import CHILD_RUN_NODES
from workflows.model import StepDefinition, WorkflowDefinition
from workflows.semver import parse_node_ref

__all__ = [
    "BUILTIN_SIDE_EFFECTS",
    "CONTROL_NODES",
    "CatalogSideEffects",
    "SideEffectView",
    "StepDependencies",
    "can_run_in_parallel",
    "data_references",
    "dependencies",
    "independent_pairs",
    "relaxed_needs",
    "required_order",
    "sequential_chains",
]

BUILTIN_SIDE_EFFECTS: Final[Mapping[str, bool]] = {
    "ai.meta": False,
    "code.run": True,
    "condition": False,
    "database.query": True,
    "email.send": True,
    "http.request": True,
    "openai.chat": False,
    "transform": False,
    "webhook.trigger": True,
}
"""The built-in nodes' ``side_effects`` manifest flags (a unit test keeps this in step with
``node_workers``; this package may not import it)."""

CONTROL_NODES: Final = frozenset({SWITCH_NODE, "ai.meta"})
"""Nodes that decide which other steps run: every ordering after them is kept."""

_SAFE_HTTP_METHODS: Final = frozenset({"GET", "HEAD"})


class SideEffectView(Protocol):
    """Whether one invocation of a node changes the outside world."""

    def has_side_effects(self, node_name: str, params: Any) -> bool: ...


class CatalogSideEffects:
    """Side effects from node manifests (``name -> side_effects``), narrowed per invocation.

    ``unknown`` is the answer for a node the mapping does not know: ``True`` (the safe default:
    nothing around an unknown node is ever reordered).
    """

    def __init__(
        self, flags: Mapping[str, bool] = BUILTIN_SIDE_EFFECTS, *, unknown: bool = True
    ) -> None:
        self._flags = dict(flags)
        self._unknown = unknown

    @classmethod
    def from_manifests(
        cls, manifests: Iterable[Mapping[str, Any]], *, unknown: bool = True
    ) -> CatalogSideEffects:
        """From catalog manifests (``{"name", "side_effects", ...}``); any version declaring
        side effects makes the node side-effecting (a step's constraint may pick any of them)."""
        flags = dict(BUILTIN_SIDE_EFFECTS)
        seen: set[str] = set()
        for manifest in manifests:
            name = str(manifest["name"])
            flag = bool(manifest.get("side_effects", True))
            flags[name] = (flags[name] or flag) if name in seen else flag
            seen.add(name)
        return cls(flags, unknown=unknown)

    def has_side_effects(self, node_name: str, params: Any) -> bool:
        if node_name in CHILD_RUN_NODES:
            return True  # a child run may do anything its workflow does
        if node_name == SWITCH_NODE:
            return False
        if node_name == MAP_NODE:
            inner = map_inner_node(params)
            if inner is None:
                return True  # a map over child runs, or params that do not parse
            inner_params = params.get("params") if isinstance(params, Mapping) else None
            return self.has_side_effects(parse_node_ref(inner).name, inner_params or {})
        if not self._flags.get(node_name, self._unknown):
            return False
        return not _read_only_invocation(node_name, params)


def _read_only_invocation(node_name: str, params: Any) -> bool:
    """The per-invocation narrowing the nodes make in ``cacheable_for``; a templated value is
    unknown until run time, so it does not narrow."""
    if not isinstance(params, Mapping):
        return False
    if node_name == "http.request":
        method = params.get("method", "GET")
        return isinstance(method, str) and method.upper() in _SAFE_HTTP_METHODS
    if node_name == "database.query":
        return params.get("read_only", True) is True
    return False


@dataclass(frozen=True)
class StepDependencies:
    step_id: str
    needs: tuple[str, ...]
    """As declared."""
    data: frozenset[str]
    """Steps whose output or status the step's templates (params, ``when``) read."""
    side_effects: bool
    conditional: bool
    """May be skipped (``when``, a switch case) or decides what runs (switch, ``ai.meta``)."""

    @property
    def ordering_only(self) -> frozenset[str]:
        """Declared needs the step reads nothing from."""
        return frozenset(self.needs) - self.data


def data_references(step: StepDefinition) -> frozenset[str]:
    """Step ids the step's params and ``when`` reference (``steps.<id>...``).

    An expression that does not parse counts as referencing every step it could (validation
    reports it); here it returns the declared needs, the conservative answer.
    """
    found: set[str] = set()
    try:
        expressions = [expr for _, expr in iter_expressions(step.params, "params")]
        if step.when is not None:
            expressions.append(step.when)
        for expression in expressions:
            for ref in expression_references(expression):
                if ref.root == "steps":
                    if ref.name is None:  # `steps` as a whole: reads every upstream step
                        return frozenset(step.needs) | frozenset({"*"})
                    found.add(ref.name)
    except ExpressionSyntaxError:
        return frozenset(step.needs)
    return frozenset(found)


def dependencies(
    definition: WorkflowDefinition, side_effects: SideEffectView | None = None
) -> dict[str, StepDependencies]:
    view = side_effects or CatalogSideEffects()
    switch_targets = _switch_targets(definition)
    out: dict[str, StepDependencies] = {}
    for step in definition.steps:
        out[step.id] = StepDependencies(
            step_id=step.id,
            needs=step.needs,
            data=data_references(step),
            side_effects=view.has_side_effects(step.node_name, step.params),
            conditional=(
                step.when is not None
                or step.id in switch_targets
                or step.node_name in CONTROL_NODES
            ),
        )
    return out


def _switch_targets(definition: WorkflowDefinition) -> frozenset[str]:
    targets: set[str] = set()
    for step in definition.steps:
        if step.node_name != SWITCH_NODE or not isinstance(step.params, Mapping):
            continue
        cases = step.params.get("cases")
        lists = list(cases.values()) if isinstance(cases, Mapping) else []
        lists.append(step.params.get("default") or [])
        for listed in lists:
            if isinstance(listed, list | tuple):
                targets.update(str(item) for item in listed)
    return frozenset(targets)


def required_order(
    definition: WorkflowDefinition, side_effects: SideEffectView | None = None
) -> frozenset[tuple[str, str]]:
    """Pairs ``(p, x)``: ``p`` must end before ``x`` starts (transitively closed).

    Only pairs already ordered by the definition's needs are considered: relaxing never adds an
    ordering.
    """
    deps = dependencies(definition, side_effects)
    required: set[tuple[str, str]] = set()
    for x in definition.topological_order:
        dx = deps[x]
        for p in definition.upstream(x):
            dp = deps.get(p)
            if dp is None:
                continue
            if (
                p in dx.data
                or "*" in dx.data
                or dp.side_effects
                or dx.side_effects
                or dp.conditional
            ):
                required.add((p, x))
    return frozenset(_closure(required))


def _closure(pairs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    after: dict[str, set[str]] = {}
    for p, x in pairs:
        after.setdefault(p, set()).add(x)
    changed = True
    while changed:
        changed = False
        for p in list(after):
            extra = set().union(*(after.get(x, set()) for x in after[p])) - after[p]
            if extra:
                after[p] |= extra
                changed = True
    return {(p, x) for p, xs in after.items() for x in xs}


def relaxed_needs(
    definition: WorkflowDefinition, side_effects: SideEffectView | None = None
) -> dict[str, tuple[str, ...]]:
    """For every step, the least needs keeping :func:`required_order` (its transitive
    reduction), in definition order. Equal to the declared needs when nothing can be relaxed
    (up to redundant transitive needs, which are kept as declared)."""
    required = required_order(definition, side_effects)
    before: dict[str, set[str]] = {sid: set() for sid in definition.step_ids}
    for p, x in required:
        before[x].add(p)
    position = {sid: i for i, sid in enumerate(definition.step_ids)}
    out: dict[str, tuple[str, ...]] = {}
    for step in definition.steps:
        preds = before[step.id]
        # Keep p unless another predecessor q already comes after p (p -> q -> x).
        direct = {p for p in preds if not any((p, q) in required for q in preds if q != p)}
        declared = [n for n in step.needs if n in preds]
        if set(declared) >= direct:
            out[step.id] = tuple(declared)  # nothing relaxed: keep the user's list as written
        else:
            out[step.id] = tuple(sorted(direct, key=lambda sid: position[sid]))
    return out


def independent_pairs(
    definition: WorkflowDefinition, side_effects: SideEffectView | None = None
) -> list[tuple[str, str]]:
    """Pairs ``(p, x)`` that the needs order (``p`` upstream of ``x``) for no required reason:
    they could run in parallel. In topological order of ``x``, then of ``p``."""
    required = required_order(definition, side_effects)
    order = {sid: i for i, sid in enumerate(definition.topological_order)}
    pairs = [
        (p, x)
        for x in definition.topological_order
        for p in definition.upstream(x)
        if p in order and (p, x) not in required
    ]
    return sorted(pairs, key=lambda pair: (order[pair[1]], order[pair[0]]))


def can_run_in_parallel(
    definition: WorkflowDefinition,
    a: str,
    b: str,
    side_effects: SideEffectView | None = None,
) -> bool:
    """Whether ``a`` and ``b`` may overlap: no required ordering either way."""
    definition.step(a), definition.step(b)  # KeyError naming the unknown step
    if a == b:
        return False
    required = required_order(definition, side_effects)
    return (a, b) not in required and (b, a) not in required


def sequential_chains(
    definition: WorkflowDefinition, side_effects: SideEffectView | None = None
) -> list[tuple[str, ...]]:
    """Maximal chains ``s1 -> s2 -> ... -> sk`` (k >= 2, each needing the previous one directly)
    whose consecutive links are all ordering only: what the optimizer's parallelise strategy
    rewrites and the critic reports as ``sequential_independent``."""
    required = required_order(definition, side_effects)
    relaxable = {
        (p, step.id)
        for step in definition.steps
        for p in step.needs
        if definition.has_step(p) and (p, step.id) not in required
    }
    nxt: dict[str, str] = {}
    prv: dict[str, str] = {}
    for p, x in sorted(relaxable, key=lambda e: definition.index_of(e[1])):
        if p not in nxt and x not in prv:
            nxt[p], prv[x] = x, p
    chains: list[tuple[str, ...]] = []
    for sid in definition.topological_order:
        if sid in prv or sid not in nxt:
            continue
        chain = [sid]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        chains.append(tuple(chain))
    return chains
