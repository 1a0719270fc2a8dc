// Placeholder until the improvement pages land (issue 16).
export default function ImprovementArea() {
  return <p className="state empty">The improvement pages are not built yet.</p>;
}
