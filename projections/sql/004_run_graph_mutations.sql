-- Living graphs (issue 9; docs/decisions/0022-graph-mutation-who-why.md): a run's current
-- definition and the graph mutations applied to it, with who asked for each and why.
--
-- runs.definition starts as RunStarted's definition; each GraphMutated rewrites it with
-- reflux_apply_graph_mutation, the SQL twin of workflows.mutations.apply_mutation (same step
-- order, the workflow's defaults merged into an added step the same way). Added steps are stored
-- as written plus those defaults; readers normalise the definition with
-- workflows.validation.build_definition, which gives exactly the scheduler's graph.

ALTER TABLE runs ADD COLUMN definition jsonb;

CREATE TABLE run_mutations (
    run_id        text        NOT NULL,
    seq           bigint      NOT NULL,  -- the GraphMutated event's position in the run log
    type          text        NOT NULL
        CHECK (type IN ('add_step', 'remove_step', 'update_params', 'replace_node')),
    step_id       text        NOT NULL,
    data          jsonb       NOT NULL,
    mutation_id   text,                  -- the reflux.mutations proposal applied, if any
    command_id    text,                  -- the MutateGraph command (GraphMutated.causation_id)
    requested_by  text,
    reason        text,
    event_id      text        NOT NULL,
    at            timestamptz NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE FUNCTION reflux_apply_graph_mutation(
    definition jsonb, kind text, target text, data jsonb
) RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    steps    jsonb := COALESCE(definition -> 'steps', '[]'::jsonb);
    defaults jsonb := COALESCE(definition -> 'defaults', '{}'::jsonb);
    step     jsonb;
    node     text;
    key      text;
BEGIN
    IF definition IS NULL THEN
        RETURN NULL;  -- a run projected before this migration without its RunStarted row
    END IF;
    IF kind = 'add_step' THEN
        step := data;
        IF NOT step ? 'id' THEN
            step := step || jsonb_build_object('id', target);
        END IF;
        -- workflows.validation.merge_step_defaults
        FOREACH key IN ARRAY ARRAY['retry', 'cache'] LOOP
            IF jsonb_typeof(defaults -> key) = 'object' THEN
                IF COALESCE(jsonb_typeof(step -> key), 'null') = 'null' THEN
                    step := step || jsonb_build_object(key, defaults -> key);
                ELSIF jsonb_typeof(step -> key) = 'object' THEN
                    step := step || jsonb_build_object(key, (defaults -> key) || (step -> key));
                END IF;
            END IF;
        END LOOP;
        FOREACH key IN ARRAY ARRAY['timeout', 'queue_timeout'] LOOP
            IF COALESCE(jsonb_typeof(defaults -> key), 'null') <> 'null' AND NOT step ? key THEN
                step := step || jsonb_build_object(key, defaults -> key);
            END IF;
        END LOOP;
        RETURN jsonb_set(definition, '{steps}', steps || jsonb_build_array(step));
    END IF;
    IF kind = 'replace_node' THEN
        -- workflows.mutations._node_text: "name@constraint" unless the name already pins one
        node := data ->> 'node';
        IF COALESCE(jsonb_typeof(data -> 'node_version'), 'null') <> 'null'
           AND position('@' IN node) = 0 THEN
            node := node || '@' || (data ->> 'node_version');
        END IF;
    END IF;
    RETURN jsonb_set(definition, '{steps}', COALESCE((
        SELECT jsonb_agg(
            CASE
                WHEN s ->> 'id' IS DISTINCT FROM target THEN s
                WHEN kind = 'update_params' THEN jsonb_set(s, '{params}', data)
                WHEN kind = 'replace_node' THEN jsonb_set(s, '{node}', to_jsonb(node))
                ELSE s
            END ORDER BY ord)
        FROM jsonb_array_elements(steps) WITH ORDINALITY AS e(s, ord)
        WHERE NOT (kind = 'remove_step' AND s ->> 'id' = target)
    ), '[]'::jsonb));
END
$$;

-- Runs projected before this migration: their definition and mutations from the run log, in
-- log order (RunStarted and RunRebound set the definition, GraphMutated rewrites it).
INSERT INTO run_mutations (run_id, seq, type, step_id, data, mutation_id, command_id,
                           requested_by, reason, event_id, at)
SELECT run_id, seq, payload -> 'mutation' ->> 'type', payload -> 'mutation' ->> 'step_id',
       COALESCE(payload -> 'mutation' -> 'data', '{}'::jsonb), payload ->> 'mutation_id',
       payload ->> 'causation_id', payload ->> 'requested_by', payload ->> 'reason', event_id,
       occurred_at
FROM run_events WHERE event_type = 'GraphMutated';

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN
        SELECT run_id, event_type, payload FROM run_events
        WHERE event_type IN ('RunStarted', 'RunRebound', 'GraphMutated')
        ORDER BY run_id, seq
    LOOP
        IF e.event_type = 'GraphMutated' THEN
            UPDATE runs SET definition = reflux_apply_graph_mutation(
                definition, e.payload -> 'mutation' ->> 'type',
                e.payload -> 'mutation' ->> 'step_id',
                COALESCE(e.payload -> 'mutation' -> 'data', '{}'::jsonb))
            WHERE run_id = e.run_id;
        ELSE
            UPDATE runs SET definition = e.payload -> 'definition' WHERE run_id = e.run_id;
        END IF;
    END LOOP;
END
$$;
