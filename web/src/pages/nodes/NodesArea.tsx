// Placeholder until the nodes pages land (issue 16).
export default function NodesArea() {
  return <p className="state empty">The nodes pages are not built yet.</p>;
}
