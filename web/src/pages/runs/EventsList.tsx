// The run's events, newest first, a page at a time (a big run has thousands). Each row can
// move the time-travel slider to its seq.

import { memo, useState } from "react";

import { stepOf } from "./runModel";
import type { RunEvent } from "./types";

const PAGE = 100;

export interface EventsListProps {
  events: RunEvent[];
  /** The number of events: the list is appended to in place, so this tells memo it grew. */
  count: number;
  /** Only this step's events, when set. */
  step: string | null;
  onTravel: (seq: number) => void;
  atSeq: number | null;
}

export const EventsList = memo(function EventsList({ events, step, onTravel, atSeq }: EventsListProps) {
  const [shown, setShown] = useState(PAGE);
  const [onlyStep, setOnlyStep] = useState(true);
  const filtered = step && onlyStep ? events.filter((e) => stepOf(e) === step) : events;
  const rows = filtered.slice(-shown).reverse();
  return (
    <section className="events" aria-labelledby="events-title">
      <div className="panel-head">
        <h2 id="events-title">Events ({filtered.length})</h2>
        {step && (
          <label className="check">
            <input type="checkbox" checked={onlyStep} onChange={(e) => setOnlyStep(e.target.checked)} /> only step {step}
          </label>
        )}
      </div>
      <div className="table-wrap">
        <table className="list events-table" aria-label="Events">
          <thead>
            <tr>
              <th scope="col">seq</th>
              <th scope="col">Time</th>
              <th scope="col">Event</th>
              <th scope="col">Step</th>
              <th scope="col">Payload</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((e) => (
              <tr key={e.seq} className={atSeq === e.seq ? "current" : undefined}>
                <td>
                  <button type="button" className="link" title="Time travel to this event" onClick={() => onTravel(e.seq)}>
                    {e.seq}
                  </button>
                </td>
                <td>{new Date(e.occurred_at).toLocaleTimeString()}</td>
                <td>{e.event_type}</td>
                <td>{stepOf(e) ?? ""}</td>
                <td className="payload-cell">
                  <details>
                    <summary>{summary(e)}</summary>
                    <pre className="json">{JSON.stringify(e.payload, null, 2)}</pre>
                  </details>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {filtered.length > shown && (
        <button type="button" onClick={() => setShown((n) => n + PAGE)}>
          Show {Math.min(PAGE, filtered.length - shown)} older events
        </button>
      )}
    </section>
  );
});

function summary(e: RunEvent): string {
  const p = e.payload;
  const error = p.error as { message?: string } | undefined;
  if (error?.message) return error.message.slice(0, 80);
  if (typeof p.attempt === "number") return `attempt ${p.attempt}`;
  if (typeof p.reason === "string") return p.reason.slice(0, 80);
  return "…";
}
