// Monaco's multi-file diff editor, left out of the console's bundle (see diffEditorWidget.js).
export class MultiDiffEditorWidget {
  constructor() {
    throw new Error("Monaco's multi-diff editor is not part of the REFLUX console build");
  }
}
