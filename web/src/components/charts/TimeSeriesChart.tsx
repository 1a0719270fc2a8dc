// A small time-series chart (uPlot, canvas): a few lines over shared timestamps, gaps where a
// bucket has no data. Colours come from the console's CSS variables, so dark mode follows.

import "uplot/dist/uPlot.min.css";

import { useEffect, useRef } from "react";
import uPlot from "uplot";

export interface Line {
  label: string;
  values: (number | null)[];
  /** A CSS variable (`--accent`) or colour. */
  color: string;
}

export interface TimeSeriesChartProps {
  title: string;
  /** Unix seconds, ascending. */
  times: number[];
  lines: Line[];
  unit: string;
  height?: number;
}

function cssColor(color: string): string {
  if (!color.startsWith("--")) return color;
  return getComputedStyle(document.documentElement).getPropertyValue(color).trim() || "#888";
}

export function TimeSeriesChart({ title, times, lines, unit, height = 180 }: TimeSeriesChartProps) {
  const host = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const element = host.current;
    if (!element) return;
    const axis = { stroke: cssColor("--muted"), grid: { stroke: cssColor("--line") }, ticks: { stroke: cssColor("--line") } };
    const options: uPlot.Options = {
      width: Math.max(200, element.clientWidth),
      height,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (_u, min, max) => [Math.min(0, min ?? 0), Math.max(1, max ?? 1)] } },
      axes: [axis, { ...axis, label: unit, size: 56 }],
      series: [
        {},
        ...lines.map((line) => ({
          label: line.label,
          stroke: cssColor(line.color),
          width: 2,
          points: { show: true, size: 5 },
          spanGaps: false,
        })),
      ],
    };
    const data = [times, ...lines.map((l) => l.values)] as uPlot.AlignedData;
    const plot = new uPlot(options, data, element);
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(200, element.clientWidth), height }));
    resize.observe(element);
    return () => {
      resize.disconnect();
      plot.destroy();
    };
  }, [times, lines, unit, height]);

  const points = lines.reduce((n, l) => n + l.values.filter((v) => v !== null).length, 0);
  return (
    <figure className="chart" aria-label={title}>
      <figcaption>{title}</figcaption>
      <div ref={host} role="img" aria-label={`${title}: ${points} data points`} data-points={points} />
    </figure>
  );
}
