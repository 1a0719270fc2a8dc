// A workflow's declared inputs (definition.inputs: name -> {type, required, default,
// description, enum?}) as form fields, and the form's text back to the run's inputs.
// Pure: the form component only renders what this returns.

export type InputType = "string" | "number" | "integer" | "boolean" | "object" | "array";

export interface InputField {
  name: string;
  type: InputType;
  required: boolean;
  default: unknown;
  description: string;
  /** Allowed values, when the declaration lists them. */
  options: unknown[] | null;
}

const TYPES: InputType[] = ["string", "number", "integer", "boolean", "object", "array"];

export function inputFields(definition: Record<string, unknown> | undefined): InputField[] {
  const declared = (definition?.inputs ?? {}) as Record<string, Record<string, unknown>>;
  // The stored definition (Postgres jsonb) does not keep the author's key order: required
  // inputs first, then by name, so the form reads the same every time.
  const entries = Object.entries(declared).sort(
    ([a, specA], [b, specB]) => Number(Boolean(specB.required)) - Number(Boolean(specA.required)) || a.localeCompare(b),
  );
  return entries.map(([name, spec]) => ({
    name,
    type: TYPES.includes(spec.type as InputType) ? (spec.type as InputType) : "string",
    required: Boolean(spec.required),
    default: spec.default ?? null,
    description: typeof spec.description === "string" ? spec.description : "",
    options: Array.isArray(spec.enum) ? (spec.enum as unknown[]) : null,
  }));
}

/** The text a field starts with: its default, as the user would type it. */
export function initialText(field: InputField): string {
  if (field.default === null || field.default === undefined) return "";
  if (field.type === "object" || field.type === "array") return JSON.stringify(field.default, null, 2);
  return String(field.default);
}

export interface Parsed {
  inputs: Record<string, unknown>;
  /** Field name -> what is wrong with its text. */
  errors: Record<string, string>;
}

/** The inputs to send. An empty optional field is left out, so the engine applies the default. */
export function parseInputs(fields: InputField[], texts: Record<string, string>): Parsed {
  const inputs: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const field of fields) {
    const text = (texts[field.name] ?? "").trim();
    if (text === "") {
      if (field.required) errors[field.name] = "required";
      continue;
    }
    if (field.options) {
      const match = field.options.find((o) => JSON.stringify(o) === text || String(o) === text);
      if (match === undefined) errors[field.name] = `expected one of ${field.options.map(String).join(", ")}`;
      else inputs[field.name] = match;
      continue;
    }
    switch (field.type) {
      case "string":
        inputs[field.name] = texts[field.name];
        break;
      case "integer":
      case "number": {
        const value = Number(text);
        if (!Number.isFinite(value)) errors[field.name] = "expected a number";
        else if (field.type === "integer" && !Number.isInteger(value)) errors[field.name] = "expected an integer";
        else inputs[field.name] = value;
        break;
      }
      case "boolean":
        if (text !== "true" && text !== "false") errors[field.name] = "expected true or false";
        else inputs[field.name] = text === "true";
        break;
      case "object":
      case "array": {
        try {
          const value: unknown = JSON.parse(text);
          const isArray = Array.isArray(value);
          const isObject = typeof value === "object" && value !== null && !isArray;
          if (field.type === "array" ? !isArray : !isObject) errors[field.name] = `expected a JSON ${field.type}`;
          else inputs[field.name] = value;
        } catch (error) {
          errors[field.name] = `not JSON: ${(error as Error).message}`;
        }
        break;
      }
    }
  }
  return { inputs, errors };
}
