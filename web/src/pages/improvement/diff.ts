// A proposal's diff as graph steps (pure): its changes applied to the base version's steps the
// way workflows/mutations.py applies them, each step marked added / removed / changed. A removed
// step stays on the graph (struck out) so the reviewer sees what goes; a step added and then
// changed by a later operation is still "added".

import type { GraphStep } from "../../components/graph/WorkflowGraph";
import type { GraphChange } from "./types";

interface StepDef {
  id: string;
  node: string;
  needs: string[];
}

function asRecord(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

function stepOf(raw: unknown, fallbackId = ""): StepDef {
  const step = asRecord(raw);
  const needs = Array.isArray(step.needs) ? step.needs.filter((n): n is string => typeof n === "string") : [];
  return {
    id: typeof step.id === "string" ? step.id : fallbackId,
    node: typeof step.node === "string" ? step.node : "?",
    needs,
  };
}

/** The steps of a stored definition (`{"steps": [...]}`). */
export function definitionSteps(definition: unknown): StepDef[] {
  const steps = asRecord(definition).steps;
  return Array.isArray(steps) ? steps.map((s) => stepOf(s)) : [];
}

function nodeText(data: unknown): string | null {
  const body = asRecord(data);
  if (typeof body.node !== "string") return null;
  const version = body.node_version;
  return typeof version === "string" && !body.node.includes("@") ? `${body.node}@${version}` : body.node;
}

/** The base steps with `changes` applied, marked; a change that does not apply is skipped
 * (the validation report says why). */
export function diffSteps(base: StepDef[], changes: GraphChange[]): GraphStep[] {
  const result: GraphStep[] = base.map((s) => ({ ...s, needs: [...s.needs] }));
  const find = (id: string) => result.find((s) => s.id === id && s.change !== "removed");
  for (const change of changes) {
    const existing = find(change.step_id);
    if (change.type === "add_step") {
      if (existing) continue;
      const step = stepOf(change.data, change.step_id);
      result.push({ id: change.step_id, node: step.node, needs: step.needs, change: "added" });
      continue;
    }
    if (!existing) continue;
    if (change.type === "remove_step") {
      if (existing.change === "added") result.splice(result.indexOf(existing), 1);
      else existing.change = "removed";
    } else {
      if (change.type === "replace_node") existing.node = nodeText(change.data) ?? existing.node;
      if (existing.change !== "added") existing.change = "changed";
    }
  }
  return result;
}

/** What a person may ask of a proposal in this status (processors/mutations/lifecycle.py
 * TRANSITIONS): the API would refuse anything else with 409. */
export type Action = "approve" | "reject" | "keep" | "rollback";

export function allowedActions(status: string): Action[] {
  switch (status) {
    case "proposed":
    case "validating":
      return ["reject"];
    case "validated":
      return ["approve", "reject"];
    case "applied":
      return ["keep", "rollback"];
    default:
      return [];
  }
}
