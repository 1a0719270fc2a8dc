"""Golden run logs: scenarios played by :class:`Simulation`, written as JSON Lines fixtures.

``python -m tests.support.scheduler_golden [--out tests/fixtures/runs] [--check]`` writes, per
scenario, ``<name>.jsonl`` (one run event per line: ``{"type": <Avro name>, "event": {...}}``)
and ``<name>.summary.json`` (:meth:`RunState.summary` of the final state). Tests replay the
committed logs with the current ``evolve`` and compare summaries, so a change that makes old logs
replay differently fails until it is deliberate (regenerate, review the diff, commit).
``--check`` regenerates in memory and fails if the committed files differ (decide changed).
``tests/fixtures/runs/before-step-started/`` keeps the logs as they were before ``StepStarted``
existed (never regenerated): they must keep replaying to their summaries.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from processors.scheduler.child_runs import map_child_run_id
from processors.scheduler.decide import TIMEOUT_GRACE_MS, RegisteredWorkflow
from processors.scheduler.evolve import RUN_EVENT_TYPES, RunEvent, fold
from processors.scheduler.inline import InlinePolicy
from processors.scheduler.retry_gate import (
    CircuitPolicy,
    GatePolicy,
    RetryGate,
    Signal,
    SignalKind,
)
from processors.scheduler.state import RunState
from schemas.models import (
    MODELS,
    ChildRunFinished,
    ErrorInfo,
    FireTimer,
    GraphMutationType,
    NodeInvocation,
    SignalRun,
    StartRun,
    TraceStatus,
)
from tests.support.scheduler_simulation import NO_ANSWER, NOT_PICKED_UP, Simulation
from workflows.node_catalog import StaticNodeCatalog
from workflows.validation import parse_workflow

__all__ = [
    "SCENARIOS",
    "dump_events",
    "load_events",
    "main",
    "replay_file",
]

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "runs"

CATALOG = StaticNodeCatalog(
    {
        "http.request": ["1.0.0", "1.4.2", "2.0.0"],
        "transform": ["1.0.0", "1.2.0"],
        "condition": ["1.0.0"],
        "llm.summarize": ["0.3.0"],
        "webhook.trigger": ["1.0.0"],
    }
)


def _echo(invocation: NodeInvocation) -> Any:
    """A worker that answers with what it was asked (so outputs show the params flowed)."""
    return {"step": invocation.step.step_id, "params": invocation.params}


# -- scenarios -----------------------------------------------------------------------------------

LINEAR = """
id: linear
inputs:
  url: {type: string, required: true}
steps:
  - id: fetch
    node: http.request@^1
    params: {url: "{{ inputs.url }}", method: GET}
  - id: parse
    node: transform@1.2.0
    needs: [fetch]
    params: {body: "{{ steps.fetch.output.params.url }}"}
  - id: store
    node: transform@^1
    needs: [parse]
    params: {note: "parsed {{ steps.parse.output.step }}"}
outputs:
  note: "{{ steps.store.output.params.note }}"
"""


def linear() -> Simulation:
    sim = Simulation(LINEAR, node_catalog=CATALOG)
    sim.start({"url": "https://example.com/a"})
    sim.run_workers(_echo)
    return sim


DIAMOND = """
id: diamond
steps:
  - {id: a, node: transform@^1, params: {n: 1}}
  - {id: b, node: transform@^1, needs: [a], params: {n: "{{ steps.a.output.params.n }}"}}
  - {id: c, node: transform@^1, needs: [a], params: {n: 3}}
  - id: d
    node: transform@^1
    needs: [b, c]
    params: {sum: "{{ [steps.b.output.params.n, steps.c.output.params.n] }}"}
outputs: {sum: "{{ steps.d.output.params.sum }}"}
"""


def diamond() -> Simulation:
    sim = Simulation(DIAMOND, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(_echo)
    return sim


FAN = """
id: fan-out-fan-in
inputs:
  region: {type: string, default: eu}
steps:
  - {id: split, node: transform@^1, params: {region: "{{ inputs.region }}"}}
  - {id: w1, node: http.request@^1, needs: [split], params: {shard: 1}}
  - {id: w2, node: http.request@^1, needs: [split], params: {shard: 2}}
  - {id: w3, node: http.request@^1, needs: [split], params: {shard: 3}}
  - id: join
    node: transform@^1
    needs: [w1, w2, w3]
    params:
      shards: "{{ [steps.w1.output, steps.w2.output, steps.w3.output][*].params.shard }}"
outputs: {shards: "{{ steps.join.output.params.shards }}"}
"""


def fan_out_fan_in() -> Simulation:
    sim = Simulation(FAN, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(_echo)
    return sim


CONDITION = """
id: condition-skip
inputs:
  amount: {type: number, required: true}
steps:
  - {id: check, node: transform@^1, params: {amount: "{{ inputs.amount }}"}}
  - id: approve
    node: http.request@^1
    needs: [check]
    when: "steps.check.output.params.amount > `100`"
  - {id: notify, node: http.request@^1, needs: [approve], params: {msg: approved}}
  - id: auto
    node: transform@^1
    needs: [check]
    when: "steps.check.output.params.amount <= `100`"
outputs:
  approved: "{{ steps.approve.status }}"
  notified: "{{ steps.notify.status }}"
"""


def condition_skip() -> Simulation:
    sim = Simulation(CONDITION, node_catalog=CATALOG)
    sim.start({"amount": 42})
    sim.run_workers(_echo)
    return sim


RETRY = """
id: retry
defaults:
  retry: {max_attempts: 3, initial_backoff: 100ms, max_backoff: 1s, jitter: 0.5}
steps:
  - {id: flaky, node: http.request@^1, params: {url: "https://flaky.example"}}
  - id: after
    node: transform@^1
    needs: [flaky]
    params: {attempts: "{{ steps.flaky.attempt }}"}
outputs: {attempts: "{{ steps.after.output.params.attempts }}"}
"""


def _flaky(failures: int, error_class: str = "HttpStatus503", retryable: bool = True) -> Any:
    seen: dict[str, int] = {}

    def worker(invocation: NodeInvocation) -> Any:
        step = invocation.step.step_id
        seen[step] = seen.get(step, 0) + 1
        if step in ("flaky", "fetch") and seen[step] <= failures:
            return ErrorInfo(
                error_class=error_class,
                message=f"attempt {invocation.attempt} failed",
                retryable=retryable,
            )
        return _echo(invocation)

    return worker


def retry_then_success() -> Simulation:
    sim = Simulation(RETRY, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(_flaky(2))
    return sim


def retries_exhausted() -> Simulation:
    sim = Simulation(RETRY, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(_flaky(10))
    return sim


NON_RETRYABLE = """
id: non-retryable
steps:
  - id: flaky
    node: http.request@^1
    retry: {max_attempts: 5, non_retryable: [HttpStatus400]}
"""


def non_retryable() -> Simulation:
    sim = Simulation(NON_RETRYABLE, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(_flaky(10, "HttpStatus400"))
    return sim


TIMEOUT = """
id: step-timeout
steps:
  - id: slow
    node: http.request@^1
    timeout: 1s
    retry: {max_attempts: 2, initial_backoff: 200ms, jitter: 0}
outputs: {ok: "{{ steps.slow.output.params.ok }}"}
"""


def step_timeout() -> Simulation:
    sim = Simulation(TIMEOUT, node_catalog=CATALOG)
    sim.start()
    first = sim.invocation("slow")
    sim.run_workers(lambda inv: NO_ANSWER if inv.attempt == 1 else {"params": {"ok": True}})
    # The lost attempt answers after all: late, so a no-op.
    sim.result(first, status=TraceStatus.OK, output={"late": True})
    return sim


CIRCUIT = """
id: circuit
steps:
  - id: call
    node: http.request@^1
    params: {url: "https://sick.example/orders"}
    retry: {max_attempts: 4, initial_backoff: 100ms, jitter: 0}
"""


def circuit_held() -> Simulation:
    """A retry scheduled while its dependency's circuit was closed finds it open when its timer
    fires (other runs' failures opened it): it is held again (StepRetryScheduled, same attempt,
    reason circuit_open); after the cool-down it goes as the half-open probe, succeeds, and the
    circuit closes."""
    gate = RetryGate(GatePolicy(circuit=CircuitPolicy(min_samples=3, cooldown_ms=2_000, probes=1)))
    sim = Simulation(CIRCUIT, node_catalog=CATALOG, retry_gate=gate)
    sim.start()
    sim.fail("call", "HttpStatus503")
    others = Signal("http.request sick.example", SignalKind.FAILURE, sim.now)
    gate.observe([others, others], sim.now)
    sim.run_workers(_echo)
    return sim


DEADLINE = """
id: run-deadline
deadline: 5s
steps:
  - {id: hang, node: http.request@^1}
"""


def run_deadline() -> Simulation:
    sim = Simulation(DEADLINE, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(lambda inv: NO_ANSWER)
    return sim


TWO_STEPS = """
id: two-steps
steps:
  - {id: first, node: transform@^1, params: {n: 1}}
  - {id: second, node: transform@^1, needs: [first], params: {n: 2}}
outputs: {n: "{{ steps.second.output.params.n }}"}
"""


def pause_resume() -> Simulation:
    sim = Simulation(TWO_STEPS, node_catalog=CATALOG)
    sim.start()
    sim.pause()
    sim.succeed("first", _echo(sim.invocation("first")))  # in flight: recorded while paused
    sim.resume()  # second is dispatched now
    sim.run_workers(_echo)
    return sim


def cancel() -> Simulation:
    sim = Simulation(TWO_STEPS, node_catalog=CATALOG)
    sim.start()
    first = sim.invocation("first")
    sim.cancel("no longer needed")
    sim.result(first, status=TraceStatus.OK, output={"late": True})  # ignored: the run is cancelled
    return sim


REDRIVE = """
id: redrive
steps:
  - {id: fetch, node: http.request@^1, params: {url: "https://bad.example"}}
  - id: use
    node: transform@^1
    needs: [fetch]
    params: {from: "{{ steps.fetch.output.params.url }}"}
outputs: {from: "{{ steps.use.output.params.from }}"}
"""


def redrive() -> Simulation:
    sim = Simulation(REDRIVE, node_catalog=CATALOG)
    sim.start()
    sim.fail("fetch", "DnsError", retryable=False)  # run fails
    sim.mutate("update_params", "fetch", {"url": "https://good.example"})  # the fix
    sim.redrive("fetch")
    sim.run_workers(_echo)
    return sim


REDRIVE_FROM = """
id: redrive-from
steps:
  - {id: fetch, node: http.request@^1, params: {url: "https://a.example"}}
  - {id: parse, node: transform@^1, needs: [fetch],
     params: {from: "{{ steps.fetch.output.params.url }}"}}
  - {id: side, node: transform@^1, needs: [fetch], params: {n: 1}}
  - {id: store, node: transform@^1, needs: [parse],
     params: {from: "{{ steps.parse.output.params.from }}"}}
outputs: {stored: "{{ steps.store.output.params.from }}"}
"""


def redrive_from() -> Simulation:
    """A succeeded run re-driven from a middle step (docs/decisions/0026): it reopens, the step
    and its downstream run again (attempt 2), fetch and side keep their outputs."""
    sim = Simulation(REDRIVE_FROM, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(_echo)
    sim.redrive_from("parse")
    sim.run_workers(_echo)
    return sim


REBIND_V1 = """
id: rebind
steps:
  - {id: fetch, node: http.request@^1, params: {url: "https://a.example"}}
  - {id: parse, node: transform@^1, needs: [fetch], params: {broken: true}}
  - {id: store, node: transform@^1, needs: [parse], params: {n: 1}}
  - {id: unused, node: transform@^1, needs: [store], params: {n: 2}}
outputs: {parsed: "{{ steps.parse.output.params.from }}"}
"""

REBIND_V2 = """
id: rebind
steps:
  - {id: fetch, node: http.request@^1, params: {url: "https://a.example"}}
  - {id: clean, node: transform@^1, needs: [fetch],
     params: {from: "{{ steps.fetch.output.params.url }}"}}
  - {id: parse, node: transform@^1, needs: [clean],
     params: {from: "{{ steps.clean.output.params.from }}"}}
  - {id: store, node: transform@^1, needs: [parse], params: {n: 1}}
outputs: {parsed: "{{ steps.parse.output.params.from }}"}
"""


def rebind() -> Simulation:
    """A failed run rebound to a fixed version 2 (docs/decisions/0026): parse gains a need
    (clean, new), unused (pending) is gone; fetch is not run again."""
    sim = Simulation(REBIND_V1, node_catalog=CATALOG)
    sim.start()
    sim.versions[2] = parse_workflow(REBIND_V2, node_catalog=CATALOG)
    sim.succeed("fetch", _echo(sim.invocation("fetch")))
    sim.fail("parse", "ParseError", retryable=False)
    sim.rebind(2)
    sim.run_workers(_echo)
    return sim


CACHE = """
id: cache
defaults:
  cache: {enabled: true, ttl: 1h}
steps:
  - {id: first, node: llm.summarize@^0.3, params: {text: hello}}
  - {id: second, node: llm.summarize@^0.3, needs: [first], params: {text: hello}}
  - id: fresh
    node: llm.summarize@^0.3
    needs: [second]
    params: {text: other}
    cache: {enabled: false}
outputs: {second: "{{ steps.second.output }}"}
"""


def cache_hit() -> Simulation:
    sim = Simulation(CACHE, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(_echo)  # first: miss + dispatch + cache write; second: hit
    return sim


MUTATION = """
id: mutation
steps:
  - {id: a, node: transform@^1, params: {v: 1}}
  - {id: b, node: transform@^1, needs: [a], params: {v: 2}}
  - {id: c, node: http.request@^1, needs: [a], params: {v: 3}}
  - {id: d, node: transform@^1, needs: [a], params: {v: 4}}
outputs: {b: "{{ steps.b.output.params }}"}
"""


def graph_mutation() -> Simulation:
    sim = Simulation(MUTATION, node_catalog=CATALOG)
    sim.start()
    sim.mutate(
        "update_params",
        "b",
        {"v": 20, "from_a": "{{ steps.a.output.params.v }}"},
        requested_by="alice",
        reason="b needs a's value",
    )
    sim.mutate("replace_node", "c", {"node": "http.request", "node_version": "^2"})
    sim.mutate("remove_step", "d")
    sim.mutate(
        "add_step",
        "e",
        {"node": "transform@^1", "needs": ["b"], "params": {"b": "{{ steps.b.output.params.v }}"}},
    )
    sim.run_workers(_echo)
    return sim


def graph_mutation_list() -> Simulation:
    """MutateGraph v2: a list refused as a whole (its 2nd operation), then one applied in one
    decision (insert `b2` before `b`'s dependent: remove and re-add it with new needs)."""
    sim = Simulation(MUTATION, node_catalog=CATALOG)
    sim.start()
    sim.mutate_all(
        [
            ("add_step", "x", {"node": "transform@^1", "needs": ["a"]}),
            ("remove_step", "a", {}),  # rejected: dispatched, not pending
        ],
        requested_by="alice",
    )
    sim.mutate_all(
        [
            ("add_step", "b2", {"node": "transform@^1", "needs": ["a"], "params": {"v": 5}}),
            ("remove_step", "b", {}),
            ("add_step", "b", {"node": "transform@^1", "needs": ["b2"],
                               "params": {"v": "{{ steps.b2.output.params.v }}"}}),
        ],
        requested_by="alice",
        reason="b reads b2",
    )  # fmt: skip
    sim.run_workers(_echo)
    return sim


def rejections() -> Simulation:
    sim = Simulation(TWO_STEPS, node_catalog=CATALOG)
    sim.start()
    sim.resume()  # rejected: running, not paused
    sim.redrive("first")  # rejected: dispatched, not failed
    sim.redrive("nope")  # rejected: no such step
    sim.mutate(GraphMutationType.REMOVE_STEP, "first")  # rejected: not pending
    sim.run_workers(_echo)
    sim.redrive("second")  # rejected: the run succeeded
    sim.pause()  # rejected: the run succeeded
    return sim


def start_rejected() -> Simulation:
    sim = Simulation(LINEAR, node_catalog=CATALOG)
    sim.start({"url": 42})  # rejected: wrong input type
    sim.start({"url": "https://example.com"}, workflow_version=9)  # rejected: unknown version
    sim.start({"url": "https://example.com"})  # a pending run can still start
    sim.run_workers(_echo)
    return sim


def stale_and_duplicate() -> Simulation:
    sim = Simulation(TIMEOUT, node_catalog=CATALOG)
    sim.start()
    first = sim.invocation("slow")
    sim.start_attempt(first)  # the timeout counts from here
    sim.advance(1_000 + TIMEOUT_GRACE_MS)
    timeout_timer = next(iter(sim.run.timers.values()))
    sim.fire_due()  # attempt 1 times out; a retry is scheduled
    sim.send(  # the same timeout fires again (re-emitted by the timer loop): no-op
        FireTimer(
            run_id=sim.run_id,
            timer_id=timeout_timer.timer_id,
            step_id=timeout_timer.step_id,
            attempt=timeout_timer.attempt,
            kind=timeout_timer.kind,
            due_at=timeout_timer.due_at,
        )
    )
    sim.result(
        first, status=TraceStatus.OK, output={"late": True}
    )  # late result of attempt 1: no-op
    sim.advance_and_fire(200)  # backoff over: attempt 2 dispatched
    second = sim.invocation("slow")
    sim.succeed("slow", {"params": {"ok": True}})
    sim.result(second, status=TraceStatus.OK, output={"duplicate": True})  # duplicate: no-op
    return sim


BACKLOG = """
id: backlog
steps:
  - id: call
    node: http.request@^1
    timeout: 1s
    retry: {max_attempts: 4, initial_backoff: 100ms, jitter: 0}
outputs: {ok: "{{ steps.call.output.ok }}"}
"""


def backlog() -> Simulation:
    """The invocation waits 30 s for a worker, then runs 400 ms: no timeout, no retry."""
    sim = Simulation(BACKLOG, node_catalog=CATALOG)
    sim.start()
    sim.advance(30_000)
    sim.fire_due()  # nothing is due: waiting in the queue is not execution
    sim.result(sim.invocation("call"), status=TraceStatus.OK, output={"ok": True}, duration_ms=400)
    return sim


QUEUE_TIMEOUT = """
id: queue-timeout
steps:
  - id: call
    node: http.request@^1
    timeout: 1s
    queue_timeout: 5s
    retry: {max_attempts: 3}
"""


def queue_timeout() -> Simulation:
    """No worker starts the attempt within 5 s: the step fails with QueueTimeout, not retried."""
    sim = Simulation(QUEUE_TIMEOUT, node_catalog=CATALOG)
    sim.start()
    sim.run_workers(lambda inv: NOT_PICKED_UP)
    sim.start_attempt(sim.invocation("call"))  # a worker gets to it after all: too late, a no-op
    return sim


HEARTBEATS = """
id: heartbeats
steps:
  - id: wait
    node: webhook.trigger@^1
    timeout: 1m
outputs: {payload: "{{ steps.wait.output.payload }}"}
"""


def heartbeats() -> Simulation:
    """A 50 s attempt heartbeating every 10 s: beats that move the timer by >= 30 s are logged."""
    sim = Simulation(HEARTBEATS, node_catalog=CATALOG)
    sim.start()
    sim.advance(2_000)  # two seconds in the queue
    invocation = sim.invocation("wait")
    sim.start_attempt(invocation)
    for beat in range(1, 5):
        sim.advance(10_000)
        sim.heartbeat(invocation, beat)
    sim.result(invocation, status=TraceStatus.OK, output={"payload": 1}, duration_ms=10_000)
    return sim


MAP = """
id: map
inputs:
  xs: {type: array, required: true}
steps:
  - id: each
    node: meta.map
    params:
      items: "{{ inputs.xs }}"
      node: transform@^1
      params: {expression: "@", data: "{{ item }}", at: "{{ index }}"}
      concurrency: 2
      chunk_size: 3
      on_failure: collect
    retry: {max_attempts: 2, initial_backoff: 100ms, jitter: 0}
  - id: after
    node: transform@^1
    needs: [each]
    params: {failed: "{{ steps.each.output.failed }}"}
outputs:
  results: "{{ steps.each.output.results }}"
  errors: "{{ steps.each.output.errors }}"
"""


def map_chunks() -> Simulation:
    """A map of 8 items in chunks of 3, one item retried (then ok), one failing for good."""

    def worker(invocation: NodeInvocation) -> Any:
        if invocation.chunk is None:
            return _echo(invocation)
        entries: list[Any] = []
        for params in invocation.params:
            if params["data"] == "flaky" and invocation.attempt == 1:
                error = ErrorInfo(error_class="Flaky", message="once", retryable=True)
                entries.append({"error": error.model_dump(mode="json")})
            elif params["data"] == "bad":
                error = ErrorInfo(error_class="Bad", message="never", retryable=False)
                entries.append({"error": error.model_dump(mode="json")})
            else:
                entries.append({"output": {"result": params["data"], "at": params["at"]}})
        return entries

    sim = Simulation(MAP, node_catalog=CATALOG)
    sim.start({"xs": ["a", "b", "flaky", "d", "bad", "f", "g", "h"]})
    sim.run_workers(worker)
    return sim


SWITCH = """
id: switch
inputs:
  kind: {type: string, required: true}
steps:
  - id: route
    node: meta.switch
    params:
      value: "{{ inputs.kind }}"
      cases: {small: [cheap], large: [careful]}
      default: [fallback]
  - {id: cheap, node: transform@^1, needs: [route], params: {v: 1}}
  - {id: careful, node: transform@^1, needs: [route], params: {v: 2}}
  - {id: fallback, node: transform@^1, needs: [route], params: {v: 3}}
  - {id: review, node: transform@^1, needs: [careful], params: {v: 4}}
outputs:
  case: "{{ steps.route.output.case }}"
"""


MAP_CHILD = """
id: item_child
inputs:
  x: {type: string, required: true}
steps:
  - {id: work, node: transform@^1, params: {x: "{{ inputs.x }}"}}
outputs:
  x: "{{ steps.work.output.params.x }}"
"""

MAP_OVER_WORKFLOW = """
id: map_over_workflow
inputs:
  xs: {type: array, required: true}
steps:
  - id: each
    node: meta.map
    retry: {max_attempts: 2, initial_backoff: 100}
    params:
      items: "{{ inputs.xs }}"
      workflow: item_child
      inputs: {x: "{{ item }}"}
      concurrency: 2
      on_failure: collect
outputs:
  results: "{{ steps.each.output.results }}"
  errors: "{{ steps.each.output.errors }}"
"""


class _WithChildWorkflow(Simulation):
    """The parent only: its children's ends are fed as ChildRunFinished by the scenario."""

    child = parse_workflow(MAP_CHILD)

    def _lookup(self, workflow_id: str, version: int | None) -> RegisteredWorkflow | None:
        if workflow_id == self.child.id:
            return RegisteredWorkflow(1, self.child)
        return super()._lookup(workflow_id, version)


def map_children() -> Simulation:
    """A map over a sub-workflow: 5 items, 2 children at a time, children ending out of order,
    one item retried as a new child (then ok), one failing for good (collect)."""
    sim = _WithChildWorkflow(MAP_OVER_WORKFLOW, node_catalog=CATALOG)
    sim.start({"xs": ["a", "flaky", "bad", "d", "e"]})
    answered: set[str] = set()
    for _ in range(50):
        starts = [
            c
            for d in sim.decisions
            for c in d.commands
            if isinstance(c, StartRun) and c.run_id not in answered
        ]
        if not starts:
            if not sim.fire_due() and not sim.advance_and_fire(200):
                break
            continue
        start = starts[-1]  # the youngest child first: ends come back out of order
        answered.add(start.run_id)
        assert start.parent is not None
        x = start.inputs["x"]
        index = start.parent.iteration
        assert index is not None
        first_try = start.run_id == map_child_run_id(sim.run_id, "each", 1, index, 1)
        error = None
        if x == "bad":
            error = ErrorInfo(error_class="Bad", message="never", retryable=False)
        elif x == "flaky" and first_try:
            error = ErrorInfo(error_class="Flaky", message="once", retryable=True)
        sim.advance(5)
        sim.send(
            ChildRunFinished(
                run_id=sim.run_id,
                command_id=sim.new_id(),
                occurred_at=sim.now,
                child_run_id=start.run_id,
                step_id=start.parent.step_id,
                attempt=start.parent.attempt,
                iteration=start.parent.iteration,
                status="failed" if error is not None else "succeeded",
                outputs=None if error is not None else {"x": x},
                error=error,
            )
        )
    return sim


def switch_branch() -> Simulation:
    """The "large" case: careful and review run; cheap and fallback are skipped."""
    sim = Simulation(SWITCH, node_catalog=CATALOG)
    sim.start({"kind": "large"})
    sim.run_workers(_echo)
    return sim


WAITS = """
id: waits
steps:
  - {id: nap, node: meta.wait, params: {duration: 1h}}
  - id: approve
    node: meta.signal
    needs: [nap]
    params: {name: approval, timeout: 1d}
  - id: ship
    node: transform@^1
    needs: [approve]
    when: "steps.approve.output.payload.approved == `true`"
    params: {by: "{{ steps.approve.output.payload.by }}"}
outputs: {by: "{{ steps.ship.output.params.by }}"}
"""


def wait_and_signal() -> Simulation:
    """Durable waits (ADR 0057): a 1 h timer wait, then an approval signal: one to the wrong
    name (refused), then the right one; the approval's timeout timer goes with its wait."""
    sim = Simulation(WAITS, node_catalog=CATALOG)
    sim.start()
    sim.advance_and_fire(3_600_000)
    for name in ("aproval", "approval"):
        sim.advance(60_000)
        sim.send(
            SignalRun(
                **sim._command_fields(),
                requested_by="ann",
                signal=name,
                payload={"approved": True, "by": "ann"},
            )
        )
    sim.run_workers(_echo)
    return sim


INLINE = """
id: inline
inputs:
  items: {type: array, required: true}
steps:
  - id: fetch
    node: http.request@^1
    params: {url: "https://shop.example/items"}
  - id: pick
    node: transform@1.0.0
    needs: [fetch]
    params: {expression: "[?price > `10`].name", data: "{{ inputs.items }}"}
  - id: any
    node: condition@1.0.0
    needs: [pick]
    params: {expression: "length(@) > `1`", data: "{{ steps.pick.output.result }}"}
  - id: remote
    node: transform@1.0.0
    needs: [pick]
    inline: false
    params: {expression: "length(@)", data: "{{ steps.pick.output.result }}"}
  - id: broken
    node: transform@1.0.0
    needs: [any, remote]
    params: {expression: "abs(name)", data: {name: "x"}}
outputs: {picked: "{{ steps.pick.output.result }}"}
"""


def inline_steps() -> Simulation:
    """Pure steps evaluated in decide (ADR 0064): pick and any inline after fetch's result, one
    step kept on a worker (inline: false), and an inline evaluation error failing the run."""
    sim = Simulation(INLINE, node_catalog=CATALOG, inline_node=InlinePolicy(enabled=True))
    sim.start({"items": [{"name": "a", "price": 5}, {"name": "b", "price": 15}]})
    sim.run_workers(_echo)
    return sim


SCENARIOS: dict[str, Callable[[], Simulation]] = {
    "linear": linear,
    "diamond": diamond,
    "fan_out_fan_in": fan_out_fan_in,
    "condition_skip": condition_skip,
    "retry_then_success": retry_then_success,
    "retries_exhausted": retries_exhausted,
    "non_retryable": non_retryable,
    "step_timeout": step_timeout,
    "run_deadline": run_deadline,
    "pause_resume": pause_resume,
    "cancel": cancel,
    "redrive": redrive,
    "redrive_from": redrive_from,
    "rebind": rebind,
    "cache_hit": cache_hit,
    "graph_mutation": graph_mutation,
    "graph_mutation_list": graph_mutation_list,
    "rejections": rejections,
    "start_rejected": start_rejected,
    "stale_and_duplicate": stale_and_duplicate,
    "backlog": backlog,
    "queue_timeout": queue_timeout,
    "heartbeats": heartbeats,
    "circuit_held": circuit_held,
    "map_chunks": map_chunks,
    "map_children": map_children,
    "switch_branch": switch_branch,
    "wait_and_signal": wait_and_signal,
    "inline_steps": inline_steps,
}


# -- fixture I/O ----------------------------------------------------------------------------------


def dump_events(events: Iterable[RunEvent]) -> str:
    lines = [
        json.dumps(
            {"type": event.AVRO_NAME, "event": event.model_dump(mode="json")},
            sort_keys=True,
            ensure_ascii=False,
        )
        for event in events
    ]
    return "\n".join(lines) + "\n"


def load_events(text: str) -> list[RunEvent]:
    events: list[RunEvent] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        model = MODELS.get(record["type"])
        if model is None or not issubclass(model, RUN_EVENT_TYPES):
            raise ValueError(
                f"line {number}: Expected a run event type, but got {record['type']!r}"
            )
        event = model.model_validate(record["event"])
        assert isinstance(event, RUN_EVENT_TYPES)
        events.append(event)
    return events


def replay_file(path: Path) -> RunState:
    state = fold(load_events(path.read_text(encoding="utf-8")))
    if state is None:
        raise ValueError(f"{path} holds no events")
    return state


def _summary_text(state: RunState) -> str:
    return json.dumps(state.summary(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="fail if fixtures are out of date")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stale: list[str] = []
    for name, scenario in SCENARIOS.items():
        sim = scenario()
        files = {
            out / f"{name}.jsonl": dump_events(sim.log),
            out / f"{name}.summary.json": _summary_text(sim.run),
        }
        for path, text in files.items():
            if args.check:
                if not path.exists() or path.read_text(encoding="utf-8") != text:
                    stale.append(path.name)
            else:
                path.write_text(text, encoding="utf-8")
        if not args.check:
            print(f"{name}: {len(sim.log)} events, run {sim.run.status}")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
