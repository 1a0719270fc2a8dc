// Improvement (issue 16, item 4): the critic's diagnoses, the mutation proposals with their diff
// on the graph, evidence, replay report, canary statistics and decisions, and each workflow's
// timeline of applied changes with their measured effect.

import "./improvement.css";

import { NavLink, Route, Routes } from "react-router-dom";

import { DiagnosisList } from "./DiagnosisList";
import { DiagnosisPage } from "./DiagnosisPage";
import { MutationList } from "./MutationList";
import { MutationPage } from "./MutationPage";
import { WorkflowTimeline } from "./WorkflowTimeline";

export default function ImprovementArea() {
  return (
    <div className="improvement">
      <nav className="subnav" aria-label="Improvement">
        <NavLink to="/improvement" end>
          Proposals
        </NavLink>
        <NavLink to="/improvement/diagnoses">Diagnoses</NavLink>
      </nav>
      <Routes>
        <Route index element={<MutationList />} />
        <Route path="mutations/:mutationId" element={<MutationPage />} />
        <Route path="diagnoses" element={<DiagnosisList />} />
        <Route path="diagnoses/*" element={<DiagnosisPage />} />
        <Route path="workflows/:workflowId" element={<WorkflowTimeline />} />
        <Route path="*" element={<p className="state empty">No such improvement page.</p>} />
      </Routes>
    </div>
  );
}
