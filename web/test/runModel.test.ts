// The console's live run model (src/pages/runs/runModel.ts) folds the same events as the engine
// (processors/scheduler/evolve.py). Every golden run log the engine's own tests replay
// (tests/fixtures/runs/**.jsonl, each with the engine's summary of the folded run) is folded
// here too: the run's status and each step's status, attempt and output must be the engine's.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

import { apply, emptyRun, stepEvents } from "../src/pages/runs/runModel";
import type { RunEvent } from "../src/pages/runs/types";

const FIXTURES = join(__dirname, "..", "..", "tests", "fixtures", "runs");

interface StepSummary {
  status: string;
  attempt: number;
  output?: unknown;
}

interface Summary {
  status: string;
  failed_step: string | null;
  steps: Record<string, StepSummary>;
}

function goldenLogs(): { name: string; log: string; summary: string }[] {
  const found = [];
  for (const folder of ["", ...readdirSync(FIXTURES, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name)]) {
    for (const file of readdirSync(join(FIXTURES, folder))) {
      if (!file.endsWith(".jsonl")) continue;
      const base = file.slice(0, -".jsonl".length);
      found.push({ name: join(folder, base), log: join(FIXTURES, folder, file), summary: join(FIXTURES, folder, `${base}.summary.json`) });
    }
  }
  return found;
}

/** A line of a golden log as the API streams it (GET /v1/runs/{id}/events). */
function asApiEvent(line: string): RunEvent {
  const { event, type } = JSON.parse(line) as { event: Record<string, unknown>; type: string };
  return {
    seq: event.seq as number,
    event_type: type.split(".").pop() as string,
    event_id: event.event_id as string,
    occurred_at: event.occurred_at as string,
    payload: event,
  };
}

function fold(path: string) {
  const run = emptyRun();
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (line.trim()) apply(run, asApiEvent(line));
  }
  return run;
}

const logs = goldenLogs();

describe("the console folds every golden run log as the engine does", () => {
  it("finds the golden logs", () => {
    expect(logs.length).toBeGreaterThan(50);
  });

  it.each(logs.map((l) => [l.name, l] as const))("%s", (_name, { log, summary }) => {
    const expected = JSON.parse(readFileSync(summary, "utf8")) as Summary;
    const run = fold(log);
    expect(run.runStatus).toBe(expected.status);
    if (expected.status === "failed") expect(run.failedStep).toBe(expected.failed_step);
    for (const [stepId, step] of Object.entries(expected.steps)) {
      const live = run.steps.get(stepId);
      expect({ step: stepId, status: live?.status ?? "pending", attempt: live?.attempt ?? 0 }).toEqual({
        step: stepId,
        status: step.status,
        attempt: step.attempt,
      });
      if (step.status === "succeeded" && live?.outputRef == null) expect(live?.output).toEqual(step.output);
    }
  });
});

describe("apply", () => {
  const event = (seq: number, event_type: string, payload: Record<string, unknown> = {}): RunEvent => ({
    seq,
    event_type,
    event_id: `e${seq}`,
    occurred_at: new Date(Date.UTC(2026, 0, 1, 0, 0, 0, seq)).toISOString(),
    payload,
  });

  it("ignores an event it has seen (a reconnect repeats some)", () => {
    const run = emptyRun();
    expect(apply(run, event(0, "RunStarted"))).toBe(true);
    expect(apply(run, event(0, "RunStarted"))).toBe(false);
    expect(run.events).toHaveLength(1);
  });

  it("treats a dispatch that schedules its step (ADR 0075) as both", () => {
    const run = emptyRun();
    apply(run, event(0, "RunStarted"));
    apply(run, event(1, "StepDispatched", { step: { step_id: "a" }, attempt: 1, scheduled: true, params: { x: 1 }, node_version: "1.0.0" }));
    const step = run.steps.get("a");
    expect(step).toMatchObject({ status: "dispatched", attempt: 1, params: { x: 1 }, nodeVersion: "1.0.0" });
    expect(run.segments).toMatchObject([{ step: "a", kind: "queued", end: null }]);
    apply(run, event(2, "StepSucceeded", { step: { step_id: "a" }, attempt: 1, output: 2 }));
    expect(run.steps.get("a")).toMatchObject({ status: "succeeded", output: 2 });
    expect(run.segments).toMatchObject([{ step: "a", kind: "running", outcome: "succeeded" }]);
    expect(stepEvents(run, "a").map((e) => e.seq)).toEqual([2, 1]);
  });
});

describe("a cancel", () => {
  const at = (seq: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, 0, seq)).toISOString();
  const event = (seq: number, event_type: string, payload: Record<string, unknown> = {}): RunEvent => ({
    seq,
    event_type,
    event_id: `e${seq}`,
    occurred_at: at(seq),
    payload,
  });

  it("ends every step that had not ended, those added by a mutation included, as the engine does", () => {
    const run = emptyRun();
    apply(run, event(0, "RunStarted", { definition: { steps: [{ id: "a" }, { id: "b" }, { id: "gone" }] } }));
    apply(run, event(1, "StepScheduled", { step: { step_id: "a" }, attempt: 1 }));
    apply(run, event(2, "StepSucceeded", { step: { step_id: "a" }, attempt: 1, output: 1 }));
    apply(run, event(3, "GraphMutated", { mutation: { type: "add_step", step_id: "added" } }));
    apply(run, event(4, "GraphMutated", { mutation: { type: "remove_step", step_id: "gone" } }));
    apply(run, event(5, "RunCancelled"));
    expect(Object.fromEntries([...run.steps].map(([id, s]) => [id, s.status]))).toEqual({
      a: "succeeded",
      b: "cancelled",
      added: "cancelled",
    });
  });
});
