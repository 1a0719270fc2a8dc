import { useEffect, useState } from "react";
import { Link, useSearchParams } from "react-router-dom";

import { apiGet } from "../../api/client";
import { useApi } from "../../api/useApi";
import { Empty, ErrorBox, Loading } from "../../components/States";
import { percent, type NodeSummary, type NodeVersions } from "./catalog";

interface Nodes {
  data: NodeSummary[];
  count: number;
}

/** Every node's versions (status and rollout weight), fetched alongside the list. */
function useVersions(names: string[]): Map<string, NodeVersions> {
  const [versions, setVersions] = useState(new Map<string, NodeVersions>());
  const key = names.join(",");
  useEffect(() => {
    if (!key) return;
    const abort = new AbortController();
    Promise.all(
      key.split(",").map((name) =>
        apiGet<NodeVersions>(`/v1/nodes/${encodeURIComponent(name)}/versions`, undefined, abort.signal).catch(
          () => null,
        ),
      ),
    ).then((answers) => {
      if (abort.signal.aborted) return;
      setVersions(new Map(answers.filter((a): a is NodeVersions => a !== null).map((a) => [a.name, a])));
    });
    return () => abort.abort();
  }, [key]);
  return versions;
}

export function NodeList() {
  const [search, setSearch] = useSearchParams();
  const category = search.get("category") ?? "";
  const { data, error, loading } = useApi<Nodes>("/v1/nodes", { category });
  const versions = useVersions(data?.data.map((n) => n.name) ?? []);
  const categories = [...new Set(data?.data.map((n) => n.category) ?? [])].sort();

  return (
    <section aria-labelledby="nodes-title">
      <div className="page-head">
        <h1 id="nodes-title">Nodes</h1>
        <label>
          Category{" "}
          <select
            value={category}
            onChange={(e) => setSearch(e.target.value ? { category: e.target.value } : {})}
          >
            <option value="">all</option>
            {[...new Set([...categories, ...(category ? [category] : [])])].map((c) => (
              <option key={c} value={c}>
                {c}
              </option>
            ))}
          </select>
        </label>
      </div>
      {error && <ErrorBox error={error} title="Could not list nodes" />}
      {loading && !data && <Loading what="nodes" />}
      {data && data.count === 0 && (
        <Empty>No nodes in the catalog yet: workers register their nodes when they start.</Empty>
      )}
      {data && data.count > 0 && (
        <div className="table-wrap">
          <table className="list" aria-label="Node catalog">
            <thead>
              <tr>
                <th scope="col">Node</th>
                <th scope="col">Category</th>
                <th scope="col">Versions</th>
                <th scope="col">Status and rollout</th>
              </tr>
            </thead>
            <tbody>
              {data.data.map((n) => (
                <tr key={n.name}>
                  <td>
                    <Link to={`/nodes/${encodeURIComponent(n.name)}`}>{n.name}</Link>
                  </td>
                  <td>{n.category}</td>
                  <td>{n.version_count}</td>
                  <td className="rollout">
                    {versions.get(n.name)?.data.map((v) => (
                      <span key={v.version} className={`badge node-status-${v.status}`}>
                        {v.version} {v.status}
                        {v.status === "production" ? ` ${percent(v.rollout_weight)}` : ""}
                      </span>
                    )) ?? <span className="badge">latest {n.latest_version}</span>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
