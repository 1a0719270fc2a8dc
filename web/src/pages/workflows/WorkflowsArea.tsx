// Placeholder until the workflows pages land (issue 16).
export default function WorkflowsArea() {
  return <p className="state empty">The workflows pages are not built yet.</p>;
}
