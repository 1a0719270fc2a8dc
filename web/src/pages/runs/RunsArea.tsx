// Placeholder until the runs pages land (issue 16).
export default function RunsArea() {
  return <p className="state empty">The runs pages are not built yet.</p>;
}
