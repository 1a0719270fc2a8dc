// Workflows (issue 16): the list, a workflow's versions and graph, a diff between two versions,
// and the YAML editor that validates through the API before saving.

import { Route, Routes } from "react-router-dom";

import { WorkflowDiff } from "./WorkflowDiff";
import { WorkflowEditor } from "./WorkflowEditor";
import { WorkflowList } from "./WorkflowList";
import { WorkflowPage } from "./WorkflowPage";
import "./workflows.css";

export default function WorkflowsArea() {
  return (
    <Routes>
      <Route index element={<WorkflowList />} />
      <Route path="new" element={<WorkflowEditor />} />
      <Route path=":workflowId" element={<WorkflowPage />} />
      <Route path=":workflowId/edit" element={<WorkflowEditor />} />
      <Route path=":workflowId/diff" element={<WorkflowDiff />} />
      <Route path="*" element={<p className="state empty">No such workflow page.</p>} />
    </Routes>
  );
}
