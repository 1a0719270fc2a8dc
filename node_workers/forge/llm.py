"""The LLM forge: a node artifact from a description, written by any OpenAI-compatible model,
tested in the sandbox, fed its failures back for a bounded number of rounds, registered as a
draft with its provenance (issue 17, docs/forge.md, ADR 0071).

:func:`forge_from_description` is the loop; its I/O comes in as arguments (the ``openai``
client, the sandbox ``tester``), so the loop is tested with a scripted model and a scripted
sandbox. The edges: :func:`forge_artifact` (the client from the settings, the sandbox test
runner, the operator's limits), :func:`register_forged` (the publisher: object store, catalog
draft), :func:`forge_new` (both, for the CLI).

A round: ask the model; parse its answer (:func:`~node_workers.forge.prompts.parse_answer`, the
artifact contract with field paths); check the manifest against the operator's limits and
egress (:func:`policy_refusals`); run the tests in the sandbox (no network). The first answer
whose tests all pass wins. Anything else becomes the next user message -- the parse error, the
refusal, the failing tests' names and messages -- until ``max_rounds`` answers were used; then
the forge refuses (:class:`ForgeRefused`, with the last reason and sandbox report). Generated
code runs only inside the sandbox: the forge itself never imports or executes it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import openai

from foundation.errors import NonRetryableError, RetryableError
from foundation.settings import Settings
from foundation.tenancy import DEFAULT_TENANT
from node_workers.artifacts.bundle import ArtifactError, ArtifactManifest, NodeArtifact
from node_workers.artifacts.bundle import parse_artifact as _parse_artifact
from node_workers.artifacts.tests_runner import ArtifactTestReport, run_artifact_tests
from node_workers.egress.policy import AllowEntry, parse_allow_entries, parse_allow_entry
from node_workers.forge.pipeline import ForgeRefused, ForgeResult, register_tested
from node_workers.forge.prompts import (
    AnswerError,
    FailedTest,
    build_prompt,
    failure_feedback,
    parse_answer,
    rejection_feedback,
)

__all__ = [
    "FORGE_SOURCE",
    "ForgeLimits",
    "ForgeLlmAuthError",
    "ForgeLlmError",
    "ForgeOutcome",
    "RoundEvent",
    "Tester",
    "egress_covered",
    "forge_artifact",
    "forge_from_description",
    "forge_new",
    "forge_summary",
    "llm_client",
    "policy_refusals",
    "register_forged",
]

FORGE_SOURCE: Final = "forge.llm"
"""``provenance.source`` of an artifact this forge made."""
_TEMPERATURE: Final = 0.2
"""Low: the answer is code that must pass tests, not prose; feedback rounds add the variety."""
_NO_REPORT: Final = ArtifactTestReport(passed=False, tests=[], sandbox_s=0.0)
"""A refusal's report when no answer got as far as the sandbox."""
_LLM_RETRIES: Final = 2
"""The client's own retries: a one-shot command, unlike openai.chat, whose attempts the run's
retry policy owns."""


class ForgeLlmError(RetryableError):
    """The model could not be asked (unreachable, rate limited, server error, bad key)."""

    error_class = "ForgeLlmUnavailable"


class ForgeLlmAuthError(NonRetryableError):
    """The model refused the key, or the forge has none (a configuration to fix, not to retry)."""

    error_class = "ForgeLlmAuth"


Tester = Callable[[NodeArtifact], ArtifactTestReport]
"""Runs an artifact's tests in the sandbox (``run_artifact_tests`` bound to the settings)."""


@dataclass(frozen=True, slots=True)
class RoundEvent:
    """What one round did, for progress lines (CLI stderr) and provenance."""

    round: int
    max_rounds: int
    outcome: str
    """``passed`` | ``tests_failed`` | ``rejected``."""
    detail: str
    generate_s: float
    sandbox_s: float


@dataclass(frozen=True, slots=True)
class ForgeLimits:
    """What forged code may ask for: the worker's resource maxima and the egress the operator
    allows (its ``egress_allow`` list, plus the tenant's list inside ``egress_grantable``)."""

    max_cpu: float
    max_memory_mb: int
    max_timeout_s: float
    egress_allowed: tuple[AllowEntry, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings, *, tenant: str = DEFAULT_TENANT) -> ForgeLimits:
        grantable = parse_allow_entries(settings.egress_grantable)
        tenant_entries = [
            entry
            for entry in parse_allow_entries(settings.egress_tenant_allow.get(tenant, ()))
            if any(egress_covered(entry, g) for g in grantable)
        ]
        return cls(
            max_cpu=settings.sandbox_max_cpu,
            max_memory_mb=settings.sandbox_max_mem_mb,
            max_timeout_s=settings.sandbox_max_timeout_sec,
            egress_allowed=(*parse_allow_entries(settings.egress_allow), *tenant_entries),
        )


def egress_covered(declared: AllowEntry, allowed: AllowEntry) -> bool:
    """Whether everything ``declared`` may reach, ``allowed`` lets through too: the same or a
    wider port, and the same host, a host under an allowed ``*.domain``, or a network inside an
    allowed one. A host name is never covered by an address entry (its addresses are not known
    until it is resolved)."""
    if allowed.port is not None and declared.port != allowed.port:
        return False
    if declared.network is not None:
        return (
            allowed.network is not None
            and declared.network.version == allowed.network.version
            and declared.network.subnet_of(allowed.network)  # type: ignore[arg-type]
        )
    if declared.host is None or allowed.host is None:
        return False
    if allowed.host.startswith("*."):
        return declared.host.endswith(allowed.host[1:])
    return declared.host == allowed.host


def policy_refusals(manifest: ArtifactManifest, limits: ForgeLimits) -> list[str]:
    """Each way ``manifest`` asks for more than the operator allows, as ``path: reason``."""
    out = []
    asked = manifest.limits
    for path, value, maximum, setting in (
        ("manifest.limits.cpu", asked.cpu, limits.max_cpu, "REFLUX_SANDBOX_MAX_CPU"),
        (
            "manifest.limits.memory_mb",
            asked.memory_mb,
            limits.max_memory_mb,
            "REFLUX_SANDBOX_MAX_MEM_MB",
        ),
        (
            "manifest.limits.timeout_s",
            asked.timeout_s,
            limits.max_timeout_s,
            "REFLUX_SANDBOX_MAX_TIMEOUT_SEC",
        ),
    ):
        if value > maximum:
            out.append(f"{path}: Expected at most {maximum:g} ({setting}), but got {value:g}")
    for index, text in enumerate(manifest.egress):
        entry = parse_allow_entry(text)
        if not any(egress_covered(entry, allowed) for allowed in limits.egress_allowed):
            allowed = ", ".join(a.text for a in limits.egress_allowed) or "none"
            out.append(
                f"manifest.egress[{index}]: Expected a host the operator allows "
                f"(REFLUX_EGRESS_ALLOW, or the tenant's list within REFLUX_EGRESS_GRANTABLE: "
                f"{allowed}), but got {text!r}"
            )
    return out


@dataclass(frozen=True)
class ForgeOutcome:
    """A forged artifact whose tests passed, its provenance inside, not yet registered."""

    artifact: NodeArtifact
    report: ArtifactTestReport
    rounds: int
    generate_s: float
    """Time spent waiting for the model, all rounds."""
    sandbox_s: float
    """Time spent running tests in the sandbox, all rounds."""
    total_s: float
    events: tuple[RoundEvent, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class _Answer:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _ask(
    client: openai.OpenAI, model: str, messages: list[dict[str, str]], *, timeout_s: float | None
) -> _Answer:
    # Here, not at the top: node_workers.nodes loads every built-in node (and its clients).
    from node_workers.nodes.openai_chat import classify_llm_error

    request: dict[str, Any] = {"model": model, "messages": messages, "temperature": _TEMPERATURE}
    if timeout_s is not None:
        request["timeout"] = timeout_s
    try:
        completion = client.chat.completions.create(**request)
    except openai.OpenAIError as exc:
        error = classify_llm_error(
            exc, base_url=str(client.base_url), api_key=str(client.api_key or "")
        )
        kind = ForgeLlmAuthError if error.error_class == "LlmAuth" else ForgeLlmError
        raise kind(f"{error.error_class}: {error}") from None
    choice = completion.choices[0] if completion.choices else None
    usage = completion.usage
    return _Answer(
        text=(choice.message.content or "") if choice is not None else "",
        model=completion.model or model,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
    )


def _candidate(
    text: str, *, name: str | None, version: str | None, limits: ForgeLimits
) -> NodeArtifact:
    """The answer's artifact under the caller's name and version if given (a new version of a
    node it would replace, say), within the operator's limits and egress; else
    :class:`~node_workers.artifacts.bundle.ArtifactError` with the field path(s)."""
    overrides = {k: v for k, v in (("name", name), ("version", version)) if v is not None}
    artifact = parse_answer(text, manifest_overrides=overrides)
    refusals = policy_refusals(artifact.manifest, limits)
    if refusals:
        raise AnswerError("; ".join(refusals))
    return artifact


def _failed_tests(report: ArtifactTestReport) -> list[FailedTest]:
    failed = [FailedTest(t.name, t.message) for t in report.tests if not t.passed]
    if not failed:  # no test ran (an import error, the time limit): say what happened
        failed = [FailedTest("sandbox", report.policy or "no test_* function ran")]
    return failed


def _tests_record(report: ArtifactTestReport) -> list[dict[str, Any]]:
    return [{"name": t.name, "passed": t.passed, "message": t.message} for t in report.tests]


def forge_from_description(
    description: str,
    *,
    examples: Sequence[Mapping[str, Any]] = (),
    client: openai.OpenAI,
    model: str,
    max_rounds: int = 3,
    tester: Tester,
    limits: ForgeLimits,
    name: str | None = None,
    version: str | None = None,
    on_round: Callable[[RoundEvent], None] | None = None,
    timeout_s: float | None = None,
) -> ForgeOutcome:
    """Asks ``model`` for a node doing ``description`` until its tests pass in the sandbox, for
    at most ``max_rounds`` answers; :class:`ForgeRefused` with the last reason otherwise.
    ``name`` and ``version`` replace the model's choice; ``on_round`` hears each round."""
    if not description.strip():
        raise ForgeRefused(
            "description: Expected a description of the node, but it is empty", _NO_REPORT
        )
    if max_rounds < 1:
        raise ForgeRefused(f"max_rounds: Expected at least 1, but got {max_rounds}", _NO_REPORT)
    started = time.perf_counter()
    prompt = build_prompt(description, examples)
    messages = prompt.messages()
    rounds: list[dict[str, Any]] = []
    events: list[RoundEvent] = []

    def tell(number: int, outcome: str, detail: str, generate: float, sandbox: float) -> None:
        event = RoundEvent(number, max_rounds, outcome, detail, generate, sandbox)
        events.append(event)
        if on_round is not None:
            on_round(event)

    generate_s = sandbox_s = 0.0
    last_reason = "no answer"
    last_report = _NO_REPORT
    for number in range(1, max_rounds + 1):
        asked = time.perf_counter()
        answer = _ask(client, model, messages, timeout_s=timeout_s)
        round_generate_s = time.perf_counter() - asked
        generate_s += round_generate_s
        messages.append({"role": "assistant", "content": answer.text})
        record: dict[str, Any] = {
            "round": number,
            "answer_sha256": _sha256(answer.text),
            "model": answer.model,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "generate_s": round(round_generate_s, 3),
        }
        rounds.append(record)
        try:
            artifact = _candidate(answer.text, name=name, version=version, limits=limits)
        except ArtifactError as exc:
            last_reason = str(exc)
            record.update(outcome="rejected", reason=last_reason)
            messages.append({"role": "user", "content": rejection_feedback(last_reason)})
            tell(number, "rejected", last_reason, round_generate_s, 0.0)
            continue
        report = tester(artifact)
        last_report = report
        passed = report.passed and bool(report.tests)  # no test ran: nothing was shown to work
        sandbox_s += report.sandbox_s
        record.update(
            outcome="passed" if passed else "tests_failed",
            tests=_tests_record(report),
            policy=report.policy,
            sandbox_s=round(report.sandbox_s, 3),
        )
        if passed:
            tell(
                number,
                "passed",
                f"{len(report.tests)} test(s) passed",
                round_generate_s,
                report.sandbox_s,
            )
            final = _with_provenance(
                artifact,
                description=description,
                examples=examples,
                model=model,
                client=client,
                prompt_sha256=prompt.sha256,
                prompt={"system": prompt.system, "user": prompt.user},
                rounds=rounds,
                timings={
                    "generate_s": round(generate_s, 3),
                    "sandbox_s": round(sandbox_s, 3),
                    "total_s": round(time.perf_counter() - started, 3),
                },
            )
            return ForgeOutcome(
                artifact=final,
                report=report,
                rounds=number,
                generate_s=generate_s,
                sandbox_s=sandbox_s,
                total_s=time.perf_counter() - started,
                events=tuple(events),
            )
        failed = _failed_tests(report)
        last_reason = "; ".join(f"{t.name}: {t.message}" for t in failed)
        messages.append({"role": "user", "content": failure_feedback(failed, policy=report.policy)})
        tell(number, "tests_failed", last_reason, round_generate_s, report.sandbox_s)
    raise ForgeRefused(
        f"Refused after {max_rounds} round(s), the last one: {last_reason}", last_report
    )


def _endpoint_host(client: openai.OpenAI) -> str:
    parts = urlsplit(str(client.base_url))
    return parts.netloc.rsplit("@", 1)[-1]  # never a user:password@ in provenance


def _with_provenance(
    artifact: NodeArtifact,
    *,
    description: str,
    examples: Sequence[Mapping[str, Any]],
    model: str,
    client: openai.OpenAI,
    prompt_sha256: str,
    prompt: dict[str, str],
    rounds: list[dict[str, Any]],
    timings: dict[str, float],
) -> NodeArtifact:
    """``artifact`` with how it was made: part of its digest, so it cannot be rewritten once
    registered. The artifact's own digest cannot be inside it; the files' digests are."""
    raw = artifact.model_dump(mode="json")
    raw["provenance"] = {
        "source": FORGE_SOURCE,
        "description": description,
        "examples": [dict(e) for e in examples],
        "model": model,
        "endpoint_host": _endpoint_host(client),
        "prompt_sha256": prompt_sha256,
        "prompt": prompt,
        "rounds": rounds,
        "files_sha256": {path: _sha256(text) for path, text in sorted(artifact.files.items())},
        "timings": timings,
    }
    return _parse_artifact(raw)


def llm_client(settings: Settings) -> openai.OpenAI:
    """The forge's client: ``forge_llm_base_url`` with the key in the secret named
    ``forge_llm_api_key_name``, read where the workers read secrets (``secrets_dir``, then
    ``REFLUX_SECRET_<NAME>``) -- the ``{{ secrets.OPENAI_API_KEY }}`` an ``openai.chat`` step
    uses."""
    from node_workers.secrets.resolver import resolver_from_settings

    name = settings.forge_llm_api_key_name
    key = resolver_from_settings(settings).provider.get(name)
    if not key:
        raise ForgeLlmAuthError(
            f"Expected the forge's LLM key in the secret {name} (a file {name} in "
            f"REFLUX_SECRETS_DIR, or REFLUX_SECRET_{name}), but it is not set",
        )
    return openai.OpenAI(
        base_url=settings.forge_llm_base_url,
        api_key=key,
        max_retries=_LLM_RETRIES,
        timeout=settings.forge_llm_timeout_s,
    )


def forge_artifact(
    settings: Settings,
    description: str,
    *,
    examples: Sequence[Mapping[str, Any]] = (),
    model: str | None = None,
    max_rounds: int | None = None,
    name: str | None = None,
    version: str | None = None,
    tenant: str = DEFAULT_TENANT,
    on_round: Callable[[RoundEvent], None] | None = None,
    client: openai.OpenAI | None = None,
) -> ForgeOutcome:
    """The loop with the settings' model and endpoint, A's sandbox test runner and the
    operator's limits for ``tenant``; nothing registered yet."""
    return forge_from_description(
        description,
        examples=examples,
        client=client or llm_client(settings),
        model=model or settings.forge_llm_model,
        max_rounds=max_rounds or settings.forge_llm_rounds,
        tester=lambda artifact: run_artifact_tests(settings, artifact),
        limits=ForgeLimits.from_settings(settings, tenant=tenant),
        name=name,
        version=version,
        on_round=on_round,
    )


def register_forged(
    settings: Settings, outcome: ForgeOutcome, *, tenant: str = DEFAULT_TENANT
) -> ForgeResult:
    """Registers a tested outcome as a draft (object store by digest, catalog entry, invoke
    topic); ``ArtifactImmutableError`` when the version exists with other code."""
    return register_tested(
        settings,
        outcome.artifact,
        outcome.report,
        tenant=tenant,
        generate_s=outcome.generate_s,
        sandbox_s=outcome.sandbox_s,
        before_s=outcome.total_s,
    )


def forge_new(
    settings: Settings,
    description: str,
    *,
    tenant: str = DEFAULT_TENANT,
    **options: Any,
) -> ForgeResult:
    """``reflux forge new``: :func:`forge_artifact`, then :func:`register_forged`."""
    outcome = forge_artifact(settings, description, tenant=tenant, **options)
    return register_forged(settings, outcome, tenant=tenant)


def forge_summary(result: ForgeResult) -> dict[str, Any]:
    """What the CLI prints with ``--json`` and the API answers: the draft and how it was made."""
    manifest = result.artifact.manifest
    provenance = result.artifact.provenance
    return {
        "name": manifest.name,
        "version": manifest.version,
        "status": result.status,
        "digest": result.digest,
        "code_uri": result.code_uri,
        "rounds": len(provenance.get("rounds", [])),
        "tests": [
            {"name": t.name, "passed": t.passed, "message": t.message} for t in result.report.tests
        ],
        "timings": {
            "generate_s": round(result.timings.generate_s, 3),
            "sandbox_s": round(result.timings.sandbox_s, 3),
            "register_s": round(result.timings.register_s, 3),
            "total_s": round(result.timings.total_s, 3),
        },
        "provenance": {k: v for k, v in provenance.items() if k != "prompt"},
    }
