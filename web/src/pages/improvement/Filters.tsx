// Filters kept in the query string (deep links; the back button undoes a filter).

import { useEffect, useState, type ReactNode } from "react";
import { useSearchParams } from "react-router-dom";

import { useApi } from "../../api/useApi";

export function useFilter(): [URLSearchParams, (name: string, value: string) => void] {
  const [params, setParams] = useSearchParams();
  const set = (name: string, value: string) => {
    const next = new URLSearchParams(params);
    if (value) next.set(name, value);
    else next.delete(name);
    setParams(next);
  };
  return [params, set];
}

export function SelectFilter(props: {
  label: string;
  name: string;
  options: readonly string[];
  params: URLSearchParams;
  set: (name: string, value: string) => void;
  any?: string;
}) {
  const { label, name, options, params, set, any = "any" } = props;
  const value = params.get(name) ?? "";
  return (
    <label>
      {label}
      <select value={value} onChange={(e) => set(name, e.target.value)}>
        <option value="">{any}</option>
        {options.map((o) => (
          <option key={o} value={o}>
            {o.replace(/_/g, " ")}
          </option>
        ))}
        {value && !options.includes(value) && <option value={value}>{value}</option>}
      </select>
    </label>
  );
}

/** The workflows the caller can see (GET /v1/workflows), as a filter. */
export function WorkflowFilter(props: { params: URLSearchParams; set: (name: string, value: string) => void }) {
  const workflows = useApi<{ data: { workflow_id: string }[] }>("/v1/workflows");
  const ids = workflows.data?.data.map((w) => w.workflow_id) ?? [];
  return <SelectFilter label="Workflow" name="workflow_id" options={ids} any="all" {...props} />;
}

export function FilterBar({ children }: { children: ReactNode }) {
  return (
    <form className="filters" role="search" aria-label="Filters" onSubmit={(e) => e.preventDefault()}>
      {children}
    </form>
  );
}

/** A free-text filter, applied on Enter or when the field loses focus (not on every key). */
export function TextFilter(props: {
  label: string;
  name: string;
  placeholder?: string;
  params: URLSearchParams;
  set: (name: string, value: string) => void;
}) {
  const { label, name, placeholder, params, set } = props;
  const current = params.get(name) ?? "";
  const [value, setValue] = useState(current);
  useEffect(() => setValue(current), [current]);
  const commit = () => {
    if (value.trim() !== current) set(name, value.trim());
  };
  return (
    <label>
      {label}
      <input
        value={value}
        placeholder={placeholder}
        onChange={(e) => setValue(e.target.value)}
        onBlur={commit}
        onKeyDown={(e) => {
          if (e.key === "Enter") {
            e.preventDefault();
            commit();
          }
        }}
      />
    </label>
  );
}
