// Monaco with only what the console needs: the editor API and the YAML tokenizer (bundled by
// Vite: nothing from a CDN). Loaded lazily (YamlEditor.tsx): the chunk only downloads on the
// editor pages.

import * as monaco from "monaco-editor/editor/editor.api";
import "monaco-editor/languages/definitions/yaml/register";
import { useEffect, useRef } from "react";

import type { Problem } from "./markers";

// No web worker (ADR 0069): Monaco runs its editor-worker code (links, word suggestions) on the
// main thread, a fallback it bundles anyway; for definitions of a few hundred lines that costs
// nothing visible, and a separate worker file would be 90 kB gzipped of the 1 MB budget.
self.MonacoEnvironment = {
  getWorker: () => {
    throw new Error("the REFLUX console runs Monaco without a web worker (ADR 0069)");
  },
};

const OWNER = "reflux-api";

export interface MonacoYamlProps {
  value: string;
  onChange: (text: string) => void;
  problems: Problem[];
  label: string;
  height?: number;
  /** Moves the cursor there and focuses the editor; a new object each time asks again. */
  reveal?: { line: number; column: number } | null;
}

function theme(): string {
  return window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "vs-dark" : "vs";
}

export default function MonacoYaml({ value, onChange, problems, label, height = 420, reveal }: MonacoYamlProps) {
  const host = useRef<HTMLDivElement>(null);
  const editor = useRef<monaco.editor.IStandaloneCodeEditor | null>(null);
  const changed = useRef(onChange);
  changed.current = onChange;

  useEffect(() => {
    if (!host.current) return;
    const created = monaco.editor.create(host.current, {
      value,
      language: "yaml",
      ariaLabel: label,
      automaticLayout: true,
      minimap: { enabled: false },
      scrollBeyondLastLine: false,
      tabSize: 2,
      insertSpaces: true,
      theme: theme(),
      fixedOverflowWidgets: true,
    });
    editor.current = created;
    const subscription = created.onDidChangeModelContent(() => changed.current(created.getValue()));
    return () => {
      subscription.dispose();
      created.getModel()?.dispose();
      created.dispose();
      editor.current = null;
    };
    // Created once; later `value`s that differ from the text are pushed below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  useEffect(() => {
    const current = editor.current;
    if (current && current.getValue() !== value) current.setValue(value);
  }, [value]);

  useEffect(() => {
    const model = editor.current?.getModel();
    if (!model || !host.current) return;
    monaco.editor.setModelMarkers(
      model,
      OWNER,
      problems.map((p) => ({
        severity: monaco.MarkerSeverity.Error,
        message: p.path ? `${p.path}: ${p.message}` : p.message,
        startLineNumber: p.line,
        startColumn: p.column,
        endLineNumber: p.endLine,
        endColumn: p.endColumn,
      })),
    );
    // What Monaco holds, as an attribute: the tests (and anyone inspecting) read the marked lines.
    const lines = monaco.editor.getModelMarkers({ owner: OWNER }).map((m) => m.startLineNumber);
    host.current.dataset.markerLines = lines.join(" ");
  }, [problems]);

  useEffect(() => {
    const current = editor.current;
    if (!current || !reveal) return;
    current.setPosition({ lineNumber: reveal.line, column: reveal.column });
    current.revealLineInCenterIfOutsideViewport(reveal.line);
    current.focus();
  }, [reveal]);

  return <div ref={host} className="monaco-host" style={{ height }} data-marker-lines="" />;
}
