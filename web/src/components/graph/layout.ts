// A layered layout for workflow graphs (pure, no dependency): a step's layer is the length of
// the longest `needs` chain before it; steps of a layer stack vertically in definition order.
// Unknown `needs` (a step removed by a mutation) are ignored rather than breaking the layout.

export interface GraphStep {
  id: string;
  node: string;
  needs: string[];
  /** Run status of the step (pending, scheduled, running, succeeded, failed, skipped, ...). */
  status?: string;
  /** How a diff marks the step. */
  change?: "added" | "removed" | "changed";
}

export interface Placed {
  id: string;
  x: number;
  y: number;
}

export const COLUMN_WIDTH = 230;
export const ROW_HEIGHT = 76;

export function layerOf(steps: GraphStep[]): Map<string, number> {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const layers = new Map<string, number>();
  const visiting = new Set<string>();
  const visit = (id: string): number => {
    const known = layers.get(id);
    if (known !== undefined) return known;
    if (visiting.has(id)) return 0; // a cycle cannot be valid; do not recurse forever
    visiting.add(id);
    const step = byId.get(id);
    let layer = 0;
    for (const need of step?.needs ?? []) {
      if (byId.has(need)) layer = Math.max(layer, visit(need) + 1);
    }
    visiting.delete(id);
    layers.set(id, layer);
    return layer;
  };
  steps.forEach((s) => visit(s.id));
  return layers;
}

export function place(steps: GraphStep[]): Placed[] {
  const layers = layerOf(steps);
  const rows = new Map<number, number>();
  return steps.map((step) => {
    const layer = layers.get(step.id) ?? 0;
    const row = rows.get(layer) ?? 0;
    rows.set(layer, row + 1);
    return { id: step.id, x: layer * COLUMN_WIDTH, y: row * ROW_HEIGHT };
  });
}
