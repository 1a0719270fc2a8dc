// A workflow's steps as a graph (React Flow): colour by run status or by diff change.
// Used by the run page (live status), the workflow pages and the mutation review.

import "@xyflow/react/dist/style.css";

import { Background, Controls, Position, ReactFlow, type Edge, type FitViewOptions, type Node } from "@xyflow/react";
import { useMemo } from "react";

import { place, type GraphStep } from "./layout";

export type { GraphStep } from "./layout";

export interface WorkflowGraphProps {
  steps: GraphStep[];
  selected?: string | null;
  onSelect?: (stepId: string) => void;
  height?: number | string;
  /** Accessible name of the graph region. */
  label?: string;
  /** What the first view fits (default: every step); a big run fits its first steps. */
  fitViewOptions?: FitViewOptions;
  /** Above this many edges only the selected step's are drawn: React Flow renders every edge
   * whose box crosses the view, and a 1,000-step fan-out's all do (thousands of SVG paths). */
  edgeLimit?: number;
}

export function WorkflowGraph({
  steps,
  selected,
  onSelect,
  height = 420,
  label,
  fitViewOptions,
  edgeLimit = Infinity,
}: WorkflowGraphProps) {
  // Positions depend on the shape only, so a status change re-colours without re-laying out.
  const shape = steps.map((s) => `${s.id}<${s.needs.join(",")}`).join(";");
  const positions = useMemo(() => place(steps), [shape]);

  const nodes: Node[] = useMemo(
    () =>
      steps.map((step, i) => ({
        id: step.id,
        position: { x: positions[i].x, y: positions[i].y },
        data: { label: <StepLabel step={step} /> },
        className: [
          "step-node",
          `status-${step.status ?? "none"}`,
          step.change ? `change-${step.change}` : "",
          step.id === selected ? "selected-step" : "",
        ].join(" "),
        // The layout runs left to right: edges leave a step on its right and enter on the left.
        sourcePosition: Position.Right,
        targetPosition: Position.Left,
        draggable: false,
        connectable: false,
        ariaLabel: `step ${step.id}${step.status ? `: ${step.status}` : ""}`,
      })),
    [steps, positions, selected],
  );
  const edges: Edge[] = useMemo(() => {
    const ids = new Set(steps.map((s) => s.id));
    const all = steps.flatMap((step) =>
      step.needs.filter((n) => ids.has(n)).map((need) => ({ id: `${need}->${step.id}`, source: need, target: step.id })),
    );
    if (all.length <= edgeLimit) return all;
    return all.filter((edge) => edge.source === selected || edge.target === selected);
    // Keyed by the shape, not the steps: a status change must not rebuild every edge.
  }, [shape, edgeLimit, selected]);

  return (
    <div className="workflow-graph" style={{ height }} role="region" aria-label={label ?? "workflow graph"}>
      <ReactFlow
        nodes={nodes}
        edges={edges}
        fitView
        fitViewOptions={fitViewOptions}
        minZoom={0.05}
        onlyRenderVisibleElements
        nodesDraggable={false}
        nodesConnectable={false}
        onNodeClick={(_, node) => onSelect?.(node.id)}
        proOptions={{ hideAttribution: true }}
      >
        <Background />
        <Controls showInteractive={false} />
      </ReactFlow>
    </div>
  );
}

function StepLabel({ step }: { step: GraphStep }) {
  return (
    <div className="step-label" data-step={step.id} data-status={step.status ?? ""}>
      <strong>{step.id}</strong>
      <small>{step.node}</small>
      {step.status && <span className="step-status">{step.status}</span>}
    </div>
  );
}
