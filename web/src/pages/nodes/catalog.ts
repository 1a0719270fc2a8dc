// The node catalog as /v1/nodes serves it (api/models/nodes.py).

export interface NodeSummary {
  name: string;
  latest_version: string;
  category: string;
  version_count: number;
  production_versions: string[];
  created_at: string;
  updated_at: string;
}

export interface NodeVersion {
  name: string;
  version: string;
  status: "draft" | "staging" | "production" | "deprecated";
  rollout_weight: number;
  created_at: string;
  updated_at: string;
}

export interface NodeVersions {
  name: string;
  data: NodeVersion[];
  count: number;
}

export function percent(value: number): string {
  return `${Math.round(value * 1000) / 10}%`;
}
