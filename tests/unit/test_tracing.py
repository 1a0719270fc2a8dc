"""Tracing's pure parts (ADR 0062): traceparent parsing, derived ids, Kafka headers, the
scheduler's trace context in events and invocations, and tracing off by default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.trace import NoOpTracer

from foundation.settings import Settings
from foundation.telemetry import tracer, tracing
from foundation.trace_context import (
    TraceParent,
    clean_trace_context,
    derive_span_id,
    derive_trace_id,
    parse_traceparent,
)
from processors.scheduler.runtime.spans import spans_for
from processors.scheduler.spans import attempt_span_id, invocation_trace_context, run_trace
from processors.triggers.formats import trigger_trace_context
from schemas.quality import is_checker
from streams.tracing import trace_context_from_headers, trace_headers

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
GOOD = f"00-{TRACE}-{SPAN}-01"


def test_a_valid_traceparent_parses_and_round_trips() -> None:
    parsed = parse_traceparent(GOOD)
    assert parsed == TraceParent(TRACE, SPAN, sampled=True)
    assert parsed.header() == GOOD
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == TraceParent(TRACE, SPAN, sampled=False)
    # A later version may append fields: the first four are read.
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-extra") == TraceParent(TRACE, SPAN)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        42,
        "",
        "garbage",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper case
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace id
        f"00-{TRACE}-{SPAN}-0g",  # not hex
    ],
)
def test_a_bad_traceparent_is_ignored_never_an_error(bad: object) -> None:
    assert parse_traceparent(bad) is None
    assert clean_trace_context({"traceparent": bad, "tracestate": "k=v"}) == {}


def test_clean_context_keeps_a_short_tracestate_beside_a_valid_traceparent() -> None:
    assert clean_trace_context({"TraceParent": GOOD, "TraceState": "k=v"}) == {
        "traceparent": GOOD,
        "tracestate": "k=v",
    }
    assert clean_trace_context({"traceparent": GOOD, "tracestate": "x" * 513}) == {
        "traceparent": GOOD
    }
    assert clean_trace_context(None) == {}


def test_derived_ids_are_stable_distinct_and_well_formed() -> None:
    assert derive_span_id("run", "r1") == derive_span_id("run", "r1")
    assert derive_span_id("run", "r1") != derive_span_id("run", "r2")
    assert len(derive_span_id("a")) == 16 and len(derive_trace_id("a")) == 32
    assert parse_traceparent(TraceParent(derive_trace_id("x"), derive_span_id("x")).header())


def test_kafka_headers_carry_the_context_and_drop_bad_values() -> None:
    headers = trace_headers({"traceparent": GOOD, "tracestate": "k=v"})
    assert headers == [("traceparent", GOOD.encode()), ("tracestate", b"k=v")]
    assert trace_context_from_headers(headers) == {"traceparent": GOOD, "tracestate": "k=v"}
    assert trace_headers({"traceparent": "nope"}) == []
    assert trace_context_from_headers([("traceparent", b"\xff\xfe"), ("x", b"y")]) == {}
    assert trace_context_from_headers(None) == {}


def test_a_run_without_context_gets_its_own_trace_and_with_one_joins_it() -> None:
    own = run_trace("r1", {})
    assert own.parent_span_id is None and own.trace_id == derive_trace_id("run", "r1")
    joined = run_trace("r1", {"traceparent": GOOD, "tracestate": "k=v"})
    assert (joined.trace_id, joined.parent_span_id, joined.tracestate) == (TRACE, SPAN, "k=v")
    assert joined.run_span_id == own.run_span_id  # the run's span is named by its run id


def test_the_invocation_names_the_attempt_span_and_keeps_the_checker_mark() -> None:
    context = invocation_trace_context("r1", {"traceparent": GOOD}, "s", "inv-1", checker=True)
    parsed = parse_traceparent(context["traceparent"])
    assert parsed == TraceParent(TRACE, attempt_span_id("r1", "s", "inv-1"))
    assert is_checker(context)
    assert attempt_span_id("r1", "s", "inv-1") != attempt_span_id("r1", "s", "inv-2")


def test_trigger_records_bring_context_by_header_or_cloudevents_extension() -> None:
    other = f"00-{TRACE}-{'1' * 16}-01"
    assert trigger_trace_context(b"{}", [("traceparent", GOOD.encode())]) == {"traceparent": GOOD}
    assert trigger_trace_context(None, [("ce_traceparent", GOOD.encode())]) == {"traceparent": GOOD}
    structured = f'{{"specversion": "1.0", "id": "1", "traceparent": "{other}"}}'.encode()
    assert trigger_trace_context(structured, []) == {"traceparent": other}
    assert trigger_trace_context(b'{"traceparent": "bad", "specversion": "1.0"}', []) == {}
    assert trigger_trace_context(b"\xc3\x01avro", [("traceparent", b"bad")]) == {}


def test_tracing_is_off_unless_an_endpoint_is_configured() -> None:
    off = Settings(otel_exporter_otlp_endpoint=None, otel_exporter_otlp_traces_endpoint=None)
    assert off.otlp_traces_endpoint() is None
    assert tracing("reflux-test", off) is None
    assert isinstance(tracer("reflux-test", off), NoOpTracer)
    on = Settings(otel_exporter_otlp_endpoint="http://127.0.0.1:1/")
    assert on.otlp_traces_endpoint() == "http://127.0.0.1:1/v1/traces"
    disabled = Settings(otel_exporter_otlp_endpoint="http://127.0.0.1:1", otel_sdk_disabled=True)
    assert disabled.otlp_traces_endpoint() is None


def test_the_scheduler_exports_run_and_attempt_spans_with_the_derived_ids() -> None:
    from opentelemetry.sdk.resources import Resource

    from processors.scheduler.state import RunState, RunStatus, StepState
    from schemas.models import RunSucceeded, StepRef, StepSucceeded
    from schemas.statuses import StepStatus

    began = datetime(2026, 1, 1, tzinfo=UTC)
    ended = began + timedelta(seconds=2)
    before = RunState(
        run_id="r1",
        status=RunStatus.RUNNING,
        workflow_id="wf",
        started_at=began,
        trace_context={"traceparent": GOOD},
        steps={
            "s": StepState(
                step_id="s",
                status=StepStatus.DISPATCHED,
                invocation_id="inv-1",
                dispatched_at=began + timedelta(seconds=1),
            )
        },
    )
    after = before.model_copy(update={"status": RunStatus.SUCCEEDED})
    step = StepRef(step_id="s", node="transform", node_version="1.0.0")
    events = [
        StepSucceeded(
            run_id="r1",
            seq=3,
            step=step,
            attempt=1,
            invocation_id="inv-1",
            output={},
            cache_hit=False,
            duration_ms=5,
        ),
        RunSucceeded(run_id="r1", seq=4, occurred_at=ended, outputs={}, duration_ms=2000),
    ]
    attempt, run = spans_for(before, after, events, Resource.create({}))
    trace = run_trace("r1", before.trace_context)
    assert run.context is not None and run.parent is not None
    assert attempt.context is not None and attempt.parent is not None
    assert f"{run.context.span_id:016x}" == trace.run_span_id
    assert f"{run.parent.span_id:016x}" == SPAN and f"{run.context.trace_id:032x}" == TRACE
    assert f"{attempt.context.span_id:016x}" == attempt_span_id("r1", "s", "inv-1")
    assert f"{attempt.parent.span_id:016x}" == trace.run_span_id
    assert attempt.start_time == int((began + timedelta(seconds=1)).timestamp() * 1e9)
    assert (run.start_time, run.end_time) == (
        int(began.timestamp() * 1e9),
        int(ended.timestamp() * 1e9),
    )


def test_http_request_sends_the_context_but_never_over_the_workflows_own() -> None:
    from node_workers.node import NodeContext
    from node_workers.nodes.http_request import HttpRequestInput, HttpRequestNode

    node = HttpRequestNode()
    ctx = NodeContext(
        invocation_id="inv-1",
        run_id="r1",
        step_id="s",
        attempt=1,
        trace_context={"traceparent": GOOD},
    )
    # Tracing off (no span of ours is current): the invocation's context goes on.
    sent = node._headers(HttpRequestInput.model_validate({"url": "http://example.com/"}), ctx)
    assert sent["traceparent"] == GOOD
    own = f"00-{'a' * 32}-{'b' * 16}-01"
    params = HttpRequestInput.model_validate(
        {"url": "http://example.com/", "headers": {"TraceParent": own}}
    )
    sent = node._headers(params, ctx)
    assert sent["TraceParent"] == own and "traceparent" not in sent


def test_an_inline_attempt_is_an_internal_span_marked_with_the_scheduler() -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanKind

    from processors.scheduler.inline import INLINE_WORKER, InlinePolicy
    from tests.support.scheduler_simulation import Simulation

    spec = {
        "id": "wf",
        "steps": [{"id": "s", "node": "transform@1.0.0", "params": {"expression": "`1`"}}],
    }
    sim = Simulation(spec, inline_node=InlinePolicy(enabled=True))
    decision = sim.start(trace_context={"traceparent": GOOD})
    assert decision.state is not None
    attempt, run = spans_for(None, decision.state, decision.events, Resource.create({}))
    assert attempt.kind is SpanKind.INTERNAL and run.name == "run wf"
    assert attempt.attributes is not None
    assert attempt.attributes["reflux.worker"] == INLINE_WORKER
    assert attempt.parent is not None
    assert f"{attempt.parent.span_id:016x}" == run_trace("run-1", {"traceparent": GOOD}).run_span_id
