// The /v1 shapes the runs pages read (api/models/runs.py, api/models/graph.py), as far as used.

export interface ErrorInfo {
  error_class: string;
  message: string;
  retryable: boolean;
}

export interface PayloadRef {
  uri: string;
  size_bytes: number;
  sha256: string;
  content_type: string;
}

export interface RunSummary {
  run_id: string;
  workflow_id: string;
  workflow_version: number;
  status: string;
  error: ErrorInfo | null;
  failed_step: string | null;
  source: string;
  started_at: string;
  updated_at: string;
  finished_at: string | null;
  last_seq: number;
  parent_run_id: string | null;
  inputs?: unknown;
  outputs?: unknown;
}

export interface RunsPage {
  data: RunSummary[];
  next_cursor: string | null;
}

export interface GraphStepView {
  step_id: string;
  node: string;
  needs: string[];
  params: unknown;
  when: string | null;
  status: string;
  attempt: number;
  node_version: string | null;
}

export interface RunGraph {
  run_id: string;
  status: string;
  last_seq: number;
  definition: Record<string, unknown>;
  steps: GraphStepView[];
}

export interface RunEvent {
  seq: number;
  event_type: string;
  event_id: string;
  occurred_at: string;
  payload: Record<string, unknown>;
}

export interface RunState {
  run_id: string;
  seq: number;
  event_count: number;
  state: Record<string, unknown>;
}

export const RUN_STATUSES = ["running", "paused", "succeeded", "failed", "cancelled"] as const;
