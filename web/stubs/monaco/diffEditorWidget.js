// Monaco's diff editor, left out of the console's bundle (vite.config.ts): the console never
// opens one (workflow diffs are drawn on the graph), and it is ~50 kB gzipped of the 1 MB budget.
export class DiffEditorWidget {
  constructor() {
    throw new Error("Monaco's diff editor is not part of the REFLUX console build");
  }
}
export function toLineChanges() {
  return [];
}
