"""The node forge's wall time (issue 17): part ``forge`` of ``python -m benchmarks.run``
(``make bench``; alone: ``python -m benchmarks.run --only forge [--quick]``).

Each metric has its own function (the OpenAPI forge, the LLM forge), run on
a topic prefix of its own (``bench-forge-<uuid8>``: its ``nodes`` topic and invoke topics,
deleted afterwards), so the drafts it registers never reach the shared catalog. The artifacts
stay in the object store (content-addressed, a few KiB each).

- ``forge_openapi_s``: generate (``artifact_from_openapi`` on
  ``benchmarks/forge_openapi_spec.yaml``'s ``createOrder``: path, query and header
  parameters, a ``$ref``'d JSON body, an apiKey, three named examples) + the generated tests in
  the ``code.run`` sandbox + registration as a draft (object store, invoke topic, catalog
  entry). Median of 3 rounds (quick: 1), each a new version, after one warm-up round (the
  sandbox's first start pays for image and page cache). Goal: < 60 s.
- ``forge_openapi_sandbox_share``: the sandbox job's wall time / the total, median round.
- ``forge_openapi_generate_s``, ``forge_openapi_sandbox_s``, ``forge_openapi_register_s``: the
  median round's parts.

- ``forge_llm_s``: ``reflux forge new``'s path (:func:`node_workers.forge.llm.forge_new`)
  against a local OpenAI-compatible server scripted like the integration test -- the first
  answer's code fails its own tests, the second passes after the feedback -- so the time is
  REFLUX's own: prompt and parsing, two sandbox test runs, registration. Median of 3 rounds
  (quick: 1), each a new version, after a warm-up. Goal: < 60 s.
- ``forge_llm_sandbox_share``: both sandbox runs' wall time / the total, median round;
  ``forge_llm_generate_s``, ``forge_llm_sandbox_s``, ``forge_llm_register_s``: its parts.

``benchmarks.run`` writes the keys into ``benchmarks/out/results.json`` with the others (a
partial run merges them into the last full results).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks.cleanup import delete_prefix_topics
from foundation.settings import Settings
from node_workers.forge.openapi import artifact_from_openapi, load_openapi_text
from node_workers.forge.pipeline import ForgeResult, test_and_register
from streams.admin import create_missing_topics
from streams.topics import TopicCatalog

__all__ = [
    "OPENAPI_SPEC",
    "run_forge_benchmark",
    "run_forge_llm_benchmark",
    "run_forge_openapi_benchmark",
]

OPENAPI_SPEC: Final = Path(__file__).with_name("forge_openapi_spec.yaml")
OPENAPI_OPERATION: Final = "createOrder"
ROUNDS: Final = {False: 3, True: 1}
LLM_NODE: Final = "bench.line-total"


def _progress(message: str) -> None:
    print(f"[forge {time.strftime('%H:%M:%S')}] {message}", flush=True)


def bench_settings(settings: Settings) -> Settings:
    """``settings`` on a topic prefix of its own, with its catalog topic created."""
    own = settings.model_copy(update={"topic_prefix": f"bench-forge-{uuid.uuid4().hex[:8]}"})
    create_missing_topics([TopicCatalog.from_settings(own).nodes], settings=own)
    return own


def forge_openapi_once(settings: Settings, document: dict[str, Any], version: str) -> ForgeResult:
    """One forge of the bench operation, timed like the API times it."""
    started = time.monotonic()
    artifact = artifact_from_openapi(document, OPENAPI_OPERATION, version=version)
    return test_and_register(settings, artifact, generate_s=time.monotonic() - started)


def _timed(
    key: str, label: str, once: Callable[[str], ForgeResult], quick: bool
) -> dict[str, float]:
    """A warm-up (the sandbox's first start pays for image and page cache), then the rounds,
    each a new version; the median round's total and its parts under ``key``."""
    warm = once("0.0.1")
    _progress(f"{label} warm-up: {warm.timings.total_s:.2f}s ({len(warm.report.tests)} tests)")
    rounds: list[ForgeResult] = []
    for i in range(ROUNDS[quick]):
        result = once(f"1.0.{i}")
        t = result.timings
        _progress(
            f"{label} round {i + 1}/{ROUNDS[quick]}: total {t.total_s:.2f}s = generate "
            f"{t.generate_s:.3f}s + sandbox {t.sandbox_s:.2f}s (+ setup) + register "
            f"{t.register_s:.2f}s; {len(result.report.tests)} tests passed"
        )
        rounds.append(result)
    median = statistics.median_low([r.timings.total_s for r in rounds])
    middle = next(r.timings for r in rounds if r.timings.total_s == median)
    return {
        f"{key}_s": round(median, 3),
        f"{key}_sandbox_share": round(middle.sandbox_s / middle.total_s, 3),
        f"{key}_generate_s": middle.generate_s,
        f"{key}_sandbox_s": middle.sandbox_s,
        f"{key}_register_s": middle.register_s,
    }


def run_forge_openapi_benchmark(settings: Settings, quick: bool) -> dict[str, float]:
    own = bench_settings(settings)
    document = load_openapi_text(OPENAPI_SPEC.read_text())
    tests: list[int] = []

    def once(version: str) -> ForgeResult:
        result = forge_openapi_once(own, document, version)
        tests.append(len(result.report.tests))
        return result

    try:
        metrics = _timed("forge_openapi", "openapi", once, quick)
    finally:
        delete_prefix_topics(own, timeout=30)
    return {**metrics, "forge_openapi_tests": float(tests[-1])}


def forge_llm_once(settings: Settings, server: Any, version: str) -> ForgeResult:
    """One forge from a description against the scripted local server: the first answer's
    code fails its own tests in the sandbox, the second (after the feedback) passes."""
    import openai

    from node_workers.forge.llm import forge_new
    from tests.support.forge_answers import DESCRIPTION, EXAMPLES, FIXED_CODE, WRONG_CODE, answer

    server.script(
        answer(WRONG_CODE, name=LLM_NODE, version=version),
        answer(FIXED_CODE, name=LLM_NODE, version=version),
    )
    client = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    result = forge_new(settings, DESCRIPTION, examples=EXAMPLES, client=client, model="bench")
    assert len(result.artifact.provenance["rounds"]) == 2, "the script has two rounds"
    return result


def run_forge_llm_benchmark(settings: Settings, quick: bool) -> dict[str, float]:
    from tests.integration.openai_fixtures import serve_openai

    own = bench_settings(settings)
    try:
        with serve_openai() as server:
            metrics = _timed(
                "forge_llm", "llm", lambda version: forge_llm_once(own, server, version), quick
            )
    finally:
        delete_prefix_topics(own, timeout=30)
    return {**metrics, "forge_llm_rounds": 2.0}


BENCHMARKS: Final[dict[str, Callable[[Settings, bool], dict[str, float]]]] = {
    "openapi": run_forge_openapi_benchmark,
    "llm": run_forge_llm_benchmark,
}


def run_forge_benchmark(settings: Settings, quick: bool) -> dict[str, float]:
    """Both forges, one after the other (``benchmarks.run``'s part ``forge``)."""
    results: dict[str, float] = {}
    for run in BENCHMARKS.values():
        results |= run(settings, quick)
    return results
