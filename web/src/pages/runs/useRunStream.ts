// Follows a run over SSE (GET /v1/runs/{id}/stream) into a RunLive model.
//
// - Events are buffered and folded once per animation frame: a 1,000-step run replays thousands
//   of events at once, and re-rendering per event would freeze the page.
// - After a drop it reconnects from the last seq it applied (after_seq, the same as the
//   Last-Event-ID an EventSource would send), backing off up to 10 s.
// - The stream ends when the run stops; a re-drive, resume or rebind re-opens a run, so it
//   then polls the run (every 2 s, only while the tab is visible) and follows again when the
//   run has new events. `nudge()` (after an action) reconnects at once.

import { useCallback, useEffect, useRef, useState } from "react";

import { apiGet, streamEvents } from "../../api/client";
import { apply, emptyRun, type RunLive } from "./runModel";
import type { RunEvent, RunSummary } from "./types";

export type Connection = "connecting" | "live" | "ended" | "reconnecting";

export interface RunStream {
  run: RunLive;
  /** Changes whenever the model does (the model itself is mutated in place). */
  version: number;
  connection: Connection;
  nudge: () => void;
}

function wait(ms: number, signal: AbortSignal, wake: { current: (() => void) | null }): Promise<void> {
  return new Promise((resolve) => {
    const timer = window.setTimeout(done, ms);
    function done() {
      window.clearTimeout(timer);
      signal.removeEventListener("abort", done);
      wake.current = null;
      resolve();
    }
    signal.addEventListener("abort", done);
    wake.current = done;
  });
}

export function useRunStream(runId: string): RunStream {
  const model = useRef<RunLive>(emptyRun());
  const [version, setVersion] = useState(0);
  const [connection, setConnection] = useState<Connection>("connecting");
  const wake = useRef<(() => void) | null>(null);

  useEffect(() => {
    model.current = emptyRun();
    setVersion((v) => v + 1);
    const abort = new AbortController();
    const buffer: RunEvent[] = [];
    let frame = 0;

    const flush = () => {
      frame = 0;
      let changed = false;
      for (const event of buffer.splice(0)) changed = apply(model.current, event) || changed;
      if (changed) setVersion((v) => v + 1);
    };
    const onEvent = (event: { data: string }) => {
      buffer.push(JSON.parse(event.data) as RunEvent);
      if (!frame) frame = requestAnimationFrame(flush);
    };
    const lastSeq = () => Math.max(model.current.lastSeq, ...buffer.map((e) => e.seq));

    const follow = async () => {
      let backoff = 500;
      while (!abort.signal.aborted) {
        try {
          setConnection(lastSeq() < 0 ? "connecting" : "live");
          const path = `/v1/runs/${encodeURIComponent(runId)}/stream?after_seq=${lastSeq()}`;
          await streamEvents(path, onEvent, abort.signal);
          backoff = 500;
          setConnection("ended");
          // Stopped: follow again once the run moves (re-drive, resume, rebind).
          for (;;) {
            await wait(2000, abort.signal, wake);
            if (abort.signal.aborted) return;
            if (document.hidden) continue;
            const run = await apiGet<RunSummary>(`/v1/runs/${encodeURIComponent(runId)}`, undefined, abort.signal);
            if (run.last_seq > lastSeq()) break;
          }
        } catch {
          if (abort.signal.aborted) return;
          setConnection("reconnecting");
          await wait(backoff, abort.signal, wake);
          backoff = Math.min(backoff * 2, 10_000);
        }
      }
    };
    void follow();
    return () => {
      abort.abort();
      if (frame) cancelAnimationFrame(frame);
    };
  }, [runId]);

  const nudge = useCallback(() => wake.current?.(), []);
  return { run: model.current, version, connection, nudge };
}
