// /ui/runs/<run_id>: the run live (graph coloured from its SSE stream, timeline, events), one
// step's details, the commands, and time travel (?seq=N: the graph and the step as the engine
// replays them at that seq). ?step=<id> selects a step, so both are links.

import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { Link, useParams, useSearchParams } from "react-router-dom";

import { useApi } from "../../api/useApi";
import { WorkflowGraph, type GraphStep } from "../../components/graph/WorkflowGraph";
import { ErrorBox, Loading } from "../../components/States";
import { Timeline, type TimelineSegment } from "../../components/timeline/Timeline";
import { EventsList } from "./EventsList";
import { StatusBadge, took, when } from "./format";
import { RunActions } from "./RunActions";
import type { RunLive } from "./runModel";
import { fromLive, fromState, StepPanel } from "./StepPanel";
import type { RunGraph, RunState, RunSummary } from "./types";
import { useRunStream, type Connection } from "./useRunStream";

const BIG_GRAPH = 60;
const FIT_FIRST = 24;
const EDGE_LIMIT = 400;

export function RunPage() {
  const { runId = "" } = useParams();
  const [params, setParams] = useSearchParams();
  const selected = params.get("step");
  const seqParam = params.get("seq");
  const atSeq = seqParam !== null && seqParam !== "" && Number.isFinite(Number(seqParam)) ? Number(seqParam) : null;

  const stream = useRunStream(runId);
  const { run, version } = stream;
  const detail = useApi<RunSummary>(`/v1/runs/${encodeURIComponent(runId)}`);
  const graph = useApi<RunGraph>(`/v1/runs/${encodeURIComponent(runId)}/graph`);
  const pastGraph = useApi<RunGraph>(atSeq !== null ? `/v1/runs/${encodeURIComponent(runId)}/graph` : null, { seq: atSeq });
  const pastState = useApi<RunState>(atSeq !== null && selected ? `/v1/runs/${encodeURIComponent(runId)}/state` : null, {
    seq: atSeq,
  });

  // Re-read the header when the run's status changes, the graph when its shape does.
  const { reload: reloadDetail } = detail;
  const { reload: reloadGraph } = graph;
  useEffect(reloadDetail, [run.runStatus, reloadDetail]);
  useEffect(() => {
    if (run.shapeChanges) reloadGraph();
  }, [run.shapeChanges, reloadGraph]);
  // A run opened right after POST /v1/runs may not be projected yet (404): the stream retries
  // until its first events arrive, and the graph is asked again then.
  const graphMissing = graph.error !== undefined && !graph.data;
  useEffect(() => {
    if (graphMissing && run.lastSeq >= 0) reloadGraph();
  }, [graphMissing, run.lastSeq, reloadGraph]);

  const setParam = useCallback(
    (name: string, value: string | null) => {
      setParams(
        (current) => {
          const next = new URLSearchParams(current);
          if (value === null) next.delete(name);
          else next.set(name, value);
          return next;
        },
        { replace: true },
      );
    },
    [setParams],
  );
  const select = useCallback((step: string) => setParam("step", step), [setParam]);
  const travel = useCallback((seq: number | null) => setParam("seq", seq === null ? null : String(seq)), [setParam]);

  const shape = atSeq !== null && pastGraph.data ? pastGraph.data : graph.data;
  const steps: GraphStep[] = useMemo(() => {
    if (!shape) return [];
    if (atSeq !== null) return shape.steps.map((s) => ({ id: s.step_id, node: s.node, needs: s.needs, status: s.status }));
    return shape.steps.map((s) => ({
      id: s.step_id,
      node: s.node,
      needs: s.needs,
      status: run.steps.get(s.step_id)?.status ?? s.status,
    }));
    // `version` stands for the model, which the stream mutates in place.
  }, [shape, atSeq, version]);

  // A big graph first shows its first steps at a readable zoom (all of it would be specks);
  // fewer nodes in view also means fewer in the DOM (onlyRenderVisibleElements).
  const firstIds = shape && shape.steps.length > BIG_GRAPH ? shape.steps.slice(0, FIT_FIRST).map((s) => s.step_id).join(",") : "";
  const fitFirst = useMemo(() => (firstIds ? { nodes: firstIds.split(",").map((id) => ({ id })) } : undefined), [firstIds]);

  const status = run.lastSeq >= 0 ? run.runStatus : (detail.data?.status ?? "…");
  const lastSeq = Math.max(run.lastSeq, detail.data?.last_seq ?? -1);
  const graphStep = shape?.steps.find((s) => s.step_id === selected);
  const stepView =
    selected === null
      ? undefined
      : atSeq !== null
        ? fromState((pastState.data?.state.steps as Record<string, Record<string, unknown>> | undefined)?.[selected])
        : fromLive(run.steps.get(selected));

  if (detail.error && !detail.data && run.lastSeq < 0) {
    return (
      <section className="run-page">
        <ErrorBox error={detail.error} title={`Could not load run ${runId}`} />
        <p className="state">The page keeps trying: a run started a moment ago appears once its first event is projected.</p>
      </section>
    );
  }

  return (
    <section className="run-page" aria-labelledby="run-title">
      <header className="run-head">
        <p className="crumbs">
          <Link to="/runs">Runs</Link> /
        </p>
        <h1 id="run-title">
          Run <code>{runId}</code>
        </h1>
        <div className="run-meta">
          <span aria-label="Run status">
            <StatusBadge status={status} />
          </span>
          {detail.data && (
            <>
              <span>
                <Link to={`/workflows/${encodeURIComponent(detail.data.workflow_id)}`}>{detail.data.workflow_id}</Link>@
                {detail.data.workflow_version}
              </span>
              <span>started {when(detail.data.started_at)}</span>
              <span>{detail.data.finished_at ? `finished ${when(detail.data.finished_at)}` : "not finished"}</span>
              <span>took {took(detail.data.started_at, detail.data.finished_at)}</span>
              <span>source {detail.data.source}</span>
              {detail.data.parent_run_id && (
                <span>
                  child of <Link to={`/runs/${encodeURIComponent(detail.data.parent_run_id)}`}>{detail.data.parent_run_id}</Link>
                </span>
              )}
            </>
          )}
          <ConnectionState connection={stream.connection} />
        </div>
        {(run.error ?? detail.data?.error) && status === "failed" && (
          <div className="state error" role="alert" aria-label="Run error">
            <strong>Failed{(run.failedStep ?? detail.data?.failed_step) ? ` at step ${run.failedStep ?? detail.data?.failed_step}` : ""}</strong>
            <p>{(run.error ?? detail.data?.error)?.message}</p>
          </div>
        )}
        <RunActions runId={runId} status={status} onDone={stream.nudge} />
      </header>

      <TimeTravel lastSeq={lastSeq} atSeq={atSeq} onTravel={travel} run={run} version={version} />
      {atSeq !== null && pastGraph.error && <ErrorBox error={pastGraph.error} title={`Could not replay the run to seq ${atSeq}`} />}

      {/* The panel's column is always there: a graph that changed width would keep its old
          viewport, and steps outside it are not rendered (onlyRenderVisibleElements). */}
      <div className="run-body with-panel">
        <div className="run-graph">
          <StepFinder steps={steps} selected={selected} onSelect={select} />
          {graph.error && <ErrorBox error={graph.error} title="Could not load the graph" />}
          {!shape && !graph.error && <Loading what="graph" />}
          {shape && (
            <WorkflowGraph
              steps={steps}
              selected={selected}
              onSelect={select}
              height={460}
              label={atSeq !== null ? `run graph at seq ${atSeq}` : "run graph"}
              fitViewOptions={fitFirst}
              edgeLimit={EDGE_LIMIT}
            />
          )}
        </div>
        {!selected && (
          <aside className="step-panel" aria-label="Step details">
            <p className="state empty">Select a step (in the graph, the timeline or by name) to see its params, output and error.</p>
          </aside>
        )}
        {selected && (
          <StepPanel
            key={selected}
            runId={runId}
            stepId={selected}
            graphStep={graphStep}
            view={stepView}
            atSeq={atSeq}
            onClose={() => setParam("step", null)}
            onRedriven={stream.nudge}
          />
        )}
      </div>

      <RunTimeline run={run} version={version} selected={selected} onSelect={select} atSeq={atSeq} />
      <EventsList events={run.events} count={run.events.length} step={selected} onTravel={travel} atSeq={atSeq} />
    </section>
  );
}

function ConnectionState({ connection }: { connection: Connection }) {
  const text: Record<Connection, string> = {
    connecting: "connecting…",
    live: "live",
    ended: "stream ended",
    reconnecting: "reconnecting…",
  };
  return <span className={`connection ${connection}`}>● {text[connection]}</span>;
}

/** Jump to a step by name: the keyboard's way into a graph of 1,000 steps. */
function StepFinder({ steps, selected, onSelect }: { steps: GraphStep[]; selected: string | null; onSelect: (id: string) => void }) {
  const [text, setText] = useState("");
  const [active, setActive] = useState(false);
  const ids = useMemo(() => steps.map((s) => s.id), [steps.length]);
  return (
    <form
      className="step-finder"
      onSubmit={(e) => {
        e.preventDefault();
        if (ids.includes(text.trim())) onSelect(text.trim());
      }}
    >
      <label>
        Find step
        <input
          list="run-step-ids"
          value={text}
          placeholder={selected ?? "step id"}
          onFocus={() => setActive(true)}
          onChange={(e) => setText(e.target.value)}
        />
      </label>
      {/* Built on first use: a 1,000-option list re-rendered with every page update costs. */}
      {active && (
        <datalist id="run-step-ids">
          {ids.map((id) => (
            <option key={id} value={id} />
          ))}
        </datalist>
      )}
      <button type="submit">Show</button>
    </form>
  );
}

function TimeTravel({
  lastSeq,
  atSeq,
  onTravel,
  run,
  version,
}: {
  lastSeq: number;
  atSeq: number | null;
  onTravel: (seq: number | null) => void;
  run: RunLive;
  version: number;
}) {
  // The slider moves at once; the replay is asked for when it rests (150 ms).
  const [value, setValue] = useState<number | null>(atSeq);
  const timer = useRef(0);
  useEffect(() => setValue(atSeq), [atSeq]);
  const shown = value ?? lastSeq;
  const event = useMemo(() => run.events.find((e) => e.seq === shown), [shown, version]);
  const change = (next: number) => {
    setValue(next);
    window.clearTimeout(timer.current);
    timer.current = window.setTimeout(() => onTravel(next >= lastSeq ? null : next), 150);
  };
  if (lastSeq < 0) return null;
  return (
    <div className="time-travel" role="group" aria-label="Time travel">
      <label htmlFor="time-travel-seq">Time travel</label>
      <input
        id="time-travel-seq"
        type="range"
        min={0}
        max={lastSeq}
        step={1}
        value={shown}
        aria-label="Time travel seq"
        aria-valuetext={`seq ${shown} of ${lastSeq}`}
        onChange={(e) => change(Number(e.target.value))}
      />
      <output htmlFor="time-travel-seq">
        seq {shown} / {lastSeq}
        {event && ` · ${event.event_type} · ${new Date(event.occurred_at).toLocaleTimeString()}`}
      </output>
      {atSeq !== null ? (
        <button type="button" onClick={() => onTravel(null)}>
          Back to live
        </button>
      ) : (
        <span className="live-tag">live</span>
      )}
    </div>
  );
}

function RunTimeline({
  run,
  version,
  selected,
  onSelect,
  atSeq,
}: {
  run: RunLive;
  version: number;
  selected: string | null;
  onSelect: (step: string) => void;
  atSeq: number | null;
}) {
  const running = run.runStatus === "running";
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!running) return;
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, [running]);
  const { lanes, segments } = useMemo(() => {
    const seen = new Set<string>();
    const lanesOut: string[] = [];
    const out: TimelineSegment[] = run.segments.map((s) => {
      if (!seen.has(s.step)) {
        seen.add(s.step);
        lanesOut.push(s.step);
      }
      return {
        lane: s.step,
        start: s.start,
        end: s.end,
        kind: s.kind,
        outcome: s.outcome,
        title: `${s.step} attempt ${s.attempt}: ${s.kind}${s.outcome ? ` → ${s.outcome}` : ""}`,
      };
    });
    return { lanes: lanesOut, segments: out };
  }, [version]);
  const marker = useMemo(() => {
    if (atSeq === null) return null;
    const event = run.events.find((e) => e.seq === atSeq);
    return event ? Date.parse(event.occurred_at) : null;
  }, [atSeq, version]);
  return (
    <section className="run-timeline" aria-labelledby="timeline-title">
      <h2 id="timeline-title">Timeline</h2>
      {lanes.length === 0 ? (
        <p className="state empty">No step has been scheduled yet.</p>
      ) : (
        <Timeline
          lanes={lanes}
          segments={segments}
          now={running ? now : (run.endedAt ?? now)}
          marker={marker}
          selected={selected}
          onSelect={onSelect}
          label="run timeline"
        />
      )}
    </section>
  );
}
