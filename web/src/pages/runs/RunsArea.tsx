// The runs area: the list (/runs), starting a run (/runs/new), a run (/runs/<run_id>).
import { Route, Routes } from "react-router-dom";

import { RunPage } from "./RunPage";
import { RunsList } from "./RunsList";
import { StartRunPage } from "./StartRunPage";

export default function RunsArea() {
  return (
    <Routes>
      <Route index element={<RunsList />} />
      <Route path="new" element={<StartRunPage />} />
      <Route path=":runId" element={<RunPage />} />
    </Routes>
  );
}
