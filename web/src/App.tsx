import { lazy, Suspense, useState } from "react";
import { NavLink, Navigate, Route, Routes } from "react-router-dom";

import { credential, forgetCredential } from "./api/auth";
import { Loading } from "./components/States";
import { SignIn } from "./pages/SignIn";

// Each area is its own chunk: the run pages never load the editor (Monaco) and vice versa.
const RunsArea = lazy(() => import("./pages/runs/RunsArea"));
const WorkflowsArea = lazy(() => import("./pages/workflows/WorkflowsArea"));
const NodesArea = lazy(() => import("./pages/nodes/NodesArea"));
const ImprovementArea = lazy(() => import("./pages/improvement/ImprovementArea"));

export function App() {
  const [signedIn, setSignedIn] = useState(credential() !== null);
  if (!signedIn) return <SignIn onSignedIn={() => setSignedIn(true)} />;
  return (
    <div className="shell">
      <header className="top">
        <span className="brand">REFLUX</span>
        <nav aria-label="Main">
          <NavLink to="/runs">Runs</NavLink>
          <NavLink to="/workflows">Workflows</NavLink>
          <NavLink to="/nodes">Nodes</NavLink>
          <NavLink to="/improvement">Improvement</NavLink>
        </nav>
        <button
          className="link"
          onClick={() => {
            forgetCredential();
            setSignedIn(false);
          }}
        >
          Sign out
        </button>
      </header>
      <main className="content">
        <Suspense fallback={<Loading what="page" />}>
          <Routes>
            <Route path="/" element={<Navigate to="/runs" replace />} />
            <Route path="/runs/*" element={<RunsArea />} />
            <Route path="/workflows/*" element={<WorkflowsArea />} />
            <Route path="/nodes/*" element={<NodesArea />} />
            <Route path="/improvement/*" element={<ImprovementArea />} />
            <Route path="*" element={<p className="state empty">No such page.</p>} />
          </Routes>
        </Suspense>
      </main>
    </div>
  );
}
