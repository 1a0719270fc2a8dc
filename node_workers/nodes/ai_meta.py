"""``ai.meta@1.0.0``: ask an LLM (any OpenAI-compatible API) to plan a sub-graph for a goal.

The node only plans: it builds the prompt (the goal, the context ``inputs``, the catalog nodes
it may use with their params' JSON schemas, and -- on a retry after a rejected plan -- the
validation errors of that plan), calls the model through :class:`OpenAIChatNode` (same client,
pool, error classes: ``LlmUnavailable``, ``LlmRateLimited``...) with ``response_format:
json_object``, and returns the parsed plan. It does not validate the plan: the scheduler does,
against the run's graph and the live node catalog, and splices it in (ADR 0027,
:mod:`processors.scheduler.meta.ai_plan`). Content that is not JSON is returned with
``plan: null`` and ``parse_error``, so the scheduler rejects it like any invalid plan and the
model sees why on the next attempt.

``catalog`` and ``feedback`` are filled in by the scheduler (whatever a definition puts there
is replaced).
"""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import Field, HttpUrl, SecretStr

from foundation.settings import Settings
from node_workers.node import Node, NodeContext, NodeModel, Workload
from node_workers.nodes.openai_chat import (
    DEFAULT_BASE_URL,
    OpenAIChatInput,
    OpenAIChatNode,
    TokenUsage,
)

__all__ = [
    "AiMetaInput",
    "AiMetaNode",
    "AiMetaOutput",
    "CatalogNode",
    "PlanFeedback",
    "build_messages",
    "parse_plan",
]

_CONTEXT_CHARS: Final = 8_000
"""The context ``inputs`` as JSON in the prompt is cut to this many characters."""


class CatalogNode(NodeModel):
    """A node a plan may use, as the scheduler describes it from the catalog."""

    node: str
    """``name@^major``: what a planned step writes in ``node``."""
    version: str | None = None
    description: str = ""
    params_schema: Any = None
    """JSON schema of the node's params."""


class PlanFeedback(NodeModel):
    """Why the previous attempt's plan was rejected (the scheduler's validation)."""

    attempt: int
    errors: list[str]
    """``path: message``, paths into the plan (``plan.steps[1].node``)."""
    plan: str | None = None
    """The rejected plan (JSON text, possibly cut)."""


class AiMetaInput(NodeModel):
    goal: str = Field(min_length=1)
    """What the planned sub-graph must achieve."""
    inputs: Any = None
    """Context for the planner (e.g. upstream outputs); shown to the model as JSON."""
    base_url: HttpUrl = HttpUrl(DEFAULT_BASE_URL)
    api_key: SecretStr
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    nodes: list[str] | None = None
    """Node names the plan may use (default: every catalog node but ``ai.meta``)."""
    max_steps: int = Field(default=20, ge=1, le=200)
    output_step: str | None = None
    """The planned step (local id) whose output becomes this step's output; default: the
    outputs of the plan's last steps, by id."""
    catalog: list[CatalogNode] = Field(default_factory=list)
    """Filled in by the scheduler."""
    feedback: PlanFeedback | None = None
    """Filled in by the scheduler after a rejected plan."""


class AiMetaOutput(NodeModel):
    plan: Any
    """The parsed JSON the model answered (``null`` when it was not JSON)."""
    parse_error: str | None = None
    content: str
    """The model's raw answer."""
    model: str
    usage: TokenUsage


_FORMAT = """\
Answer with ONE JSON object and nothing else:
{"steps": [{"id": "<step id>", "node": "<node>", "params": {...}, "needs": ["<step id>", ...]}]}
Rules:
- ids: lowercase letters, digits and _ (start with a letter or _), unique in the plan;
- node: one of the nodes listed below, written as listed (e.g. "transform@^1"); params must
  follow that node's params schema;
- needs: ids of other steps of this plan that must finish first; no cycles; steps without
  needs start at once;
- a param value may be a template "{{ steps.<id>.output }}" (JMESPath after steps.<id>.output,
  e.g. "{{ steps.fetch.output.body }}") reading the output of a step listed (directly or
  transitively) in its needs;
- optional per step: "when" (a JMESPath condition; false skips the step), "retry"
  ({"max_attempts": n}), "timeout" (e.g. "10s");
- at most {max_steps} steps.{output_rule}"""


def _catalog_text(catalog: list[CatalogNode]) -> str:
    if not catalog:
        return "No node catalog was supplied; use only nodes named in the goal."
    lines = []
    for entry in catalog:
        line = f"- {entry.node}"
        if entry.description:
            line += f": {entry.description}"
        if entry.params_schema is not None:
            schema = json.dumps(entry.params_schema, sort_keys=True, separators=(",", ":"))
            line += f"\n  params schema: {schema}"
        lines.append(line)
    return "\n".join(lines)


def build_messages(params: AiMetaInput) -> list[dict[str, str]]:
    """The chat messages for one planning attempt (pure; unit-tested)."""
    output_rule = (
        f'\n- one step must have the id "{params.output_step}": its output is the result.'
        if params.output_step
        else ""
    )
    system = (
        "You plan a sub-graph of steps for a REFLUX workflow run, using only catalog nodes.\n"
        + _FORMAT.replace("{max_steps}", str(params.max_steps)).replace(
            "{output_rule}", output_rule
        )
        + "\n\nNodes you may use:\n"
        + _catalog_text(params.catalog)
    )
    user = f"Goal: {params.goal}"
    if params.inputs is not None:
        context = json.dumps(params.inputs, sort_keys=True, default=str)
        if len(context) > _CONTEXT_CHARS:
            context = context[:_CONTEXT_CHARS] + "..."
        user += f"\nContext (JSON): {context}"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if params.feedback is not None:
        if params.feedback.plan:
            messages.append({"role": "assistant", "content": params.feedback.plan})
        errors = "\n".join(f"- {e}" for e in params.feedback.errors) or "- (no details)"
        messages.append(
            {
                "role": "user",
                "content": (
                    f"Your plan (attempt {params.feedback.attempt}) was rejected by validation:\n"
                    f"{errors}\nAnswer with a corrected plan (the whole JSON object)."
                ),
            }
        )
    return messages


def parse_plan(content: str) -> tuple[Any, str | None]:
    """``(plan, None)`` for JSON content (a fenced ```json block is accepted), else
    ``(None, why)``."""
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"the answer is not JSON: {exc}"


class AiMetaNode(Node[AiMetaInput, AiMetaOutput]):
    name = "ai.meta"
    version = "1.0.0"
    Input = AiMetaInput
    Output = AiMetaOutput
    cacheable = False  # the output is spliced into the run: a cached plan would skip that
    side_effects = False
    workload = Workload.IO
    description = (
        "Ask an LLM to plan a sub-graph of catalog nodes for a goal; the scheduler validates "
        "it and runs it in place of this step."
    )

    def __init__(self) -> None:
        self._chat = OpenAIChatNode()

    def set_concurrency(self, limit: int) -> None:
        self._chat.set_concurrency(limit)

    def bind(self, settings: Settings) -> None:
        self._chat.bind(settings)  # the egress policy of base_url

    async def aclose(self) -> None:
        await self._chat.aclose()

    async def execute(self, params: AiMetaInput, ctx: NodeContext) -> AiMetaOutput:
        chat = OpenAIChatInput.model_validate(
            {
                "base_url": params.base_url,
                "api_key": params.api_key,
                "model": params.model,
                "messages": build_messages(params),
                "temperature": params.temperature,
                "max_tokens": params.max_tokens,
                "timeout_s": params.timeout_s,
                # Text, parsed here: content that is not JSON must reach the scheduler as an
                # invalid plan (fed back to the model), not fail the attempt without feedback.
                "response_format": "text",
            }
        )
        answer = await self._chat.execute(chat, ctx)
        plan, problem = parse_plan(answer.content)
        ctx.record("feedback_errors", len(params.feedback.errors) if params.feedback else 0)
        return AiMetaOutput(
            plan=plan,
            parse_error=problem,
            content=answer.content,
            model=answer.model,
            usage=answer.usage,
        )
