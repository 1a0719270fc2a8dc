// The node x time reliability heat map (the seed's dashboards): one row per node, one column per
// time bucket, coloured by error rate; empty buckets grey. An SVG grid with the ARIA grid pattern:
// one cell in the tab order, arrow keys move between cells, each cell names its numbers (and
// shows them in a tooltip and in the line under the grid).

import { useMemo, useState, type KeyboardEvent } from "react";

export interface HeatCell {
  node: string;
  bucket_start: string;
  attempts: number;
  failures: number;
  error_rate: number;
  latency_ms_p95: number;
}

export interface HeatMapProps {
  rows: string[];
  /** Bucket starts (ISO), ascending: every column, with data or not. */
  columns: string[];
  cells: HeatCell[];
  highlight?: string;
  label: string;
}

const CELL = 18;
const GAP = 2;
const LABEL_WIDTH = 150;
const HEADER = 18;

export function describeCell(node: string, start: string, cell: HeatCell | undefined): string {
  const time = new Date(start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  if (!cell) return `${node} at ${time}: no attempts`;
  const rate = (cell.error_rate * 100).toFixed(cell.error_rate > 0 && cell.error_rate < 0.1 ? 1 : 0);
  return `${node} at ${time}: ${cell.attempts} attempts, ${cell.failures} failed (${rate}%), p95 ${Math.round(cell.latency_ms_p95)} ms`;
}

function fill(cell: HeatCell | undefined): string {
  if (!cell) return "var(--panel)";
  // Green at 0 % errors to red at 50 % and above.
  const share = Math.min(1, cell.error_rate / 0.5);
  return `color-mix(in srgb, var(--fail) ${Math.round(share * 100)}%, var(--ok))`;
}

export function HeatMap({ rows, columns, cells, highlight, label }: HeatMapProps) {
  const byKey = useMemo(() => {
    const map = new Map<string, HeatCell>();
    for (const c of cells) map.set(`${c.node}|${Date.parse(c.bucket_start)}`, c);
    return map;
  }, [cells]);
  const [wanted, setFocus] = useState<[number, number]>([0, Math.max(0, columns.length - 1)]);
  const [shown, setShown] = useState<string | null>(null);
  // The grid's one tab stop, kept inside the grid when its rows or columns change (a shorter
  // window, a node gone): the state is set at the first render and would otherwise point past
  // the last column, leaving no cell reachable with Tab.
  const focus: [number, number] = [
    Math.max(0, Math.min(wanted[0], rows.length - 1)),
    Math.max(0, Math.min(wanted[1], columns.length - 1)),
  ];
  const width = LABEL_WIDTH + columns.length * (CELL + GAP) + 24; // room for the last time label
  const height = HEADER + rows.length * (CELL + GAP);
  const at = (r: number, c: number) => byKey.get(`${rows[r]}|${Date.parse(columns[c])}`);

  function move(event: KeyboardEvent<SVGElement>, r: number, c: number) {
    const steps: Record<string, [number, number]> = {
      ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0],
    };
    let next: [number, number] | null = null;
    if (event.key in steps) {
      const [dr, dc] = steps[event.key];
      next = [Math.min(rows.length - 1, Math.max(0, r + dr)), Math.min(columns.length - 1, Math.max(0, c + dc))];
    } else if (event.key === "Home") next = [r, 0];
    else if (event.key === "End") next = [r, columns.length - 1];
    if (!next) return;
    event.preventDefault();
    setFocus(next);
    const target = event.currentTarget.ownerSVGElement?.querySelector<SVGElement>(
      `[data-cell="${next[0]}-${next[1]}"]`,
    );
    target?.focus();
  }

  if (!rows.length || !columns.length) return null;
  return (
    <div className="heat-map">
      <div className="heat-scroll">
        <svg role="grid" aria-label={label} width={width} height={height} viewBox={`0 0 ${width} ${height}`}>
          <g aria-hidden="true">
            {columns.map((start, c) =>
              c % 3 === 0 ? (
                <text key={start} x={LABEL_WIDTH + c * (CELL + GAP)} y={12} className="heat-time">
                  {new Date(start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" })}
                </text>
              ) : null,
            )}
          </g>
          {rows.map((node, r) => (
            <g role="row" key={node} aria-label={node} className={node === highlight ? "heat-row current" : "heat-row"}>
              <text role="rowheader" x={0} y={HEADER + r * (CELL + GAP) + CELL - 5} className="heat-node">
                {node.length > 22 ? `${node.slice(0, 21)}…` : node}
              </text>
              {columns.map((start, c) => {
                const cell = at(r, c);
                const text = describeCell(node, start, cell);
                return (
                  <rect
                    key={start}
                    role="gridcell"
                    aria-label={text}
                    data-cell={`${r}-${c}`}
                    data-attempts={cell?.attempts ?? 0}
                    tabIndex={focus[0] === r && focus[1] === c ? 0 : -1}
                    x={LABEL_WIDTH + c * (CELL + GAP)}
                    y={HEADER + r * (CELL + GAP)}
                    width={CELL}
                    height={CELL}
                    rx={3}
                    style={{ fill: fill(cell) }}
                    className="heat-cell"
                    onFocus={() => {
                      setFocus([r, c]);
                      setShown(text);
                    }}
                    onMouseEnter={() => setShown(text)}
                    onKeyDown={(e) => move(e, r, c)}
                  >
                    <title>{text}</title>
                  </rect>
                );
              })}
            </g>
          ))}
        </svg>
      </div>
      <p className="heat-detail" aria-live="polite">
        {shown ?? "Focus or point at a cell for its numbers (arrow keys move between cells)."}
      </p>
    </div>
  );
}
