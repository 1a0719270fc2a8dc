// Workflow definitions as the API serves them (normalised JSON, api/models/workflows.py), and
// what the workflow pages derive from them: graph steps and a version-to-version diff. Pure.

import type { GraphStep } from "../../components/graph/WorkflowGraph";

export interface StepDefinition {
  id: string;
  node: string;
  needs?: string[];
  params?: Record<string, unknown>;
  [field: string]: unknown;
}

export interface Definition {
  id: string;
  steps: StepDefinition[];
  inputs?: Record<string, unknown>;
  [field: string]: unknown;
}

export interface WorkflowSummary {
  workflow_id: string;
  latest_version: number;
  version_count: number;
  registered_at: string;
  registered_by: string | null;
}

export interface WorkflowVersion {
  workflow_id: string;
  version: number;
  definition: Definition;
  registered_at: string;
  registered_by: string | null;
}

export interface Page<T> {
  data: T[];
  count: number;
}

export function graphSteps(definition: Definition): GraphStep[] {
  return definition.steps.map((s) => ({ id: s.id, node: s.node, needs: s.needs ?? [] }));
}

/** One field that differs between two versions of a step (`path` is inside the step). */
export interface FieldChange {
  step: string;
  path: string;
  before: unknown;
  after: unknown;
}

export interface DefinitionDiff {
  /** The steps of both versions: `to`'s in order, then the removed ones, marked by change. */
  steps: GraphStep[];
  added: string[];
  removed: string[];
  changed: string[];
  fields: FieldChange[];
}

export function diffDefinitions(from: Definition, to: Definition): DefinitionDiff {
  const before = new Map(from.steps.map((s) => [s.id, s]));
  const after = new Map(to.steps.map((s) => [s.id, s]));
  const added: string[] = [];
  const changed: string[] = [];
  const fields: FieldChange[] = [];
  const steps: GraphStep[] = to.steps.map((step) => {
    const old = before.get(step.id);
    const graph: GraphStep = { id: step.id, node: step.node, needs: step.needs ?? [] };
    if (!old) {
      added.push(step.id);
      return { ...graph, change: "added" };
    }
    const differences = diffValues(old, step, "");
    if (differences.length === 0) return graph;
    changed.push(step.id);
    fields.push(...differences.map((d) => ({ step: step.id, ...d })));
    return { ...graph, change: "changed" };
  });
  const removed = from.steps.filter((s) => !after.has(s.id)).map((s) => s.id);
  for (const id of removed) {
    const old = before.get(id)!;
    steps.push({ id, node: old.node, needs: old.needs ?? [], change: "removed" });
  }
  return { steps, added, removed, changed, fields };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Leaf-level differences; arrays compare as wholes (a `needs` list reads better whole). */
export function diffValues(
  before: unknown,
  after: unknown,
  path: string,
): { path: string; before: unknown; after: unknown }[] {
  if (isObject(before) && isObject(after)) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
    return keys.flatMap((key) => diffValues(before[key], after[key], path ? `${path}.${key}` : key));
  }
  if (JSON.stringify(before) === JSON.stringify(after)) return [];
  return [{ path, before, after }];
}

/** A normalised definition without its null and empty defaults (params kept as they are),
 * for editing as YAML. */
export function pruneDefaults(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(pruneDefaults);
  if (!isObject(value)) return value;
  const result: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(value)) {
    if (key === "params") {
      result[key] = field; // the node's own values: an empty string there means something
      continue;
    }
    if (field === null || field === "") continue;
    if (Array.isArray(field) && field.length === 0 && key !== "steps") continue;
    if (isObject(field) && Object.keys(field).length === 0) continue;
    const pruned = pruneDefaults(field);
    if (isObject(pruned) && Object.keys(pruned).length === 0) continue;
    result[key] = pruned;
  }
  return result;
}

const TOP_ORDER = ["id", "description", "inputs", "steps", "outputs", "deadline", "defaults"];
const STEP_ORDER = ["id", "node", "description", "needs", "when", "params"];

function ordered(value: Record<string, unknown>, first: string[]): Record<string, unknown> {
  const keys = Object.keys(value);
  const rank = (key: string) => (first.includes(key) ? first.indexOf(key) : first.length);
  return Object.fromEntries(
    keys.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b)).map((key) => [key, value[key]]),
  );
}

/** The definition as people write it: without null/empty defaults, fields in the usual order
 * (the read model's JSON does not keep the order they were written in). */
export function forEditing(definition: Definition): Record<string, unknown> {
  const pruned = pruneDefaults(definition) as Record<string, unknown>;
  const steps = Array.isArray(pruned.steps) ? pruned.steps : [];
  return ordered(
    { ...pruned, steps: steps.map((step) => ordered(step as Record<string, unknown>, STEP_ORDER)) },
    TOP_ORDER,
  );
}

export function shortTime(iso: string): string {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}
