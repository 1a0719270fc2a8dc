// Nodes (issue 16): the catalog, and per node its versions, metrics over time and the
// reliability heat map.

import { Route, Routes } from "react-router-dom";

import "../workflows/workflows.css";
import { NodeList } from "./NodeList";
import { NodePage } from "./NodePage";
import "./nodes.css";

export default function NodesArea() {
  return (
    <Routes>
      <Route index element={<NodeList />} />
      <Route path=":name" element={<NodePage />} />
      <Route path="*" element={<p className="state empty">No such node page.</p>} />
    </Routes>
  );
}
