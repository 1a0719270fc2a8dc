-- The node catalog (seed: "Node Registry"), projected from the compacted `nodes` topic.
-- One row per node and one per node version; a NodeCatalogEntry replaces its version's row
-- (the topic keeps the last entry per node@version, so the rows equal the compacted topic).
-- Ids are uuid5 of the name (and name@version), so a rebuild reproduces them.

CREATE TABLE nodes (
    id             uuid        PRIMARY KEY,
    name           text        UNIQUE NOT NULL,
    latest_version text        NOT NULL,  -- highest registered semver, any status
    category       text        NOT NULL,  -- manifest "category", else the name's first segment
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL
);

CREATE TABLE node_versions (
    id             uuid        PRIMARY KEY,
    node_id        uuid        NOT NULL REFERENCES nodes (id),
    version        text        NOT NULL,
    manifest       jsonb       NOT NULL,
    code_url       text,       -- object-store URI of the packaged manifest/code
    status         text        NOT NULL
        CHECK (status IN ('draft', 'staging', 'production', 'deprecated')),
    rollout_weight double precision NOT NULL CHECK (rollout_weight BETWEEN 0 AND 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL,
    last_event_id  text        NOT NULL,
    UNIQUE (node_id, version)
);

CREATE INDEX idx_node_versions_status ON node_versions (status);

-- The guard of the catalog appliers: an entry is applied on its first delivery only.
CREATE TABLE node_catalog_events (
    event_id    text        PRIMARY KEY,
    name        text        NOT NULL,
    version     text        NOT NULL,
    occurred_at timestamptz NOT NULL
);
