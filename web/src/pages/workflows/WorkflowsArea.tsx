// Workflows (issue 16): the list, a workflow's versions and graph, a diff between two versions,
// and the YAML editor that validates through the API before saving.

import { lazy, Suspense } from "react";
import { Route, Routes } from "react-router-dom";

import { Loading } from "../../components/States";
import { WorkflowDiff } from "./WorkflowDiff";
import { WorkflowList } from "./WorkflowList";
import { WorkflowPage } from "./WorkflowPage";
import "./workflows.css";

// The editor pages (and the `yaml` package they use) are a chunk of their own; Monaco is yet
// another, loaded by the editor itself.
const WorkflowEditor = lazy(() => import("./WorkflowEditor").then((m) => ({ default: m.WorkflowEditor })));

function Editor() {
  return (
    <Suspense fallback={<Loading what="editor" />}>
      <WorkflowEditor />
    </Suspense>
  );
}

export default function WorkflowsArea() {
  return (
    <Routes>
      <Route index element={<WorkflowList />} />
      <Route path="new" element={<Editor />} />
      <Route path=":workflowId" element={<WorkflowPage />} />
      <Route path=":workflowId/edit" element={<Editor />} />
      <Route path=":workflowId/diff" element={<WorkflowDiff />} />
      <Route path="*" element={<p className="state empty">No such workflow page.</p>} />
    </Routes>
  );
}
