"""The ClickHouse traces store (reflection layer): DDL migrations, the owning process, queries.

Traces arrive on the ``traces`` topic as JSON (``schemas.trace_json``) and are ingested by a
Kafka engine table and materialized views, with no Python in the path; see docs/traces.md.
"""
