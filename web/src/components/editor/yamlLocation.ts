// Where a field path of an API error (a 422 `loc`) sits in the YAML text the user typed, so the
// editor can mark that line. Pure; uses the `yaml` package's node ranges.

import { isMap, isScalar, isSeq, parseDocument, type Node } from "yaml";

export interface TextRange {
  /** Offsets into the text: [start, end). */
  start: number;
  end: number;
  /** How much of the path exists in the text (a missing field marks its parent). */
  resolved: (string | number)[];
}

/** The path inside the document: "body" is where the document sits in the request. */
export function documentPath(loc: (string | number)[]): (string | number)[] {
  return loc[0] === "body" ? loc.slice(1) : loc;
}

/**
 * The text range of the deepest node along `path`. A string segment on a sequence matches the
 * item whose `id` is that string (steps are sometimes named by id). Null when the text is not
 * YAML at all.
 */
export function locate(text: string, path: (string | number)[]): TextRange | null {
  const doc = parseDocument(text, { keepSourceTokens: false });
  if (doc.errors.length > 0 && !doc.contents) return null;
  let node: unknown = doc.contents;
  let range = rangeOf(node) ?? { start: 0, end: Math.min(text.length, firstLineEnd(text)) };
  const resolved: (string | number)[] = [];
  for (const segment of path) {
    const next = child(node, segment);
    if (!next) break;
    node = next.value;
    resolved.push(segment);
    // A key whose value is empty (`needs:`) still has its key's position.
    range = rangeOf(next.value) ?? rangeOf(next.key) ?? range;
  }
  return { ...range, resolved };
}

function firstLineEnd(text: string): number {
  const end = text.indexOf("\n");
  return end < 0 ? text.length : end;
}

function rangeOf(node: unknown): { start: number; end: number } | null {
  const candidate = node as Node | null | undefined;
  if (!candidate || !candidate.range) return null;
  const [start, valueEnd] = candidate.range;
  // A collection's range spans all of its lines; mark its first line only.
  if (isMap(candidate) || isSeq(candidate)) return { start, end: start };
  return { start, end: Math.max(valueEnd, start + 1) };
}

function child(node: unknown, segment: string | number): { key: unknown; value: unknown } | null {
  if (isSeq(node)) {
    if (typeof segment === "number") {
      const item = node.items[segment];
      return item === undefined ? null : { key: null, value: item };
    }
    const item = node.items.find((entry) => isMap(entry) && scalarValue(entry.get("id", true)) === segment);
    return item ? { key: null, value: item } : null;
  }
  if (isMap(node)) {
    const pair = node.items.find((p) => String(scalarValue(p.key)) === String(segment));
    return pair ? { key: pair.key, value: pair.value ?? pair.key } : null;
  }
  return null;
}

function scalarValue(node: unknown): unknown {
  return isScalar(node) ? node.value : node;
}

/** "line 3, column 5" in a parser's message (the API's YAML errors), as 1-based numbers. */
export function lineInMessage(message: string): { line: number; column: number } | null {
  const match = /line (\d+)(?:, column (\d+))?/.exec(message);
  return match ? { line: Number(match[1]), column: Number(match[2] ?? 1) } : null;
}
