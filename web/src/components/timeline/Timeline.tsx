// A Gantt chart in plain SVG: one row per lane (a run's step), bars for segments of time
// (queued, running, waiting in a backoff or for a signal). No chart library: the bundle stays
// small. Only the rows scrolled into view are drawn, so a 1,000-step run stays cheap.

import { memo, useEffect, useMemo, useRef, useState } from "react";

export interface TimelineSegment {
  lane: string;
  start: number;
  /** null: still open, drawn up to `now`. */
  end: number | null;
  kind: string;
  outcome?: string;
  title: string;
}

export interface TimelineProps {
  lanes: string[];
  segments: TimelineSegment[];
  now: number;
  /** A vertical line (e.g. the time-travel position). */
  marker?: number | null;
  selected?: string | null;
  onSelect?: (lane: string) => void;
  label?: string;
  height?: number;
}

const ROW = 18;
const LABEL = 130;
const MIN_WIDTH = 320;

/** The element's width in CSS pixels, kept up to date: the chart draws in real pixels, so text
 * is never stretched and the axis lines up with the bars at any window width. */
function useWidth(): [React.RefObject<HTMLDivElement | null>, number] {
  const ref = useRef<HTMLDivElement>(null);
  const [width, setWidth] = useState(900);
  useEffect(() => {
    const element = ref.current;
    if (!element) return;
    const observer = new ResizeObserver(([entry]) => setWidth(Math.max(MIN_WIDTH, Math.floor(entry.contentRect.width))));
    observer.observe(element);
    return () => observer.disconnect();
  }, []);
  return [ref, width];
}

function ticks(from: number, to: number): number[] {
  const span = Math.max(to - from, 1);
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000, 300_000, 600_000, 3_600_000];
  const step = steps.find((s) => span / s <= 8) ?? span / 8;
  // Round offsets from the start (+0, +50 ms, ...), which is what the labels show.
  const out: number[] = [];
  for (let t = from; t <= to; t += step) out.push(t);
  return out;
}

function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export const Timeline = memo(function Timeline({
  lanes,
  segments,
  now,
  marker,
  selected,
  onSelect,
  label = "timeline",
  height = 320,
}: TimelineProps) {
  const [scroll, setScroll] = useState(0);
  const [box, outer] = useWidth();
  // Leave room for the scroll bar when the lanes scroll.
  const width = lanes.length * ROW > height ? outer - 16 : outer;
  const byLane = useMemo(() => {
    const map = new Map<string, TimelineSegment[]>();
    for (const s of segments) {
      const list = map.get(s.lane);
      if (list) list.push(s);
      else map.set(s.lane, [s]);
    }
    return map;
  }, [segments]);
  const [from, to] = useMemo(() => {
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of segments) {
      lo = Math.min(lo, s.start);
      hi = Math.max(hi, s.end ?? now);
    }
    if (!Number.isFinite(lo)) return [now - 1000, now];
    return [lo, Math.max(hi, lo + 1)];
  }, [segments, now]);

  const x = (t: number) => LABEL + ((t - from) / (to - from)) * (width - LABEL - 8);
  const first = Math.max(0, Math.floor(scroll / ROW) - 5);
  const last = Math.min(lanes.length, first + Math.ceil(height / ROW) + 10);
  const visible = lanes.slice(first, last);
  const axis = 20;

  return (
    <div className="timeline" role="region" aria-label={label} ref={box}>
      <svg className="timeline-axis" width={width} height={axis} aria-hidden="true">
        {ticks(from, to).map((t) => (
          <text key={t} x={x(t)} y={14} textAnchor="middle">
            +{duration(t - from)}
          </text>
        ))}
      </svg>
      <div className="timeline-scroll" style={{ maxHeight: height }} onScroll={(e) => setScroll(e.currentTarget.scrollTop)}>
        <svg width={width} height={lanes.length * ROW}>
          {ticks(from, to).map((t) => (
            <line key={t} className="timeline-grid" x1={x(t)} x2={x(t)} y1={0} y2={lanes.length * ROW} />
          ))}
          {visible.map((lane, i) => {
            const y = (first + i) * ROW;
            return (
              <g
                key={lane}
                className={lane === selected ? "timeline-lane selected" : "timeline-lane"}
                onClick={() => onSelect?.(lane)}
                data-lane={lane}
              >
                <rect className="timeline-lane-bg" x={0} y={y} width={width} height={ROW} />
                <text className="timeline-label" x={4} y={y + ROW - 5}>
                  {lane.length > 22 ? `${lane.slice(0, 21)}…` : lane}
                </text>
                {(byLane.get(lane) ?? []).map((s, k) => {
                  const left = x(s.start);
                  const barWidth = Math.max(x(s.end ?? now) - left, 2);
                  return (
                    <rect
                      key={k}
                      className={`timeline-bar kind-${s.kind} outcome-${s.outcome ?? "open"}`}
                      x={left}
                      y={y + 3}
                      width={barWidth}
                      height={ROW - 6}
                      rx={2}
                    >
                      <title>{`${s.title} (${duration((s.end ?? now) - s.start)})`}</title>
                    </rect>
                  );
                })}
              </g>
            );
          })}
          {marker != null && marker >= from && (
            <line className="timeline-marker" x1={x(marker)} x2={x(marker)} y1={0} y2={lanes.length * ROW} />
          )}
        </svg>
      </div>
      <p className="timeline-legend">
        <span className="kind-queued">queued</span> <span className="kind-running">running</span>{" "}
        <span className="outcome-succeeded">succeeded</span> <span className="kind-backoff">retry backoff</span> <span className="kind-waiting">waiting</span>{" "}
        <span className="outcome-failed">failed attempt</span>
      </p>
    </div>
  );
});
