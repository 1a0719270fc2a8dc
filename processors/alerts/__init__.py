"""SLO alerts over the traces store: pure rules (:mod:`.rules`), their configuration
(:mod:`.config`), the runtime that publishes transitions on the ``alerts`` topic
(:mod:`.evaluator`) and the view that reads them back (:mod:`.view`). See docs/traces.md."""
