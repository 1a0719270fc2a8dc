"""Kafka plumbing: the topic catalog, topic admin, typed producer/consumer and dead-lettering.

- :mod:`streams.topics` names every topic (the only place that does);
- :mod:`streams.admin` creates/inspects them idempotently (``reflux topics``, :mod:`streams.cli`);
- :mod:`streams.producer` / :mod:`streams.consumer` move schemas records with at-least-once
  semantics; :mod:`streams.dlq` parks poison records;
- :mod:`streams.checkpoint` keeps every consume loop's positions, commit order and rebalance
  handling (the typed consumer, the scheduler, the workers and the projector use it).
"""
