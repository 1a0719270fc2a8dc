// Problems the editor marks in its text: a line/column range and a message. Computed outside
// Monaco (pure), so the page can list the same problems under the editor.

import { fieldPath, type FieldError } from "../../api/errors";
import { documentPath, lineInMessage, locate } from "./yamlLocation";

export interface Problem {
  /** The field path (`steps[1].needs[0]`), empty for the document itself. */
  path: string;
  message: string;
  /** 1-based, Monaco's convention. */
  line: number;
  column: number;
  endLine: number;
  endColumn: number;
}

function position(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, Math.max(0, Math.min(offset, text.length)));
  const lines = before.split("\n");
  return { line: lines.length, column: lines[lines.length - 1].length + 1 };
}

export function problemsOf(text: string, errors: FieldError[]): Problem[] {
  return errors.map((error) => {
    const path = documentPath(error.loc);
    const shown = fieldPath(error);
    const where = path.length === 0 ? lineInMessage(error.msg) : null;
    if (where) {
      return { path: shown, message: error.msg, line: where.line, column: where.column,
        endLine: where.line, endColumn: where.column + 1 };
    }
    const range = locate(text, path) ?? { start: 0, end: 0 };
    const start = position(text, range.start);
    let end = position(text, range.end);
    if (end.line !== start.line || range.end <= range.start) {
      // Whole first line of the node: a marker spanning lines hides what it points at.
      const lineText = text.split("\n")[start.line - 1] ?? "";
      end = { line: start.line, column: Math.max(lineText.length + 1, start.column + 1) };
    }
    return { path: shown, message: error.msg, line: start.line, column: start.column,
      endLine: end.line, endColumn: end.column };
  });
}
