// A run folded from its events, in the browser, for the live view: step statuses, what each
// step was given and produced, and the timeline's segments. Pure and incremental: `apply` mutates
// one model per event (a 1,000-step run has thousands of events; copying maps per event would
// not keep up), and the page re-renders once per animation frame, not once per event.
//
// Statuses use the scheduler's vocabulary (schemas/statuses.py), so the live graph and the
// time-travel graph (GET /v1/runs/{id}/graph?seq=N, folded by the engine itself) agree.

import type { ErrorInfo, PayloadRef, RunEvent } from "./types";

export type SegmentKind = "queued" | "running" | "backoff" | "waiting";

export interface Segment {
  step: string;
  attempt: number;
  kind: SegmentKind;
  start: number;
  /** null while open (the timeline draws it to "now"). */
  end: number | null;
  outcome?: "succeeded" | "failed" | "timed_out" | "skipped";
}

export interface StepLive {
  status: string;
  attempt: number;
  params?: unknown;
  paramsRef?: PayloadRef | null;
  output?: unknown;
  outputRef?: PayloadRef | null;
  error?: ErrorInfo | null;
  nodeVersion?: string | null;
  worker?: string | null;
  cacheHit?: boolean;
  durationMs?: number | null;
  skipReason?: string | null;
}

export interface RunLive {
  lastSeq: number;
  runStatus: string;
  error: ErrorInfo | null;
  failedStep: string | null;
  startedAt: number | null;
  endedAt: number | null;
  steps: Map<string, StepLive>;
  segments: Segment[];
  /** Open segment per step (index into segments). */
  open: Map<string, number>;
  events: RunEvent[];
  /** Bumped when the graph's shape may have changed (a mutation, a rebind). */
  shapeChanges: number;
  /** The step ids of the run's definition (RunStarted, RunRebound): a cancel ends them all. */
  definedSteps: string[];
}

export function emptyRun(): RunLive {
  return {
    lastSeq: -1,
    runStatus: "pending",
    error: null,
    failedStep: null,
    startedAt: null,
    endedAt: null,
    steps: new Map(),
    segments: [],
    open: new Map(),
    events: [],
    shapeChanges: 0,
    definedSteps: [],
  };
}

function stepIdsOf(definition: unknown): string[] {
  const steps = (definition as { steps?: { id?: unknown }[] } | undefined)?.steps ?? [];
  return steps.map((s) => s.id).filter((id): id is string => typeof id === "string");
}

/** The step statuses a cancelled run leaves as `cancelled` (the engine's `_ABANDONED`,
 * processors/scheduler/evolve.py); steps that ended keep their status. */
const ABANDONED = new Set(["pending", "scheduled", "dispatched", "running", "retry_wait"]);

/** The events that set their step's current attempt, as the engine's fold does: the scheduling
 * and the end of an attempt, and the start of a meta step's (a wait, a map, a child run), which
 * has no StepScheduled. Not StepRetryScheduled: its attempt is the next one, still waiting. */
const SETS_ATTEMPT = new Set([
  "StepScheduled",
  "StepDispatched",
  "StepSucceeded",
  "StepFailed",
  "StepTimedOut",
  "StepWaitStarted",
  "MapStarted",
  "ChildRunRequested",
]);

const TERMINAL_RUN_EVENTS: Record<string, string> = {
  RunSucceeded: "succeeded",
  RunFailed: "failed",
  RunCancelled: "cancelled",
};

function stepOf(event: RunEvent): string | null {
  const step = event.payload.step as { step_id?: string } | string | undefined;
  if (typeof step === "string") return step;
  return step?.step_id ?? null;
}

function time(value: unknown, fallback: number): number {
  if (typeof value !== "string") return fallback;
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? fallback : parsed;
}

function closeOpen(run: RunLive, step: string, at: number, outcome?: Segment["outcome"]): Segment | null {
  const index = run.open.get(step);
  if (index === undefined) return null;
  const segment = run.segments[index];
  segment.end = Math.max(at, segment.start);
  if (outcome) segment.outcome = outcome;
  run.open.delete(step);
  return segment;
}

function openSegment(run: RunLive, step: string, attempt: number, kind: SegmentKind, start: number, end: number | null = null) {
  run.segments.push({ step, attempt, kind, start, end });
  if (end === null) run.open.set(step, run.segments.length - 1);
}

function finish(run: RunLive, step: string, attempt: number, at: number, outcome: Segment["outcome"]) {
  const closed = closeOpen(run, step, at, outcome);
  // A step evaluated in the scheduler (transform, condition) or answered by the cache has no
  // StepStarted: its queued segment was its whole execution.
  if (closed && closed.kind === "queued") closed.kind = "running";
  if (!closed && outcome !== "skipped") openSegment(run, step, attempt, "running", at, at);
  if (closed) closed.outcome = outcome;
}

/** Folds one event into the model (events at or before lastSeq are ignored: a reconnect may
 * repeat some). Returns whether it was new. */
export function apply(run: RunLive, event: RunEvent): boolean {
  if (event.seq <= run.lastSeq) return false;
  run.lastSeq = event.seq;
  run.events.push(event);
  const at = time(event.occurred_at, Date.now());
  const p = event.payload;
  const stepId = stepOf(event);
  const attempt = typeof p.attempt === "number" ? p.attempt : 0;
  const step = (id: string): StepLive => {
    let found = run.steps.get(id);
    if (!found) {
      found = { status: "pending", attempt: 0 };
      run.steps.set(id, found);
    }
    return found;
  };

  switch (event.event_type) {
    case "RunStarted":
      run.runStatus = "running";
      run.startedAt = at;
      run.definedSteps = stepIdsOf(p.definition);
      break;
    case "RunPaused":
      run.runStatus = "paused";
      break;
    case "RunResumed":
      run.runStatus = "running";
      break;
    case "GraphMutated": {
      run.shapeChanges += 1;
      const mutation = p.mutation as { type?: string; step_id?: string } | undefined;
      const id = mutation?.step_id;
      if (mutation?.type === "add_step" && id && !run.definedSteps.includes(id)) run.definedSteps.push(id);
      if (mutation?.type === "remove_step" && id) {
        run.definedSteps = run.definedSteps.filter((d) => d !== id);
        run.steps.delete(id);
      }
      break;
    }
    case "RunRebound":
      run.shapeChanges += 1;
      run.definedSteps = stepIdsOf(p.definition);
      run.runStatus = "running";
      run.endedAt = null;
      break;
    case "StepsReset":
      for (const id of (p.step_ids as string[] | undefined) ?? []) {
        const s = step(id);
        s.status = "pending";
        s.error = null;
        closeOpen(run, id, at);
      }
      run.runStatus = "running";
      run.endedAt = null;
      break;
    default:
      break;
  }
  if (event.event_type in TERMINAL_RUN_EVENTS) {
    run.runStatus = TERMINAL_RUN_EVENTS[event.event_type];
    run.endedAt = at;
    if (event.event_type === "RunFailed") {
      run.error = (p.error as ErrorInfo | undefined) ?? null;
      // The event names the step as a StepRef ({step_id, node, ...}); older logs as a string.
      const failed = p.failed_step as { step_id?: string } | string | null | undefined;
      run.failedStep = typeof failed === "string" ? failed : (failed?.step_id ?? null);
    }
    if (event.event_type === "RunCancelled") {
      // As the engine's fold: every step that had not ended is cancelled, those that never
      // had an event included.
      for (const id of run.definedSteps) step(id);
      for (const s of run.steps.values()) if (ABANDONED.has(s.status)) s.status = "cancelled";
    }
    for (const id of [...run.open.keys()]) closeOpen(run, id, at);
    return true;
  }
  if (stepId === null) return true;

  const s = step(stepId);
  if (SETS_ATTEMPT.has(event.event_type) && attempt > 0) s.attempt = attempt;
  // A dispatch that schedules its step too (StepDispatched version 3, ADR 0075) is both.
  const scheduling =
    event.event_type === "StepScheduled" ||
    (event.event_type === "StepDispatched" && p.scheduled === true);
  if (scheduling) {
    closeOpen(run, stepId, at);
    s.status = "scheduled";
    s.attempt = attempt;
    s.params = p.params;
    s.paramsRef = (p.params_ref as PayloadRef | null | undefined) ?? null;
    s.error = null;
    if (run.runStatus === "failed") run.runStatus = "running"; // a re-drive reopened it
    run.endedAt = run.runStatus === "running" ? null : run.endedAt;
    openSegment(run, stepId, attempt, "queued", at);
  }
  switch (event.event_type) {
    case "StepScheduled":
      break;
    case "StepDispatched":
      s.status = "dispatched";
      s.nodeVersion = (p.node_version as string | undefined) ?? s.nodeVersion;
      break;
    case "StepStarted": {
      s.status = "running";
      s.worker = (p.worker as string | undefined) ?? null;
      const started = time(p.started_at, at);
      closeOpen(run, stepId, started);
      openSegment(run, stepId, attempt, "running", started);
      break;
    }
    case "StepWaitStarted":
      s.status = "running";
      closeOpen(run, stepId, at);
      openSegment(run, stepId, attempt, "waiting", at);
      break;
    case "StepSucceeded":
      s.status = "succeeded";
      s.output = p.output;
      s.outputRef = (p.output_ref as PayloadRef | null | undefined) ?? null;
      s.cacheHit = Boolean(p.cache_hit);
      s.durationMs = (p.duration_ms as number | null | undefined) ?? null;
      finish(run, stepId, attempt, at, "succeeded");
      break;
    case "StepFailed":
      s.status = "failed";
      s.error = (p.error as ErrorInfo | undefined) ?? null;
      finish(run, stepId, attempt, at, "failed");
      break;
    case "StepTimedOut":
      s.status = "timed_out";
      s.error = { error_class: "StepTimedOut", message: `timed out after ${String(p.timeout_ms)} ms`, retryable: true };
      finish(run, stepId, attempt, at, "timed_out");
      break;
    case "StepRetryScheduled":
      s.status = "retry_wait";
      closeOpen(run, stepId, at, "failed");
      openSegment(run, stepId, attempt, "backoff", at, time(p.next_attempt_at, at));
      break;
    case "StepSkipped":
      s.status = "skipped";
      s.skipReason = (p.reason as string | undefined) ?? null;
      closeOpen(run, stepId, at, "skipped");
      break;
    case "MapStarted":
    case "ChildRunRequested":
      s.status = "running";
      break;
    default:
      break;
  }
  return true;
}

/** The events that concern one step, newest first. */
export function stepEvents(run: RunLive, stepId: string): RunEvent[] {
  return run.events.filter((e) => stepOf(e) === stepId || ((e.payload.step_ids as string[] | undefined) ?? []).includes(stepId)).reverse();
}

export { stepOf };
